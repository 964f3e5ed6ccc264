// Package relations folds the relations between room events (spec:
// client-server-api, "Forming relationships between events"): which
// events relate to an event, by relation type, in timeline order; and the
// threads of each room ordered by their latest activity. A redacted
// relation is removed (spec: redacting a relation removes it from
// aggregations).
//
// What the fold cannot know alone (whether an edit is valid, whether the
// reader may see an event) is decided when reading, with the rooms
// projection at hand.
package relations

import (
	"encoding/binary"
	"encoding/json"

	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/projections"
	"github.com/engram-hs/engram/stateres"
	"github.com/engram-hs/engram/stateres/canonicaljson"
)

// Keyspace. Every record of a parent is keyed by the room of the child
// that relates to it: an event relates only to events of its own room
// (spec: "Forming relationships between events"), and a child sent in
// another room must not show in the parent's aggregations (a reaction, a
// reference or a thread reply injected from a room the parent's readers
// never see).
const (
	pChild   = 'c' // c roomID 0x00 parentID 0x00 relType 0x00 offset(BE) -> Child (JSON)
	pRel     = 'r' // r childID -> relation (JSON): how to find the child record again
	pPending = 'p' // p eventID -> roomID: a redaction seen before the event
	pThread  = 't' // t roomID 0x00 latest offset(BE) 0x00 rootID -> nil: threads by activity
	pRoot    = 'T' // T roomID 0x00 rootID -> Thread (JSON)
	// h roomID 0x00 parentID -> number of children (uint64 BE), absent
	// when none: HasChildren is a point read (bloom-filtered when absent,
	// the common case) where a scan of the c prefix costs an iterator per
	// event.
	pHas = 'h'
)

const sep = 0

// RelThread is the thread relation type.
const RelThread = "m.thread"

// Child is one event relating to another.
type Child struct {
	EventID string `json:"event_id"`
	Type    string `json:"type"`
	Sender  string `json:"sender"`
	RelType string `json:"rel_type"`
	Offset  uint64 `json:"offset"`
	// Key is an annotation's key (reactions).
	Key string `json:"key,omitempty"`
}

type relation struct {
	Parent  string `json:"parent"`
	RelType string `json:"rel_type"`
	Room    string `json:"room"`
	Offset  uint64 `json:"offset"`
}

// Thread is a thread root's summary.
type Thread struct {
	RoomID string `json:"room_id"`
	RootID string `json:"root_id"`
	// Latest is the offset and ID of the newest event in the thread.
	Latest   uint64 `json:"latest"`
	LatestID string `json:"latest_id"`
	Count    int    `json:"count"`
	// Senders of the thread's events, each once.
	Senders []string `json:"senders"`
}

// Projection is the relations index.
type Projection struct{}

// New returns the projection.
func New() *Projection { return &Projection{} }

func (*Projection) Name() string { return "relations" }

// Version 2: the h keys (children counts). Version 3: a parent's records
// are keyed by room, so children from other rooms do not count.
func (*Projection) Version() int { return 3 }

// Apply folds a batch.
func (p *Projection) Apply(w projections.Writer, entries []englog.Entry) error {
	for _, e := range entries {
		if e.Kind != englog.KindPDU {
			continue
		}
		pdu, err := projections.ReadPDU(w, e)
		if err != nil {
			return err
		}
		if pdu.Rejected != "" || pdu.SoftFailed || pdu.Outlier {
			continue
		}
		ev := pdu.Parsed
		if ev == nil {
			continue
		}
		if ev.Type() == stateres.MRoomRedaction && ev.Redacts() != "" {
			if err := redact(w, ev.Redacts(), ev.RoomID()); err != nil {
				return err
			}
			continue
		}
		if err := add(w, ev, e.Offset); err != nil {
			return err
		}
	}
	return nil
}

func childKey(room, parent, relType string, off uint64) []byte {
	k := projections.Key(pChild, room, parent, relType)
	k = append(k, sep)
	return binary.BigEndian.AppendUint64(k, off)
}

func threadKey(room string, latest uint64, root string) []byte {
	k := projections.Key(pThread, room)
	k = append(k, sep)
	k = binary.BigEndian.AppendUint64(k, latest)
	k = append(k, sep)
	return append(k, root...)
}

