package projections

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	englog "github.com/engram-hs/engram/log"
)

type fixture struct {
	db  *pebble.DB
	log *englog.Node
}

// newFixture opens a real single-node log; projections share its Pebble,
// as in the server.
func newFixture(t *testing.T) *fixture {
	t.Helper()
	node, err := englog.Open(englog.Config{Dir: t.TempDir(), Logger: testLogger(t).Level(zerolog.ErrorLevel)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { node.Close() })
	return &fixture{db: node.DB(), log: node}
}

func (f *fixture) engine(t *testing.T, ps ...Projection) (*Engine, []*Handle) {
	t.Helper()
	e := NewEngine(f.log, f.db, testLogger(t), nil)
	e.batchEntries = 100 // many batches, to cross batch boundaries
	e.rebuildBatchEntries = 100
	var hs []*Handle
	for _, p := range ps {
		hs = append(hs, e.Register(p))
	}
	t.Cleanup(func() { e.Close() })
	return e, hs
}

// freshDigest replays the log into a new, empty store and returns the
// digest of the projection built there.
func freshDigest(t testing.TB, l englog.Log, p Projection) []byte {
	t.Helper()
	db := openDB(t, t.TempDir())
	defer db.Close()
	e := NewEngine(l, db, testLogger(t), nil)
	e.Register(p)
	if err := e.Rebuild(context.Background()); err != nil {
		t.Fatal(err)
	}
	d, err := e.Digest(p.Name())
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestApplyCheckpointRestartResume(t *testing.T) {
	f := newFixture(t)
	appendMessages(t, f.log, 2500, "!a:x")
	appendMessages(t, f.log, 50, "!b:x")

	p1 := &timeline{name: "timeline", version: 1}
	e, hs := f.engine(t, p1)
	if err := e.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	// Start returns caught up.
	if got := hs[0].Applied(); got != 2550 {
		t.Fatalf("Applied after Start = %d, want 2550", got)
	}
	if got := roomCount(t, hs[0].Reader(), "!a:x"); got != 2500 {
		t.Fatalf("count !a:x = %d, want 2500", got)
	}
	if got := p1.committed.Load(); got != 2550 {
		t.Fatalf("AfterCommit saw up to %d, want 2550", got)
	}
	e.Close()

	appendMessages(t, f.log, 300, "!b:x")
	p2 := &timeline{name: "timeline", version: 1}
	e2, hs2 := f.engine(t, p2)
	if got := hs2[0].Applied(); got != 2550 {
		t.Fatalf("Applied after restart before Start = %d, want the checkpoint 2550", got)
	}
	if err := e2.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	starts := p2.applyStarts()
	if len(starts) == 0 || starts[0] != 2551 {
		t.Fatalf("after restart, first Apply started at %v, want 2551 (resume from checkpoint)", starts)
	}
	if got := roomCount(t, hs2[0].Reader(), "!b:x"); got != 350 {
		t.Fatalf("count !b:x = %d, want 350", got)
	}
	d, err := e2.Digest("timeline")
	if err != nil {
		t.Fatal(err)
	}
	if want := freshDigest(t, f.log, &timeline{name: "timeline", version: 1}); !bytes.Equal(d, want) {
		t.Fatalf("digest after resume %x != fresh replay %x", d, want)
	}
}

func TestReaderIterIsScopedToProjection(t *testing.T) {
	f := newFixture(t)
	appendMessages(t, f.log, 10, "!a:x")
	appendMessages(t, f.log, 5, "!b:x")
	e, hs := f.engine(t, &timeline{name: "tl", version: 1}, &timeline{name: "tl2", version: 1})
	if err := e.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	it := hs[0].Reader().Iter([]byte("t/!a:x\x00"), []byte("t/!a:x\x01"))
	n := 0
	for ok := it.First(); ok; ok = it.Next() {
		if !bytes.HasPrefix(it.Key(), []byte("t/!a:x\x00")) {
			t.Fatalf("key %q outside the range", it.Key())
		}
		n++
	}
	if err := it.Close(); err != nil {
		t.Fatal(err)
	}
	if n != 10 {
		t.Fatalf("iterated %d keys, want 10", n)
	}
	// Open bounds see the whole projection (10 + 5 timeline keys + 2
	// counters) and nothing of the other one.
	it = hs[0].Reader().Iter(nil, nil)
	n = 0
	for ok := it.Last(); ok; ok = it.Prev() {
		n++
	}
	it.Close()
	if n != 17 {
		t.Fatalf("whole projection has %d keys, want 17", n)
	}
}

func TestWaitAppliedReadYourWrites(t *testing.T) {
	f := newFixture(t)
	e, hs := f.engine(t, &timeline{name: "timeline", version: 1})
	if err := e.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	h := hs[0]
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			room := "!r" + string(rune('a'+w)) + ":x"
			for i := 0; i < 25; i++ {
				offs := appendMessages(t, f.log, 1, room)
				if err := h.WaitApplied(context.Background(), offs[0]); err != nil {
					errs <- err
					return
				}
				if got := roomCount(t, h.Reader(), room); got != uint64(i+1) {
					errs <- errors.New("read after WaitApplied does not see the write")
					return
				}
			}
		}(w)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := h.WaitApplied(ctx, f.log.LastOffset()+1); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WaitApplied for an offset never appended = %v, want deadline exceeded", err)
	}
	e.Close()
	if err := h.WaitApplied(context.Background(), f.log.LastOffset()+1); !errors.Is(err, ErrClosed) {
		t.Fatalf("WaitApplied after Close = %v, want ErrClosed", err)
	}
}

