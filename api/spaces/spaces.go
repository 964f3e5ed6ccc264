// Package spaces serves GET /_matrix/client/v1/rooms/{roomId}/hierarchy
// and GET /_matrix/client/v1/room_summary/{roomIdOrAlias} (spec:
// client-server-api "Spaces", room_summary.yaml). Rooms this server holds
// are described from their current state (rooms.View.Summary and
// SpaceChildren); others are asked of the servers an m.space.child's via
// names, over federation's /hierarchy (Host.RemoteHierarchy).
package spaces

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"strings"

	"github.com/engram-hs/engram/api/apihttp"
	"github.com/engram-hs/engram/internal/mxerr"
	"github.com/engram-hs/engram/projections/rooms"
)

// Host is what the endpoints need from the client-server API beyond
// apihttp.Host.
type Host interface {
	apihttp.Host
	Rooms() rooms.View
	// ResolveAlias resolves a room alias, here or on its server, to a
	// room ID and servers to ask about it.
	ResolveAlias(ctx context.Context, alias string) (roomID string, servers []string, err error)
	// RemoteHierarchy asks server for its GET
	// /_matrix/federation/v1/hierarchy/{roomID} answer; an error when
	// there is no federation or the server does not answer.
	RemoteHierarchy(ctx context.Context, server, roomID string, suggestedOnly bool) (*RemoteAnswer, error)
}

// RemoteAnswer is the federation /hierarchy response.
type RemoteAnswer struct {
	Room                 *Entry   `json:"room"`
	Children             []Entry  `json:"children"`
	InaccessibleChildren []string `json:"inaccessible_children"`
}

// Entry is a room of a hierarchy: its summary and, for a space, its
// children as stripped m.space.child events.
type Entry struct {
	rooms.RoomSummary
	ChildrenState []map[string]any `json:"children_state"`
}

// API holds the endpoints.
type API struct{ h Host }

// New registers the endpoints on h.
func New(h Host) *API {
	a := &API{h: h}
	h.Handle("GET", "/_matrix/client/v1/rooms/{roomId}/hierarchy", a.hierarchy)
	h.Handle("GET", "/_matrix/client/v1/room_summary/{roomIdOrAlias}", a.roomSummary)
	// MSC3266's unstable path, which clients released before v1.15 call.
	h.Handle("GET", "/_matrix/client/unstable/im.nheko.summary/summary/{roomIdOrAlias}", a.roomSummary)
	return a
}

// Limits of one /hierarchy request.
const (
	defaultLimit    = 50
	maxLimit        = 100
	defaultMaxDepth = 50
	maxMaxDepth     = 100
	// maxRemoteRooms bounds how many rooms one request asks other
	// servers about.
	maxRemoteRooms = 50
)

// token is a /hierarchy pagination token: how many rooms earlier pages
// returned, with the parameters they were computed with (spec: they may
// not change while paginating). The walk is recomputed from the room's
// current state on each page.
type token struct {
	Root      string `json:"r"`
	Skip      int    `json:"s"`
	MaxDepth  int    `json:"d"`
	Suggested bool   `json:"q"`
}

func (t token) encode() string {
	b, _ := json.Marshal(t)
	return base64.RawURLEncoding.EncodeToString(b)
}

func decodeToken(s string) (token, error) {
	var t token
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil || json.Unmarshal(b, &t) != nil || t.Skip < 0 {
		return t, mxerr.InvalidParam("Unknown pagination token")
	}
	return t, nil
}

func boolParam(q string) (bool, error) {
	switch q {
	case "", "false":
		return false, nil
	case "true":
		return true, nil
	}
	return false, mxerr.InvalidParam("suggested_only must be true or false")
}

func (a *API) hierarchy(w http.ResponseWriter, r *http.Request) error {
	c, err := a.h.Authenticate(r)
	if err != nil {
		return err
	}
	roomID := r.PathValue("roomId")
	if !strings.HasPrefix(roomID, "!") {
		return mxerr.InvalidParam("room ID must start with '!'")
	}
	q := r.URL.Query()
	suggested, err := boolParam(q.Get("suggested_only"))
	if err != nil {
		return err
	}
	limit := defaultLimit
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n <= 0 {
			return mxerr.InvalidParam("limit must be an integer greater than zero")
		}
		limit = min(n, maxLimit)
	}
	maxDepth := defaultMaxDepth
	if s := q.Get("max_depth"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 {
			return mxerr.InvalidParam("max_depth must be a non-negative integer")
		}
		maxDepth = min(n, maxMaxDepth)
	}
	tok := token{Root: roomID, MaxDepth: maxDepth, Suggested: suggested}
	if s := q.Get("from"); s != "" {
		t, err := decodeToken(s)
		if err != nil {
			return err
		}
		if t.Root != roomID {
			return mxerr.InvalidParam("The pagination token is for another room")
		}
		if (q.Has("max_depth") && t.MaxDepth != maxDepth) || (q.Has("suggested_only") && t.Suggested != suggested) {
			return mxerr.InvalidParam("suggested_only and max_depth cannot change on paginated requests")
		}
		tok = t
	}
	wk := &walker{a: a, ctx: r.Context(), userID: c.UserID, suggested: tok.Suggested, remote: map[string]*Entry{}}
	entries, more, err := wk.walk(roomID, tok.MaxDepth, tok.Skip, limit)
	if err != nil {
		return err
	}
	out := map[string]any{"rooms": entries}
	if more {
		next := tok
		next.Skip += len(entries)
		out["next_batch"] = next.encode()
	}
	apihttp.WriteJSON(w, http.StatusOK, out)
	return nil
}

