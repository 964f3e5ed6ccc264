package synccache

import "sync"

// PartKey names one cached part of a room's sync section: its kind, the
// room, and the user for a part that is one member's (their membership
// history), "" for the room's.
type PartKey struct{ Kind, Room, User string }

// size is what the key's strings hold.
func (k PartKey) size() int { return len(k.Kind) + len(k.Room) + len(k.User) + 3*16 }

// Parts caches per room the parts of a sync section that do not depend on
// who syncs (or depend on one member only, not on the request), tagged
// with the position of the room's last change they depend on (Clock's
// MembersChangedAt, StateChangedAt) when they were computed: a tag that no
// longer matches means the room changed since, and the part is computed
// again. Values are shared: callers must not modify them. The parts kept
// are bounded by their bytes, as their computations size them (bounded).
type Parts struct {
	mu       sync.Mutex
	entries  bounded[PartKey, part]
	epoch    uint64
	computed uint64
}

type part struct {
	at uint64
	v  any
}

// NewParts keeps parts of up to budget bytes in all.
func NewParts(budget int) *Parts { return &Parts{entries: newBounded[PartKey, part](budget)} }

// Get returns the part at position at, computing it with compute when the
// cache has none at that position; compute also says how many bytes the
// part holds. Read at before computing: a part computed after a newer
// change is then tagged with an older position and only ever recomputed,
// never served for a newer one.
func (p *Parts) Get(k PartKey, at uint64, compute func() (v any, size int, err error)) (any, error) {
	return p.GetIf(k, at, nil, func(any) (any, int, bool, error) {
		v, size, err := compute()
		return v, size, true, err
	})
}

// GetIf is Get where a cached part must also satisfy valid (nil: any
// does), compute is given the part it replaces (out of date or not
// valid; nil: none), of which it may reuse what did not change, and says
// whether to keep what it computed.
func (p *Parts) GetIf(k PartKey, at uint64, valid func(any) bool, compute func(prev any) (v any, size int, keep bool, err error)) (any, error) {
	p.mu.Lock()
	e, ok := p.entries.get(k)
	hit := ok && e.at == at && (valid == nil || valid(e.v))
	if !hit {
		p.computed++
	}
	epoch := p.epoch
	p.mu.Unlock()
	if hit {
		return e.v, nil
	}
	v, size, keep, err := compute(e.v)
	if err != nil || !keep {
		return v, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.epoch == epoch {
		p.entries.put(k, part{at: at, v: v}, k.size()+size)
	}
	return v, nil
}

// Stats are the size of the parts kept and how many were computed so
// far (not found, or out of date).
func (p *Parts) Stats() (bytes int, computed uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.entries.bytes(), p.computed
}

// Reset forgets everything.
func (p *Parts) Reset() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.entries.reset()
	p.epoch++
}

// Events caches formatted events (the parts of a client event that are the
// same for every reader), each tagged with its room's event position when
// it was formatted: a redaction or relation arrives as an event in the
// room, which moves the position. Bounded by the bytes of what it keeps,
// as the formatting sizes it (bounded).
type Events struct {
	mu       sync.Mutex
	entries  bounded[string, part]
	epoch    uint64
	computed uint64
}

// NewEvents keeps formatted events of up to budget bytes in all.
func NewEvents(budget int) *Events { return &Events{entries: newBounded[string, part](budget)} }

// Get returns the formatted event under key at the room's position at,
// formatting it with format on a miss (which also says how many bytes it
// holds).
func (e *Events) Get(key string, at uint64, format func() (v any, size int)) any {
	return e.GetKeep(key, at, func() (any, int, bool) {
		v, size := format()
		return v, size, true
	})
}

// GetKeep is Get where compute also says whether to keep what it computed
// (false: it may be out of date for at, so the next reader computes it
// again).
func (e *Events) GetKeep(key string, at uint64, compute func() (v any, size int, keep bool)) any {
	e.mu.Lock()
	p, ok := e.entries.get(key)
	hit := ok && p.at == at
	if !hit {
		e.computed++
	}
	epoch := e.epoch
	e.mu.Unlock()
	if hit {
		return p.v
	}
	v, size, keep := compute()
	if !keep {
		return v
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.epoch == epoch {
		e.entries.put(key, part{at: at, v: v}, len(key)+16+size)
	}
	return v
}

// Stats are the size of the events kept and how many were computed so
// far (not found, or out of date).
func (e *Events) Stats() (bytes int, computed uint64) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.entries.bytes(), e.computed
}

// Reset forgets everything.
func (e *Events) Reset() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.entries.reset()
	e.epoch++
}
