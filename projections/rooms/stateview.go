package rooms

import (
	"fmt"
	"slices"

	"github.com/engram-hs/engram/projections"
	"github.com/engram-hs/engram/stateres"
)

// State at an event, for federation (/state, /state_ids, /event_auth),
// soft-fail checks and /members?at=. See stategroups.go for how it is
// stored and statefold.go for how it is derived.

// StateIDsBefore is the state before the event (what its auth and its
// prev_events' resolution gave); ok is false when the projection holds
// no state for it (unknown, outlier or rejected).
func (v View) StateIDsBefore(eventID string) (state StateMap, ok bool, err error) {
	return v.stateIDsAt(eventID, false)
}

// StateIDsAfter is the state after the event: the state before it plus
// the event itself when it is a state event.
func (v View) StateIDsAfter(eventID string) (state StateMap, ok bool, err error) {
	return v.stateIDsAt(eventID, true)
}

func (v View) stateIDsAt(eventID string, after bool) (StateMap, bool, error) {
	rec, err := getEvent(v.r, eventID)
	if err != nil || rec == nil || rec.placeholder || !rec.hasState {
		return nil, false, err
	}
	g := rec.before
	if after {
		g = rec.after
	}
	m, err := newGroups(v.r).load(g)
	return m, err == nil, err
}

// CurrentStateIDs is the room's current state as a map (the resolution
// over its forward extremities); nil for an unknown room.
func (v View) CurrentStateIDs(roomID string) (StateMap, error) {
	room, err := v.Room(roomID)
	if err != nil || room == nil {
		return nil, err
	}
	g, err := parseGroupID(room.StateGroup)
	if err != nil {
		return nil, err
	}
	return newGroups(v.r).load(g)
}

// ForwardExtremities are the room's forward extremities, in the order
// the room's record keeps them.
func (v View) ForwardExtremities(roomID string) ([]string, error) {
	room, err := v.Room(roomID)
	if err != nil || room == nil {
		return nil, err
	}
	return room.Extremities, nil
}

// AuthChain lists the auth chain of the given events: every event
// reachable through auth_events, excluding the given events themselves
// unless one is in another's chain, sorted by event ID. An auth event the
// projection does not hold is an error naming it.
func (v View) AuthChain(eventIDs []string) ([]string, error) {
	seen := map[string]bool{}
	var queue []string
	push := func(ids []string) {
		for _, id := range ids {
			if !seen[id] {
				seen[id] = true
				queue = append(queue, id)
			}
		}
	}
	var out []string
	for _, id := range eventIDs {
		e, err := v.Event(id)
		if err != nil {
			return nil, err
		}
		if e == nil {
			return nil, fmt.Errorf("rooms: auth chain of unknown event %s", id)
		}
		p, err := e.PDU()
		if err != nil {
			return nil, err
		}
		push(p.AuthEventIDs())
	}
	for len(queue) > 0 {
		id := queue[0]
		queue = queue[1:]
		out = append(out, id)
		e, err := v.Event(id)
		if err != nil {
			return nil, err
		}
		if e == nil {
			return nil, fmt.Errorf("rooms: auth event %s is not stored", id)
		}
		p, err := e.PDU()
		if err != nil {
			return nil, err
		}
		push(p.AuthEventIDs())
	}
	slices.Sort(out)
	return out, nil
}

// StateStorage sums what the projection stores for state at every event:
// the number of state group records, snapshots among them, their entries
// and their bytes (keys and values).
type StateStorage struct {
	Groups, Snapshots, Entries int
	Bytes                      int64
}

// StateStorage walks every state group record.
func (v View) StateStorage() (StateStorage, error) {
	var s StateStorage
	lower := []byte{pGroup}
	it := v.r.Iter(lower, projections.PrefixEnd(lower))
	for ok := it.First(); ok; ok = it.Next() {
		var id groupID
		copy(id[:], it.Key()[1:])
		g, err := decodeGroup(id, it.Value())
		if err != nil {
			_ = it.Close()
			return s, err
		}
		s.Groups++
		if g.snapshot {
			s.Snapshots++
		}
		s.Entries += len(g.entries)
		s.Bytes += int64(len(it.Key()) + len(it.Value()))
	}
	return s, it.Close()
}

// SnapshotBytes is what a state would take stored whole, in the layout a
// snapshot record uses: what storing a full snapshot per event costs.
func SnapshotBytes(m StateMap) int {
	return 1 + 16 + len(encodeGroup(snapshotOf(m)))
}

// StateGroups names the state groups before and after an event (equal
// names: equal states), so callers can share work between events; ok is
// false when the event has no state.
func (v View) StateGroups(eventID string) (before, after string, ok bool, err error) {
	rec, err := getEvent(v.r, eventID)
	if err != nil || rec == nil || rec.placeholder || !rec.hasState {
		return "", "", false, err
	}
	return rec.before.String(), rec.after.String(), true, nil
}

// LookupIn adapts a state (from StateIDsBefore, CurrentStateIDs, ...) to
// stateres.StateLookup-style callers: the parsed state event, or nil.
func (v View) LookupIn(m StateMap) func(typ, stateKey string) stateres.PDU {
	return func(typ, stateKey string) stateres.PDU {
		id := m[stateres.StateKeyTuple{Type: typ, StateKey: stateKey}]
		if id == "" {
			return nil
		}
		e, err := v.Event(id)
		if err != nil || e == nil {
			return nil
		}
		p, err := e.PDU()
		if err != nil {
			return nil
		}
		return p
	}
}
