// Package resolve implements Matrix state resolution: the original algorithm
// of room version 1, algorithm v2 of room versions 2 to 11, and v2.1
// (MSC4297) of room version 12. It is pure: events come from an EventLookup
// the caller fills beforehand, and the result depends only on the inputs.
//
// The algorithms follow the spec text (content/rooms/v1.md "State
// resolution", content/rooms/fragments/v2-state-res.md and content/rooms/v12.md
// "State resolution"); each step is a function named as the spec names it.
package resolve

import (
	"fmt"

	"github.com/engram-hs/engram/stateres"
)

// EventLookup gives state resolution the events it works on. Every event of
// every state set and every event of their auth chains must be available;
// state resolution fails with an error naming the first missing event.
type EventLookup interface {
	Event(id string) (stateres.PDU, bool)
}

// RejectionLookup is optionally implemented by an EventLookup that knows which
// events were rejected. State resolution v2 does not fall back on a rejected
// auth event during the iterative auth checks (spec: "Rejected auth events
// are deliberately excluded from use in the iterative auth checks"). Without
// it, no event counts as rejected.
type RejectionLookup interface {
	Rejected(id string) bool
}

// AuthCheck authorises ev against the auth events state resolution selected
// for it, and returns nil when the authorisation rules of ev's room version
// allow it. The stateres/auth package provides the one Resolve uses; tests
// pass another implementation of the rules to compare against.
type AuthCheck func(ev stateres.PDU, authEvents []stateres.PDU) error

// Resolve returns the resolution of the given state sets (maps from
// (event_type, state_key) to event ID) under the state resolution algorithm
// of the room version. events must hold every event of the state sets and of
// their auth chains.
func Resolve(version *stateres.RoomVersion, stateSets []map[stateres.StateKeyTuple]string, events EventLookup) (map[stateres.StateKeyTuple]string, error) {
	return ResolveWith(version, stateSets, events, defaultAuthCheck)
}

// ResolveWith is Resolve with an explicit authorisation check.
func ResolveWith(version *stateres.RoomVersion, stateSets []map[stateres.StateKeyTuple]string, events EventLookup, check AuthCheck) (map[stateres.StateKeyTuple]string, error) {
	return resolveTraced(version, stateSets, events, check, nil)
}

func resolveTraced(version *stateres.RoomVersion, stateSets []map[stateres.StateKeyTuple]string, events EventLookup, check AuthCheck, trace func(string, ...any)) (map[stateres.StateKeyTuple]string, error) {
	if version == nil {
		return nil, fmt.Errorf("resolve: no room version given; look the room's version up with stateres.Version before resolving")
	}
	if check == nil {
		return nil, fmt.Errorf("resolve: no authorisation check wired in; this is a build bug, the stateres/auth package must be linked")
	}
	// With fewer than two state sets there is nothing to resolve: every key
	// is unconflicted by definition.
	switch len(stateSets) {
	case 0:
		return map[stateres.StateKeyTuple]string{}, nil
	case 1:
		out := make(map[stateres.StateKeyTuple]string, len(stateSets[0]))
		for k, v := range stateSets[0] {
			out[k] = v
		}
		return out, nil
	}
	r, err := newResolver(version, stateSets, events, check)
	if err != nil {
		return nil, err
	}
	r.trace = trace
	var state stateMap
	switch version.StateRes {
	case stateres.StateResV1:
		state, err = r.resolveV1()
	case stateres.StateResV2:
		state, err = r.resolveV2(false)
	case stateres.StateResV21:
		state, err = r.resolveV2(true)
	default:
		return nil, fmt.Errorf("resolve: room version %s names unknown state resolution algorithm %d; add it to package resolve", version.ID, version.StateRes)
	}
	if err != nil {
		return nil, err
	}
	out := make(map[stateres.StateKeyTuple]string, len(state))
	for k, n := range state {
		out[k] = r.g.nodes[n].id
	}
	return out, nil
}
