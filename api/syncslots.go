package api

import (
	"context"
	"slices"
	"sync"
	"time"
)

// maxSyncSlotWait is how long a /sync build may wait for a slot before it
// is let in ahead of smaller builds (syncSlots).
const maxSyncSlotWait = 500 * time.Millisecond

// syncSlots hands out the /sync build slots (syncBuildSlots), the smallest
// waiting build first: a build's cost is the number of joined rooms its
// filter covers, so a client filtered to one room is answered before the
// unfiltered builds of members of many rooms, each of which, under load,
// carries a change in most of its rooms. Equal costs go in arrival order.
// A build that has waited maxSyncSlotWait goes first, oldest first, but
// such builds take at most half of the slots' time while smaller builds
// wait (after one held a slot for d, the next waits until d has passed
// since it ended): under a flood of large builds, small ones keep being
// answered, and large ones are never starved.
type syncSlots struct {
	now func() time.Time // time.Now; tests move it

	mu      sync.Mutex
	free    int
	waiting []*slotWait // in arrival order
	// agedAfter is when the next build let in by its age may start.
	agedAfter time.Time
}

// slotWait is one build waiting for a slot; granted is closed when the
// slot is handed to it.
type slotWait struct {
	cost    int
	since   time.Time
	granted chan struct{}
	aged    bool // let in by its age
}

func newSyncSlots(n int) *syncSlots { return &syncSlots{now: time.Now, free: n} }

// acquire waits for a slot for a build of the given cost. Call release
// once the build's CPU work is done.
func (q *syncSlots) acquire(ctx context.Context, cost int) (release func(), err error) {
	q.mu.Lock()
	if q.free > 0 {
		q.free--
		q.mu.Unlock()
		return q.releaser(q.now(), false), nil
	}
	w := &slotWait{cost: cost, since: q.now(), granted: make(chan struct{})}
	q.waiting = append(q.waiting, w)
	q.mu.Unlock()
	select {
	case <-w.granted:
		return q.releaser(q.now(), w.aged), nil
	case <-ctx.Done():
		q.mu.Lock()
		if i := slices.Index(q.waiting, w); i >= 0 {
			q.waiting = slices.Delete(q.waiting, i, i+1)
			q.mu.Unlock()
			return nil, ctx.Err()
		}
		q.mu.Unlock()
		q.releaser(q.now(), w.aged)() // granted meanwhile: pass it on
		return nil, ctx.Err()
	}
}

// releaser is the release of a slot granted at start.
func (q *syncSlots) releaser(start time.Time, aged bool) func() {
	return func() {
		q.mu.Lock()
		defer q.mu.Unlock()
		now := q.now()
		if aged {
			q.agedAfter = now.Add(now.Sub(start))
		}
		if len(q.waiting) == 0 {
			q.free++
			return
		}
		i := q.next(now)
		w := q.waiting[i]
		q.waiting = slices.Delete(q.waiting, i, i+1)
		close(w.granted)
	}
}

// next picks the waiter to grant a slot to (q.mu held, someone waiting).
func (q *syncSlots) next(now time.Time) int {
	best := 0
	for i, w := range q.waiting {
		if w.cost < q.waiting[best].cost {
			best = i
		}
	}
	if best != 0 && now.Sub(q.waiting[0].since) >= maxSyncSlotWait && !now.Before(q.agedAfter) {
		q.waiting[0].aged = true
		return 0
	}
	return best
}
