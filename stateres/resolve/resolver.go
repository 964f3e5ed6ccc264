package resolve

import (
	"strings"

	"github.com/engram-hs/engram/stateres"
)

// stateMap is a room state during resolution: state key tuple to event.
type stateMap map[stateres.StateKeyTuple]nodeID

func (s stateMap) clone() stateMap {
	c := make(stateMap, len(s))
	for k, v := range s {
		c[k] = v
	}
	return c
}

// resolver holds what one resolution shares between its steps.
type resolver struct {
	version *stateres.RoomVersion
	g       *graph
	check   AuthCheck
	sets    []stateMap
	// create is the room's m.room.create event, or -1. From room version 12
	// on, events no longer cite it in auth_events, so the iterative auth
	// checks (which start from an empty state in v2.1) take it from here.
	create nodeID
	// powerLevels caches parsed power levels by event: each power levels
	// event is parsed at most once per resolution.
	powerLevels map[nodeID]*powerLevels
	creators    map[nodeID][]string
	authBuf     []stateres.PDU
	// trace, when set by a test, receives a line per decision.
	trace func(format string, args ...any)
}

func (r *resolver) tracef(format string, args ...any) {
	if r.trace != nil {
		r.trace(format, args...)
	}
}

var (
	createKey      = stateres.StateKeyTuple{Type: stateres.MRoomCreate}
	powerLevelsKey = stateres.StateKeyTuple{Type: stateres.MRoomPowerLevels}
	joinRulesKey   = stateres.StateKeyTuple{Type: stateres.MRoomJoinRules}
)

func newResolver(version *stateres.RoomVersion, stateSets []map[stateres.StateKeyTuple]string, lookup EventLookup, check AuthCheck) (*resolver, error) {
	r := &resolver{
		version:     version,
		g:           newGraph(lookup),
		check:       check,
		sets:        make([]stateMap, len(stateSets)),
		create:      -1,
		powerLevels: make(map[nodeID]*powerLevels),
		creators:    make(map[nodeID][]string),
	}
	for i, set := range stateSets {
		m := make(stateMap, len(set))
		for k, id := range set {
			n, err := r.g.load(id)
			if err != nil {
				return nil, err
			}
			m[k] = n
		}
		r.sets[i] = m
	}
	r.create = r.findCreate()
	return r, nil
}

// findCreate locates the room's create event: in room version 12 by the
// room ID, which is derived from the create event's ID; before that, and as
// a fallback, from the state sets.
func (r *resolver) findCreate() nodeID {
	if r.version.RoomIDFromCreate {
		for _, set := range r.sets {
			for _, n := range set {
				roomID := r.g.nodes[n].pdu.RoomID()
				if strings.HasPrefix(roomID, "!") {
					if c, err := r.g.load("$" + roomID[1:]); err == nil && r.g.nodes[c].key == createKey {
						return c
					}
				}
				break
			}
			break
		}
	}
	for _, set := range r.sets {
		if c, ok := set[createKey]; ok {
			return c
		}
	}
	return -1
}

// authKeys lists the state an event needs to be authorised (server-server
// API, "Auth events selection"), appending to dst.
func (r *resolver) authKeys(dst []stateres.StateKeyTuple, n nodeID) []stateres.StateKeyTuple {
	nd := &r.g.nodes[n]
	if nd.key == createKey {
		return dst
	}
	dst = append(dst, createKey, powerLevelsKey, stateres.StateKeyTuple{Type: stateres.MRoomMember, StateKey: nd.sender})
	if nd.key.Type != stateres.MRoomMember || !nd.isState {
		return dst
	}
	dst = append(dst, stateres.StateKeyTuple{Type: stateres.MRoomMember, StateKey: nd.key.StateKey})
	m := r.g.memberOf(n)
	switch m.Membership {
	case "join", "invite", "knock":
		dst = append(dst, joinRulesKey)
	}
	if m.Membership == "invite" && m.ThirdPartyInvite != nil {
		dst = append(dst, stateres.StateKeyTuple{Type: stateres.MRoomThirdPartyInvite, StateKey: m.ThirdPartyInvite.Signed.Token})
	}
	if m.Membership == "join" && m.AuthorisedVia != "" && r.version.RestrictedJoins {
		dst = append(dst, stateres.StateKeyTuple{Type: stateres.MRoomMember, StateKey: m.AuthorisedVia})
	}
	return dst
}

// allowed runs the authorisation rules on n against the given state. When a
// key the rules need is missing from the state and fromAuthEvents is set,
// the matching event of n's own auth_events is used unless it was rejected
// (spec v2 "Iterative auth checks").
func (r *resolver) allowed(n nodeID, state stateMap, fromAuthEvents bool) bool {
	var keysBuf [8]stateres.StateKeyTuple
	keys := r.authKeys(keysBuf[:0], n)
	buf := r.authBuf[:0]
	for i, k := range keys {
		if dup(keys[:i], k) {
			continue
		}
		if s, ok := state[k]; ok {
			buf = append(buf, r.g.nodes[s].pdu)
			continue
		}
		if fromAuthEvents {
			if a := r.g.authEventOfType(n, k); a >= 0 && !r.g.isRejected(a) {
				if r.trace != nil {
					r.tracef("fallback %s: %v from auth_events", r.g.nodes[n].id, k)
				}
				buf = append(buf, r.g.nodes[a].pdu)
				continue
			}
		}
		if k == createKey && r.version.RoomIDFromCreate && r.create >= 0 {
			buf = append(buf, r.g.nodes[r.create].pdu)
		}
	}
	r.authBuf = buf
	err := r.check(r.g.nodes[n].pdu, buf)
	if r.trace != nil {
		ids := make([]string, len(buf))
		for i, a := range buf {
			ids[i] = a.EventID()
		}
		r.tracef("auth %s against %v: %v", r.g.nodes[n].id, ids, err)
	}
	return err == nil
}

func dup(keys []stateres.StateKeyTuple, k stateres.StateKeyTuple) bool {
	for _, o := range keys {
		if o == k {
			return true
		}
	}
	return false
}
