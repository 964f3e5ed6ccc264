package rooms

import (
	"bytes"
	"errors"
	"slices"

	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/projections"
	"github.com/engram-hs/engram/stateres"
	"github.com/engram-hs/engram/stateres/resolve"
)

// How the fold derives state (server-server API, "Room State" and the
// room versions' state resolution):
//
//   - the state before a create event is empty;
//   - the state before any other event is the state after its
//     prev_events, resolved with the room version's algorithm when they
//     differ; prev_events the projection does not hold (or holds only as
//     outliers or rejected events) do not count, and when none counts the
//     receiver recorded the state in the entry (facts.PDU.StateBefore), or
//     else the room's current state is used;
//   - the state after a state event adds it; after anything else it is the
//     state before;
//   - the room's current state is the resolution of the states after its
//     forward extremities.
//
// Rejected events and outliers get no state and never enter any; soft-failed
// events have a state (a later event may cite them) but are not forward
// extremities, so they never enter current state.

// errNoLog: the projection was built without the log its events live in.
var errNoLog = errors.New("rooms: resolving state needs the events' JSON, but the projection was created without the log (pass it to rooms.New); this is a wiring bug")

// stateOf derives the state groups before and after ev, and the event
// that held ev's (type, state_key) in the state before it ("" when none).
func (b *batch) stateOf(room *Room, ev stateres.PDU, f facts.PDU) (before, after groupID, replaces string, err error) {
	cur, err := parseGroupID(room.StateGroup)
	if err != nil {
		return before, after, "", err
	}
	switch {
	case ev.Type() == stateres.MRoomCreate && ev.StateKey() != nil && *ev.StateKey() == "":
		before = emptyGroup
	case f.StateBefore != nil:
		before, err = b.recordedState(cur, f.StateBefore)
	default:
		before, err = b.stateFromPrevs(room, cur, ev)
	}
	if err != nil || ev.StateKey() == nil {
		return before, before, "", err
	}
	key := stateres.StateKeyTuple{Type: ev.Type(), StateKey: *ev.StateKey()}
	if before == cur {
		// The common case: an event on top of the room's current state,
		// whose entry is one point read away.
		v, ok, err := b.w.Get(projections.Key(pState, ev.RoomID(), key.Type, key.StateKey))
		if err != nil {
			return before, after, "", err
		}
		if ok {
			replaces = string(v)
		}
	} else {
		m, err := b.loadState(before)
		if err != nil {
			return before, after, "", err
		}
		replaces = m[key]
	}
	size, err := b.groups.size(before)
	if err != nil {
		return before, after, "", err
	}
	if replaces == "" {
		size++
	}
	after, err = b.groups.derive(b.w, before, []stateEntry{{Key: key, EventID: ev.EventID()}}, size)
	return before, after, replaces, err
}

// recordedState stores the state the receiver recorded, as a delta over
// the room's current state when there is one.
func (b *batch) recordedState(cur groupID, triples [][3]string) (groupID, error) {
	m := make(StateMap, len(triples))
	for _, t := range triples {
		m[stateres.StateKeyTuple{Type: t[0], StateKey: t[1]}] = t[2]
	}
	base, err := b.loadState(cur)
	if err != nil {
		return groupID{}, err
	}
	g, err := b.groups.derive(b.w, cur, diffStates(base, m), len(m))
	if err == nil {
		b.keepState(g, m)
	}
	return g, err
}

// stateFromPrevs is the state after ev's prev_events: one group when they
// share it, else their resolution.
func (b *batch) stateFromPrevs(room *Room, cur groupID, ev stateres.PDU) (groupID, error) {
	var gids []groupID
	for _, p := range ev.PrevEventIDs() {
		g, ok, err := b.stateAfter(room, p)
		if err != nil {
			return groupID{}, err
		}
		if ok && !slices.Contains(gids, g) {
			gids = append(gids, g)
		}
	}
	switch len(gids) {
	case 0:
		return cur, nil
	case 1:
		return gids[0], nil
	}
	return b.resolveGroups(ev.Version(), gids)
}

