package api

import (
	"encoding/json"
	"net/http"
	"strconv"
)

// GET /_matrix/client/v1/rooms/{roomId}/timestamp_to_event (spec:
// room_event_by_timestamp.yaml): the event closest to a timestamp in one
// direction. dir=f finds the earliest event at or after ts, dir=b the
// latest at or before it. origin_server_ts is the sender's claim and is
// not ordered along the timeline, so the whole visible timeline is
// considered, not just a prefix.

func (s *Server) timestampRoutes() {
	s.handle("GET", "/_matrix/client/v1/rooms/{roomId}/timestamp_to_event", s.authed(s.timestampToEvent))
}

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
	const batch = 500
	var (
		bestID string
		bestTS int64
		found  bool
		from   uint64
	)
	for {
		entries, err := v.Timeline(roomID, from, true, batch, bound)
		if err != nil {
			return err
		}
		for _, te := range entries {
			from = te.Offset
			e, err := v.Event(te.EventID)
			if err != nil {
				return err
			}
			if e == nil || !vis.canSee(e) {
				continue
			}
			var h struct {
				TS int64 `json:"origin_server_ts"`
			}
			_ = json.Unmarshal(e.JSON, &h)
			// Ties keep the first event in timeline order going forwards
			// and the last one going backwards.
			if dir == "f" && h.TS >= ts && (!found || h.TS < bestTS) ||
				dir == "b" && h.TS <= ts && (!found || h.TS >= bestTS) {
				bestID, bestTS, found = te.EventID, h.TS, true
			}
		}
		if len(entries) < batch {
			break
		}
	}
	if !found {
		return errNotFound("No event found %s %d", map[string]string{"f": "at or after", "b": "at or before"}[dir], ts)
	}
	writeJSON(w, http.StatusOK, map[string]any{"event_id": bestID, "origin_server_ts": bestTS})
	return nil
}
