package auth

import (
	"encoding/json"
	"fmt"

	"github.com/engram-hs/engram/stateres"
)

// CheckAuthEventsList applies the rules about an event's auth_events list
// ("Considering the event's auth_events"): no two entries for one (type,
// state_key); only entries the auth events selection algorithm picks
// (server-server API, "Auth events selection"; from v12 never the create
// event); no entry that was itself rejected; a create event among them
// before v12; all in the event's room.
//
// listed holds the events whose IDs ev.AuthEventIDs() lists, in any order;
// isRejected (nil: none) reports whether one of them was rejected. An ID
// that listed does not cover is not a rejection but missing data: the error
// is then a plain error asking the caller to fetch it.
//
// A create event has no auth events and is judged by its own rule alone, so
// the function accepts any list for it.
func CheckAuthEventsList(ev stateres.PDU, listed []stateres.PDU, isRejected func(eventID string) bool) error {
	v := ev.Version()
	if ev.Type() == stateres.MRoomCreate {
		return nil
	}
	byID := make(map[string]stateres.PDU, len(listed))
	for _, a := range listed {
		if a != nil {
			byID[a.EventID()] = a
		}
	}
	allowed := selection(ev)
	seenIDs := make(map[string]bool, len(ev.AuthEventIDs()))
	seenKeys := make(map[stateres.StateKeyTuple]bool, len(ev.AuthEventIDs()))
	hasCreate := false
	for _, id := range ev.AuthEventIDs() {
		if seenIDs[id] {
			return reject(v, "auth_events.duplicate", "auth_events lists "+id+" twice")
		}
		seenIDs[id] = true
		a, ok := byID[id]
		if !ok {
			return fmt.Errorf("auth event %s of %s is not available: fetch it (federation /event_auth or /event) before checking the event", id, ev.EventID())
		}
		if a.StateKey() == nil {
			return reject(v, "auth_events.selection", fmt.Sprintf("auth event %s (%s) is not a state event", id, a.Type()))
		}
		key := stateres.StateKeyTuple{Type: a.Type(), StateKey: *a.StateKey()}
		if seenKeys[key] {
			return reject(v, "auth_events.duplicate", fmt.Sprintf("auth_events has two entries for (%s, %q)", key.Type, key.StateKey))
		}
		seenKeys[key] = true
		if !allowed[key] {
			return reject(v, "auth_events.selection", fmt.Sprintf("auth event %s (%s, %q) is not one the auth events selection picks for this event", id, key.Type, key.StateKey))
		}
		if isRejected != nil && isRejected(id) {
			return reject(v, "auth_events.rejected", "auth event "+id+" was itself rejected")
		}
		if key.Type == stateres.MRoomCreate {
			hasCreate = true
		}
		if a.RoomID() != ev.RoomID() {
			return reject(v, "auth_events.room_id", fmt.Sprintf("auth event %s is in room %s, not %s", id, a.RoomID(), ev.RoomID()))
		}
	}
	if !v.RoomIDFromCreate && !hasCreate {
		return reject(v, "auth_events.no_create", "there is no m.room.create event among the auth events")
	}
	return nil
}

// CheckWithAuthEvents is step 4 of "Checks performed on receipt of a PDU":
// CheckAuthEventsList, then Check against the listed events. In v12 pass
// the room's create event (found from the room ID) as create; before v12
// create is ignored and may be nil, the create event being in the list.
func CheckWithAuthEvents(ev stateres.PDU, listed []stateres.PDU, create stateres.PDU, isRejected func(eventID string) bool) error {
	if err := CheckAuthEventsList(ev, listed, isRejected); err != nil {
		return err
	}
	set := listed
	if ev.Version().RoomIDFromCreate && create != nil {
		set = append(append(make([]stateres.PDU, 0, len(listed)+1), listed...), create)
	}
	return Check(ev, NewAuthEvents(ev.Version(), set))
}

// selection is the set of (type, state_key) the auth events selection
// algorithm may pick for ev.
func selection(ev stateres.PDU) map[stateres.StateKeyTuple]bool {
	v := ev.Version()
	out := map[stateres.StateKeyTuple]bool{
		{Type: stateres.MRoomPowerLevels}:                   true,
		{Type: stateres.MRoomMember, StateKey: ev.Sender()}: true,
	}
	if !v.RoomIDFromCreate {
		out[stateres.StateKeyTuple{Type: stateres.MRoomCreate}] = true
	}
	if ev.Type() != stateres.MRoomMember || ev.StateKey() == nil {
		return out
	}
	out[stateres.StateKeyTuple{Type: stateres.MRoomMember, StateKey: *ev.StateKey()}] = true
	var mc memberContent
	_ = json.Unmarshal(ev.Content(), &mc)
	membership, _ := jsonString(mc.Membership)
	switch membership {
	case membershipJoin, membershipInvite, membershipKnock:
		out[stateres.StateKeyTuple{Type: stateres.MRoomJoinRules}] = true
	}
	if membership == membershipInvite && mc.ThirdPartyInvite != nil {
		var tpi struct {
			Signed struct {
				Token json.RawMessage `json:"token"`
			} `json:"signed"`
		}
		if json.Unmarshal(mc.ThirdPartyInvite, &tpi) == nil {
			if token, ok := jsonString(tpi.Signed.Token); ok {
				out[stateres.StateKeyTuple{Type: stateres.MRoomThirdPartyInvite, StateKey: token}] = true
			}
		}
	}
	if membership == membershipJoin && v.RestrictedJoins {
		if via, ok := jsonString(mc.JoinAuthorisedVia); ok {
			out[stateres.StateKeyTuple{Type: stateres.MRoomMember, StateKey: via}] = true
		}
	}
	return out
}
