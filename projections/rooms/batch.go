package rooms

import (
	"encoding/binary"

	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/projections"
	"github.com/engram-hs/engram/stateres"
	"github.com/engram-hs/engram/stateres/canonicaljson"
)

// batch is what one Apply call remembers between entries: the records it
// read or changed that many entries of a batch touch (a room's record).
// Each is read from the store at most once per batch and written once, at
// the end. It lives only for one Apply, so the
// fold stays a function of the entries and the stored state; and reads
// that miss Pebble's block cache (a data block to decompress per level)
// are what a replay spends its time on.
type batch struct {
	w   projections.Writer
	log EventLog // where the events' JSON is, for state resolution

	groups       *groups              // state group records read or written
	states       map[groupID]StateMap // states materialised (shared, read-only)
	stateEntries int                  // entries held in states
	resolved     map[string]groupID   // sorted group IDs -> their resolution
	folding      stateres.PDU         // the event being folded (its record is not written yet)

	rooms      map[string]*Room // nil: the room is unknown
	dirtyRooms []string         // in the order they were first changed
	isDirty    map[string]bool

	lastChanged  map[string]uint64 // room -> newest timeline offset of this batch
	changedOrder []string

	// members are the users whose membership of some room the batch's
	// state changes set or removed, memberRooms those rooms and
	// stateRooms the rooms whose current state changed at all, in order
	// (state resolution may change keys other than the batch's events').
	members, memberRooms, stateRooms []string
	memberSeen                       map[string]bool
}

func newBatch(w projections.Writer, log EventLog) *batch {
	return &batch{w: w, log: log, groups: newGroups(w), states: map[groupID]StateMap{}, resolved: map[string]groupID{}, rooms: map[string]*Room{}, isDirty: map[string]bool{}, lastChanged: map[string]uint64{}, memberSeen: map[string]bool{}}
}

// changed notes that the room's timeline grew at offset off; flush
// writes the newest such offset once per room, for /sync to skip rooms
// that did not change since a token without reading them.
func (b *batch) changed(roomID string, off uint64) {
	if _, ok := b.lastChanged[roomID]; !ok {
		b.changedOrder = append(b.changedOrder, roomID)
	}
	b.lastChanged[roomID] = off
}

// room returns the room's record as of this point of the batch (nil when
// unknown).
func (b *batch) room(roomID string) (*Room, error) {
	if r, ok := b.rooms[roomID]; ok {
		return r, nil
	}
	r, err := projections.GetJSON[Room](b.w, projections.Key(pRoom, roomID))
	if err != nil {
		return nil, err
	}
	b.rooms[roomID] = r
	return r, nil
}

func (b *batch) dirtyRoom(roomID string) {
	if !b.isDirty[roomID] {
		b.isDirty[roomID] = true
		b.dirtyRooms = append(b.dirtyRooms, roomID)
	}
}

// flush writes what the batch kept in memory.
func (b *batch) flush() error {
	for _, id := range b.dirtyRooms {
		if err := projections.PutJSON(b.w, projections.Key(pRoom, id), b.rooms[id]); err != nil {
			return err
		}
	}
	for _, id := range b.changedOrder {
		if err := b.w.Set(projections.Key(pChanged, id), binary.BigEndian.AppendUint64(nil, b.lastChanged[id])); err != nil {
			return err
		}
	}
	return nil
}

// decodePDU reads a PDU fact (projections.DecodePDU).
func decodePDU(e englog.Entry) (facts.PDU, error) { return projections.DecodePDU(e) }

// contentString is the string value of key in a canonical JSON object, or
// "" when absent or not a string.
func contentString(obj []byte, key string) string {
	v := canonicaljson.Get(obj, key)
	if len(v) == 0 || v[0] != '"' {
		return ""
	}
	s, err := canonicaljson.Unquote(v)
	if err != nil {
		return ""
	}
	return s
}
