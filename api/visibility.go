package api

import (
	"encoding/json"
	"net/http"
	"sort"

	"github.com/engram-hs/engram/projections/rooms"
	"github.com/engram-hs/engram/stateres"
)

// visibility decides which events of one room one user may see (spec:
// "Room History Visibility", server behaviour), from the state at each
// event. It loads the room's history_visibility changes and the user's
// membership changes once, then answers each event in memory.
type visibility struct {
	v       rooms.View
	userID  string
	hv      []stateChange // history_visibility changes, oldest first
	members []stateChange // the user's membership changes, oldest first
	// ignored are the senders whose non-state events the reader does
	// not get (their m.ignored_user_list): set where events are served
	// to the reader's client (/sync, /messages, /context).
	ignored map[string]bool
	// erased are the users deactivated with erase: their non-state
	// events are hidden from readers who were not joined when they were
	// sent (Synapse's GDPR erasure: "messages sent by the user will still
	// be visible by anyone that was in the room when these messages were
	// sent, but hidden from users joining the room afterwards").
	erased map[string]bool
}

// erasedSet is the erased users as of an applied offset of the accounts
// projection: every visibility reads them, and they change only with a
// deactivation or a reactivation. Server.erased holds the newest one
// read; /sync builds read it without a lock.
type erasedSet struct {
	at    uint64
	users map[string]bool // nil when there are none
}

// erasedUsers is the set of users deactivated with erase (nil when there
// are none).
func (s *Server) erasedUsers() (map[string]bool, error) {
	at := s.accountsH.Applied()
	if c := s.erased.Load(); c != nil && c.at == at {
		return c.users, nil
	}
	users, err := s.accountsView().ErasedUsers()
	if err != nil {
		return nil, err
	}
	var set map[string]bool
	if len(users) > 0 {
		set = make(map[string]bool, len(users))
		for _, u := range users {
			set[u] = true
		}
	}
	s.erased.Store(&erasedSet{at: at, users: set})
	return set, nil
}

// ignoredUsers is the set of users in userID's m.ignored_user_list (spec:
// "Ignoring Users"); nil when there are none.
func (s *Server) ignoredUsers(userID string) (map[string]bool, error) {
	rec, err := s.userdataView().AccountData(userID, "", "m.ignored_user_list")
	if err != nil || rec == nil {
		return nil, err
	}
	var c struct {
		IgnoredUsers map[string]json.RawMessage `json:"ignored_users"`
	}
	if json.Unmarshal(rec.Content, &c) != nil || len(c.IgnoredUsers) == 0 {
		return nil, nil
	}
	out := make(map[string]bool, len(c.IgnoredUsers))
	for u := range c.IgnoredUsers {
		out[u] = true
	}
	return out, nil
}

// ignoring makes vis hide the non-state events of the reader's ignored
// users.
func (s *Server) ignoring(vis *visibility) error {
	ignored, err := s.ignoredUsers(vis.userID)
	vis.ignored = ignored
	return err
}

type stateChange struct {
	offset  uint64
	eventID string
	value   string
}

func (s *Server) newVisibility(v rooms.View, roomID, userID string) (*visibility, error) {
	vis := &visibility{v: v, userID: userID}
	var err error
	if vis.erased, err = s.erasedUsers(); err != nil {
		return nil, err
	}
	if vis.hv, err = stateChanges(v, roomID, stateres.MRoomHistoryVisibility, "", "history_visibility"); err != nil {
		return nil, err
	}
	if vis.members, err = stateChanges(v, roomID, stateres.MRoomMember, userID, "membership"); err != nil {
		return nil, err
	}
	return vis, nil
}

// stateChanges lists the changes of one state key of a room, oldest
// first, each with the value of one content field.
func stateChanges(v rooms.View, roomID, typ, stateKey, field string) ([]stateChange, error) {
	hist, err := v.StateHistory(roomID, typ, stateKey, 0)
	if err != nil {
		return nil, err
	}
	out := make([]stateChange, 0, len(hist))
	for _, h := range hist {
		e, err := v.Event(h.EventID)
		if err != nil {
			return nil, err
		}
		val := ""
		if e != nil {
			var c map[string]any
			_ = json.Unmarshal(headOf(e).Content, &c)
			val, _ = c[field].(string)
		}
		out = append(out, stateChange{offset: h.Offset, eventID: h.EventID, value: val})
	}
	return out, nil
}

// before returns the value of the newest change with offset < off, or "".
func before(changes []stateChange, off uint64) string {
	i := sort.Search(len(changes), func(i int) bool { return changes[i].offset >= off })
	if i == 0 {
		return ""
	}
	return changes[i-1].value
}

