package projections

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"testing"

	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/stateres"
)

// pduReader is a projection that records the event ReadPDU gave it at
// each offset.
type pduReader struct {
	name string
	mu   sync.Mutex
	got  map[uint64]*stateres.Event
}

func (p *pduReader) Name() string { return p.name }
func (p *pduReader) Version() int { return 1 }

func (p *pduReader) Apply(w Writer, entries []englog.Entry) error {
	for _, e := range entries {
		pdu, err := ReadPDU(w, e)
		if err != nil {
			return err
		}
		if pdu.Parsed == nil {
			return fmt.Errorf("offset %d: no event parsed: %v", e.Offset, pdu.ParseErr)
		}
		p.mu.Lock()
		p.got[e.Offset] = pdu.Parsed
		p.mu.Unlock()
	}
	return w.Set([]byte("n"), []byte{1}) // a write, so that batches commit
}

func (p *pduReader) reset() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.got = map[uint64]*stateres.Event{}
}

// TestFoldsShareTheirPDUDecoding: the folds of a batch get the very same
// parsed event for each PDU entry, live (through the tail cache) and in a
// rebuild, and it is the event the entry holds; a Reader that is not the
// engine's Writer gets it parsed afresh.
func TestFoldsShareTheirPDUDecoding(t *testing.T) {
	f := newFixture(t)
	const n = 450
	props := make([]englog.Proposal, n)
	for i := range props {
		ev := fmt.Sprintf(`{"auth_events":[],"content":{"body":"hello %d"},"depth":%d,"event_id":"$%d:x","hashes":{"sha256":"aaaa"},"origin":"x","origin_server_ts":1,"prev_events":[],"room_id":"!a:x","sender":"@a:x","signatures":{},"type":"m.room.message"}`, i, i+1, i)
		payload, err := json.Marshal(facts.PDU{RoomVersion: "1", Event: json.RawMessage(ev)})
		if err != nil {
			t.Fatal(err)
		}
		props[i] = englog.Proposal{Kind: englog.KindPDU, Payload: payload}
	}
	if _, err := f.log.Append(context.Background(), props...); err != nil {
		t.Fatal(err)
	}
	a, b := &pduReader{name: "a"}, &pduReader{name: "b"}
	var outside Reader // a Reader that is not a Writer of the engine's
	check := func(how string) {
		t.Helper()
		es, err := f.log.Read(1, n)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range es {
			ea, eb := a.got[e.Offset], b.got[e.Offset]
			if ea == nil || ea != eb {
				t.Fatalf("%s: offset %d: the folds got events %p and %p, want one shared", how, e.Offset, ea, eb)
			}
			fresh, err := ReadPDU(outside, e)
			if err != nil || fresh.Parsed == nil || fresh.Parsed == ea {
				t.Fatalf("%s: offset %d: a Reader outside the engine got %+v, %v", how, e.Offset, fresh, err)
			}
			if want := fmt.Sprintf("$%d:x", e.Offset-1); ea.EventID() != want || fresh.Parsed.EventID() != want {
				t.Fatalf("%s: offset %d: event %s (fresh %s), want %s", how, e.Offset, ea.EventID(), fresh.Parsed.EventID(), want)
			}
		}
	}

	a.reset()
	b.reset()
	live, hs := f.engine(t, a, b)
	outside = hs[0].Reader()
	if err := live.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, h := range hs {
		if err := h.WaitApplied(context.Background(), n); err != nil {
			t.Fatal(err)
		}
	}
	live.Close()
	check("live")

	a.reset()
	b.reset()
	e, _ := f.engine(t, a, b)
	if err := e.Rebuild(context.Background()); err != nil {
		t.Fatal(err)
	}
	check("rebuild")
}
