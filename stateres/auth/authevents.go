package auth

import "github.com/engram-hs/engram/stateres"

// AuthEvents is the state an event is checked against: only the kinds of
// state the authorisation rules read. Every method returns nil when the
// state has no such event.
//
// Create must return the room's create event in every room version; in
// v12, where events no longer list it in auth_events, the caller finds it
// from the room ID and supplies it (see the package comment).
type AuthEvents interface {
	Create() stateres.PDU
	PowerLevels() stateres.PDU
	JoinRules() stateres.PDU
	Member(userID string) stateres.PDU
	ThirdPartyInvite(token string) stateres.PDU
}

// EventSet is an AuthEvents over a fixed slice of events, typically an
// event's auth_events (plus, in v12, the room's create event).
type EventSet struct {
	byKey map[stateres.StateKeyTuple]stateres.PDU
}

// NewAuthEvents indexes events by (type, state_key). Events that are not
// state events or do not affect authorisation are ignored; so are events of
// another room version than version, which cannot belong to the room. When
// two events share a key the later one wins: rejecting such a list is the
// job of CheckAuthEventsList.
func NewAuthEvents(version *stateres.RoomVersion, events []stateres.PDU) *EventSet {
	s := &EventSet{byKey: make(map[stateres.StateKeyTuple]stateres.PDU, len(events))}
	for _, ev := range events {
		if ev == nil || !affectsAuth(ev.Type()) || ev.StateKey() == nil {
			continue
		}
		if ev.Version() != nil && version != nil && ev.Version().ID != version.ID {
			continue
		}
		s.byKey[stateres.StateKeyTuple{Type: ev.Type(), StateKey: *ev.StateKey()}] = ev
	}
	return s
}

func (s *EventSet) get(typ, key string) stateres.PDU {
	return s.byKey[stateres.StateKeyTuple{Type: typ, StateKey: key}]
}

func (s *EventSet) Create() stateres.PDU      { return s.get(stateres.MRoomCreate, "") }
func (s *EventSet) PowerLevels() stateres.PDU { return s.get(stateres.MRoomPowerLevels, "") }
func (s *EventSet) JoinRules() stateres.PDU   { return s.get(stateres.MRoomJoinRules, "") }
func (s *EventSet) Member(userID string) stateres.PDU {
	return s.get(stateres.MRoomMember, userID)
}
func (s *EventSet) ThirdPartyInvite(token string) stateres.PDU {
	return s.get(stateres.MRoomThirdPartyInvite, token)
}

// StateFunc is an AuthEvents backed by a state lookup, for checks against
// a room's full state (the state before an event, the current state, the
// partial state of state resolution). It returns nil for absent state.
// A stateres.StateLookup's StateEvent method value fits.
type StateFunc func(eventType, stateKey string) stateres.PDU

func (f StateFunc) Create() stateres.PDU      { return f(stateres.MRoomCreate, "") }
func (f StateFunc) PowerLevels() stateres.PDU { return f(stateres.MRoomPowerLevels, "") }
func (f StateFunc) JoinRules() stateres.PDU   { return f(stateres.MRoomJoinRules, "") }
func (f StateFunc) Member(userID string) stateres.PDU {
	return f(stateres.MRoomMember, userID)
}
func (f StateFunc) ThirdPartyInvite(token string) stateres.PDU {
	return f(stateres.MRoomThirdPartyInvite, token)
}

// affectsAuth reports whether state of this type is read by the rules.
func affectsAuth(typ string) bool {
	switch typ {
	case stateres.MRoomCreate, stateres.MRoomPowerLevels, stateres.MRoomJoinRules,
		stateres.MRoomMember, stateres.MRoomThirdPartyInvite:
		return true
	}
	return false
}
