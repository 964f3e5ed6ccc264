// Package fedqueue folds the outbound federation queue: the items
// (PDUs and EDUs) each destination has not acknowledged yet, and which
// destinations are down. Everything the sender needs after a restart or a
// leader change is here, derived from the log (KindFederationOutbound,
// KindFederationDelivered, KindFederationDestinationSet).
package fedqueue

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/projections"
)

// Name is the projection's name.
const Name = "fedqueue"

const (
	recItem = 'q' // dest, 0, offset(8) index(4) -> Item
	recDest = 'd' // dest -> Destination
)

// Item is one queued PDU or EDU.
type Item struct {
	// Offset of the PDU entry to send (0 for an inline EDU).
	Offset uint64             `json:"offset,omitempty"`
	EDU    *facts.OutboundEDU `json:"edu,omitempty"`
	// PDU is true when Offset names a PDU entry.
	PDU bool `json:"pdu,omitempty"`
}

// Destination is a destination's queue state.
type Destination struct {
	Pending int    `json:"pending"`
	Down    bool   `json:"down,omitempty"`
	Reason  string `json:"reason,omitempty"`
	// Dropped counts items dropped while the destination was down (see
	// MaxPendingWhileDown).
	Dropped int `json:"dropped,omitempty"`
	// Delivered counts acknowledged transactions; LastTxn is the latest.
	Delivered int    `json:"delivered,omitempty"`
	LastTxn   string `json:"last_txn,omitempty"`
}

// Position is an item's place: the offset of the FederationOutbound entry
// and the item's index in it. Positions order the queue.
type Position struct {
	Offset uint64
	Index  uint32
}

// String is "<offset>.<index>", the form facts carry.
func (p Position) String() string {
	return strconv.FormatUint(p.Offset, 10) + "." + strconv.FormatUint(uint64(p.Index), 10)
}

// ParsePosition reads String's form.
func ParsePosition(s string) (Position, error) {
	a, b, ok := strings.Cut(s, ".")
	off, err1 := strconv.ParseUint(a, 10, 64)
	idx, err2 := strconv.ParseUint(b, 10, 32)
	if !ok || err1 != nil || err2 != nil {
		return Position{}, fmt.Errorf("fedqueue: bad position %q", s)
	}
	return Position{off, uint32(idx)}, nil
}

func itemKey(dest string, p Position) []byte {
	k := projections.Key(recItem, dest, "")
	k = binary.BigEndian.AppendUint64(k, p.Offset)
	return binary.BigEndian.AppendUint32(k, p.Index)
}

func itemPrefix(dest string) []byte { return projections.Key(recItem, dest, "") }

func destKey(dest string) []byte { return projections.Key(recDest, dest) }

// Projection is the fedqueue projection. Touched, when set, is called
// after each committed batch with the destinations that got new items or
// came back up (the sender wakes them).
type Projection struct {
	Touched func(dests []string)
}

// New returns the projection.
func New(touched func(dests []string)) *Projection { return &Projection{Touched: touched} }

func (*Projection) Name() string { return Name }
func (*Projection) Version() int { return 2 }

// MaxPendingWhileDown bounds what waits for a destination marked down:
// beyond it the oldest items are dropped (the server, once back, fetches
// what it misses with get_missing_events from the newest events we send),
// and typing and presence EDUs, which mean nothing later, are not queued
// at all. A dead server thus costs bounded space, not a queue that grows
// with every message.
const MaxPendingWhileDown = 1000

// ephemeralWhileDown: EDU types not worth keeping for a server that is
// down.
func ephemeralWhileDown(typ string) bool { return typ == "m.typing" || typ == "m.presence" }

