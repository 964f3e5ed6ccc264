package keys

import (
	"encoding/json"
	"maps"
	"slices"

	"github.com/engram-hs/engram/projections/rooms"
)

// maxMemberScan is how many timeline events of a room DeviceLists reads
// to find the members that joined or left since a token; beyond it, it
// reads the room's membership records instead.
const maxMemberScan = 200

// DeviceLists computes /sync's device_lists (and /keys/changes) for
// (since, upTo]: changed are the users sharing a joined room with user
// whose device list changed, and those who newly share one (they joined
// one of user's rooms, or user joined one of theirs); left are those who
// shared a room with user and share none any more. user is in changed
// when their own keys changed or they joined a room (their other devices
// then learn of the new room's members, as Synapse does). hint (may be
// nil) is what the caller knows already.
func (s *Service) DeviceLists(user string, since, upTo uint64, hint *ListsHint) (changed, left []string, err error) {
	rv := s.d.Rooms()
	var ms []rooms.Membership
	if hint != nil {
		ms = hint.Memberships
	} else if ms, err = rv.Memberships(user); err != nil {
		return nil, nil, err
	}
	var joined []string
	for _, m := range ms {
		if m.Membership == "join" {
			joined = append(joined, m.RoomID)
		}
	}
	slices.Sort(joined)
	ch, gone := map[string]bool{}, map[string]bool{}
	keyChanges, err := s.view().ChangedUsers(since, upTo)
	if err != nil {
		return nil, nil, err
	}
	for _, u := range keyChanges {
		if ok, err := rv.SharesJoinedRoom(user, u, joined); err != nil {
			return nil, nil, err
		} else if ok {
			ch[u] = true
		}
	}
	selfJoined := false // user joined a room: their own devices hear of it too
	for _, m := range ms {
		if m.Offset <= since {
			if m.Membership == "join" && (hint == nil || hint.MembersChanged(m.RoomID)) {
				if err := membersChangedSince(rv, m.RoomID, since, upTo, ch, gone); err != nil {
					return nil, nil, err
				}
			}
			continue
		}
		if m.Offset > upTo {
			continue
		}
		members, err := rv.MemberIDs(m.RoomID, "join")
		if err != nil {
			return nil, nil, err
		}
		selfJoined = selfJoined || m.Membership == "join"
		for _, u := range members {
			if m.Membership == "join" {
				ch[u] = true // we joined: everyone there is new to us
			} else if m.Membership == "leave" || m.Membership == "ban" {
				gone[u] = true
			}
		}
	}
	for _, u := range slices.Sorted(maps.Keys(gone)) {
		if u == user {
			continue
		}
		ok, err := rv.SharesJoinedRoom(user, u, joined)
		if err != nil {
			return nil, nil, err
		}
		if !ok {
			left = append(left, u)
			delete(ch, u)
		}
	}
	if !selfJoined && !slices.Contains(keyChanges, user) {
		delete(ch, user) // only our own key changes and joins concern us
	}
	changed = slices.Sorted(maps.Keys(ch))
	if changed == nil {
		changed = []string{}
	}
	if left == nil {
		left = []string{}
	}
	return changed, left, nil
}

// ListsHint is what /sync holds already when it asks for device lists,
// so that they cost what changed since its token rather than a read per
// joined room.
type ListsHint struct {
	// Memberships are the user's, as rooms.View.Memberships returns them.
	Memberships []rooms.Membership
	// MembersChanged reports whether a room's members may have changed
	// after the token; false means they did not, and the room is not read.
	MembersChanged func(roomID string) bool
}

// membersChangedSince adds to joinedNow the members that joined roomID in
// (since, upTo] and to leftNow those that left it.
func membersChangedSince(rv rooms.View, roomID string, since, upTo uint64, joinedNow, leftNow map[string]bool) error {
	at, err := rv.ChangedAt(roomID)
	if err != nil || at <= since {
		return err
	}
	tl, err := rv.Timeline(roomID, since, true, maxMemberScan+1, upTo)
	if err != nil {
		return err
	}
	var users []string
	if len(tl) > maxMemberScan {
		users, err = rv.MemberIDs(roomID, "join", "leave", "ban")
		if err != nil {
			return err
		}
	} else {
		for _, te := range tl {
			e, err := rv.Event(te.EventID)
			if err != nil {
				return err
			}
			if e == nil {
				continue
			}
			var h struct {
				Type     string  `json:"type"`
				StateKey *string `json:"state_key"`
			}
			if json.Unmarshal(e.JSON, &h) == nil && h.Type == "m.room.member" && h.StateKey != nil {
				users = append(users, *h.StateKey)
			}
		}
	}
	for _, u := range users {
		m, err := rv.Membership(u, roomID)
		if err != nil {
			return err
		}
		if m == nil || m.Offset <= since {
			continue
		}
		switch m.Membership {
		case "join":
			joinedNow[u] = true
		case "leave", "ban":
			leftNow[u] = true
		}
	}
	return nil
}

// SyncSection is the E2EE part of a /sync response for (since, pos]:
// device_lists (incremental syncs only), device_one_time_keys_count and
// device_unused_fallback_key_types. changed reports that device lists
// have news (the sync is not empty). hint (may be nil) is passed to
// DeviceLists.
func (s *Service) SyncSection(c Caller, since, pos uint64, hint *ListsHint) (section map[string]any, changed bool, err error) {
	v := s.view()
	counts, err := v.OneTimeKeyCounts(c.UserID, c.DeviceID)
	if err != nil {
		return nil, false, err
	}
	fallback, err := v.UnusedFallbackKeyTypes(c.UserID, c.DeviceID)
	if err != nil {
		return nil, false, err
	}
	lists := map[string]any{"changed": []string{}, "left": []string{}}
	if since > 0 {
		ch, left, err := s.DeviceLists(c.UserID, since, pos, hint)
		if err != nil {
			return nil, false, err
		}
		lists = map[string]any{"changed": ch, "left": left}
		changed = len(ch) > 0 || len(left) > 0
	}
	return map[string]any{
		"device_lists":                     lists,
		"device_one_time_keys_count":       counts,
		"device_unused_fallback_key_types": fallback,
	}, changed, nil
}
