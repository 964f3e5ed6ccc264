package rooms

import (
	"cmp"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"slices"

	"github.com/engram-hs/engram/projections"
	"github.com/engram-hs/engram/stateres"
)

// State at every event. Each event the fold places in the room's DAG has
// a state before it and a state after it (server-server API, "Room
// State"); both are state groups. A group is either a snapshot (every
// (type, state_key) -> event ID of the state) or a delta: a parent group
// plus the entries that differ from it (an empty event ID removes the
// key, which state resolution can do). Storage then grows with the
// changes, not with room size times events: a message shares its
// predecessor's group, a state event adds one delta of one entry.
//
// Chains are bounded: a delta whose chain (deltas back to the nearest
// snapshot) would exceed snapshotInterval is written as a snapshot
// instead, so loading any group reads at most that many records plus one
// snapshot. The interval grows with the state's size, so a big room does
// not write a big snapshot often.
//
// A group's ID is a hash of its record, so the same content always gets
// the same ID whatever batch or rebuild wrote it: a group ID read from a
// cache can never name different content than the store holds.
type groupID [16]byte

// emptyGroup is the state before a room's create event; it has no record.
var emptyGroup groupID

const (
	pGroup      = 'S' // S groupID (16 bytes) -> state group record
	groupFormat = 1
	flagSnap    = 1
)

func (g groupID) String() string { return hex.EncodeToString(g[:]) }

func parseGroupID(s string) (groupID, error) {
	var g groupID
	if s == "" {
		return g, nil
	}
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != len(g) {
		return g, fmt.Errorf("rooms: corrupt state group ID %q; rebuild the projection with `engram rebuild --projection rooms`", s)
	}
	copy(g[:], b)
	return g, nil
}

// StateMap is a room state: (type, state_key) -> event ID.
type StateMap = map[stateres.StateKeyTuple]string

// stateEntry is one entry of a group record; EventID "" removes the key.
type stateEntry struct {
	Key     stateres.StateKeyTuple
	EventID string
}

func compareEntries(a, b stateEntry) int {
	return cmp.Or(cmp.Compare(a.Key.Type, b.Key.Type), cmp.Compare(a.Key.StateKey, b.Key.StateKey))
}

// groupRecord is a state group as stored.
type groupRecord struct {
	snapshot bool
	parent   groupID // deltas only
	chain    int     // deltas from the nearest snapshot; 0 for a snapshot
	size     int     // entries of the whole state
	entries  []stateEntry
}

// snapshotInterval is the longest delta chain allowed over a state of n
// entries: a snapshot costs n entries and a load walks the chain, so the
// interval grows with n (bytes per change stay near 16 entries).
func snapshotInterval(n int) int { return min(max(n/16, 50), 1000) }

func encodeGroup(g *groupRecord) []byte {
	n := 24 + len(g.entries)*8
	for _, e := range g.entries {
		n += len(e.Key.Type) + len(e.Key.StateKey) + len(e.EventID)
	}
	b := make([]byte, 0, n)
	var flags byte
	if g.snapshot {
		flags |= flagSnap
	}
	b = append(b, groupFormat, flags)
	if !g.snapshot {
		b = append(b, g.parent[:]...)
	}
	b = binary.AppendUvarint(b, uint64(g.chain))
	b = binary.AppendUvarint(b, uint64(g.size))
	b = binary.AppendUvarint(b, uint64(len(g.entries)))
	for _, e := range g.entries {
		b = appendString(appendString(appendString(b, e.Key.Type), e.Key.StateKey), e.EventID)
	}
	return b
}

func decodeGroup(id groupID, b []byte) (*groupRecord, error) {
	corrupt := func() error {
		return fmt.Errorf("rooms: corrupt state group %s; rebuild the projection with `engram rebuild --projection rooms`", id)
	}
	if len(b) < 2 || b[0] != groupFormat {
		return nil, corrupt()
	}
	g := &groupRecord{snapshot: b[1]&flagSnap != 0}
	b = b[2:]
	if !g.snapshot {
		if len(b) < len(g.parent) {
			return nil, corrupt()
		}
		copy(g.parent[:], b)
		b = b[len(g.parent):]
	}
	r := recordReader{b: b}
	g.chain, g.size = int(r.uvarint()), int(r.uvarint())
	n := r.uvarint()
	if r.err == nil && n > uint64(len(r.b)) {
		return nil, corrupt()
	}
	g.entries = make([]stateEntry, 0, n)
	for range n {
		g.entries = append(g.entries, stateEntry{Key: stateres.StateKeyTuple{Type: r.string(), StateKey: r.string()}, EventID: r.string()})
	}
	if r.err != nil || len(r.b) != 0 {
		return nil, corrupt()
	}
	return g, nil
}

