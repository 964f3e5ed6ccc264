package synccache

import "sync"

// Summary is what a room's sync summary is made of, the same for every
// member: the joined and invited members, each list in user ID order.
// Heroes are taken from it per member (everyone but themselves).
type Summary struct {
	Joined, Invited []string
}

// Rooms caches per room the parts of a sync section that do not depend on
// who syncs, tagged with the position of the room's last change they
// depend on (for the summary, Clock's MembersChangedAt) when they were
// computed: a tag that no longer matches means the room changed since,
// and the part is computed again.
type Rooms struct {
	mu      sync.Mutex
	entries map[string]roomEntry
	epoch   uint64
}

type roomEntry struct {
	at      uint64
	summary Summary
}

// maxRooms bounds the cache; past it, it starts over.
const maxRooms = 200_000

// NewRooms returns an empty cache.
func NewRooms() *Rooms { return &Rooms{entries: map[string]roomEntry{}} }

// Summary returns the room's summary at member position at, computing it
// with compute when the cache has none at that position. Read at before
// computing: a summary computed after a newer change is then tagged with
// an older position and only ever recomputed, never served for a newer
// one.
func (r *Rooms) Summary(room string, at uint64, compute func() (Summary, error)) (Summary, error) {
	r.mu.Lock()
	e, ok := r.entries[room]
	epoch := r.epoch
	r.mu.Unlock()
	if ok && e.at == at {
		return e.summary, nil
	}
	sum, err := compute()
	if err != nil {
		return Summary{}, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.epoch == epoch {
		if len(r.entries) >= maxRooms {
			clear(r.entries)
		}
		r.entries[room] = roomEntry{at: at, summary: sum}
	}
	return sum, nil
}

// Reset forgets everything.
func (r *Rooms) Reset() {
	r.mu.Lock()
	defer r.mu.Unlock()
	clear(r.entries)
	r.epoch++
}
