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
// not ordered along the timeline, so the whole visible timeline is
// considered, not just a prefix.
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
		func(e *rooms.Event) (bool, error) { return vis.canSee(e), nil })
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
			if ok && rid != id && (!found || dir == "f" && rts < at || dir == "b" && rts > at) {
				held, err := s.backfillEvent(r.Context(), roomID, rid)
				if err != nil {
					return err
				}
				// An event that could not be fetched is still the
				// answer: its ID is what the room's servers agree on.
				if !held {
					s.logger.Warn().Str("room_id", roomID).Str("event_id", rid).Msg("the event another server found at a timestamp could not be backfilled; /context on it fails until a /messages walk reaches it")
				}
				id, at, found = rid, rts, true
			}
		}
	}
	if !found {
		return errNotFound("No event found %s %d", map[string]string{"f": "at or after", "b": "at or before"}[dir], ts)
	}
	writeJSON(w, http.StatusOK, map[string]any{"event_id": id, "origin_server_ts": at})
	return nil
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
// whether the event is held in the timeline.
func (s *Server) backfillEvent(ctx context.Context, roomID, eventID string) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, backfillTimeout)
	defer cancel()
	inTimeline := func(v rooms.View) (bool, error) {
		e, err := v.Event(eventID)
		return e != nil && !e.Outlier, err
	}
	for range 10 {
		v := s.roomsView()
		if ok, err := inTimeline(v); ok || err != nil {
			return ok, err
		}
		gap, missing, err := s.firstGap(v, roomID)
		if err != nil || missing == nil {
			return false, err
		}
		n, err := s.roomFed.Backfill(ctx, roomID, gap, missing)
		if err != nil || n == 0 {
			if ctx.Err() != nil {
				return false, ctx.Err()
			}
			return false, nil
		}
	}
	return inTimeline(s.roomsView())
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
