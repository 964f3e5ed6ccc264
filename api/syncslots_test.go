package api

import (
	"context"
	"encoding/json"
	"sync"
	"testing"
	"time"
)

// slotsUnderTest is one slot on a clock the test moves; the waiters'
// grants arrive on grants in the order they were made.
type slotsUnderTest struct {
	t      *testing.T
	q      *syncSlots
	mu     sync.Mutex
	clock  time.Time
	grants chan slotGrant
}

type slotGrant struct {
	name    string
	release func()
}

func newSlotsUnderTest(t *testing.T) *slotsUnderTest {
	st := &slotsUnderTest{t: t, q: newSyncSlots(1), clock: time.Unix(1_000_000, 0), grants: make(chan slotGrant, 16)}
	st.q.now = func() time.Time {
		st.mu.Lock()
		defer st.mu.Unlock()
		return st.clock
	}
	return st
}

func (st *slotsUnderTest) advance(d time.Duration) {
	st.mu.Lock()
	st.clock = st.clock.Add(d)
	st.mu.Unlock()
}

func (st *slotsUnderTest) queued() int {
	st.q.mu.Lock()
	defer st.q.mu.Unlock()
	return len(st.q.waiting)
}

// wait starts a build of the given cost waiting for the slot, and returns
// once it is queued (so waiters queue in the order wait is called).
func (st *slotsUnderTest) wait(ctx context.Context, name string, cost int) {
	n := st.queued()
	go func() {
		release, err := st.q.acquire(ctx, cost)
		if err != nil {
			return
		}
		st.grants <- slotGrant{name, release}
	}()
	for st.queued() == n {
		time.Sleep(time.Millisecond)
	}
}

// next is the next grant; it must go to want.
func (st *slotsUnderTest) next(want string) slotGrant {
	st.t.Helper()
	g := <-st.grants
	if g.name != want {
		st.t.Fatalf("slot granted to %s, want %s", g.name, want)
	}
	return g
}

func TestSyncSlotsSmallestFirst(t *testing.T) {
	st := newSlotsUnderTest(t)
	release, err := st.q.acquire(context.Background(), 20)
	if err != nil {
		t.Fatal(err)
	}
	st.wait(context.Background(), "large1", 20)
	st.wait(context.Background(), "large2", 20)
	st.wait(context.Background(), "small", 1)
	release()
	st.next("small").release()
	st.next("large1").release()
	st.next("large2").release()
	if st.q.free != 1 {
		t.Errorf("free slots after every release = %d, want 1", st.q.free)
	}
}

func TestSyncSlotsAgedGoFirstAtMostHalfTheTime(t *testing.T) {
	st := newSlotsUnderTest(t)
	release, err := st.q.acquire(context.Background(), 20)
	if err != nil {
		t.Fatal(err)
	}
	st.wait(context.Background(), "large1", 20)
	st.wait(context.Background(), "large2", 20)
	st.advance(maxSyncSlotWait)
	st.wait(context.Background(), "small1", 1)
	st.wait(context.Background(), "small2", 1)
	release()
	// large1 has waited long enough: it goes before the small ones, and
	// holds the slot for 100 ms.
	g := st.next("large1")
	st.advance(100 * time.Millisecond)
	g.release()
	// large2 has waited long enough too, but must let the small ones in
	// for as long as large1 held the slot.
	g = st.next("small1")
	st.advance(60 * time.Millisecond)
	g.release()
	g = st.next("small2")
	st.advance(40 * time.Millisecond)
	st.wait(context.Background(), "small3", 1)
	g.release()
	st.next("large2").release()
	st.next("small3").release()
}

func TestSyncSlotsCancelledWaiterLeaves(t *testing.T) {
	st := newSlotsUnderTest(t)
	release, err := st.q.acquire(context.Background(), 20)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	st.wait(ctx, "gone", 1)
	st.wait(context.Background(), "large", 20)
	cancel()
	for st.queued() != 1 {
		time.Sleep(time.Millisecond)
	}
	release()
	st.next("large").release()
	if st.q.free != 1 {
		t.Errorf("free slots after every release = %d, want 1", st.q.free)
	}
}

func TestSyncBuildCostCountsTheFilteredRooms(t *testing.T) {
	joined := []string{"!a:x", "!b:x", "!c:x"}
	for _, tc := range []struct {
		filter string
		want   int
	}{
		{`{}`, 3},
		{`{"room":{"rooms":["!b:x"]}}`, 1},
		{`{"room":{"rooms":["!b:x","!z:x"]}}`, 1},
		{`{"room":{"not_rooms":["!a:x"]}}`, 2},
	} {
		f := &syncFilter{}
		if err := json.Unmarshal([]byte(tc.filter), f); err != nil {
			t.Fatal(err)
		}
		if got := syncBuildCost(f, joined); got != tc.want {
			t.Errorf("syncBuildCost(%s) = %d, want %d", tc.filter, got, tc.want)
		}
	}
}
