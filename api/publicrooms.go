package api

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"

	"github.com/engram-hs/engram/projections/rooms"
)

// The filtered, paginated published room directory (spec:
// list_public_rooms.yaml); the listing itself is rooms.View.PublishedRooms,
// shared with federation.

// publicRoomsQuery is what GET and POST /publicRooms accept.
type publicRoomsQuery struct {
	Limit  int
	Since  string
	Server string
	Search string
	// RoomTypes filters by the create event's type; a nil element stands
	// for rooms without a type. Nil: no filter.
	RoomTypes []*string
}

func (s *Server) publicRoomsRoutes() {
	s.client("POST", "/publicRooms", s.authed(s.postPublicRooms))
}

func (s *Server) postPublicRooms(w http.ResponseWriter, r *http.Request, sess *session) error {
	var req struct {
		Limit  *int   `json:"limit"`
		Since  string `json:"since"`
		Filter struct {
			GenericSearchTerm string    `json:"generic_search_term"`
			RoomTypes         []*string `json:"room_types"`
		} `json:"filter"`
		IncludeAllNetworks   bool   `json:"include_all_networks"`
		ThirdPartyInstanceID string `json:"third_party_instance_id"`
	}
	if err := readJSON(r, &req); err != nil {
		return err
	}
	if req.ThirdPartyInstanceID != "" {
		// No bridges publish third-party networks here: nothing matches.
		writeJSON(w, http.StatusOK, map[string]any{"chunk": []any{}, "total_room_count_estimate": 0})
		return nil
	}
	q := publicRoomsQuery{Since: req.Since, Server: r.URL.Query().Get("server"), Search: req.Filter.GenericSearchTerm, RoomTypes: req.Filter.RoomTypes}
	if req.Limit != nil {
		q.Limit = *req.Limit
	}
	out, err := s.listPublicRooms(r.Context(), q)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

// publicRoomsQueryFromURL reads GET /publicRooms' query parameters.
func publicRoomsQueryFromURL(r *http.Request) (publicRoomsQuery, error) {
	qs := r.URL.Query()
	q := publicRoomsQuery{Since: qs.Get("since"), Server: qs.Get("server")}
	if l := qs.Get("limit"); l != "" {
		n, err := strconv.Atoi(l)
		if err != nil {
			return q, errInvalidParam("limit must be an integer")
		}
		q.Limit = n
	}
	return q, nil
}

// listPublicRooms answers a directory query with the spec's response
// shape (chunk, next_batch, prev_batch, total_room_count_estimate): ours
// from the rooms projection, another server's over federation.
func (s *Server) listPublicRooms(ctx context.Context, q publicRoomsQuery) (any, error) {
	if q.Server != "" && q.Server != s.cfg.ServerName {
		return s.remotePublicRooms(ctx, q)
	}
	page, err := s.roomsView().PublishedRooms(rooms.PublicRoomsQuery{Limit: q.Limit, Since: q.Since, Search: q.Search, RoomTypes: q.RoomTypes})
	if errors.Is(err, rooms.ErrBadSince) {
		return nil, errInvalidParam("Invalid pagination token %q", q.Since)
	}
	if err != nil {
		return nil, err
	}
	return page, nil
}

// stateContent decodes the content of a current state event into v and
// reports whether the event exists.
func stateContent(v rooms.View, roomID, typ, stateKey string, into any) (bool, error) {
	e, err := v.StateEvent(roomID, typ, stateKey)
	if err != nil || e == nil {
		return false, err
	}
	_ = json.Unmarshal(headOf(e).Content, into)
	return true, nil
}
