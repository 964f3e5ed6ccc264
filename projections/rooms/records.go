package rooms

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/engram-hs/engram/log/facts"
)

// Event records are binary, not JSON: every PDU writes one, and encoding
// the event's JSON inside a JSON record made encoding/json re-validate and
// re-compact the whole event on every write and every read. The layout:
//
//	byte     record format (eventFormat)
//	byte     flags (flag*)
//	uvarint  offset
//	strings  event ID, room ID, room version, rejected, redacted by, replaces
//	strings  txn user, device, txn ID          (flagTxn only)
//	uvarint  n, then n pairs of strings        (pending redactions: redaction ID, its room)
//	16 bytes state group before the event      (flagHasState only)
//	16 bytes state group after the event       (flagHasState and flagStateChanges only)
//	bytes    the event JSON, to the end        (absent for a placeholder)
//
// where a string is a uvarint length followed by its bytes.
//
// A placeholder (flagPlaceholder) stands for an event not seen yet that
// redactions already target: it keeps them until the event arrives, in
// the key the event will use, so that the one read that checks an
// incoming event for duplicates also finds its pending redactions. Readers
// never see placeholders.
const eventFormat = 2

const (
	flagSoftFailed = 1 << iota
	flagOutlier
	flagTxn
	flagPlaceholder
	flagHasState     // the event is in the DAG: it has a state before and after it
	flagStateChanges // a state event: the state after it is another group
)

// pendingRedaction is a redaction seen before its target.
type pendingRedaction struct {
	redactionID, roomID string
}

// storedEvent is an event record as stored: the exported Event plus what
// only the fold needs.
type storedEvent struct {
	Event
	placeholder bool
	pending     []pendingRedaction
	// hasState: before and after are the state groups around the event
	// (stategroups.go); outliers and rejected events have none.
	hasState      bool
	before, after groupID
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func encodeEvent(e *storedEvent) []byte {
	n := 64 + len(e.EventID) + len(e.RoomID) + len(e.Version) + len(e.Rejected) + len(e.RedactedBy) + len(e.Replaces) + len(e.JSON)
	if e.Txn != nil {
		n += 3 + len(e.Txn.UserID) + len(e.Txn.DeviceID) + len(e.Txn.TxnID)
	}
	for _, p := range e.pending {
		n += 2 + len(p.redactionID) + len(p.roomID)
	}
	b := make([]byte, 0, n)
	var flags byte
	if e.SoftFailed {
		flags |= flagSoftFailed
	}
	if e.Outlier {
		flags |= flagOutlier
	}
	if e.Txn != nil {
		flags |= flagTxn
	}
	if e.placeholder {
		flags |= flagPlaceholder
	}
	if e.hasState {
		flags |= flagHasState
		if e.after != e.before {
			flags |= flagStateChanges
		}
	}
	b = append(b, eventFormat, flags)
	b = binary.AppendUvarint(b, e.Offset)
	for _, s := range [...]string{e.EventID, e.RoomID, e.Version, e.Rejected, e.RedactedBy, e.Replaces} {
		b = appendString(b, s)
	}
	if e.Txn != nil {
		b = appendString(appendString(appendString(b, e.Txn.UserID), e.Txn.DeviceID), e.Txn.TxnID)
	}
	b = binary.AppendUvarint(b, uint64(len(e.pending)))
	for _, p := range e.pending {
		b = appendString(appendString(b, p.redactionID), p.roomID)
	}
	if e.hasState {
		b = append(b, e.before[:]...)
		if e.after != e.before {
			b = append(b, e.after[:]...)
		}
	}
	return append(b, e.JSON...)
}

var errCorruptEvent = errors.New("corrupt event record")

// recordReader walks an encoded record; the first malformed field sets err
// and makes every later read return zero values.
type recordReader struct {
	b   []byte
	err error
}

func (r *recordReader) uvarint() uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.err = errCorruptEvent
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *recordReader) string() string {
	n := r.uvarint()
	if r.err != nil {
		return ""
	}
	if n > uint64(len(r.b)) {
		r.err = errCorruptEvent
		return ""
	}
	s := string(r.b[:n])
	r.b = r.b[n:]
	return s
}

func (r *recordReader) group(g *groupID) {
	if r.err != nil {
		return
	}
	if len(r.b) < len(g) {
		r.err = errCorruptEvent
		return
	}
	copy(g[:], r.b)
	r.b = r.b[len(g):]
}

// decodeEvent decodes a record. The JSON aliases b (Reader.Get returns a
// copy the caller owns).
func decodeEvent(key, b []byte) (*storedEvent, error) {
	if len(b) < 2 || b[0] != eventFormat {
		return nil, fmt.Errorf("rooms: corrupt event record %q: unknown format; rebuild the projection with `engram rebuild --projection rooms`", key)
	}
	flags := b[1]
	r := recordReader{b: b[2:]}
	e := &storedEvent{placeholder: flags&flagPlaceholder != 0}
	e.SoftFailed = flags&flagSoftFailed != 0
	e.Outlier = flags&flagOutlier != 0
	e.Offset = r.uvarint()
	e.EventID, e.RoomID, e.Version = r.string(), r.string(), r.string()
	e.Rejected, e.RedactedBy, e.Replaces = r.string(), r.string(), r.string()
	if flags&flagTxn != 0 {
		e.Txn = &facts.TxnRef{UserID: r.string(), DeviceID: r.string(), TxnID: r.string()}
	}
	if n := r.uvarint(); n > 0 && r.err == nil {
		if n > uint64(len(r.b)) {
			r.err = errCorruptEvent
		} else {
			e.pending = make([]pendingRedaction, 0, n)
			for range n {
				e.pending = append(e.pending, pendingRedaction{redactionID: r.string(), roomID: r.string()})
			}
		}
	}
	if r.err == nil && flags&flagHasState != 0 {
		e.hasState = true
		r.group(&e.before)
		e.after = e.before
		if flags&flagStateChanges != 0 {
			r.group(&e.after)
		}
	}
	if r.err != nil {
		return nil, fmt.Errorf("rooms: corrupt event record %q: %w; rebuild the projection with `engram rebuild --projection rooms`", key, r.err)
	}
	if len(r.b) > 0 {
		e.JSON = r.b
	}
	return e, nil
}