// stateAfter is the state group after a stored event; ok is false when
// the event has none (unknown, outlier or rejected).
func (b *batch) stateAfter(room *Room, eventID string) (groupID, bool, error) {
	// A prev event is almost always a forward extremity, whose group the
	// room's record keeps: no read of the event's record.
	if i := slices.Index(room.Extremities, eventID); i >= 0 && i < len(room.ExtremityGroups) {
		g, err := parseGroupID(room.ExtremityGroups[i])
		return g, err == nil, err
	}
	rec, err := getEvent(b.w, eventID)
	if err != nil || rec == nil || rec.placeholder || !rec.hasState || rec.RoomID != room.RoomID {
		return groupID{}, false, err
	}
	return rec.after, true, nil
}

// loadState materialises a group, once per batch. The map is shared:
// callers must not change it.
func (b *batch) loadState(g groupID) (StateMap, error) {
	if m, ok := b.states[g]; ok {
		return m, nil
	}
	m, err := b.groups.load(g)
	if err == nil {
		b.keepState(g, m)
	}
	return m, err
}

// keepState remembers a materialised state for the rest of the batch,
// within a bound: a long fork in a big room materialises a state per
// event.
func (b *batch) keepState(g groupID, m StateMap) {
	if b.stateEntries+len(m) > maxBatchStateEntries {
		clear(b.states)
		b.stateEntries = 0
	}
	b.states[g] = m
	b.stateEntries += len(m)
}

// maxBatchStateEntries bounds the states a batch keeps materialised
// (about 100 bytes each).
const maxBatchStateEntries = 1 << 20

// resolveGroups resolves the states of several groups with the room
// version's algorithm and stores the result as a delta over the closest
// of them. The result depends only on the groups (their order does not
// matter) and the events.
func (b *batch) resolveGroups(version *stateres.RoomVersion, gids []groupID) (groupID, error) {
	sorted := slices.Clone(gids)
	slices.SortFunc(sorted, func(x, y groupID) int { return bytes.Compare(x[:], y[:]) })
	var memo []byte
	for _, g := range sorted {
		memo = append(memo, g[:]...)
	}
	if g, ok := b.resolved[string(memo)]; ok {
		return g, nil
	}
	sets := make([]StateMap, len(sorted))
	for i, g := range sorted {
		m, err := b.loadState(g)
		if err != nil {
			return groupID{}, err
		}
		sets[i] = m
	}
	if b.log == nil {
		return groupID{}, errNoLog
	}
	lookup := &foldEvents{b: b, parsed: map[string]stateres.PDU{}}
	res, err := resolve.Resolve(version, sets, lookup)
	if lookup.err != nil {
		return groupID{}, lookup.err // reading the store or the log failed: retry the batch
	}
	if err != nil {
		// An event of an auth chain is not stored: the receiver records
		// auth chains before the events that need them, so this is a
		// log written without them. Keep the first state, which is a
		// function of the log as well.
		res = sets[0]
	}
	base, baseDelta := 0, []stateEntry(nil)
	for i, s := range sets {
		d := diffStates(s, res)
		if i == 0 || len(d) < len(baseDelta) {
			base, baseDelta = i, d
		}
	}
	g, err := b.groups.derive(b.w, sorted[base], baseDelta, len(res))
	if err != nil {
		return groupID{}, err
	}
	b.resolved[string(memo)] = g
	b.keepState(g, res)
	return g, nil
}

