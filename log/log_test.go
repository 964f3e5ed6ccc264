package log

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/rs/zerolog"
)

func openSingle(t testing.TB, dir string) *Node {
	t.Helper()
	n, err := Open(Config{Dir: dir, Logger: zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return n
}

func payloadFor(i int) []byte {
	// Mix tiny, medium (stored raw) and large (zstd per entry) payloads so
	// every storage path is used.
	if i%3 == 0 {
		return []byte(fmt.Sprintf("p%d", i))
	}
	if i%5 == 1 {
		return bytes.Repeat([]byte(fmt.Sprintf("large payload %d;", i)), 200+i%7)
	}
	return bytes.Repeat([]byte(fmt.Sprintf("payload %d;", i)), 20+i%7)
}

func TestSingleNodeAppendReadWaitRestart(t *testing.T) {
	dir := t.TempDir()
	clock := time.UnixMilli(1_700_000_000_000)
	reg := prometheus.NewRegistry()
	n, err := Open(Config{Dir: dir, Metrics: reg, Now: func() time.Time { return clock },
		Logger: zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)})
	if err != nil {
		t.Fatal(err)
	}
	if !n.IsLeader() {
		t.Fatal("a single node must lead once Open returns")
	}
	if got := n.LastOffset(); got != 0 {
		t.Fatalf("fresh log LastOffset = %d, want 0", got)
	}
	ctx := context.Background()

	// Wait wakes on append.
	waited := make(chan error, 1)
	go func() { waited <- n.Wait(ctx, 0) }()
	select {
	case err := <-waited:
		t.Fatalf("Wait returned before any append: %v", err)
	case <-time.After(20 * time.Millisecond):
	}

	offs, err := n.Append(ctx, Proposal{Kind: KindPDU, Payload: payloadFor(1)}, Proposal{Kind: KindEDU, Payload: payloadFor(3)})
	if err != nil {
		t.Fatal(err)
	}
	if len(offs) != 2 || offs[0] != 1 || offs[1] != 2 {
		t.Fatalf("offsets = %v, want [1 2]", offs)
	}
	if err := <-waited; err != nil {
		t.Fatalf("Wait: %v", err)
	}

	// Concurrent appenders get dense, distinct offsets.
	const writers, per = 8, 50
	var mu sync.Mutex
	byOffset := map[uint64][]byte{1: payloadFor(1), 2: payloadFor(3)}
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < per; i++ {
				p := payloadFor(w*1000 + i)
				o, err := n.Append(ctx, Proposal{Kind: KindAccountDataSet, Payload: p})
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				if _, dup := byOffset[o[0]]; dup {
					t.Errorf("offset %d handed out twice", o[0])
				}
				byOffset[o[0]] = p
				mu.Unlock()
			}
		}(w)
	}
	wg.Wait()
	total := uint64(2 + writers*per)
	if got := n.LastOffset(); got != total {
		t.Fatalf("LastOffset = %d, want %d", got, total)
	}
	check := func(n *Node) {
		t.Helper()
		got, err := n.Read(1, 10_000)
		if err != nil {
			t.Fatal(err)
		}
		if uint64(len(got)) != total {
			t.Fatalf("Read returned %d entries, want %d", len(got), total)
		}
		for i, e := range got {
			if e.Offset != uint64(i+1) {
				t.Fatalf("entry %d has offset %d", i, e.Offset)
			}
			if !bytes.Equal(e.Payload, byOffset[e.Offset]) {
				t.Fatalf("entry %d payload %q, want %q", e.Offset, e.Payload, byOffset[e.Offset])
			}
			if e.Time != clock.UnixMilli() {
				t.Fatalf("entry %d time %d, want the proposer's %d", e.Offset, e.Time, clock.UnixMilli())
			}
		}
		if got[0].Kind != KindPDU || got[1].Kind != KindEDU || got[2].Kind != KindAccountDataSet {
			t.Fatalf("kinds = %v %v %v", got[0].Kind, got[1].Kind, got[2].Kind)
		}
		part, err := n.Read(total-1, 10)
		if err != nil || len(part) != 2 || part[0].Offset != total-1 {
			t.Fatalf("Read(total-1, 10) = %d entries, err %v", len(part), err)
		}
		if none, err := n.Read(total+1, 10); err != nil || len(none) != 0 {
			t.Fatalf("Read past the end = %d entries, err %v", len(none), err)
		}
	}
	check(n)
	var gauge dto.Metric
	if err := n.met.lastOffset.Write(&gauge); err != nil {
		t.Fatal(err)
	}
	if got := gauge.GetGauge().GetValue(); got != float64(total) {
		t.Fatalf("last offset gauge = %v, want %d", got, total)
	}

	// Wait honours its context.
	cctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if err := n.Wait(cctx, total); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Wait past the end = %v, want deadline exceeded", err)
	}

	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := n.Append(ctx, Proposal{Kind: KindPDU, Payload: []byte("x")}); !errors.Is(err, ErrClosed) {
		t.Fatalf("Append after Close = %v, want ErrClosed", err)
	}

	// Restart resumes with the same offsets.
	n2 := openSingle(t, dir)
	defer n2.Close()
	if got := n2.LastOffset(); got != total {
		t.Fatalf("after restart LastOffset = %d, want %d", got, total)
	}
	check(n2)
	offs, err = n2.Append(ctx, Proposal{Kind: KindPDU, Payload: []byte("after restart")})
	if err != nil {
		t.Fatal(err)
	}
	if offs[0] != total+1 {
		t.Fatalf("first offset after restart = %d, want %d", offs[0], total+1)
	}
}