func TestSnapshotIsPointInTime(t *testing.T) {
	f := newFixture(t)
	appendMessages(t, f.log, 3, "!a:x")
	e, hs := f.engine(t, &timeline{name: "timeline", version: 1})
	if err := e.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	snap, release := hs[0].Snapshot()
	defer release()
	offs := appendMessages(t, f.log, 4, "!a:x")
	if err := hs[0].WaitApplied(context.Background(), offs[3]); err != nil {
		t.Fatal(err)
	}
	if got := roomCount(t, snap, "!a:x"); got != 3 {
		t.Fatalf("snapshot count = %d, want 3", got)
	}
	if got := roomCount(t, hs[0].Reader(), "!a:x"); got != 7 {
		t.Fatalf("live count = %d, want 7", got)
	}
}

// generationKeys counts the raw keys of one generation of a projection.
func generationKeys(t *testing.T, db *pebble.DB, name string, gen uint32) int {
	t.Helper()
	p := dataPrefix(name, gen)
	it, err := db.NewIter(&pebble.IterOptions{LowerBound: p, UpperBound: prefixEnd(p)})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for it.First(); it.Valid(); it.Next() {
		n++
	}
	it.Close()
	return n
}

func TestVersionBumpRebuildsIntoShadowWhileOldServes(t *testing.T) {
	f := newFixture(t)
	appendMessages(t, f.log, 1000, "!a:x")
	e, _ := f.engine(t, &timeline{name: "timeline", version: 1})
	if err := e.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	e.Close()

	// Version 2 can read version 1's keyspace: while its rebuild is held
	// mid-way, the old generation keeps serving.
	gate := make(chan struct{})
	p2 := &timeline{name: "timeline", version: 2, gate: gate, readsOld: true}
	e2, hs := f.engine(t, p2)
	h := hs[0]
	if err := e2.Start(context.Background()); err != nil {
		t.Fatal(err) // Start must not wait for the rebuild
	}
	rebuilt := make(chan error, 1)
	go func() { rebuilt <- h.WaitRebuilt(context.Background()) }()
	// Let one batch of the rebuild through; the second send returns once
	// the worker is back at the gate, so the first batch is committed.
	gate <- struct{}{}
	gate <- struct{}{}
	if got := roomCount(t, h.Reader(), "!a:x"); got != 1000 {
		t.Fatalf("during rebuild the old generation serves count %d, want 1000", got)
	}
	if _, ok, _ := h.Reader().Get(append([]byte("t/!a:x\x00"), 0, 0, 0, 0, 0, 0, 0, 1)); !ok {
		t.Fatal("during rebuild the old generation's v1 keys are not readable")
	}
	// The shadow generation is folded in a scratch store, and reaches
	// the shared DB only with the switch.
	if n := generationKeys(t, f.db, "timeline", 2); n != 0 {
		t.Fatalf("the shared DB holds %d keys of the generation being rebuilt", n)
	}
	// A write during the rebuild: read-your-writes waits for the switch.
	offs := appendMessages(t, f.log, 5, "!a:x")
	waited := make(chan error, 1)
	go func() { waited <- h.WaitApplied(context.Background(), offs[4]) }()
	select {
	case err := <-waited:
		t.Fatalf("WaitApplied returned (%v) before the rebuild finished", err)
	case <-time.After(20 * time.Millisecond):
	}
	if got := p2.committed.Load(); got != 0 {
		t.Fatalf("AfterCommit called (offset %d) before the rebuild became visible", got)
	}
	select {
	case err := <-rebuilt:
		t.Fatalf("WaitRebuilt returned (%v) while the rebuild is held", err)
	default:
	}
	close(gate)
	if err := <-waited; err != nil {
		t.Fatal(err)
	}
	if err := <-rebuilt; err != nil {
		t.Fatal(err)
	}
	if got := p2.committed.Load(); got < 1005 {
		t.Fatalf("after the switch AfterCommit saw up to %d, want 1005: long-polls would not wake", got)
	}
	if got := roomCount(t, h.Reader(), "!a:x"); got != 1005 {
		t.Fatalf("after the switch count = %d, want 1005", got)
	}
	if _, ok, _ := h.Reader().Get(append([]byte("T/!a:x\x00"), 0, 0, 0, 0, 0, 0, 0, 1)); !ok {
		t.Fatal("after the switch the v2 keys are not readable")
	}
	if n := generationKeys(t, f.db, "timeline", 1); n != 0 {
		t.Fatalf("old generation still has %d keys after the switch", n)
	}
	m, ok, err := e2.loadMeta("timeline")
	if err != nil || !ok || m.Version != 2 || m.Gen != 2 || m.ShadowGen != 0 || m.Applied != 1005 {
		t.Fatalf("meta after switch = %+v (ok=%v err=%v)", m, ok, err)
	}
	// And it keeps tailing on the new generation.
	offs = appendMessages(t, f.log, 1, "!a:x")
	if err := h.WaitApplied(context.Background(), offs[0]); err != nil {
		t.Fatal(err)
	}
	d := mustDigest(t, e2, "timeline")
	if want := freshDigest(t, f.log, &timeline{name: "timeline", version: 2}); !bytes.Equal(d, want) {
		t.Fatal("digest after the version switch differs from a fresh replay")
	}
}

