package api

import (
	"context"
	"net/http"
	"strconv"
	"time"

	"github.com/engram-hs/engram/projections/rooms"
)

// GET /_matrix/client/v1/rooms/{roomId}/timestamp_to_event (spec:
// room_event_by_timestamp.yaml): the event closest to a timestamp in one
// direction. dir=f finds the earliest event at or after ts, dir=b the
// latest at or before it. origin_server_ts is the sender's claim and is
// not ordered along the timeline, so the search seeks the rooms
// projection's index by origin_server_ts (rooms.View.EventAtTimestamp)
// and judges visibility only for the candidates nearest ts.
//
// This server's copy of a room it joined over federation starts at the
// join: the history before it is a gap. When the answer here is none, or
// sits next to such a gap (where a closer event may lie), the room's other
// servers are asked too (federation timestamp_to_event), and a closer
// event they name is backfilled, so /context and /messages around it work
// (the spec: the server should try to backfill the event).

func (s *Server) timestampRoutes() {
	s.handle("GET", "/_matrix/client/v1/rooms/{roomId}/timestamp_to_event", s.authed(s.timestampToEvent))
}

// timestampRemoteTimeout bounds the time one request spends asking other
// servers and backfilling their answer.
const timestampRemoteTimeout = 20 * time.Second

func (s *Server) timestampToEvent(w http.ResponseWriter, r *http.Request, sess *session) error {
	roomID, err := roomIDParam(r)
	if err != nil {
		return err
	}
	q := r.URL.Query()
	if q.Get("ts") == "" {
		return errMissingParam("ts is required")
	}
	ts, err := strconv.ParseInt(q.Get("ts"), 10, 64)
	if err != nil {
		return errInvalidParam("ts must be an integer (milliseconds since the Unix epoch)")
	}
	dir := q.Get("dir")
	if dir == "" {
		return errMissingParam("dir is required")
	}
	if dir != "f" && dir != "b" {
		return errInvalidParam("dir must be f or b")
	}
	// Only events the caller may read count: up to their leave for a user
	// who left, and under the room's history visibility, as /event sees it.
	bound, vis, err := s.readAccess(roomID, sess.UserID)
	if err != nil {
		return err
	}
	v := s.roomsView()
	te, at, found, err := v.EventAtTimestamp(roomID, ts, dir == "f", rooms.Pos{Offset: bound, Seq: rooms.PosEnd},
		func(te rooms.TimelineEntry, e *rooms.Event) (bool, error) { return visibleEntry(vis, te, e), nil })
	if err != nil {
		return err
	}
	id := te.EventID
	if s.roomFed != nil && len(s.otherServers(roomID)) > 0 {
		nearGap := !found
		if found {
			if nearGap, err = s.nextToGap(v, roomID, te, dir == "f"); err != nil {
				return err
			}
		}
		if nearGap {
			ctx, cancel := context.WithTimeout(r.Context(), timestampRemoteTimeout)
			rid, rts, ok, err := s.roomFed.TimestampToEvent(ctx, roomID, ts, dir)
			cancel()
			if err != nil {
				s.logger.Warn().Err(err).Str("room_id", roomID).Msg("could not ask the room's other servers for the event at a timestamp; answering from this server's copy")
			}
			if ok && rid != id && (!found || closer(dir, ts, rts, at)) {
				rts, held, err := s.backfillEvent(r.Context(), roomID, rid)
				if err != nil {
					return err
				}
				if held {
					// Judged by the state at it, now that it is here.
					if held, err = s.visibleNow(roomID, sess.UserID, rid); err != nil {
						return err
					}
				}
				// Only an event this server now holds, in this room and on
				// the asked side of ts by its own origin_server_ts (not the
				// other server's claim), replaces the local answer.
				switch {
				case !held:
					s.logger.Warn().Str("room_id", roomID).Str("event_id", rid).Msg("the event another server found at a timestamp could not be backfilled, or the user may not see it; answering from this server's copy")
				case dir == "f" && rts < ts, dir == "b" && rts > ts:
					s.logger.Warn().Str("room_id", roomID).Str("event_id", rid).Int64("ts", ts).Int64("origin_server_ts", rts).Msg("another server named an event on the wrong side of the timestamp; answering from this server's copy")
				case !found || closer(dir, ts, rts, at):
					id, at, found = rid, rts, true
				}
			}
		}
	}
	if !found {
		return errNotFound("No event found %s %d", map[string]string{"f": "at or after", "b": "at or before"}[dir], ts)
	}
	writeJSON(w, http.StatusOK, map[string]any{"event_id": id, "origin_server_ts": at})
	return nil
}

