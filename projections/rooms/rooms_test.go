package rooms_test

import (
	"bytes"
	"context"
	"testing"

	"github.com/rs/zerolog"

	"github.com/engram-hs/engram/bench/generate"
	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/projections"
	"github.com/engram-hs/engram/projections/rooms"
	"github.com/engram-hs/engram/stateres"
)

func parsePDU(t *testing.T, e englog.Entry) *stateres.Event {
	t.Helper()
	var f facts.PDU
	if err := facts.Decode(e, &f); err != nil {
		t.Fatal(err)
	}
	v, _ := stateres.Version(f.RoomVersion)
	ev, err := stateres.ParseEvent(v, f.Event)
	if err != nil {
		t.Fatal(err)
	}
	return ev
}

// TestFoldOfAReorderedLog copies a generated log into a new one with a
// redaction moved before its target (as federation may deliver them) and
// duplicates of a message and of the redaction appended at the end, then
// checks what the rooms projection answers against the events themselves:
// every PDU reads back from the log with its canonical JSON (redacted when
// a redaction applies), the early redaction applies when its target
// arrives, duplicates change nothing.
func TestFoldOfAReorderedLog(t *testing.T) {
	ctx := context.Background()
	src := t.TempDir()
	if _, err := generate.Run(ctx, src, generate.Options{Seed: 7, Users: 60, Rooms: 8, Events: 3000, Logger: zerolog.Nop()}); err != nil {
		t.Fatal(err)
	}
	in, err := englog.Open(englog.Config{Dir: src, Logger: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	entries, err := in.Read(1, int(in.LastOffset()))
	in.Close()
	if err != nil {
		t.Fatal(err)
	}

	// Find a redaction whose target is a message, and move the redaction
	// just before it.
	events := map[int]*stateres.Event{}
	index := map[string]int{}
	redIdx, targetIdx := -1, -1
	for i, e := range entries {
		if e.Kind != englog.KindPDU {
			continue
		}
		ev := parsePDU(t, e)
		events[i], index[ev.EventID()] = ev, i
		if ev.Type() == stateres.MRoomRedaction && redIdx < 0 {
			if ti, ok := index[ev.Redacts()]; ok && events[ti].Type() == "m.room.message" {
				redIdx, targetIdx = i, ti
			}
		}
	}
	if redIdx < 0 {
		t.Fatal("the generated log has no redaction of a message")
	}
	order := make([]int, 0, len(entries)+2)
	for i := range entries {
		switch i {
		case redIdx:
			continue
		case targetIdx:
			order = append(order, redIdx, targetIdx)
		default:
			order = append(order, i)
		}
	}
	order = append(order, targetIdx, redIdx) // duplicates

	dir := t.TempDir()
	node, err := englog.Open(englog.Config{Dir: dir, Logger: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close()
	offsetOf := map[int]uint64{} // first offset of each source entry
	for _, i := range order {
		offs, err := node.Append(ctx, englog.Proposal{Kind: entries[i].Kind, Payload: entries[i].Payload})
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := offsetOf[i]; !ok {
			offsetOf[i] = offs[0]
		}
	}
	engine := projections.NewEngine(node, node.DB(), zerolog.Nop(), nil)
	defer engine.Close()
	h := engine.Register(rooms.New(node, nil))
	if err := engine.Rebuild(ctx, "rooms"); err != nil {
		t.Fatal(err)
	}
	v := rooms.NewView(h.Reader(), node)

	redaction, target := events[redIdx], events[targetIdx]
	redacted := map[string]string{} // target -> redaction, first wins
	for i := range entries {
		if ev := events[i]; ev != nil && ev.Type() == stateres.MRoomRedaction {
			if _, done := redacted[ev.Redacts()]; !done {
				redacted[ev.Redacts()] = ev.EventID()
			}
		}
	}
	timelines := map[string]int{}
	for i, ev := range events {
		rec, err := v.Event(ev.EventID())
		if err != nil || rec == nil {
			t.Fatalf("event %s: %v, %v", ev.EventID(), rec, err)
		}
		if rec.Offset != offsetOf[i] || rec.RoomID != ev.RoomID() {
			t.Fatalf("event %s: offset %d room %s, want %d %s", ev.EventID(), rec.Offset, rec.RoomID, offsetOf[i], ev.RoomID())
		}
		want := ev.JSON()
		if rec.RedactedBy != redacted[ev.EventID()] {
			t.Fatalf("event %s redacted by %q, want %q", ev.EventID(), rec.RedactedBy, redacted[ev.EventID()])
		}
		if rec.RedactedBy != "" {
			if want, err = stateres.Redact(ev.Version(), want); err != nil {
				t.Fatal(err)
			}
		}
		if !bytes.Equal(rec.JSON, want) {
			t.Fatalf("event %s reads back as\n%s\nwant\n%s", ev.EventID(), rec.JSON, want)
		}
		if _, ok := timelines[ev.RoomID()]; !ok {
			tl, err := v.Timeline(ev.RoomID(), 0, true, 1<<20, 0)
			if err != nil {
				t.Fatal(err)
			}
			seen := map[string]bool{}
			for _, te := range tl {
				if seen[te.EventID] {
					t.Fatalf("room %s: %s twice in the timeline", ev.RoomID(), te.EventID)
				}
				seen[te.EventID] = true
			}
			timelines[ev.RoomID()] = len(tl)
		}
	}
	total := 0
	for _, n := range timelines {
		total += n
	}
	if total != len(events) {
		t.Fatalf("timelines hold %d events, the log %d distinct PDUs", total, len(events))
	}
	if rec, _ := v.Event(target.EventID()); rec.RedactedBy != redaction.EventID() {
		t.Fatalf("the early redaction did not apply to %s: %+v", target.EventID(), rec)
	}
}
