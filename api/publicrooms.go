package api

import (
	"cmp"
	"encoding/json"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/engram-hs/engram/projections/rooms"
	"github.com/engram-hs/engram/stateres"
)

// The filtered, paginated published room directory (spec:
// list_public_rooms.yaml). Pagination tokens are positions in the list
// ordered by joined members (largest first) then room ID: "p<index>".
// The list is computed from the rooms projection on each request.

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

// maxPublicRoomsLimit caps one page, whatever the client asks.
const maxPublicRoomsLimit = 500

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
	out, err := s.listPublicRooms(q)
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
// shape (chunk, next_batch, prev_batch, total_room_count_estimate).
func (s *Server) listPublicRooms(q publicRoomsQuery) (map[string]any, error) {
	if q.Server != "" && q.Server != s.cfg.ServerName {
		return nil, errInvalidParam("Listing the room directory of another server (%s) is not available yet", q.Server)
	}
	start := 0
	if q.Since != "" {
		n, err := strconv.Atoi(strings.TrimPrefix(q.Since, "p"))
		if err != nil || !strings.HasPrefix(q.Since, "p") || n < 0 {
			return nil, errInvalidParam("Invalid pagination token %q", q.Since)
		}
		start = n
	}
	limit := q.Limit
	if limit <= 0 || limit > maxPublicRoomsLimit {
		limit = maxPublicRoomsLimit
	}
	v := s.roomsView()
	ids, err := v.PublicRooms()
	if err != nil {
		return nil, err
	}
	term := strings.ToLower(strings.TrimSpace(q.Search))
	var all []publicRoom
	for _, id := range ids {
		pr, err := s.publicRoomEntry(v, id)
		if err != nil {
			return nil, err
		}
		if pr == nil || !pr.matches(term, q.RoomTypes) {
			continue
		}
		all = append(all, *pr)
	}
	slices.SortFunc(all, func(a, b publicRoom) int {
		if c := cmp.Compare(b.NumJoinedMembers, a.NumJoinedMembers); c != 0 {
			return c
		}
		return cmp.Compare(a.RoomID, b.RoomID)
	})
	out := map[string]any{"total_room_count_estimate": len(all)}
	start = min(start, len(all))
	end := min(start+limit, len(all))
	chunk := all[start:end]
	if chunk == nil {
		chunk = []publicRoom{}
	}
	out["chunk"] = chunk
	if end < len(all) {
		out["next_batch"] = "p" + strconv.Itoa(end)
	}
	if start > 0 {
		out["prev_batch"] = "p" + strconv.Itoa(max(start-limit, 0))
	}
	return out, nil
}

// publicRoom is one entry of the directory (spec: PublishedRoomsChunk).
type publicRoom struct {
	RoomID           string `json:"room_id"`
	Name             string `json:"name,omitempty"`
	Topic            string `json:"topic,omitempty"`
	CanonicalAlias   string `json:"canonical_alias,omitempty"`
	AvatarURL        string `json:"avatar_url,omitempty"`
	NumJoinedMembers int    `json:"num_joined_members"`
	WorldReadable    bool   `json:"world_readable"`
	GuestCanJoin     bool   `json:"guest_can_join"`
	JoinRule         string `json:"join_rule,omitempty"`
	RoomType         string `json:"room_type,omitempty"`
}

func (p *publicRoom) matches(term string, types []*string) bool {
	if types != nil && !slices.ContainsFunc(types, func(t *string) bool {
		if t == nil {
			return p.RoomType == ""
		}
		return *t == p.RoomType
	}) {
		return false
	}
	if term == "" {
		return true
	}
	for _, f := range []string{p.Name, p.Topic, p.CanonicalAlias, p.RoomID} {
		if strings.Contains(strings.ToLower(f), term) {
			return true
		}
	}
	return false
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

// publicRoomEntry describes one room from its current state; nil when the
// room is unknown.
func (s *Server) publicRoomEntry(v rooms.View, roomID string) (*publicRoom, error) {
	room, err := v.Room(roomID)
	if err != nil || room == nil {
		return nil, err
	}
	p := &publicRoom{RoomID: roomID}
	var create struct {
		Type string `json:"type"`
	}
	var name struct {
		Name string `json:"name"`
	}
	var topic struct {
		Topic  string `json:"topic"`
		MTopic struct {
			Text []struct {
				Mimetype string `json:"mimetype"`
				Body     string `json:"body"`
			} `json:"m.text"`
		} `json:"m.topic"`
	}
	var alias struct {
		Alias string `json:"alias"`
	}
	var avatar struct {
		URL string `json:"url"`
	}
	var jr struct {
		JoinRule string `json:"join_rule"`
	}
	var hv struct {
		HistoryVisibility string `json:"history_visibility"`
	}
	var ga struct {
		GuestAccess string `json:"guest_access"`
	}
	for _, st := range []struct {
		typ  string
		into any
	}{
		{stateres.MRoomCreate, &create}, {"m.room.name", &name}, {"m.room.topic", &topic},
		{"m.room.canonical_alias", &alias}, {"m.room.avatar", &avatar}, {stateres.MRoomJoinRules, &jr},
		{stateres.MRoomHistoryVisibility, &hv}, {"m.room.guest_access", &ga},
	} {
		if _, err := stateContent(v, roomID, st.typ, "", st.into); err != nil {
			return nil, err
		}
	}
	p.RoomType, p.Name, p.CanonicalAlias, p.AvatarURL, p.JoinRule = create.Type, name.Name, alias.Alias, avatar.URL, jr.JoinRule
	// Spec: the plain-text topic; m.topic's text/plain (or untyped)
	// representation wins over the legacy field.
	p.Topic = topic.Topic
	for _, c := range topic.MTopic.Text {
		if c.Mimetype == "" || c.Mimetype == "text/plain" {
			p.Topic = c.Body
			break
		}
	}
	p.WorldReadable = hv.HistoryVisibility == "world_readable"
	p.GuestCanJoin = ga.GuestAccess == "can_join"
	members, err := v.State(roomID, stateres.MRoomMember)
	if err != nil {
		return nil, err
	}
	for _, m := range members {
		var c struct {
			Membership string `json:"membership"`
		}
		_ = json.Unmarshal(headOf(m).Content, &c)
		if c.Membership == "join" {
			p.NumJoinedMembers++
		}
	}
	return p, nil
}