// visibleEntry is whether the reader may see the event of a timeline
// entry: backfilled history is judged by the state at it.
func visibleEntry(vis *visibility, te rooms.TimelineEntry, e *rooms.Event) bool {
	if te.Seq > 0 {
		return vis.canSeeHistorical(e)
	}
	return vis.canSee(e)
}

// visibleNow is whether userID may see the room's event eventID, with a
// view that holds what a backfill just placed.
func (s *Server) visibleNow(roomID, userID, eventID string) (bool, error) {
	v := s.roomsView()
	e, err := v.Event(eventID)
	if err != nil || e == nil {
		return false, err
	}
	vis, err := s.newVisibility(v, roomID, userID)
	if err != nil {
		return false, err
	}
	te, historical, err := historicalEntry(v, roomID, e)
	if err != nil {
		return false, err
	}
	if !historical {
		te = rooms.TimelineEntry{Offset: e.Offset, EventID: e.EventID}
	}
	return visibleEntry(vis, te, e), nil
}

// otherServers are the servers other than this one with members joined.
func (s *Server) otherServers(roomID string) []string {
	var out []string
	for _, srv := range s.residentServers(roomID) {
		if srv != s.cfg.ServerName {
			out = append(out, srv)
		}
	}
	return out
}

// nextToGap reports whether history this server lacks may lie on the
// searched side of te: going forwards, before it (te names prev_events
// not held); going backwards, after it (the next entry does).
func (s *Server) nextToGap(v rooms.View, roomID string, te rooms.TimelineEntry, forward bool) (bool, error) {
	if !forward {
		next, err := v.Page(roomID, te.At(), true, 1, rooms.Pos{Offset: s.log.LastOffset(), Seq: rooms.PosEnd})
		if err != nil || len(next) == 0 {
			return false, err
		}
		te = next[0]
	}
	missing, err := missingPrevs(v, te.EventID)
	return len(missing) > 0, err
}

// missingPrevs are the prev_events of an event that this server does not
// hold in the room's DAG (absent, or known only as an outlier).
func missingPrevs(v rooms.View, eventID string) ([]string, error) {
	e, err := v.Event(eventID)
	if err != nil || e == nil {
		return nil, err
	}
	p, err := e.PDU()
	if err != nil {
		return nil, err
	}
	var missing []string
	for _, id := range p.PrevEventIDs() {
		pe, err := v.Event(id)
		if err != nil {
			return nil, err
		}
		if pe == nil || (pe.Outlier && pe.Rejected == "") {
			missing = append(missing, id)
		}
	}
	return missing, nil
}

// backfillEvent fills the gaps in the room's timeline, earliest first,
// until eventID is placed in it or a fill places nothing; it reports
// whether the event is held in the room's timeline, and its
// origin_server_ts.
func (s *Server) backfillEvent(parent context.Context, roomID, eventID string) (int64, bool, error) {
	ctx, cancel := context.WithTimeout(parent, backfillTimeout)
	defer cancel()
	held := func() (int64, bool, error) {
		e, err := s.roomsView().Event(eventID)
		if err != nil || e == nil || e.Outlier || e.Rejected != "" || e.RoomID != roomID {
			return 0, false, err
		}
		p, err := e.PDU()
		if err != nil {
			return 0, false, err
		}
		return p.OriginServerTS(), true, nil
	}
	for range 10 {
		if ts, ok, err := held(); ok || err != nil {
			return ts, ok, err
		}
		gap, missing, err := s.firstGap(s.roomsView(), roomID)
		if err != nil || missing == nil {
			return 0, false, err
		}
		n, err := s.roomFed.Backfill(ctx, roomID, gap, missing)
		if err != nil || n == 0 {
			// The reader went away: stop. Otherwise (no server had
			// more, or the time ran out) the event is not held.
			return 0, false, parent.Err()
		}
	}
	return held()
}

// closer reports whether an event at a is a better answer than one at b
// for a search from ts in direction dir (both on the asked side).
func closer(dir string, ts, a, b int64) bool {
	if dir == "f" {
		return a < b
	}
	return a > b
}

// firstGap is the earliest timeline entry whose event names prev_events
// this server does not hold, with those events.
func (s *Server) firstGap(v rooms.View, roomID string) (rooms.TimelineEntry, []string, error) {
	const batch = 500
	bound := rooms.Pos{Offset: s.log.LastOffset(), Seq: rooms.PosEnd}
	from := rooms.Pos{}
	for {
		entries, err := v.Page(roomID, from, true, batch, bound)
		if err != nil {
			return rooms.TimelineEntry{}, nil, err
		}
		for _, te := range entries {
			from = te.At()
			missing, err := missingPrevs(v, te.EventID)
			if err != nil {
				return te, nil, err
			}
			if len(missing) > 0 {
				return te, missing, nil
			}
		}
		if len(entries) < batch {
			return rooms.TimelineEntry{}, nil, nil
		}
	}
}
