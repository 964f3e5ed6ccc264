package projections

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
)

// TestRebuildUnreadWritesKeepTheirOrder: in a rebuild the unread writes
// go to the scratch store's unread store, none to the folded one, and the
// write-out merges the two: a key deleted (DeleteUnread) or rewritten
// after it was written, in the same batch or in a batch flushed to a
// later table, ends as its last write left it, whatever the ranges the
// write-out is cut into.
func TestRebuildUnreadWritesKeepTheirOrder(t *testing.T) {
	f := newFixture(t)
	e := NewEngine(f.log, f.db, testLogger(t), nil)
	t.Cleanup(func() { e.Close() })
	sc, err := e.openScratch()
	if err != nil {
		t.Fatal(err)
	}
	defer sc.close()
	prefix := scratchPrefix(3)
	rng := rand.New(rand.NewPCG(1, 2))
	want := map[string]string{}
	for batch := range 40 {
		b := sc.db.NewIndexedBatch()
		w := newBatchWriter(b, prefix, nil, nil)
		for i := range 50 {
			v := fmt.Sprintf("v%d.%d", batch, i)
			var err error
			switch op, n := rng.IntN(4), rng.IntN(60); op {
			case 0, 1:
				k := fmt.Sprintf("u%02d", n)
				err = SetUnread(w, []byte(k), []byte(v))
				want[k] = v
			case 2:
				k := fmt.Sprintf("u%02d", n)
				err = DeleteUnread(w, []byte(k))
				delete(want, k)
			default:
				k := fmt.Sprintf("k%02d", n)
				err = w.Set([]byte(k), []byte(v))
				want[k] = v
			}
			if err != nil {
				t.Fatal(err)
			}
		}
		if err := commitRebuild(sc.db, sc.unread, b, &w.unread); err != nil {
			t.Fatal(err)
		}
		b.Close()
		if batch%8 == 7 {
			if err := sc.unread.Flush(); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := sc.db.Flush(); err != nil {
		t.Fatal(err)
	}
	if n := sc.unread.Metrics().Levels[0].TablesCount; n < 5 {
		t.Fatalf("the unread store holds %d tables in L0, want one per flush (5)", n)
	}
	if d := dumpDB(t, sc.db); strings.Contains(d, "\x03u") {
		t.Fatalf("the folded store holds unread writes: %s", d)
	}
	splits := sc.ingestSplits(prefix, prefixEnd(prefix), 4)
	if len(splits) == 0 || !slices.IsSortedFunc(splits, bytes.Compare) {
		t.Fatalf("write-out cut at %q, want some keys in order", splits)
	}
	for _, k := range splits {
		if !bytes.HasPrefix(k, prefix) {
			t.Fatalf("write-out cut at %q, outside the generation", k)
		}
	}

	db := openDB(t, t.TempDir())
	defer db.Close()
	if err := sc.ingest(context.Background(), db, prefix, []byte("P/")); err != nil {
		t.Fatal(err)
	}
	var exp []byte
	for _, k := range slices.Sorted(maps.Keys(want)) {
		exp = fmt.Appendf(exp, "P/%s=%s ", k, want[k])
	}
	if got := dumpDB(t, db); got != string(exp) {
		t.Fatalf("written out\n%s\nwant\n%s", got, exp)
	}
}

// TestRebuildRefusesAKeyWrittenBothWays: a key written with SetUnread and
// with Set is against SetUnread's contract; the write-out, which would
// have to pick one of the two stores' values, fails instead.
func TestRebuildRefusesAKeyWrittenBothWays(t *testing.T) {
	f := newFixture(t)
	e := NewEngine(f.log, f.db, testLogger(t), nil)
	t.Cleanup(func() { e.Close() })
	sc, err := e.openScratch()
	if err != nil {
		t.Fatal(err)
	}
	defer sc.close()
	prefix := scratchPrefix(0)
	b := sc.db.NewIndexedBatch()
	defer b.Close()
	w := newBatchWriter(b, prefix, nil, nil)
	if err := SetUnread(w, []byte("k"), []byte("unread")); err != nil {
		t.Fatal(err)
	}
	if err := w.Set([]byte("k"), []byte("read")); err != nil {
		t.Fatal(err)
	}
	if err := commitRebuild(sc.db, sc.unread, b, &w.unread); err != nil {
		t.Fatal(err)
	}
	db := openDB(t, t.TempDir())
	defer db.Close()
	if err := sc.ingest(context.Background(), db, prefix, []byte("P/")); err == nil || !strings.Contains(err.Error(), "both unread and not") {
		t.Fatalf("write-out of a key written both ways: %v, want an error", err)
	}
}
