package projections

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/engram-hs/engram/internal/pebbletest"
	englog "github.com/engram-hs/engram/log"
	"github.com/rs/zerolog"
)

// TestDamageFoundByCompactionHeals damages a table block of a stopped
// server's projection, then has a compaction, not a read, meet it: the
// store's report (log.Node.OnTableDamage → Engine.CheckTable) starts the
// projection's rebuild by itself, before any request needed the damaged
// records, and the rebuilt projection matches a fresh replay of the log.
func TestDamageFoundByCompactionHeals(t *testing.T) {
	dir := t.TempDir()
	open := func() *englog.Node {
		node, err := englog.Open(englog.Config{Dir: dir, Logger: testLogger(t).Level(zerolog.ErrorLevel)})
		if err != nil {
			t.Fatal(err)
		}
		return node
	}
	node := open()
	e := NewEngine(node, node.DB(), testLogger(t), nil)
	h := e.Register(&timeline{name: "tl", version: 1})
	if err := e.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	offs := appendMessages(t, node, 3000, "!a:x")
	if err := h.WaitApplied(context.Background(), offs[len(offs)-1]); err != nil {
		t.Fatal(err)
	}
	m, _, err := e.loadMeta("tl")
	if err != nil {
		t.Fatal(err)
	}
	e.Close()
	node.Close()

	db, err := pebble.Open(dir, &pebble.Options{Logger: quietPebble{}})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Flush(); err != nil {
		t.Fatal(err)
	}
	db.Close()
	pebbletest.DamageBlock(t, dir, append(dataPrefix("tl", m.Gen), "t/"...))

	node = open()
	defer node.Close()
	var logs syncBuffer
	e = NewEngine(node, node.DB(), zerolog.New(&logs), nil)
	h = e.Register(&timeline{name: "tl", version: 1})
	defer e.Close()
	node.OnTableDamage(e.CheckTable)
	if err := e.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	// New records over the damaged table's range, flushed, make the
	// compaction rewrite it (a lone table would only be moved).
	offs = appendMessages(t, node, 100, "!a:x")
	if err := h.WaitApplied(context.Background(), offs[len(offs)-1]); err != nil {
		t.Fatal(err)
	}
	if err := node.DB().Flush(); err != nil {
		t.Fatal(err)
	}
	// The flush may start that compaction by itself; a manual one makes
	// sure. It fails on the damage, or succeeds once healing has cut the
	// damage out: either way, no read of the projection met it.
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	node.DB().Compact(ctx, []byte("P"), []byte("Q"), false)
	cancel()
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(logs.String(), "projection tl rebuilt from the log after damage") {
		if time.Now().After(deadline) {
			t.Fatalf("tl did not heal after the compaction met its damage:\n%s", logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !strings.Contains(logs.String(), "stored data is damaged") {
		t.Fatalf("no line names the damage:\n%s", logs.String())
	}
	var he *HealingError
	for {
		n, err := checkedCount(h.Reader(), "!a:x")
		if err == nil {
			if n != 3100 {
				t.Fatalf("count after healing: %d, want 3100", n)
			}
			break
		}
		if !errors.As(err, &he) || time.Now().After(deadline) {
			t.Fatalf("reading after healing: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if got, want := mustDigest(t, e, "tl"), freshDigest(t, node, &timeline{name: "tl", version: 1}); !bytes.Equal(got, want) {
		t.Fatal("the healed projection differs from a fresh replay of the log")
	}
	// The damaged generation is cut out: compactions go through again.
	ctx, cancel = context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := node.DB().Compact(ctx, []byte("P"), []byte("Q"), false); err != nil {
		t.Fatalf("compacting after healing: %v", err)
	}
}