func groupKey(id groupID) []byte { return append([]byte{pGroup}, id[:]...) }

// getGroup reads a group record; nil for the empty group.
func getGroup(r projections.Reader, id groupID) (*groupRecord, error) {
	if id == emptyGroup {
		return nil, nil
	}
	v, ok, err := r.Get(groupKey(id))
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("rooms: state group %s is missing; rebuild the projection with `engram rebuild --projection rooms`", id)
	}
	return decodeGroup(id, v)
}

// groups reads state groups, remembering the records it decoded (a fold
// batch keeps one; views make one per query).
type groups struct {
	r       projections.Reader
	records map[groupID]*groupRecord
}

func newGroups(r projections.Reader) *groups {
	return &groups{r: r, records: map[groupID]*groupRecord{}}
}

func (gs *groups) get(id groupID) (*groupRecord, error) {
	if id == emptyGroup {
		return nil, nil
	}
	if g, ok := gs.records[id]; ok {
		return g, nil
	}
	g, err := getGroup(gs.r, id)
	if err != nil {
		return nil, err
	}
	gs.records[id] = g
	return g, nil
}

// size is the number of entries of the group's state.
func (gs *groups) size(id groupID) (int, error) {
	g, err := gs.get(id)
	if err != nil || g == nil {
		return 0, err
	}
	return g.size, nil
}

// load materialises a group's whole state: its snapshot, then the deltas
// down the chain in order.
func (gs *groups) load(id groupID) (StateMap, error) {
	var chain []*groupRecord
	for id != emptyGroup {
		g, err := gs.get(id)
		if err != nil {
			return nil, err
		}
		chain = append(chain, g)
		if g.snapshot {
			break
		}
		if len(chain) > 1001 {
			return nil, fmt.Errorf("rooms: state group %s has a chain longer than any the fold writes; rebuild the projection with `engram rebuild --projection rooms`", id)
		}
		id = g.parent
	}
	size := 0
	if len(chain) > 0 {
		size = chain[0].size
	}
	m := make(StateMap, size)
	for i := len(chain) - 1; i >= 0; i-- {
		for _, e := range chain[i].entries {
			if e.EventID == "" {
				delete(m, e.Key)
			} else {
				m[e.Key] = e.EventID
			}
		}
	}
	return m, nil
}

// derive writes the group that is parent with delta applied (delta sorted
// by key, at most one entry per key) and whose state has newSize entries,
// and returns its ID. An empty delta is the parent itself. A chain that
// would grow past snapshotInterval becomes a snapshot.
func (gs *groups) derive(w projections.Writer, parent groupID, delta []stateEntry, newSize int) (groupID, error) {
	if len(delta) == 0 {
		return parent, nil
	}
	p, err := gs.get(parent)
	if err != nil {
		return groupID{}, err
	}
	g := &groupRecord{parent: parent, chain: 1, size: newSize, entries: delta}
	if p != nil {
		g.chain = p.chain + 1
	}
	if p == nil || g.chain > snapshotInterval(newSize) {
		full, err := gs.load(parent)
		if err != nil {
			return groupID{}, err
		}
		for _, e := range delta {
			if e.EventID == "" {
				delete(full, e.Key)
			} else {
				full[e.Key] = e.EventID
			}
		}
		g = snapshotOf(full)
	}
	return gs.put(w, g)
}

// snapshotOf is the snapshot record of a state.
func snapshotOf(m StateMap) *groupRecord {
	entries := make([]stateEntry, 0, len(m))
	for k, id := range m {
		entries = append(entries, stateEntry{Key: k, EventID: id})
	}
	slices.SortFunc(entries, compareEntries)
	return &groupRecord{snapshot: true, size: len(m), entries: entries}
}

// put writes a record under its content hash.
func (gs *groups) put(w projections.Writer, g *groupRecord) (groupID, error) {
	b := encodeGroup(g)
	sum := sha256.Sum256(b)
	var id groupID
	copy(id[:], sum[:])
	if _, ok := gs.records[id]; ok {
		return id, nil // written already in this batch (same content, same bytes)
	}
	gs.records[id] = g
	return id, w.Set(groupKey(id), b)
}

// diffStates lists the entries that turn state from into state to, sorted.
func diffStates(from, to StateMap) []stateEntry {
	var d []stateEntry
	for k, id := range to {
		if from[k] != id {
			d = append(d, stateEntry{Key: k, EventID: id})
		}
	}
	for k := range from {
		if _, ok := to[k]; !ok {
			d = append(d, stateEntry{Key: k})
		}
	}
	slices.SortFunc(d, compareEntries)
	return d
}