func TestVersionBumpUnreadableOldBlocksReaders(t *testing.T) {
	f := newFixture(t)
	appendMessages(t, f.log, 300, "!a:x")
	e, _ := f.engine(t, &timeline{name: "timeline", version: 1})
	if err := e.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	e.Close()

	gate := make(chan struct{})
	e2, hs := f.engine(t, &timeline{name: "timeline", version: 2, gate: gate})
	if err := e2.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	got := make(chan uint64, 1)
	go func() { got <- roomCount(t, hs[0].Reader(), "!a:x") }()
	select {
	case n := <-got:
		t.Fatalf("a read of an unreadable old generation returned %d instead of waiting", n)
	case <-time.After(20 * time.Millisecond):
	}
	close(gate)
	if n := <-got; n != 300 {
		t.Fatalf("read after the rebuild = %d, want 300", n)
	}
}

// A rebuild cut short starts over from offset 1: what it had folded was
// in its scratch store, and a generation ingested but not yet switched to
// is dropped.
func TestInterruptedRebuildStartsOver(t *testing.T) {
	f := newFixture(t)
	appendMessages(t, f.log, 1000, "!a:x")
	e, _ := f.engine(t, &timeline{name: "timeline", version: 1})
	if err := e.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	e.Close()

	scratchDir := t.TempDir()
	gate := make(chan struct{})
	p2 := &timeline{name: "timeline", version: 2, gate: gate, readsOld: true}
	e2, _ := f.engine(t, p2)
	e2.RebuildIn(scratchDir)
	if err := e2.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	gate <- struct{}{}
	gate <- struct{}{}
	if left, _ := filepath.Glob(filepath.Join(scratchDir, "rebuild-*")); len(left) != 1 {
		t.Fatalf("scratch stores during the rebuild: %v, want one", left)
	}
	// Close while the worker waits at the gate for its third batch.
	go func() { time.Sleep(5 * time.Millisecond); close(gate) }()
	e2.Close()
	m, _, _ := e2.loadMeta("timeline")
	if m.ShadowGen == 0 || m.Version != 1 {
		t.Fatalf("expected an interrupted shadow in the meta, got %+v", m)
	}
	// What a crash leaves: a scratch store, and perhaps part of the
	// shadow generation ingested before the switch could be written.
	if err := os.MkdirAll(filepath.Join(scratchDir, "rebuild-1234", "ingest-5"), 0o700); err != nil {
		t.Fatal(err)
	}
	leftover := append(dataPrefix("timeline", m.ShadowGen), "T/!a:x\x00left"...)
	if err := f.db.Set(leftover, []byte("left"), pebble.NoSync); err != nil {
		t.Fatal(err)
	}

	// The old generation served 1000 already: wait for one more entry,
	// which only the rebuilt generation will show.
	appendMessages(t, f.log, 1, "!a:x")
	p3 := &timeline{name: "timeline", version: 2}
	e3, hs := f.engine(t, p3)
	e3.RebuildIn(scratchDir)
	if err := e3.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := hs[0].WaitApplied(context.Background(), 1001); err != nil {
		t.Fatal(err)
	}
	if starts := p3.applyStarts(); starts[0] != 1 {
		t.Fatalf("the rebuild started again at %d, want 1", starts[0])
	}
	if n := generationKeys(t, f.db, "timeline", m.ShadowGen); n != 0 {
		t.Fatalf("the interrupted shadow generation kept %d keys", n)
	}
	d := mustDigest(t, e3, "timeline")
	if want := freshDigest(t, f.log, &timeline{name: "timeline", version: 2}); !bytes.Equal(d, want) {
		t.Fatal("digest after a rebuild started over differs from a fresh replay")
	}
	e3.Close() // waits for the rebuild's goroutine, which deletes its store
	if left, _ := filepath.Glob(filepath.Join(scratchDir, "*")); len(left) != 0 {
		t.Fatalf("scratch stores left after the rebuild: %v", left)
	}
}

