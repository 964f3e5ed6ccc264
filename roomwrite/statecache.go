package roomwrite

import (
	"container/list"
	"fmt"
	"sync"

	"github.com/engram-hs/engram/internal/mxerr"
	"github.com/engram-hs/engram/projections/rooms"
	"github.com/engram-hs/engram/stateres"
)

// maxPrevEvents bounds the forward extremities a new event references
// (stateres.MaxPrevEvents is what an event may carry at most).
const maxPrevEvents = 10

// Sizes of the room state cache: rooms kept, and parsed state events kept
// per room before its map starts over (a big room's members come and go).
const (
	roomStateCacheRooms  = 1024
	roomStateCacheEvents = 512
)

// roomState is what events of one room are built on: its version, forward
// extremities and the state events looked up so far (nil: known absent),
// all as of the rooms projection at changedAt. A failed read is never
// remembered as absent: it is returned, and marks the entry stale.
//
// Why it is safe to reuse under the room lock: the projection changes a
// room's current state, extremities or redactions only when it folds an
// event into the room's timeline, and every such fold moves the room's
// ChangedAt forward in the same Pebble batch. A send first compares
// ChangedAt with the cached one and starts over on any difference, so an
// event appended by any path (another server of the cluster, federation,
// createRoom/upgrade, a raw append) is seen by the next send. The cache
// follows a send of its own only when the timeline after changedAt holds
// exactly the events it appended (nothing interleaved), taking its new
// state events back from the projection.
type roomState struct {
	roomID    string
	changedAt uint64
	version   *stateres.RoomVersion
	ext       []string                // forward extremity IDs, projection order
	extPDU    map[string]stateres.PDU // the referenced extremities' events (nil: no record)
	state     map[stateres.StateKeyTuple]stateres.PDU
	view      rooms.View // the live view lookups read through
	stale     bool       // a lookup failed: do not keep this entry
	// servers are the other servers with a joined member (what outbound
	// federation routes an event to), once read (serversRead).
	servers     []string
	serversRead bool
}

// loadRoomState reads a room's version and extremities from the projection;
// state events are read on first use.
func loadRoomState(v rooms.View, roomID string) (*roomState, error) {
	// ChangedAt first: whatever is read after it is at least that new, so
	// a later change can only make the label look older than the data,
	// which the next comparison turns into a reload.
	changed, err := v.ChangedAt(roomID)
	if err != nil {
		return nil, fmt.Errorf("rooms projection: changed-at of %s: %w", roomID, err)
	}
	room, err := v.Room(roomID)
	if err != nil {
		return nil, fmt.Errorf("rooms projection: room record of %s: %w", roomID, err)
	}
	if room == nil {
		return nil, mxerr.NotFound("Unknown room %s", roomID)
	}
	version, ok := stateres.Version(room.Version)
	if !ok {
		return nil, mxerr.UnsupportedRoomVersion("Room version %s is not supported", room.Version)
	}
	rs := &roomState{roomID: roomID, changedAt: changed, version: version, ext: room.Extremities,
		extPDU: map[string]stateres.PDU{}, state: map[stateres.StateKeyTuple]stateres.PDU{}, view: v}
	for _, id := range rs.prevIDs() {
		rec, err := v.Event(id)
		if err != nil {
			return nil, fmt.Errorf("rooms projection: forward extremity %s of %s: %w", id, roomID, err)
		}
		if rec == nil {
			rs.extPDU[id] = nil
			continue
		}
		p, err := rec.PDU()
		if err != nil {
			return nil, fmt.Errorf("rooms projection: forward extremity %s of %s: %w", id, roomID, err)
		}
		rs.extPDU[id] = p
	}
	return rs, nil
}

// prevIDs are the extremities a new event references: the newest ones.
func (rs *roomState) prevIDs() []string {
	if len(rs.ext) > maxPrevEvents {
		return rs.ext[len(rs.ext)-maxPrevEvents:]
	}
	return rs.ext
}

func (rs *roomState) prevEvents() []stateres.PDU {
	var out []stateres.PDU
	for _, id := range rs.prevIDs() {
		if p := rs.extPDU[id]; p != nil {
			out = append(out, p)
		}
	}
	return out
}

// lookup returns the current state event (nil: the room has none), read
// through the projection on a miss. A failed read or decode is returned,
// naming the key, and marks rs stale so the entry is not kept.
func (rs *roomState) lookup(typ, stateKey string) (stateres.PDU, error) {
	k := stateres.StateKeyTuple{Type: typ, StateKey: stateKey}
	if p, ok := rs.state[k]; ok {
		return p, nil
	}
	var p stateres.PDU
	e, err := rs.view.StateEvent(rs.roomID, typ, stateKey)
	if err == nil && e != nil {
		var pe *stateres.Event
		if pe, err = e.PDU(); err == nil {
			p = pe
		}
	}
	if err != nil {
		rs.stale = true
		return nil, fmt.Errorf("rooms projection: state (%s, %q) of %s: %w", typ, stateKey, rs.roomID, err)
	}
	if len(rs.state) >= roomStateCacheEvents {
		clear(rs.state)
	}
	rs.state[k] = p
	return p, nil
}

