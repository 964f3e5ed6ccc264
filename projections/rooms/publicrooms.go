package rooms

import (
	"cmp"
	"encoding/json"
	"errors"
	"slices"
	"strconv"
	"strings"

	"github.com/engram-hs/engram/stateres"
)

// The published room directory (spec: list_public_rooms.yaml), shared by
// the client API's /publicRooms and federation's /publicRooms. Pagination
// tokens are positions in the list ordered by joined members (largest
// first) then room ID: "p<index>". The list is computed from current state
// on each request.

// PublicRoom is one entry of the directory (spec: PublishedRoomsChunk).
type PublicRoom struct {
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

// PublicRoomsQuery is what GET and POST /publicRooms accept.
type PublicRoomsQuery struct {
	Limit  int
	Since  string
	Search string
	// RoomTypes filters by the create event's type; a nil element stands
	// for rooms without a type. Nil: no filter.
	RoomTypes []*string
}

// PublicRoomsPage is the answer's shape.
type PublicRoomsPage struct {
	Chunk     []PublicRoom `json:"chunk"`
	NextBatch string       `json:"next_batch,omitempty"`
	PrevBatch string       `json:"prev_batch,omitempty"`
	Total     int          `json:"total_room_count_estimate"`
}

// MaxPublicRoomsLimit caps one page, whatever the client asks.
const MaxPublicRoomsLimit = 500

// ErrBadSince is returned for a pagination token this listing did not
// issue.
var ErrBadSince = errors.New("invalid pagination token")

// PublishedRooms lists the published rooms matching q.
func (v View) PublishedRooms(q PublicRoomsQuery) (PublicRoomsPage, error) {
	start := 0
	if q.Since != "" {
		n, err := strconv.Atoi(strings.TrimPrefix(q.Since, "p"))
		if err != nil || !strings.HasPrefix(q.Since, "p") || n < 0 {
			return PublicRoomsPage{}, ErrBadSince
		}
		start = n
	}
	limit := q.Limit
	if limit <= 0 || limit > MaxPublicRoomsLimit {
		limit = MaxPublicRoomsLimit
	}
	ids, err := v.PublicRooms()
	if err != nil {
		return PublicRoomsPage{}, err
	}
	term := strings.ToLower(strings.TrimSpace(q.Search))
	var all []PublicRoom
	for _, id := range ids {
		pr, err := v.PublicRoomEntry(id)
		if err != nil {
			return PublicRoomsPage{}, err
		}
		if pr == nil || !pr.matches(term, q.RoomTypes) {
			continue
		}
		all = append(all, *pr)
	}
	slices.SortFunc(all, func(a, b PublicRoom) int {
		if c := cmp.Compare(b.NumJoinedMembers, a.NumJoinedMembers); c != 0 {
			return c
		}
		return cmp.Compare(a.RoomID, b.RoomID)
	})
	out := PublicRoomsPage{Total: len(all)}
	start = min(start, len(all))
	end := min(start+limit, len(all))
	out.Chunk = all[start:end]
	if out.Chunk == nil {
		out.Chunk = []PublicRoom{}
	}
	if end < len(all) {
		out.NextBatch = "p" + strconv.Itoa(end)
	}
	if start > 0 {
		out.PrevBatch = "p" + strconv.Itoa(max(start-limit, 0))
	}
	return out, nil
}

func (p *PublicRoom) matches(term string, types []*string) bool {
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

// stateContent decodes the content of a current state event into into and
// reports whether the event exists.
func (v View) stateContent(roomID, typ, stateKey string, into any) (bool, error) {
	e, err := v.StateEvent(roomID, typ, stateKey)
	if err != nil || e == nil {
		return false, err
	}
	var h struct {
		Content json.RawMessage `json:"content"`
	}
	_ = json.Unmarshal(e.JSON, &h)
	_ = json.Unmarshal(h.Content, into)
	return true, nil
}

// PublicRoomEntry describes one room from its current state; nil when the
// room is unknown.
func (v View) PublicRoomEntry(roomID string) (*PublicRoom, error) {
	room, err := v.Room(roomID)
	if err != nil || room == nil {
		return nil, err
	}
	p := &PublicRoom{RoomID: roomID}
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
		if _, err := v.stateContent(roomID, st.typ, "", st.into); err != nil {
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
			Content struct {
				Membership string `json:"membership"`
			} `json:"content"`
		}
		_ = json.Unmarshal(m.JSON, &c)
		if c.Content.Membership == "join" {
			p.NumJoinedMembers++
		}
	}
	return p, nil
}

// ServersInRoom lists the servers of the room's joined members, first
// (when present) the one named first; the rest in name order.
func (v View) ServersInRoom(roomID, first string) ([]string, error) {
	members, err := v.MemberIDs(roomID, "join")
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	var out []string
	for _, u := range members {
		if _, d, ok := strings.Cut(u, ":"); ok && !seen[d] {
			seen[d] = true
			out = append(out, d)
		}
	}
	slices.Sort(out)
	if i := slices.Index(out, first); i > 0 {
		out = append(append([]string{first}, out[:i]...), out[i+1:]...)
	}
	return out, nil
}
