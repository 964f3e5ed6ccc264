package projections

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/rs/zerolog"

	englog "github.com/engram-hs/engram/log"
)

// checkedCount is roomCount the way query code reads a record: a value
// that does not decode is reported as damage, never taken as 0.
func checkedCount(r Reader, room string) (uint64, error) {
	k := []byte("count/" + room)
	v, ok, err := r.Get(k)
	if err != nil || !ok {
		return 0, err
	}
	if len(v) != 8 {
		return 0, Damaged(r, k, fmt.Errorf("%d bytes, want 8", len(v)))
	}
	return binary.BigEndian.Uint64(v), nil
}

// gatedFeed lets a test hold a projection's Apply calls: once paused is
// locked, at most one more batch goes through.
type gatedFeed struct {
	gate   chan struct{}
	paused sync.Mutex
	done   chan struct{}
}

func newGatedFeed(t *testing.T) *gatedFeed {
	g := &gatedFeed{gate: make(chan struct{}), done: make(chan struct{})}
	go func() {
		for {
			g.paused.Lock()
			g.paused.Unlock() //nolint:staticcheck // only waits while a test holds it
			select {
			case g.gate <- struct{}{}:
			case <-g.done:
				return
			}
		}
	}()
	t.Cleanup(func() { close(g.done) })
	return g
}

// A record that fails to decode marks the projection broken: readers get
// a *HealingError (503 with Retry-After in the API) instead of data, the
// engine rebuilds the projection from the log by itself, without a
// restart, and then it serves the right answer again, with the digest of
// a fresh replay; writes that arrived meanwhile are in it. One log line
// names the projection and says what is happening.
func TestDamagedRecordHealsByReplay(t *testing.T) {
	f := newFixture(t)
	appendMessages(t, f.log, 450, "!a:x")
	feed := newGatedFeed(t)
	p := &timeline{name: "tl", version: 1, gate: feed.gate}
	var logs syncBuffer
	e := NewEngine(f.log, f.db, zerolog.New(&logs), nil)
	e.batchEntries, e.rebuildBatchEntries = 100, 100
	h := e.Register(p)
	t.Cleanup(func() { e.Close() })
	ctx := context.Background()
	if err := e.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if n, err := checkedCount(h.Reader(), "!a:x"); err != nil || n != 450 {
		t.Fatalf("count before damage: %d, %v", n, err)
	}

	// Damage the counter behind the engine's back, and hold the rebuild.
	feed.paused.Lock()
	m, _, err := e.loadMeta("tl")
	if err != nil {
		t.Fatal(err)
	}
	if err := f.db.Set(append(dataPrefix("tl", m.Gen), "count/!a:x"...), []byte{1, 2, 3}, pebble.NoSync); err != nil {
		t.Fatal(err)
	}
	_, err = checkedCount(h.Reader(), "!a:x")
	var he *HealingError
	if !errors.As(err, &he) || he.Projection != "tl" || he.RetryAfter <= 0 || !errors.Is(err, ErrDamaged) {
		t.Fatalf("reading the damaged record: %v, want a HealingError of tl with a retry delay", err)
	}
	// Every read now fails fast, not only of the damaged record, and
	// waits for offsets fail the same way rather than hang.
	if _, _, err := h.Reader().Get([]byte("t/!a:x\x00")); !errors.As(err, &he) {
		t.Fatalf("another read while healing: %v, want a HealingError", err)
	}
	offs := appendMessages(t, f.log, 7, "!a:x")
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := h.WaitApplied(wctx, offs[len(offs)-1]); !errors.As(err, &he) {
		t.Fatalf("WaitApplied while healing: %v, want a HealingError", err)
	}
	r, release := h.Snapshot()
	if _, _, err := r.Get([]byte("count/!a:x")); !errors.As(err, &he) {
		t.Fatalf("a snapshot while healing: %v, want a HealingError", err)
	}
	release()

	feed.paused.Unlock()
	deadline := time.Now().Add(20 * time.Second)
	for {
		n, err := checkedCount(h.Reader(), "!a:x")
		if err == nil {
			if n != 457 {
				t.Fatalf("count after healing: %d, want 457", n)
			}
			break
		}
		if !errors.As(err, &he) {
			t.Fatalf("while healing: %v", err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("still healing after 20 s: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := h.WaitApplied(wctx, offs[len(offs)-1]); err != nil {
		t.Fatal(err)
	}
	if got, want := mustDigest(t, e, "tl"), freshDigest(t, f.log, &timeline{name: "tl", version: 1}); !bytes.Equal(got, want) {
		t.Fatal("the healed projection differs from a fresh replay of the log")
	}
	// It keeps following the log.
	offs = appendMessages(t, f.log, 3, "!a:x")
	if err := h.WaitApplied(wctx, offs[len(offs)-1]); err != nil {
		t.Fatal(err)
	}
	if n := roomCount(t, h.Reader(), "!a:x"); n != 460 {
		t.Fatalf("count after more writes: %d", n)
	}
	// The old generation is gone.
	it, _ := f.db.NewIter(&pebble.IterOptions{LowerBound: dataPrefix("tl", m.Gen), UpperBound: prefixEnd(dataPrefix("tl", m.Gen))})
	if it.First() {
		t.Fatalf("the damaged generation still holds %q", it.Key())
	}
	it.Close()
	out := logs.String()
	if c := strings.Count(out, "stored data is damaged"); c != 1 || !strings.Contains(out, `"projection":"tl"`) || !strings.Contains(out, "rebuilt from the log after damage") {
		t.Fatalf("want one line naming the damage and one saying it healed, got:\n%s", out)
	}
}

// Damage that Apply itself reads (the counter it increments) does not stop
// the projection: the batch is not committed and the projection heals.
func TestDamageMetByApplyHeals(t *testing.T) {
	f := newFixture(t)
	appendMessages(t, f.log, 120, "!a:x")
	p := &damageCheckingTimeline{timeline{name: "tl", version: 1}}
	e, hs := f.engine(t, p)
	ctx := context.Background()
	if err := e.Start(ctx); err != nil {
		t.Fatal(err)
	}
	m, _, _ := e.loadMeta("tl")
	if err := f.db.Set(append(dataPrefix("tl", m.Gen), "count/!a:x"...), []byte{9}, pebble.NoSync); err != nil {
		t.Fatal(err)
	}
	offs := appendMessages(t, f.log, 5, "!a:x")
	wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	for {
		err := hs[0].WaitApplied(wctx, offs[len(offs)-1])
		if err == nil {
			break
		}
		var he *HealingError
		if !errors.As(err, &he) {
			t.Fatalf("waiting: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if n := roomCount(t, hs[0].Reader(), "!a:x"); n != 125 {
		t.Fatalf("count after healing: %d, want 125", n)
	}
}

// damageCheckingTimeline is timeline whose Apply reports an undecodable
// counter as damage.
type damageCheckingTimeline struct{ timeline }

func (p *damageCheckingTimeline) Apply(w Writer, entries []englog.Entry) error {
	if _, err := checkedCount(w, "!a:x"); err != nil {
		return err
	}
	return p.timeline.Apply(w, entries)
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