// advanceCurrent makes ev (folded into the DAG with state after) a forward
// extremity and returns the changes to the room's current state, which is
// the resolution of the states after the extremities.
func (b *batch) advanceCurrent(room *Room, ev stateres.PDU, before, after groupID) ([]stateEntry, error) {
	old, err := parseGroupID(room.StateGroup)
	if err != nil {
		return nil, err
	}
	prev := ev.PrevEventIDs()
	exts, groupsOf := room.Extremities[:0:0], room.ExtremityGroups[:0:0]
	for i, x := range room.Extremities {
		if !slices.Contains(prev, x) && x != ev.EventID() {
			exts = append(exts, x)
			if i < len(room.ExtremityGroups) {
				groupsOf = append(groupsOf, room.ExtremityGroups[i])
			} else {
				groupsOf = append(groupsOf, room.StateGroup)
			}
		}
	}
	room.Extremities = append(exts, ev.EventID())
	room.ExtremityGroups = append(groupsOf, after.String())

	var gids []groupID
	for _, s := range room.ExtremityGroups {
		g, err := parseGroupID(s)
		if err != nil {
			return nil, err
		}
		if !slices.Contains(gids, g) {
			gids = append(gids, g)
		}
	}
	cur := gids[0]
	if len(gids) > 1 {
		if cur, err = b.resolveGroups(ev.Version(), gids); err != nil {
			return nil, err
		}
	}
	if cur == old {
		return nil, nil
	}
	room.StateGroup = cur.String()
	if before == old && cur == after {
		// The event extends the current state: the change is the event.
		return []stateEntry{{Key: stateres.StateKeyTuple{Type: ev.Type(), StateKey: *ev.StateKey()}, EventID: ev.EventID()}}, nil
	}
	from, err := b.loadState(old)
	if err != nil {
		return nil, err
	}
	to, err := b.loadState(cur)
	if err != nil {
		return nil, err
	}
	return diffStates(from, to), nil
}

// dropExtremities folds an admin's removal of forward extremities. The
// room's current state stays; ChangedAt moves so that the write path's
// cache of the room's extremities reloads.
func (b *batch) dropExtremities(off uint64, f facts.ExtremitiesDropped) error {
	room, err := b.room(f.RoomID)
	if err != nil || room == nil {
		return err
	}
	var exts, groups []string
	for i, x := range room.Extremities {
		if slices.Contains(f.Drop, x) {
			continue
		}
		exts = append(exts, x)
		if i < len(room.ExtremityGroups) {
			groups = append(groups, room.ExtremityGroups[i])
		} else {
			groups = append(groups, room.StateGroup)
		}
	}
	if len(exts) == 0 || len(exts) == len(room.Extremities) {
		return nil // never none; nothing to drop
	}
	room.Extremities, room.ExtremityGroups = exts, groups
	b.dirtyRoom(f.RoomID)
	b.changed(f.RoomID, off)
	return nil
}

// foldEvents gives state resolution the stored events, read back from
// the log. A failed read is kept in err (and the event reported missing)
// so that the fold fails the batch instead of resolving differently.
type foldEvents struct {
	b      *batch
	parsed map[string]stateres.PDU
	err    error
}

func (l *foldEvents) Event(id string) (stateres.PDU, bool) {
	if p, ok := l.parsed[id]; ok {
		return p, p != nil
	}
	if f := l.b.folding; f != nil && f.EventID() == id {
		return f, true // its record is written once its state is known
	}
	p, err := l.b.eventPDU(id)
	if err != nil {
		l.err = err
		return nil, false
	}
	l.parsed[id] = p
	return p, p != nil
}

func (l *foldEvents) Rejected(id string) bool {
	rec, err := getEvent(l.b.w, id)
	if err != nil {
		l.err = err
		return false
	}
	return rec != nil && rec.Rejected != ""
}

// eventPDU reads a stored event back from the log (nil when not stored).
func (b *batch) eventPDU(id string) (stateres.PDU, error) {
	if b.log == nil {
		return nil, errNoLog
	}
	e, err := NewView(b.w, b.log).Event(id)
	if err != nil || e == nil {
		return nil, err
	}
	return e.PDU()
}

// storedEventAt reads a stored event with its record (offset) for the
// current-state changes state resolution makes.
func (b *batch) storedEventAt(id string) (*Event, stateres.PDU, error) {
	if b.log == nil {
		return nil, nil, errNoLog
	}
	e, err := NewView(b.w, b.log).Event(id)
	if err != nil || e == nil {
		return nil, nil, err
	}
	p, err := e.PDU()
	return e, p, err
}

// creatorIn is the sender of the create event a recorded state names
// ("" when it is not stored).
func (b *batch) creatorIn(state [][3]string) string {
	for _, t := range state {
		if t[0] == stateres.MRoomCreate && t[1] == "" {
			if p, err := b.eventPDU(t[2]); err == nil && p != nil {
				return p.Sender()
			}
		}
	}
	return ""
}