func add(w projections.Writer, ev stateres.PDU, off uint64) error {
	// Most events relate to nothing: look the member up in the canonical
	// content before decoding anything.
	raw := canonicaljson.Get(ev.Content(), "m.relates_to")
	if raw == nil {
		return nil
	}
	var rel *struct {
		RelType string `json:"rel_type"`
		EventID string `json:"event_id"`
		Key     string `json:"key"`
	}
	if json.Unmarshal(raw, &rel) != nil || rel == nil || rel.RelType == "" || rel.EventID == "" {
		return nil
	}
	if ev.StateKey() != nil && rel.RelType == RelThread {
		return nil // state events are not part of threads
	}
	id := ev.EventID()
	if _, ok, err := w.Get(projections.Key(pRel, id)); err != nil || ok {
		return err // a duplicate
	}
	pk := projections.Key(pPending, id)
	if room, ok, err := w.Get(pk); err != nil {
		return err
	} else if ok {
		if err := w.Delete(pk); err != nil {
			return err
		}
		if string(room) == ev.RoomID() {
			return nil // redacted before it arrived
		}
	}
	child := Child{EventID: id, Type: ev.Type(), Sender: ev.Sender(), RelType: rel.RelType, Offset: off}
	if rel.RelType == "m.annotation" {
		child.Key = rel.Key
	}
	if err := projections.PutJSON(w, childKey(ev.RoomID(), rel.EventID, rel.RelType, off), child); err != nil {
		return err
	}
	if err := projections.PutJSON(w, projections.Key(pRel, id), relation{Parent: rel.EventID, RelType: rel.RelType, Room: ev.RoomID(), Offset: off}); err != nil {
		return err
	}
	if err := countChildren(w, ev.RoomID(), rel.EventID, +1); err != nil {
		return err
	}
	if rel.RelType == RelThread {
		return updateThread(w, ev.RoomID(), rel.EventID)
	}
	return nil
}

// updateThread recomputes a root's summary from its children.
func updateThread(w projections.Writer, room, root string) error {
	rk := projections.Key(pRoot, room, root)
	old, err := projections.GetJSON[Thread](w, rk)
	if err != nil {
		return err
	}
	if old != nil {
		if err := w.Delete(threadKey(room, old.Latest, root)); err != nil {
			return err
		}
	}
	children, err := projections.ListJSON[Child](w, append(projections.Key(pChild, room, root, RelThread), sep), nil)
	if err != nil {
		return err
	}
	if len(children) == 0 {
		return w.Delete(rk)
	}
	t := Thread{RoomID: room, RootID: root, Count: len(children)}
	seen := map[string]bool{}
	for _, c := range children {
		t.Latest, t.LatestID = c.Offset, c.EventID
		if !seen[c.Sender] {
			seen[c.Sender] = true
			t.Senders = append(t.Senders, c.Sender)
		}
	}
	if err := projections.PutJSON(w, rk, t); err != nil {
		return err
	}
	return w.Set(threadKey(room, t.Latest, root), nil)
}

func redact(w projections.Writer, target, room string) error {
	rk := projections.Key(pRel, target)
	rel, err := projections.GetJSON[relation](w, rk)
	if err != nil {
		return err
	}
	if rel == nil {
		// Not a relation we know: either not one at all, or not seen yet.
		// A redaction of any event that arrives later applies then.
		return w.Set(projections.Key(pPending, target), []byte(room))
	}
	if rel.Room != room {
		return nil
	}
	if err := w.Delete(childKey(room, rel.Parent, rel.RelType, rel.Offset)); err != nil {
		return err
	}
	if err := w.Delete(rk); err != nil {
		return err
	}
	if err := countChildren(w, room, rel.Parent, -1); err != nil {
		return err
	}
	if rel.RelType == RelThread {
		return updateThread(w, room, rel.Parent)
	}
	return nil
}

// countChildren adds delta to the count of parent's children in room,
// deleting the key at zero so that "no children" is an absent key.
func countChildren(w projections.Writer, room, parent string, delta int) error {
	k := projections.Key(pHas, room, parent)
	raw, ok, err := w.Get(k)
	if err != nil {
		return err
	}
	var n uint64
	if ok && len(raw) == 8 {
		n = binary.BigEndian.Uint64(raw)
	}
	switch {
	case delta > 0:
		n += uint64(delta)
	case n > uint64(-delta):
		n -= uint64(-delta)
	default:
		return w.Delete(k)
	}
	return w.Set(k, binary.BigEndian.AppendUint64(nil, n))
}