// allowed applies the spec's five rules to one (visibility, membership)
// pair at an event at offset off.
func (vis *visibility) allowed(hv, membership string, off uint64) bool {
	switch hv {
	case "world_readable", "shared", "invited", "joined":
	default:
		hv = "shared" // absent or not understood
	}
	if hv == "world_readable" || membership == "join" {
		return true
	}
	if hv == "shared" {
		for _, m := range vis.members {
			if m.offset > off && m.value == "join" {
				return true
			}
		}
	}
	return hv == "invited" && membership == "invite"
}

// canSee reports whether the user may see the event.
func (vis *visibility) canSee(e *rooms.Event) bool {
	if vis == nil {
		return true
	}
	return vis.canSeeGiven(e, before(vis.hv, e.Offset), before(vis.members, e.Offset), e.Offset)
}

// canSeeGiven reports whether the user may see e, given the history
// visibility and the user's membership in the state before it; at is the
// log offset the visibility rules compare joins with.
func (vis *visibility) canSeeGiven(e *rooms.Event, hv, mem string, at uint64) bool {
	if len(vis.ignored) > 0 || len(vis.erased) > 0 {
		// State events of ignored and erased users are still sent (spec,
		// for ignored users), so that the room looks the same to everyone.
		if h := headOf(e); h.StateKey == nil && (vis.ignored[h.Sender] || (vis.erased[h.Sender] && mem != "join")) {
			return false
		}
	}
	if vis.allowed(hv, mem, at) {
		return true
	}
	h := headOf(e)
	if h.StateKey == nil {
		return false
	}
	// History visibility and the user's own membership events are visible
	// when the state before or after them allows it.
	var c map[string]any
	_ = json.Unmarshal(h.Content, &c)
	switch {
	case h.Type == stateres.MRoomHistoryVisibility && *h.StateKey == "":
		after, _ := c["history_visibility"].(string)
		return vis.allowed(after, mem, at)
	case h.Type == stateres.MRoomMember && *h.StateKey == vis.userID:
		after, _ := c["membership"].(string)
		// Their own leave is always theirs to see, whatever the
		// visibility: without it an invitee who rejects an invite (or
		// is kicked from a "joined" room) never sees the room go from
		// /sync (as Synapse does).
		return after == "leave" || vis.allowed(hv, after, at)
	}
	return false
}

// readAccess checks that the user may read the room's history at all and
// returns the highest offset they may read up to and the visibility of
// each event. Members (joined, invited, or once joined) may; so may anyone
// when the room is world_readable now. A user who left reads up to their
// leave.
func (s *Server) readAccess(roomID, userID string) (uint64, *visibility, error) {
	v := s.roomsView()
	m, err := v.Membership(userID, roomID)
	if err != nil {
		return 0, nil, err
	}
	if m, err = s.unlessForgotten(v, m, userID, roomID); err != nil {
		return 0, nil, err
	}
	upper := s.log.LastOffset()
	switch {
	case m != nil && (m.Membership == "join" || m.Membership == "invite"):
	case m != nil && (m.Membership == "leave" || m.Membership == "ban"):
		upper = m.Offset
	default:
		hv, err := v.StateEvent(roomID, stateres.MRoomHistoryVisibility, "")
		if err != nil {
			return 0, nil, err
		}
		var c struct {
			HistoryVisibility string `json:"history_visibility"`
		}
		if hv != nil {
			_ = json.Unmarshal(headOf(hv).Content, &c)
		}
		if c.HistoryVisibility != "world_readable" {
			return 0, nil, merr(http.StatusForbidden, "M_FORBIDDEN", "You are not a member of room %s and it is not world readable", roomID)
		}
	}
	vis, err := s.newVisibility(v, roomID, userID)
	if err != nil {
		return 0, nil, err
	}
	return upper, vis, nil
}

// unlessForgotten returns nil for the membership of a user who left the
// room and forgot it: they read it as someone who was never in it (spec:
// a forgotten room's history is no longer retrievable by the user).
func (s *Server) unlessForgotten(v rooms.View, m *rooms.Membership, userID, roomID string) (*rooms.Membership, error) {
	if m == nil || (m.Membership != "leave" && m.Membership != "ban") {
		return m, nil
	}
	forgotten, err := v.Forgotten(userID, roomID)
	if err != nil || forgotten {
		return nil, err
	}
	return m, nil
}

// visibleIn says whether e is an event of roomID that the reader whose
// access readAccess gave (upper, vis) may be shown: accepted into the
// room's timeline (not rejected, soft-failed or an outlier), within the
// reader's bound, and allowed by history visibility. /event and /context
// answer 404 otherwise, as for a missing event (spec: not found when the
// user may not see it).
func visibleIn(e *rooms.Event, roomID string, upper uint64, vis *visibility) bool {
	return e != nil && e.RoomID == roomID && e.Rejected == "" && !e.Outlier && !e.SoftFailed &&
		e.Offset <= upper && vis.canSee(e)
}