func TestLargePayloadsAreCompressedPerEntry(t *testing.T) {
	n := openSingle(t, t.TempDir())
	defer n.Close()
	big := bytes.Repeat([]byte("compress me please; "), 500)
	offs, err := n.Append(context.Background(), Proposal{Kind: KindPDU, Payload: big}, Proposal{Kind: KindPDU, Payload: []byte("small")})
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range []struct {
		flags byte
		max   int
	}{{flagZstd, len(big) / 4}, {0, storedHeader + 5}} {
		v, closer, err := n.DB().Get(entryKey(offs[i]))
		if err != nil {
			t.Fatal(err)
		}
		se, err := decodeStored(offs[i], v)
		if err != nil {
			t.Fatal(err)
		}
		if se.flags != want.flags || len(v) > want.max {
			t.Errorf("entry %d stored with flags %d in %d bytes, want flags %d and at most %d bytes", offs[i], se.flags, len(v), want.flags, want.max)
		}
		closer.Close()
	}
	got, err := n.Read(1, 2)
	if err != nil || len(got) != 2 || !bytes.Equal(got[0].Payload, big) || string(got[1].Payload) != "small" {
		t.Fatalf("Read = %d entries, err %v", len(got), err)
	}
}

func TestEntryTimeNeverGoesBackwards(t *testing.T) {
	var mu sync.Mutex
	now := time.UnixMilli(1_800_000_000_000)
	clock := func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		now = now.Add(-time.Second) // a wall clock stepping backwards
		return now
	}
	dir := t.TempDir()
	n, err := Open(Config{Dir: dir, Now: clock, Logger: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 5; i++ {
		if _, err := n.Append(context.Background(), Proposal{Kind: KindPDU, Payload: []byte("x")}); err != nil {
			t.Fatal(err)
		}
	}
	n.Close()
	// A restarted leader, whose clock is even further behind, still stamps
	// no earlier than the newest entry.
	n, err = Open(Config{Dir: dir, Now: clock, Logger: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	if _, err := n.Append(context.Background(), Proposal{Kind: KindPDU, Payload: []byte("y")}); err != nil {
		t.Fatal(err)
	}
	es, err := n.Read(1, 10)
	if err != nil || len(es) != 6 {
		t.Fatalf("Read = %d entries, err %v", len(es), err)
	}
	if es[0].Time != 1_800_000_000_000-1000 {
		t.Fatalf("first entry time %d, want the proposer's clock %d", es[0].Time, int64(1_800_000_000_000-1000))
	}
	for i := 1; i < len(es); i++ {
		if es[i].Time < es[i-1].Time {
			t.Fatalf("entry %d time %d is before entry %d's %d", es[i].Offset, es[i].Time, es[i-1].Offset, es[i-1].Time)
		}
	}
}

func TestCloseDuringAppendsAcknowledgesOnlyWhatIsKept(t *testing.T) {
	dir := t.TempDir()
	n := openSingle(t, dir)
	var mu sync.Mutex
	acked := map[uint64][]byte{}
	var wg sync.WaitGroup
	for w := 0; w < 32; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; ; i++ {
				p := []byte(fmt.Sprintf("w%d-i%d", w, i))
				offs, err := n.Append(context.Background(), Proposal{Kind: KindPDU, Payload: p})
				if err != nil {
					if !errors.Is(err, ErrClosed) && !errors.Is(err, ErrNotLeader) {
						t.Errorf("Append during Close = %v, want ErrClosed or ErrNotLeader", err)
					}
					return
				}
				mu.Lock()
				acked[offs[0]] = p
				mu.Unlock()
			}
		}(w)
	}
	time.Sleep(50 * time.Millisecond)
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	wg.Wait() // every Append returned: none hangs across Close
	n = openSingle(t, dir)
	defer n.Close()
	for off, p := range acked {
		es, err := n.Read(off, 1)
		if err != nil || len(es) != 1 || !bytes.Equal(es[0].Payload, p) {
			t.Fatalf("acknowledged entry %d missing or changed after Close and reopen (err %v)", off, err)
		}
	}
	if len(acked) == 0 {
		t.Fatal("nothing was appended before Close; the test proved nothing")
	}
}