func TestDigestEqualAfterRebuild(t *testing.T) {
	f := newFixture(t)
	appendMessages(t, f.log, 1234, "!a:x")
	appendMessages(t, f.log, 66, "!b:x")
	e, _ := f.engine(t, &timeline{name: "timeline", version: 1}, &timeline{name: "other", version: 2})
	if err := e.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	before, err := e.Digest("timeline")
	if err != nil {
		t.Fatal(err)
	}
	other := mustDigest(t, e, "other")
	e.Close()

	p := &timeline{name: "timeline", version: 1}
	e2, hs := f.engine(t, p, &timeline{name: "other", version: 2})
	var last, target uint64
	e2.OnProgress(func(name string, applied, tgt uint64) {
		if name != "timeline" {
			t.Errorf("progress for %q, which was not asked to rebuild", name)
		}
		last, target = applied, tgt
	})
	if err := e2.Rebuild(context.Background(), "timeline"); err != nil {
		t.Fatal(err)
	}
	if last != 1300 || target != 1300 {
		t.Fatalf("last progress = %d/%d, want 1300/1300", last, target)
	}
	if starts := p.applyStarts(); starts[0] != 1 {
		t.Fatalf("rebuild started at offset %d, want 1", starts[0])
	}
	after := mustDigest(t, e2, "timeline")
	if !bytes.Equal(before, after) {
		t.Fatalf("digest changed by Rebuild: %x -> %x", before, after)
	}
	if o := mustDigest(t, e2, "other"); !bytes.Equal(o, other) {
		t.Fatal("rebuilding one projection changed another")
	}
	if bytes.Equal(before, other) {
		t.Fatal("digests of different projections are equal: the digest does not depend on the data")
	}
	if hs[0].Applied() != 1300 {
		t.Fatalf("Applied after Rebuild = %d", hs[0].Applied())
	}
	if err := e2.Rebuild(context.Background(), "nope"); err == nil {
		t.Fatal("Rebuild of an unknown projection succeeded")
	}
	if err := e2.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := e2.Rebuild(context.Background()); err == nil {
		t.Fatal("Rebuild while running succeeded")
	}
}

func TestApplyErrorStopsProjection(t *testing.T) {
	f := newFixture(t)
	appendMessages(t, f.log, 10, "!a:x")
	bad, _ := json.Marshal(message{Room: "!a:x", Fail: true})
	if _, err := f.log.Append(context.Background(), englog.Proposal{Kind: englog.KindPDU, Payload: bad}); err != nil {
		t.Fatal(err)
	}
	e, hs := f.engine(t, &timeline{name: "timeline", version: 1})
	e.batchEntries = 1
	if err := e.Start(context.Background()); err == nil {
		t.Fatal("Start succeeded although the projection cannot apply the log")
	}
	if err := hs[0].WaitApplied(context.Background(), 11); err == nil || errors.Is(err, ErrClosed) {
		t.Fatalf("WaitApplied past the failing entry = %v, want the apply error", err)
	}
	if got := roomCount(t, hs[0].Reader(), "!a:x"); got != 10 {
		t.Fatalf("entries before the failure are served: count %d, want 10", got)
	}
}