// walker walks a space tree depth first for one user.
type walker struct {
	a         *API
	ctx       context.Context
	userID    string
	suggested bool
	// remote caches what other servers said: rooms they described as
	// children (no children_state: their own /hierarchy gives it).
	remote   map[string]*Entry
	asked    int
	joinedIn map[string]bool
}

type queued struct {
	roomID string
	depth  int
	via    []string
}

// walk returns the rooms after the first skip, at most limit, and
// whether more follow.
func (wk *walker) walk(root string, maxDepth, skip, limit int) ([]Entry, bool, error) {
	stack := []queued{{roomID: root}}
	seen := map[string]bool{}
	var out []Entry
	n := 0
	for len(stack) > 0 {
		q := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if seen[q.roomID] {
			continue
		}
		seen[q.roomID] = true
		e, children, err := wk.room(q.roomID, q.via, q.depth == 0)
		if err != nil {
			return nil, false, err
		}
		if e == nil {
			if q.depth == 0 {
				return nil, false, mxerr.Forbidden("You are not allowed to view room %s, or it is unknown to this server", root)
			}
			continue
		}
		if n >= skip {
			if len(out) == limit {
				return out, true, nil
			}
			out = append(out, *e)
		}
		n++
		if q.depth >= maxDepth {
			continue
		}
		for i := len(children) - 1; i >= 0; i-- {
			if !seen[children[i].roomID] {
				stack = append(stack, queued{roomID: children[i].roomID, depth: q.depth + 1, via: children[i].via})
			}
		}
	}
	return out, false, nil
}

type child struct {
	roomID string
	via    []string
}

// room describes one room of the walk for the user: nil when they may not
// see it or nobody could describe it.
func (wk *walker) room(roomID string, via []string, root bool) (*Entry, []child, error) {
	v := wk.a.h.Rooms()
	s, err := v.Summary(roomID)
	if err != nil {
		return nil, nil, err
	}
	if s == nil {
		return wk.remoteRoom(roomID, via, root)
	}
	ok, err := wk.accessible(s)
	if err != nil || !ok {
		return nil, nil, err
	}
	e := &Entry{RoomSummary: *s, ChildrenState: []map[string]any{}}
	var children []child
	if s.RoomType == "m.space" {
		cs, err := v.SpaceChildren(roomID)
		if err != nil {
			return nil, nil, err
		}
		for _, c := range cs {
			if wk.suggested && !c.Suggested {
				continue
			}
			e.ChildrenState = append(e.ChildrenState, c.Stripped())
			children = append(children, child{c.RoomID, c.Via})
		}
	}
	return e, children, nil
}

func serverOf(id string) string {
	_, s, _ := strings.Cut(id, ":")
	return s
}

// accessible applies the spec's rule for which rooms a user is shown:
// members and invitees, rooms anyone may see (Peekable), and restricted
// rooms whose allowed rooms the user is joined to.
func (wk *walker) accessible(s *rooms.RoomSummary) (bool, error) {
	m, err := wk.a.h.Rooms().Membership(wk.userID, s.RoomID)
	if err != nil {
		return false, err
	}
	if m != nil {
		switch m.Membership {
		case "join", "invite":
			return true, nil
		case "ban":
			return false, nil
		}
	}
	if s.Peekable() {
		return true, nil
	}
	if s.Restricted() {
		for _, id := range s.AllowedRoomIDs {
			if wk.joined(id) {
				return true, nil
			}
		}
	}
	return false, nil
}

func (wk *walker) joined(roomID string) bool {
	if wk.joinedIn == nil {
		wk.joinedIn = map[string]bool{}
	}
	j, ok := wk.joinedIn[roomID]
	if !ok {
		m, err := wk.a.h.Rooms().Membership(wk.userID, roomID)
		j = err == nil && m != nil && m.Membership == "join"
		wk.joinedIn[roomID] = j
	}
	return j
}

