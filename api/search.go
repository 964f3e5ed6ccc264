package api

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"time"

	"github.com/engram-hs/engram/api/search"
	"github.com/engram-hs/engram/projections/rooms"
	idx "github.com/engram-hs/engram/projections/search"
	"github.com/engram-hs/engram/stateres"
)

// POST /search is answered by api/search over the search projection; this
// file wires it to the rest of the API (searchHost).

func (s *Server) searchRoutes() {
	s.client("POST", "/search", s.authed(s.search))
}

// searchCatchUp bounds how long a search waits for the index to fold what
// the log holds (read-your-writes: a message sent just before is found).
const searchCatchUp = 5 * time.Second

func (s *Server) search(w http.ResponseWriter, r *http.Request, sess *session) error {
	var body json.RawMessage
	if err := readJSON(r, &body); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(r.Context(), searchCatchUp)
	err := s.searchH.WaitApplied(ctx, s.log.LastOffset())
	cancel()
	if err != nil && r.Context().Err() != nil {
		return r.Context().Err()
	}
	out, err := search.Handle(r.Context(), s.searcher, &searchHost{s: s, sess: sess}, sess.UserID, body, r.URL.Query().Get("next_batch"))
	var se *search.Error
	if errors.As(err, &se) {
		return merr(se.Status, se.Code, "%s", se.Msg)
	}
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

// searchHost answers api/search's questions for one request.
type searchHost struct {
	s    *Server
	sess *session
	v    *rooms.View
	// access caches readAccess per room.
	access map[string]roomAccess
}

type roomAccess struct {
	upper uint64
	vis   *visibility
	err   error
}

func (h *searchHost) view() rooms.View {
	if h.v == nil {
		v := h.s.roomsView()
		h.v = &v
	}
	return *h.v
}

func (h *searchHost) roomAccess(roomID string) roomAccess {
	if h.access == nil {
		h.access = map[string]roomAccess{}
	}
	a, ok := h.access[roomID]
	if !ok {
		a.upper, a.vis, a.err = h.s.readAccess(roomID, h.sess.UserID)
		h.access[roomID] = a
	}
	return a
}

func (h *searchHost) JoinedRooms(userID string) ([]string, error) { return h.s.joinedRoomIDs(userID) }

func (h *searchHost) Visible(userID string, hits []idx.Hit) ([]map[string]any, error) {
	v := h.view()
	out := make([]map[string]any, len(hits))
	for i, hit := range hits {
		a := h.roomAccess(hit.RoomID)
		if a.err != nil {
			var me *matrixError
			if errors.As(a.err, &me) {
				continue // no longer allowed to read the room
			}
			return nil, a.err
		}
		e, err := v.Event(hit.EventID)
		if err != nil {
			return nil, err
		}
		// The index drops redacted text; an event redacted after the index
		// was read is checked here.
		if e == nil || e.RedactedBy != "" || !visibleIn(e, hit.RoomID, a.upper, a.vis) {
			continue
		}
		out[i] = h.s.clientEvent(v, e, h.sess, true)
	}
	return out, nil
}

func (h *searchHost) Context(userID, roomID, eventID string, before, after int, profiles bool) (map[string]any, error) {
	v := h.view()
	a := h.roomAccess(roomID)
	if a.err != nil {
		return nil, a.err
	}
	e, err := v.Event(eventID)
	if err != nil || e == nil {
		return nil, err
	}
	evsBefore, start, _, err := h.s.page(v, roomID, e.Offset-1, false, before, 0, nil, a.vis)
	if err != nil {
		return nil, err
	}
	evsAfter, end, _, err := h.s.page(v, roomID, e.Offset, true, after, a.upper, nil, a.vis)
	if err != nil {
		return nil, err
	}
	conv := func(evs []*rooms.Event) []map[string]any {
		out := make([]map[string]any, 0, len(evs))
		for _, x := range evs {
			out = append(out, h.s.clientEvent(v, x, h.sess, true))
		}
		return out
	}
	startTok, err := h.s.tokenAt("t", start)
	if err != nil {
		return nil, err
	}
	endTok, err := h.s.tokenAt("t", end)
	if err != nil {
		return nil, err
	}
	c := map[string]any{
		"events_before": conv(evsBefore), "events_after": conv(evsAfter),
		"start": startTok, "end": endTok,
	}
	if profiles {
		info := map[string]any{}
		for _, x := range append(append([]*rooms.Event{e}, evsBefore...), evsAfter...) {
			sender := headOf(x).Sender
			if _, done := info[sender]; done {
				continue
			}
			p := map[string]any{}
			if m, err := v.StateEvent(roomID, stateres.MRoomMember, sender); err == nil && m != nil {
				var mc struct {
					Displayname *string `json:"displayname"`
					AvatarURL   *string `json:"avatar_url"`
				}
				_ = json.Unmarshal(headOf(m).Content, &mc)
				if mc.Displayname != nil {
					p["displayname"] = *mc.Displayname
				}
				if mc.AvatarURL != nil {
					p["avatar_url"] = *mc.AvatarURL
				}
			}
			info[sender] = p
		}
		c["profile_info"] = info
	}
	return c, nil
}

func (h *searchHost) CurrentState(userID, roomID string) ([]map[string]any, error) {
	v := h.view()
	evs, err := v.State(roomID, "")
	if err != nil {
		return nil, err
	}
	out := make([]map[string]any, 0, len(evs))
	for _, e := range evs {
		out = append(out, h.s.clientEvent(v, e, h.sess, true))
	}
	return out, nil
}
