package rooms_test

import (
	"context"
	"testing"

	"github.com/rs/zerolog"

	"github.com/engram-hs/engram/bench/generate"
	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/projections"
	"github.com/engram-hs/engram/projections/rooms"
	"github.com/engram-hs/engram/stateres"
)

// While the rooms projection is rebuilt after an erasure, its older
// generation still names the erased events: they read as gone, not as a
// projection that does not match its log, and the others read as before.
func TestErasedEventReadsAsGone(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	if _, err := generate.Run(ctx, dir, generate.Options{Seed: 3, Users: 10, Rooms: 2, Events: 200, Logger: zerolog.Nop()}); err != nil {
		t.Fatal(err)
	}
	node, err := englog.Open(englog.Config{Dir: dir, Logger: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close()
	engine := projections.NewEngine(node, node.DB(), zerolog.Nop(), nil)
	defer engine.Close()
	h := engine.Register(rooms.New(node, nil))
	// Folded offline: the engine does not follow the log, so the
	// erasure below is not folded and the generation stays as it was.
	if err := engine.Rebuild(ctx, "rooms"); err != nil {
		t.Fatal(err)
	}
	entries, err := node.Read(1, int(node.LastOffset()))
	if err != nil {
		t.Fatal(err)
	}
	var erased, kept *stateres.Event
	var erasedAt uint64
	for _, e := range entries {
		if e.Kind != englog.KindPDU {
			continue
		}
		ev := parsePDU(t, e)
		switch {
		case ev.Type() == "m.room.message" && erased == nil:
			erased, erasedAt = ev, e.Offset
		case ev.Type() == "m.room.message" && kept == nil:
			kept = ev
		}
	}
	if kept == nil {
		t.Fatal("the generated log has fewer than two messages")
	}
	if _, err := node.Append(ctx, englog.EraseProposal("test", "", []uint64{erasedAt})); err != nil {
		t.Fatal(err)
	}
	v := rooms.NewView(h.Reader(), node)
	if rec, err := v.Event(erased.EventID()); err != nil || rec != nil {
		t.Fatalf("the erased event reads as %v, %v; want nothing", rec, err)
	}
	if rec, err := v.Event(kept.EventID()); err != nil || rec == nil || string(rec.JSON) != string(kept.JSON()) {
		t.Fatalf("another event reads as %v, %v", rec, err)
	}
}