// remoteRoom asks the servers of via about a room this server is not in.
func (wk *walker) remoteRoom(roomID string, via []string, root bool) (*Entry, []child, error) {
	cached := wk.remote[roomID]
	if cached != nil && cached.RoomType != "m.space" {
		// A child another server described: enough for a room that is
		// not a space (it has no children to walk).
		return wk.remoteEntry(cached, nil)
	}
	if root && len(via) == 0 {
		via = []string{serverOf(roomID)}
	}
	for _, server := range via {
		if server == serverOf(wk.userID) || wk.asked >= maxRemoteRooms {
			continue
		}
		wk.asked++
		ans, err := wk.a.h.RemoteHierarchy(wk.ctx, server, roomID, wk.suggested)
		if err != nil {
			if errors.Is(err, context.Canceled) {
				return nil, nil, err
			}
			continue
		}
		if ans.Room == nil || ans.Room.RoomID != roomID {
			continue
		}
		for i := range ans.Children {
			c := ans.Children[i]
			if _, ok := wk.remote[c.RoomID]; !ok {
				wk.remote[c.RoomID] = &c
			}
		}
		var children []child
		for _, cs := range ans.Room.ChildrenState {
			id, _ := cs["state_key"].(string)
			if id == "" {
				continue
			}
			var cvia []string
			if content, ok := cs["content"].(map[string]any); ok {
				if vs, ok := content["via"].([]any); ok {
					for _, x := range vs {
						if s, ok := x.(string); ok {
							cvia = append(cvia, s)
						}
					}
				}
				if wk.suggested && content["suggested"] != true {
					continue
				}
			}
			if len(cvia) == 0 {
				continue
			}
			children = append(children, child{id, cvia})
		}
		return wk.remoteEntry(ans.Room, children)
	}
	if cached != nil {
		return wk.remoteEntry(cached, nil)
	}
	return nil, nil, nil
}

// remoteEntry filters what another server said for the user: the remote
// server showed us rooms any server may see; restricted ones are checked
// against the user's rooms here.
func (wk *walker) remoteEntry(e *Entry, children []child) (*Entry, []child, error) {
	ok, err := wk.accessible(&e.RoomSummary)
	if err != nil {
		return nil, nil, err
	}
	if !ok {
		return nil, nil, nil
	}
	out := *e
	if out.ChildrenState == nil || out.RoomType != "m.space" {
		out.ChildrenState = []map[string]any{}
	}
	return &out, children, nil
}

func (a *API) roomSummary(w http.ResponseWriter, r *http.Request) error {
	var userID string
	if r.Header.Get("Authorization") != "" || r.URL.Query().Has("access_token") {
		c, err := a.h.Authenticate(r)
		if err != nil {
			return err
		}
		userID = c.UserID
	}
	idOrAlias := r.PathValue("roomIdOrAlias")
	var roomID string
	via := r.URL.Query()["via"]
	switch {
	case strings.HasPrefix(idOrAlias, "!"):
		roomID = idOrAlias
	case strings.HasPrefix(idOrAlias, "#"):
		id, servers, err := a.h.ResolveAlias(r.Context(), idOrAlias)
		if err != nil {
			return err
		}
		roomID, via = id, append(via, servers...)
	default:
		return mxerr.InvalidParam("%q is neither a room ID nor a room alias", idOrAlias)
	}
	v := a.h.Rooms()
	wk := &walker{a: a, ctx: r.Context(), userID: userID, remote: map[string]*Entry{}}
	var s *rooms.RoomSummary
	if local, err := v.Summary(roomID); err != nil {
		return err
	} else if local != nil {
		s = local
	} else {
		e, _, err := wk.remoteRoom(roomID, via, true)
		if err != nil {
			return err
		}
		if e != nil {
			s = &e.RoomSummary
		}
	}
	notFound := mxerr.NotFound("Room %s not found, or you may not see its summary", idOrAlias)
	if s == nil {
		return notFound
	}
	out := map[string]any{}
	raw, _ := json.Marshal(s)
	_ = json.Unmarshal(raw, &out)
	if userID == "" {
		if !s.Peekable() {
			return notFound
		}
	} else {
		ok, err := wk.accessible(s)
		if err != nil {
			return err
		}
		if !ok {
			return notFound
		}
		if m, err := v.Membership(userID, roomID); err != nil {
			return err
		} else if m != nil {
			out["membership"] = m.Membership
		}
	}
	apihttp.WriteJSON(w, http.StatusOK, out)
	return nil
}
