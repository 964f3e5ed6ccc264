package projections

import (
	"sync"

	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/stateres"
)

// A PDU is a PDU entry as the folds read it (ReadPDU): its fact, and its
// event parsed.
type PDU struct {
	facts.PDU
	// Version is the room version the fact names, nil when this build
	// does not know it. Parsed is the event (stateres.ParseTrustedEvent),
	// nil when Version is nil or when the event does not parse (ParseErr).
	Version  *stateres.RoomVersion
	Parsed   *stateres.Event
	ParseErr error
}

// ReadPDU decodes the PDU entry e (DecodePDU) and parses its event. w is
// the Writer Apply was given with e's batch: the folds applying one batch
// share the result. Four projections fold every PDU (rooms, relations,
// search, notifications), each on its own goroutine; decoding and parsing
// each entry once per projection was an eighth of a rebuild's CPU (1.9 of
// 15.5 s of samples, 100,000-entry replay), and four parses of every
// event sent. The result's slices and the parsed event are
// shared by those folds, and read-only, like the entry's payload.
//
// An error is a payload that is not a PDU fact; an event that does not
// parse is not an error here (each projection records or skips it).
func ReadPDU(w Reader, e englog.Entry) (PDU, error) {
	if bw, ok := w.(*batchWriter); ok {
		if s := bw.pdus.slot(e); s != nil {
			s.once.Do(func() { s.pdu, s.err = readPDU(e) })
			return s.pdu, s.err
		}
	}
	return readPDU(e)
}

func readPDU(e englog.Entry) (PDU, error) {
	f, err := DecodePDU(e)
	if err != nil {
		return PDU{}, err
	}
	p := PDU{PDU: f}
	if v, ok := stateres.Version(f.RoomVersion); ok {
		p.Version = v
		p.Parsed, p.ParseErr = stateres.ParseTrustedEvent(v, f.Event, f.EventID)
	}
	return p, nil
}

// pduMemo holds ReadPDU's results for a run of consecutive entries that
// several folds apply: a rebuild's batch (readResult), or the live folds'
// tail cache.
type pduMemo struct {
	first uint64     // the offset of slots[0]
	slots []*pduSlot // nil where there is none: ReadPDU decodes afresh
}

type pduSlot struct {
	payload []byte // the payload of the entry it is for
	once    sync.Once
	pdu     PDU
	err     error
}

func newPDUSlot(e englog.Entry) *pduSlot {
	if e.Kind != englog.KindPDU {
		return nil
	}
	return &pduSlot{payload: e.Payload}
}

// newPDUMemo has a slot for each PDU of entries (consecutive offsets).
func newPDUMemo(entries []englog.Entry) *pduMemo {
	if len(entries) == 0 {
		return nil
	}
	m := &pduMemo{first: entries[0].Offset, slots: make([]*pduSlot, len(entries))}
	for i, e := range entries {
		m.slots[i] = newPDUSlot(e)
	}
	return m
}

// slot is e's slot, or nil. A slot is for the very payload e carries, not
// only its offset: an entry read again from the log (after an erasure
// rewrote it, say) is another entry.
func (m *pduMemo) slot(e englog.Entry) *pduSlot {
	if m == nil || e.Offset < m.first || e.Offset-m.first >= uint64(len(m.slots)) {
		return nil
	}
	s := m.slots[e.Offset-m.first]
	if s == nil || !samePayload(s.payload, e.Payload) {
		return nil
	}
	return s
}

func samePayload(a, b []byte) bool {
	return len(a) == len(b) && (len(a) == 0 || &a[0] == &b[0])
}
