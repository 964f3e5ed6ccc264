package federation

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"

	"github.com/engram-hs/engram/federation/transport"
	"github.com/engram-hs/engram/projections/rooms"
)

// GET /_matrix/federation/v1/timestamp_to_event/{roomId} (spec: the
// server-server API's timestamp_to_event): the event of a room closest to
// a timestamp in one direction, among those this server holds, for a
// server in the room. A server asks it when its own copy of the room has
// a gap where the answer may lie (typically the history before it joined).
// The search seeks the index by origin_server_ts and computes the asking
// server's visibility only for the candidates nearest ts (stepping over
// those it may not see), not for every event of the room.

func (s *Server) timestampRoutes() {
	if s.deps.Rooms == nil || s.deps.Log == nil || s.deps.Keys == nil {
		return
	}
	s.HandleAuthed("GET /_matrix/federation/v1/timestamp_to_event/{roomID}", s.timestampToEvent)
}

func (s *Server) timestampToEvent(w http.ResponseWriter, r *http.Request, origin string) error {
	v := s.view()
	roomID := r.PathValue("roomID")
	q := r.URL.Query()
	ts, err := strconv.ParseInt(q.Get("ts"), 10, 64)
	if err != nil {
		return Errorf(http.StatusBadRequest, "M_INVALID_PARAM", "ts must be an integer (milliseconds since the Unix epoch)")
	}
	dir := q.Get("dir")
	if dir != "f" && dir != "b" {
		return Errorf(http.StatusBadRequest, "M_INVALID_PARAM", "dir must be f or b")
	}
	if _, err := s.readableRoom(r, v, roomID, origin); err != nil {
		return err
	}
	te, at, ok, err := v.EventAtTimestamp(roomID, ts, dir == "f", rooms.Pos{Offset: s.deps.Log.LastOffset(), Seq: rooms.PosEnd},
		func(_ rooms.TimelineEntry, e *rooms.Event) (bool, error) { return eventVisibleTo(v, e.EventID, origin) })
	if err != nil {
		return err
	}
	if !ok {
		return Errorf(http.StatusNotFound, "M_NOT_FOUND", "No event found %s %d", map[string]string{"f": "at or after", "b": "at or before"}[dir], ts)
	}
	writeJSON(w, http.StatusOK, map[string]any{"event_id": te.EventID, "origin_server_ts": at})
	return nil
}

// TimestampToEvent asks the room's other servers in turn for the event
// closest to ts in direction dir ("f" or "b"), and returns the first
// answer. found is false when every server that answered had none.
func (s *Server) TimestampToEvent(ctx context.Context, roomID string, ts int64, dir string) (eventID string, originTS int64, found bool, err error) {
	if s.deps.Client == nil {
		return "", 0, false, nil
	}
	servers, err := s.view().ServersInRoom(roomID, "")
	if err != nil {
		return "", 0, false, err
	}
	q := url.Values{"ts": {strconv.FormatInt(ts, 10)}, "dir": {dir}}
	var errs []error
	for _, server := range servers {
		if server == s.cfg.ServerName {
			continue
		}
		var out struct {
			EventID string `json:"event_id"`
			TS      int64  `json:"origin_server_ts"`
		}
		err := s.deps.Client.DoJSON(ctx, transport.Request{Destination: server, Method: "GET",
			Path: "/_matrix/federation/v1/timestamp_to_event/" + transport.PathEscape(roomID) + "?" + q.Encode()}, &out)
		if err != nil {
			var herr *transport.HTTPError
			if errors.As(err, &herr) && herr.Status == http.StatusNotFound {
				continue // that server has nothing there either
			}
			errs = append(errs, fmt.Errorf("%s: %w", server, err))
			continue
		}
		if out.EventID == "" {
			errs = append(errs, fmt.Errorf("%s: answer without an event_id", server))
			continue
		}
		return out.EventID, out.TS, true, nil
	}
	return "", 0, false, errors.Join(errs...)
}
