package projections

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"

	englog "github.com/engram-hs/engram/log"
)

// readCounter counts the log reads and payload bytes read through it.
type readCounter struct {
	englog.Log
	mu           sync.Mutex
	reads, bytes int
}

func (c *readCounter) Read(from uint64, max int) ([]englog.Entry, error) {
	es, err := c.Log.Read(from, max)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.reads++
	for _, e := range es {
		c.bytes += len(e.Payload)
	}
	return es, err
}

// TestRebuildAllReadsTheLogOnce: rebuilding several projections reads the
// log once for all of them (not once each), and each ends with the digest
// of a live fold of the same log.
func TestRebuildAllReadsTheLogOnce(t *testing.T) {
	f := newFixture(t)
	appendMessages(t, f.log, 1234, "!a:x")
	appendMessages(t, f.log, 66, "!b:x")
	var payload int
	es, err := f.log.Read(1, 10000)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range es {
		payload += len(e.Payload)
	}
	live, _ := f.engine(t, &timeline{name: "a", version: 1}, &timeline{name: "b", version: 2}, &timeline{name: "c", version: 1})
	if err := live.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	want := map[string][]byte{}
	for _, n := range []string{"a", "b", "c"} {
		want[n] = mustDigest(t, live, n)
	}
	live.Close()

	counter := &readCounter{Log: f.log}
	e := NewEngine(counter, f.db, testLogger(t), nil)
	e.rebuildBatchEntries = 100
	t.Cleanup(func() { e.Close() })
	ps := []*timeline{{name: "a", version: 1}, {name: "b", version: 2}, {name: "c", version: 1}}
	for _, p := range ps {
		e.Register(p)
	}
	last := map[string]uint64{}
	e.OnProgress(func(name string, applied, target uint64) { last[name] = applied }) // not concurrently: no lock
	if err := e.Rebuild(context.Background(), "a", "b", "c", "a"); err != nil {
		t.Fatal(err)
	}
	if counter.bytes != payload {
		t.Errorf("the rebuild of 3 projections read %d payload bytes, the log holds %d: want one pass", counter.bytes, payload)
	}
	if counter.reads != 14 { // 13 batches of 100, then the empty read at the end
		t.Errorf("%d log reads, want 14", counter.reads)
	}
	for _, p := range ps {
		got := mustDigest(t, e, p.name)
		if !bytes.Equal(got, want[p.name]) {
			t.Errorf("%s: rebuilt digest %x, live %x", p.name, got, want[p.name])
		}
		if last[p.name] != 1300 {
			t.Errorf("%s: last progress %d, want 1300", p.name, last[p.name])
		}
		if starts := p.applyStarts(); len(starts) != 13 {
			t.Errorf("%s: applied %d batches, want 13 (the duplicate name rebuilt it twice?)", p.name, len(starts))
		}
	}
	if bytes.Equal(want["a"], want["b"]) || !bytes.Equal(want["a"], want["c"]) {
		t.Error("the digests do not tell the projections' data apart")
	}
}

// TestRebuildCutsBatchesThatWriteMuch: a projection whose rebuild batches
// write more than the engine's bound folds each batch read in smaller
// ones, sized by what the last one wrote per entry, and ends with the
// digest of a live fold; one that writes little keeps the batches read.
func TestRebuildCutsBatchesThatWriteMuch(t *testing.T) {
	f := newFixture(t)
	appendMessages(t, f.log, 1000, "!a:x")
	live, _ := f.engine(t, &timeline{name: "a", version: 1})
	if err := live.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	want := mustDigest(t, live, "a")
	live.Close()

	for _, c := range []struct {
		writes   int
		min, max int // batches applied
	}{
		{writes: 32 << 20, min: 10, max: 10},  // the 10 batches read
		{writes: 2 << 10, min: 20, max: 1000}, // the first batch read whole, then a few dozen entries each
	} {
		e := NewEngine(f.log, f.db, testLogger(t), nil)
		e.rebuildBatchEntries, e.rebuildBatchWrites = 100, c.writes
		p := &timeline{name: "a", version: 1}
		e.Register(p)
		if err := e.Rebuild(context.Background(), "a"); err != nil {
			t.Fatal(err)
		}
		if got := mustDigest(t, e, "a"); !bytes.Equal(got, want) {
			t.Errorf("bound %d B: rebuilt digest %x, live %x", c.writes, got, want)
		}
		if n := len(p.applyStarts()); n < c.min || n > c.max {
			t.Errorf("bound %d B: %d batches applied, want %d-%d", c.writes, n, c.min, c.max)
		}
		e.Close()
	}
}