// joinedServers are the servers other than self with a joined member in
// the room, read once per cached state: every send in a room of local
// users read its member keys again for outbound federation.
func (rs *roomState) joinedServers(self string) ([]string, error) {
	if !rs.serversRead {
		servers, err := rs.view.JoinedServers(rs.roomID, self)
		if err != nil {
			rs.stale = true
			return nil, fmt.Errorf("rooms projection: joined servers of %s: %w", rs.roomID, err)
		}
		rs.servers, rs.serversRead = servers, true
	}
	return rs.servers, nil
}

// stateCache keeps the roomState of recently written rooms (LRU). An
// entry is used and changed only by the holder of its room's lock.
type stateCache struct {
	mu      sync.Mutex
	entries map[string]*list.Element
	lru     list.List // of *roomState, most recent first
}

// get returns the room's state as of now: the cached one when the room
// has not changed since, else a fresh one. The caller holds the room lock.
func (c *stateCache) get(v rooms.View, roomID string) (*roomState, error) {
	changed, err := v.ChangedAt(roomID)
	if err != nil {
		c.drop(roomID)
		return nil, fmt.Errorf("rooms projection: changed-at of %s: %w", roomID, err)
	}
	c.mu.Lock()
	el := c.entries[roomID]
	if el != nil {
		c.lru.MoveToFront(el)
	}
	c.mu.Unlock()
	if el != nil {
		if rs := el.Value.(*roomState); rs.changedAt == changed && !rs.stale {
			rs.view = v
			return rs, nil
		}
	}
	rs, err := loadRoomState(v, roomID)
	if err != nil {
		c.drop(roomID)
		return nil, err
	}
	c.put(rs)
	return rs, nil
}

func (c *stateCache) put(rs *roomState) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.entries == nil {
		c.entries = map[string]*list.Element{}
	}
	if el := c.entries[rs.roomID]; el != nil {
		el.Value = rs
		c.lru.MoveToFront(el)
		return
	}
	c.entries[rs.roomID] = c.lru.PushFront(rs)
	for c.lru.Len() > roomStateCacheRooms {
		last := c.lru.Back()
		c.lru.Remove(last)
		delete(c.entries, last.Value.(*roomState).roomID)
	}
}

func (c *stateCache) drop(roomID string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el := c.entries[roomID]; el != nil {
		c.lru.Remove(el)
		delete(c.entries, roomID)
	}
}

// committed moves rs past the events this server built on it and appended
// at offs, once the projection has folded them; when anything else
// reached the room's timeline since rs was read, or a built event
// redacts, it drops the entry instead (the next send reloads).
func (c *stateCache) committed(rs *roomState, built []*stateres.Event, offs []uint64) {
	// With more extremities than an event references, the ones left out
	// were never read: simpler to reload than to track them.
	if rs.stale || len(built) == 0 || len(offs) < len(built) || len(rs.ext) > maxPrevEvents {
		c.drop(rs.roomID)
		return
	}
	tl, err := rs.view.Timeline(rs.roomID, rs.changedAt, true, len(built)+1, 0)
	if err != nil || len(tl) != len(built) {
		c.drop(rs.roomID)
		return
	}
	for i, ev := range built {
		// A redaction may rewrite a state event in place: reload instead.
		if tl[i].EventID != ev.EventID() || tl[i].Offset != offs[i] || ev.Type() == stateres.MRoomRedaction {
			c.drop(rs.roomID)
			return
		}
	}
	for _, ev := range built {
		rs.advance(ev)
		if ev.Type() == stateres.MRoomMember {
			rs.servers, rs.serversRead = nil, false
		}
		if sk := ev.StateKey(); sk != nil {
			// Take the state event back from the projection, as folded.
			delete(rs.state, stateres.StateKeyTuple{Type: ev.Type(), StateKey: *sk})
			if _, err := rs.lookup(ev.Type(), *sk); err != nil {
				c.drop(rs.roomID)
				return
			}
		}
	}
	rs.changedAt = offs[len(built)-1]
	if rs.stale {
		c.drop(rs.roomID)
	}
}

// advance replaces the extremities ev references with ev, as the
// projection does when it folds ev.
func (rs *roomState) advance(ev stateres.PDU) {
	refs := map[string]bool{}
	for _, p := range ev.PrevEventIDs() {
		refs[p] = true
	}
	ext := make([]string, 0, len(rs.ext)+1)
	for _, id := range rs.ext {
		if refs[id] {
			delete(rs.extPDU, id)
		} else {
			ext = append(ext, id)
		}
	}
	rs.ext = append(ext, ev.EventID())
	rs.extPDU[ev.EventID()] = ev
}
