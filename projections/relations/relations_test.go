package relations_test

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"testing"

	"github.com/rs/zerolog"

	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/projections"
	"github.com/engram-hs/engram/projections/relations"
	"github.com/engram-hs/engram/stateres"
)

// TestHasChildrenFollowsChildren folds messages, relations of each kind
// and redactions (of a relation, of a relation's parent, and one that
// arrives before its target) and checks that HasChildren, a point read
// of the children count, agrees with Children, a scan, for every event
// after each entry (folded live, one batch per entry) and after a rebuild
// (one batch for all).
func TestHasChildrenFollowsChildren(t *testing.T) {
	ctx := context.Background()
	version, _ := stateres.Version("10")
	key := ed25519.NewKeyFromSeed(make([]byte, ed25519.SeedSize))
	const room, other, alice = "!r:a.test", "!other:a.test", "@alice:a.test"
	in := room // the room build puts events in
	ts := int64(1_700_000_000_000)
	var ids []string
	var prev []stateres.PDU
	build := func(typ, redacts string, content any) string {
		t.Helper()
		ts++
		raw, _ := json.Marshal(content)
		ev, err := stateres.BuildEvent(version, &stateres.ProtoEvent{Type: typ, Sender: alice, RoomID: in, Content: raw, Redacts: redacts, OriginServerTS: ts}, nil, prev, "a.test", "ed25519:1", key)
		if err != nil {
			t.Fatal(err)
		}
		prev = []stateres.PDU{ev}
		ids = append(ids, ev.EventID())
		return ev.EventID()
	}
	rel := func(relType, parent string) map[string]any {
		return map[string]any{"body": "x", "m.relates_to": map[string]any{"rel_type": relType, "event_id": parent, "key": "👍"}}
	}
	msg := map[string]any{"msgtype": "m.text", "body": "hi"}

	dir := t.TempDir()
	l, err := englog.Open(englog.Config{Dir: dir, Logger: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	eng := projections.NewEngine(l, l.DB(), zerolog.Nop(), nil)
	defer func() { _ = eng.Close() }()
	h := eng.Register(relations.New())
	if err := eng.Start(ctx); err != nil {
		t.Fatal(err)
	}
	check := func(when string, want map[string]bool) {
		t.Helper()
		v := relations.NewView(h.Reader())
		for _, id := range ids {
			has, err := v.HasChildren(room, id)
			if err != nil {
				t.Fatal(err)
			}
			cs, err := v.Children(room, id, "")
			if err != nil {
				t.Fatal(err)
			}
			if has != (len(cs) > 0) {
				t.Errorf("%s: HasChildren(%s) = %v with %d children", when, id, has, len(cs))
			}
			if w, ok := want[id]; ok && w != has {
				t.Errorf("%s: HasChildren(%s) = %v, want %v", when, id, has, w)
			}
		}
	}
	// Events are appended (and folded) one at a time, checking each step.
	step := func(when string, id string, want map[string]bool) {
		t.Helper()
		ev := prev[0]
		p, err := facts.Encode(englog.KindPDU, facts.PDU{RoomVersion: version.ID, Event: ev.JSON(), EventID: id})
		if err != nil {
			t.Fatal(err)
		}
		offs, err := l.Append(ctx, p)
		if err != nil {
			t.Fatal(err)
		}
		if err := h.WaitApplied(ctx, offs[0]); err != nil {
			t.Fatal(err)
		}
		check(when, want)
	}
	p1 := build("m.room.message", "", msg)
	step("message", p1, map[string]bool{p1: false})
	p2 := build("m.room.message", "", msg)
	step("second message", p2, map[string]bool{p2: false})
	r1 := build("m.reaction", "", rel("m.annotation", p1))
	step("reaction", r1, map[string]bool{p1: true, r1: false})
	e1 := build("m.room.message", "", rel("m.replace", p1))
	step("edit", e1, map[string]bool{p1: true})
	t1 := build("m.room.message", "", rel("m.thread", p2))
	step("thread reply", t1, map[string]bool{p2: true})
	step("reaction redacted", build("m.room.redaction", r1, map[string]any{}), map[string]bool{p1: true})
	step("edit redacted", build("m.room.redaction", e1, map[string]any{}), map[string]bool{p1: false})
	step("thread root redacted", build("m.room.redaction", p2, map[string]any{}), map[string]bool{p2: true})
	step("thread reply redacted", build("m.room.redaction", t1, map[string]any{}), map[string]bool{p2: false})
	// Children sent in another room do not count for a parent of this
	// one, nor make it a thread root here.
	in = other
	step("reaction from another room", build("m.reaction", "", rel("m.annotation", p1)), map[string]bool{p1: false})
	step("thread reply from another room", build("m.room.message", "", rel("m.thread", p1)), map[string]bool{p1: false})
	in = room
	v := relations.NewView(h.Reader())
	if th, err := v.Thread(room, p1); err != nil || th != nil {
		t.Fatalf("a reply from another room made a thread in this one: %+v, %v", th, err)
	}
	if ths, err := v.Threads(room, 0, 10, nil); err != nil || len(ths) != 0 {
		t.Fatalf("threads of the room after a reply from another room: %+v, %v", ths, err)
	}
	if has, err := v.HasChildren(other, p1); err != nil || !has {
		t.Fatalf("the other room's children of its own parent reference: %v, %v", has, err)
	}
	// A relation whose redaction came first never counts.
	ts++
	raw, _ := json.Marshal(rel("m.reference", p1))
	late, err := stateres.BuildEvent(version, &stateres.ProtoEvent{Type: "m.room.message", Sender: alice, RoomID: room, Content: raw, OriginServerTS: ts}, nil, prev, "a.test", "ed25519:1", key)
	if err != nil {
		t.Fatal(err)
	}
	step("redaction before its target", build("m.room.redaction", late.EventID(), map[string]any{}), map[string]bool{p1: false})
	prev = []stateres.PDU{late}
	ids = append(ids, late.EventID())
	step("redacted reference", late.EventID(), map[string]bool{p1: false})
	again := build("m.room.message", "", rel("m.reference", p1))
	step("reference after the count went to zero", again, map[string]bool{p1: true})
	// The same again from a rebuild, which folds many entries per batch.
	if err := eng.Close(); err != nil {
		t.Fatal(err)
	}
	eng = projections.NewEngine(l, l.DB(), zerolog.Nop(), nil)
	h = eng.Register(relations.New())
	if err := eng.Rebuild(ctx, relations.New().Name()); err != nil {
		t.Fatal(err)
	}
	check("rebuild", map[string]bool{p1: true, p2: false, r1: false})
}