// TestRebuildStopsOnTheFirstApplyError: one projection failing mid-way
// stops the whole rebuild with its error (no hang of the others, which
// wait for batches the reader no longer sends), and the projections keep
// serving their old generation.
func TestRebuildStopsOnTheFirstApplyError(t *testing.T) {
	f := newFixture(t)
	appendMessages(t, f.log, 500, "!a:x")
	bad, _ := json.Marshal(message{Room: "!a:x", Fail: true})
	if _, err := f.log.Append(context.Background(), englog.Proposal{Kind: englog.KindPDU, Payload: bad}); err != nil {
		t.Fatal(err)
	}
	appendMessages(t, f.log, 500, "!a:x")
	e, hs := f.engine(t, &timeline{name: "fails", version: 1}, &entryCounter{})
	done := make(chan error, 1)
	go func() { done <- e.Rebuild(context.Background()) }()
	select {
	case err := <-done:
		if err == nil || errors.Is(err, context.Canceled) || !bytes.Contains([]byte(err.Error()), []byte(`"fails"`)) {
			t.Fatalf("Rebuild = %v, want the failing projection's apply error", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Rebuild hangs after a projection failed")
	}
	for _, h := range hs {
		if h.Applied() != 0 {
			t.Errorf("%s: Applied %d after a failed rebuild, want 0 (nothing switched)", h.name, h.Applied())
		}
	}
}

// entryCounter counts entries of every kind and content: it never fails.
type entryCounter struct{}

func (entryCounter) Name() string { return "counter" }
func (entryCounter) Version() int { return 1 }

func (entryCounter) Apply(w Writer, entries []englog.Entry) error {
	n := uint64(0)
	if v, ok, err := w.Get([]byte("n")); err != nil {
		return err
	} else if ok {
		n = binary.BigEndian.Uint64(v)
	}
	return w.Set([]byte("n"), binary.BigEndian.AppendUint64(nil, n+uint64(len(entries))))
}

// generationTables counts the tables holding keys of prefix's range in
// the levels above the bottom one, and in the bottom one.
func generationTables(t *testing.T, db *pebble.DB, prefix []byte) (above, bottom int) {
	t.Helper()
	levels, err := db.SSTables()
	if err != nil {
		t.Fatal(err)
	}
	end := prefixEnd(prefix)
	for level, tables := range levels {
		for _, tb := range tables {
			// A range deletion's end bound is exclusive: a table ending
			// at prefix holds none of it.
			c := bytes.Compare(tb.Largest.UserKey, prefix)
			if bytes.Compare(tb.Smallest.UserKey, end) >= 0 || c < 0 || (c == 0 && tb.Largest.IsExclusiveSentinel()) {
				continue
			}
			if level == len(levels)-1 {
				bottom++
			} else {
				above++
			}
		}
	}
	return above, bottom
}

// TestRebuildSettles: after a rebuild the new generation is compacted into
// the bottom level, by Settle offline and in the background when a server
// rebuilds a projection at start; the projection's contents do not change.
// A rebuilt generation is ingested into the lowest level it fits in: the
// bottom one unless a table there spans its range, as here.
func TestRebuildSettles(t *testing.T) {
	f := newFixture(t)
	appendMessages(t, f.log, 3000, "!a:x")
	e, _ := f.engine(t, &timeline{name: "a", version: 1})
	for _, k := range [][]byte{append(dataPrefix("a", 1), 'k'), {prefixByte, 'z'}} {
		if err := f.db.Set(k, nil, pebble.NoSync); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.db.Compact(context.Background(), []byte{prefixByte}, []byte{prefixByte + 1}, false); err != nil {
		t.Fatal(err)
	}
	if err := e.Rebuild(context.Background()); err != nil {
		t.Fatal(err)
	}
	want := mustDigest(t, e, "a")
	prefix := dataPrefix("a", e.byName["a"].meta.Gen)
	if above, _ := generationTables(t, f.db, prefix); above == 0 {
		t.Fatal("the rebuilt generation is in the bottom level already: the test shows nothing")
	}
	if err := e.Settle(context.Background()); err != nil {
		t.Fatal(err)
	}
	if above, bottom := generationTables(t, f.db, prefix); above != 0 || bottom == 0 {
		t.Errorf("after Settle %d tables above the bottom level and %d in it hold the generation, want 0 and some", above, bottom)
	}
	if got := mustDigest(t, e, "a"); !bytes.Equal(got, want) {
		t.Error("Settle changed the projection")
	}
	e.Close()

	// A server finding version 2 registered rebuilds at start, then
	// settles the new generation while serving (the compaction flushes
	// what the memtable holds of it first).
	live, hs := f.engine(t, &timeline{name: "a", version: 2})
	if err := live.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := hs[0].WaitRebuilt(context.Background()); err != nil {
		t.Fatal(err)
	}
	hs[0].rw.RLock() // the projection's goroutine writes meta; the prefix is guarded
	prefix = hs[0].servingPrefix
	hs[0].rw.RUnlock()
	deadline := time.Now().Add(20 * time.Second)
	for {
		above, bottom := generationTables(t, f.db, prefix)
		if above == 0 && bottom > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("20 s after the rebuild %d tables above the bottom level and %d in it hold the new generation, want 0 and some", above, bottom)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestRebuildWithUnreadWritesEqualsALiveFold: a projection that writes
// and deletes unread rows (SetUnread, DeleteUnread) ends with the same
// keys rebuilt (its unread rows kept in a store of their own until the
// write-out) as folded live (merged into each batch), and a row deleted
// in a later batch than the one that wrote it stays deleted.
func TestRebuildWithUnreadWritesEqualsALiveFold(t *testing.T) {
	f := newFixture(t)
	appendMessages(t, f.log, 1234, "!a:x")
	appendMessages(t, f.log, 66, "!b:x")
	live, _ := f.engine(t, &timeline{name: "tl", version: 1, unread: true})
	if err := live.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	want := mustDigest(t, live, "tl")
	live.Close()

	e, hs := f.engine(t, &timeline{name: "tl", version: 1, unread: true})
	if err := e.Rebuild(context.Background(), "tl"); err != nil {
		t.Fatal(err)
	}
	if got := mustDigest(t, e, "tl"); !bytes.Equal(got, want) {
		t.Fatal("rebuilt digest differs from the live fold's")
	}
	r := hs[0].Reader()
	for off, kept := range map[uint64]bool{99: true, 101: false, 102: true, 200: false, 201: true, 500: false} {
		_, ok, err := r.Get(binary.BigEndian.AppendUint64([]byte("u/!a:x\x00"), off))
		if err != nil {
			t.Fatal(err)
		}
		if ok != kept {
			t.Errorf("unread row of offset %d present %v after the rebuild, want %v", off, ok, kept)
		}
	}
}