// Apply folds the queue. Items naming an entry (Offset or Back) are PDUs;
// EDUs are carried inline.
func (p *Projection) Apply(w projections.Writer, entries []englog.Entry) error {
	dests := map[string]*Destination{}
	get := func(d string) (*Destination, error) {
		if st := dests[d]; st != nil {
			return st, nil
		}
		st, err := projections.GetJSON[Destination](w, destKey(d))
		if err != nil {
			return nil, err
		}
		if st == nil {
			st = &Destination{}
		}
		dests[d] = st
		return st, nil
	}
	for _, e := range entries {
		switch e.Kind {
		case englog.KindFederationOutbound:
			var f facts.FederationOutbound
			if err := facts.Decode(e, &f); err != nil {
				return err
			}
			for i, it := range f.Items {
				item := Item{EDU: it.EDU}
				switch {
				case it.Offset != 0:
					item.Offset = it.Offset
				case it.Back != 0 && it.Back < e.Offset:
					item.Offset = e.Offset - it.Back
				case it.EDU == nil:
					continue // names nothing
				}
				if item.Offset != 0 {
					item.EDU, item.PDU = nil, true
				}
				b, err := json.Marshal(item)
				if err != nil {
					return err
				}
				for _, d := range f.Destinations {
					if d == "" {
						continue
					}
					st, err := get(d)
					if err != nil {
						return err
					}
					if st.Down && item.EDU != nil && ephemeralWhileDown(item.EDU.Type) {
						continue
					}
					if err := w.Set(itemKey(d, Position{e.Offset, uint32(i)}), b); err != nil {
						return err
					}
					st.Pending++
					if st.Down && st.Pending > MaxPendingWhileDown {
						if err := dropOldest(w, d); err != nil {
							return err
						}
						st.Pending--
						st.Dropped++
					}
				}
			}
		case englog.KindFederationDelivered:
			var f facts.FederationDelivered
			if err := facts.Decode(e, &f); err != nil {
				return err
			}
			through, err := ParsePosition(f.Through)
			if err != nil {
				continue // recorded junk: nothing to fold
			}
			st, err := get(f.Destination)
			if err != nil {
				return err
			}
			lo, hi := itemPrefix(f.Destination), itemKey(f.Destination, Position{through.Offset, through.Index + 1})
			if through.Index == ^uint32(0) {
				hi = itemKey(f.Destination, Position{through.Offset + 1, 0})
			}
			it := w.Iter(lo, hi)
			n := 0
			for ok := it.First(); ok; ok = it.Next() {
				n++
			}
			if err := it.Close(); err != nil {
				return err
			}
			if n > 0 {
				if err := w.DeleteRange(lo, hi); err != nil {
					return err
				}
			}
			st.Pending = max(st.Pending-n, 0)
			st.Delivered++
			st.LastTxn = f.TxnID
		case englog.KindFederationDestinationSet:
			var f facts.FederationDestinationSet
			if err := facts.Decode(e, &f); err != nil {
				return err
			}
			st, err := get(f.Destination)
			if err != nil {
				return err
			}
			st.Down, st.Reason = f.Down, f.Reason
		}
	}
	for d, st := range dests {
		if err := projections.PutJSON(w, destKey(d), st); err != nil {
			return err
		}
	}
	return nil
}

func dropOldest(w projections.Writer, dest string) error {
	prefix := itemPrefix(dest)
	it := w.Iter(prefix, projections.PrefixEnd(prefix))
	var k []byte
	if it.First() {
		k = append([]byte(nil), it.Key()...)
	}
	if err := it.Close(); err != nil {
		return err
	}
	if k == nil {
		return nil
	}
	return w.Delete(k)
}

// AfterCommit wakes the sender for destinations that have new work.
func (p *Projection) AfterCommit(entries []englog.Entry) {
	if p.Touched == nil {
		return
	}
	seen := map[string]bool{}
	var out []string
	add := func(d string) {
		if d != "" && !seen[d] {
			seen[d] = true
			out = append(out, d)
		}
	}
	for _, e := range entries {
		switch e.Kind {
		case englog.KindFederationOutbound:
			var f facts.FederationOutbound
			if facts.Decode(e, &f) == nil {
				for _, d := range f.Destinations {
					add(d)
				}
			}
		case englog.KindFederationDestinationSet:
			var f facts.FederationDestinationSet
			if facts.Decode(e, &f) == nil && !f.Down {
				add(f.Destination)
			}
		}
	}
	if len(out) > 0 {
		p.Touched(out)
	}
}

// View reads the projection.
type View struct{ r projections.Reader }

// NewView wraps a reader of the projection.
func NewView(r projections.Reader) View { return View{r} }

// Destination returns dest's state (zero when unknown).
func (v View) Destination(dest string) (Destination, error) {
	st, err := projections.GetJSON[Destination](v.r, destKey(dest))
	if err != nil || st == nil {
		return Destination{}, err
	}
	return *st, nil
}

// Destinations lists every destination with its state.
func (v View) Destinations() (map[string]Destination, error) {
	prefix := []byte{recDest}
	it := v.r.Iter(prefix, projections.PrefixEnd(prefix))
	out := map[string]Destination{}
	for ok := it.First(); ok; ok = it.Next() {
		var st Destination
		if err := json.Unmarshal(it.Value(), &st); err != nil {
			it.Close()
			return nil, err
		}
		out[string(it.Key()[1:])] = st
	}
	return out, it.Close()
}

// Queued is an item with its position.
type Queued struct {
	Position Position
	Item     Item
}

// Pending returns dest's first items in queue order, stopping before the
// item that would exceed maxPDUs or maxEDUs (order is kept: a
// transaction never skips an item).
func (v View) Pending(dest string, maxPDUs, maxEDUs int) ([]Queued, error) {
	prefix := itemPrefix(dest)
	it := v.r.Iter(prefix, projections.PrefixEnd(prefix))
	var out []Queued
	pdus, edus := 0, 0
	for ok := it.First(); ok; ok = it.Next() {
		k := it.Key()[len(prefix):]
		if len(k) != 12 {
			continue
		}
		var item Item
		if err := json.Unmarshal(it.Value(), &item); err != nil {
			it.Close()
			return nil, err
		}
		if item.PDU {
			if pdus == maxPDUs {
				break
			}
			pdus++
		} else {
			if edus == maxEDUs {
				break
			}
			edus++
		}
		out = append(out, Queued{Position{binary.BigEndian.Uint64(k), binary.BigEndian.Uint32(k[8:])}, item})
	}
	return out, it.Close()
}