func TestRegisterPanicsOnDuplicate(t *testing.T) {
	f := newFixture(t)
	e, _ := f.engine(t, &timeline{name: "timeline", version: 1})
	defer func() {
		if recover() == nil {
			t.Fatal("duplicate Register did not panic")
		}
	}()
	e.Register(&timeline{name: "timeline", version: 1})
}

func TestMetricsReportLag(t *testing.T) {
	f := newFixture(t)
	reg := prometheus.NewRegistry()
	e := NewEngine(f.log, f.db, testLogger(t), reg)
	gate := make(chan struct{})
	h := e.Register(&timeline{name: "timeline", version: 1, gate: gate})
	defer e.Close()
	if err := e.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	appendMessages(t, f.log, 7, "!a:x")
	lag := func() float64 {
		mfs, _ := reg.Gather()
		for _, mf := range mfs {
			if mf.GetName() == "engram_projection_lag_entries" {
				if len(mf.Metric) != 1 {
					t.Fatalf("lag series = %d, want 1", len(mf.Metric))
				}
				return mf.Metric[0].GetGauge().GetValue()
			}
		}
		return -1
	}
	if got := lag(); got != 7 {
		t.Fatalf("lag while blocked = %v, want 7", got)
	}
	close(gate)
	if err := h.WaitApplied(context.Background(), 7); err != nil {
		t.Fatal(err)
	}
	if got := lag(); got != 0 {
		t.Fatalf("lag after catch-up = %v, want 0", got)
	}
}

// TestIdleBatchesDeferTheCheckpoint: batches that write nothing (entries
// of kinds the projection does not fold) advance what readers see without
// a commit; the checkpoint on disk follows with the next batch that
// writes, or once it trails by checkpointLag; a restart folds the entries
// in between again and ends where a fresh replay does.
func TestIdleBatchesDeferTheCheckpoint(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	appendMessages(t, f.log, 10, "!a:x")
	others := func(n int) uint64 {
		t.Helper()
		props := make([]englog.Proposal, n)
		for i := range props {
			props[i] = englog.Proposal{Kind: englog.KindEDU, Payload: []byte(`{}`)}
		}
		offs, err := f.log.Append(ctx, props...)
		if err != nil {
			t.Fatal(err)
		}
		return offs[len(offs)-1]
	}
	e, hs := f.engine(t, &timeline{name: "timeline", version: 1})
	if err := e.Start(ctx); err != nil {
		t.Fatal(err)
	}
	stored := func() uint64 {
		t.Helper()
		m, ok, err := e.loadMeta("timeline")
		if err != nil || !ok {
			t.Fatalf("meta: %v %v", ok, err)
		}
		return m.Applied
	}
	wait := func(off uint64) {
		t.Helper()
		if err := hs[0].WaitApplied(ctx, off); err != nil {
			t.Fatal(err)
		}
	}
	if got := stored(); got != 10 {
		t.Fatalf("checkpoint after Start %d, want 10", got)
	}
	for range 5 {
		wait(others(10))
	}
	if got, applied := stored(), hs[0].Applied(); got != 10 || applied != 60 {
		t.Fatalf("after idle batches: checkpoint %d (want 10, deferred), applied %d (want 60)", got, applied)
	}
	offs := appendMessages(t, f.log, 5, "!b:x")
	wait(offs[4])
	if got := stored(); got != 65 {
		t.Fatalf("after a batch that writes: checkpoint %d, want 65", got)
	}
	last := others(checkpointLag + 150)
	wait(last)
	if got := stored(); got <= 65 || last-got >= checkpointLag {
		t.Fatalf("after %d idle entries: checkpoint %d, applied %d: it may trail by less than %d", checkpointLag+150, got, last, checkpointLag)
	}
	restartFrom := stored()
	e.Close()

	p2 := &timeline{name: "timeline", version: 1}
	e2, hs2 := f.engine(t, p2)
	if got := hs2[0].Applied(); got != restartFrom {
		t.Fatalf("Applied after restart before Start = %d, want the checkpoint %d", got, restartFrom)
	}
	if err := e2.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if got := hs2[0].Applied(); got != last {
		t.Fatalf("Applied after Start %d, want %d", got, last)
	}
	if starts := p2.applyStarts(); len(starts) == 0 || starts[0] != restartFrom+1 {
		t.Fatalf("after restart, first Apply started at %v, want %d", starts, restartFrom+1)
	}
	d, err := e2.Digest("timeline")
	if err != nil {
		t.Fatal(err)
	}
	if want := freshDigest(t, f.log, &timeline{name: "timeline", version: 1}); !bytes.Equal(d, want) {
		t.Fatalf("digest after restart %x != fresh replay %x", d, want)
	}
}
