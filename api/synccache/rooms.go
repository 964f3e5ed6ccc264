package synccache

import "sync"

// PartKey names one cached part of a room's sync section: its kind, the
// room, and the user for a part that is one member's (their membership
// history), "" for the room's.
type PartKey struct{ Kind, Room, User string }

// Parts caches per room the parts of a sync section that do not depend on
// who syncs (or depend on one member only, not on the request), tagged
// with the position of the room's last change they depend on (Clock's
// MembersChangedAt, StateChangedAt) when they were computed: a tag that no
// longer matches means the room changed since, and the part is computed
// again. Values are shared: callers must not modify them.
type Parts struct {
	mu      sync.Mutex
	entries map[PartKey]part
	epoch   uint64
}

type part struct {
	at uint64
	v  any
}

// maxParts bounds the cache; past it, it starts over.
const maxParts = 500_000

// NewParts returns an empty cache.
func NewParts() *Parts { return &Parts{entries: map[PartKey]part{}} }

// Get returns the part at position at, computing it with compute when the
// cache has none at that position. Read at before computing: a part
// computed after a newer change is then tagged with an older position and
// only ever recomputed, never served for a newer one.
func (p *Parts) Get(k PartKey, at uint64, compute func() (any, error)) (any, error) {
	return p.GetIf(k, at, nil, func() (any, bool, error) {
		v, err := compute()
		return v, true, err
	})
}

// GetIf is Get where a cached part must also satisfy valid (nil: any
// does), and compute says whether to keep what it computed.
func (p *Parts) GetIf(k PartKey, at uint64, valid func(any) bool, compute func() (v any, keep bool, err error)) (any, error) {
	p.mu.Lock()
	e, ok := p.entries[k]
	epoch := p.epoch
	p.mu.Unlock()
	if ok && e.at == at && (valid == nil || valid(e.v)) {
		return e.v, nil
	}
	v, keep, err := compute()
	if err != nil || !keep {
		return v, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.epoch == epoch {
		if len(p.entries) >= maxParts {
			clear(p.entries)
		}
		p.entries[k] = part{at: at, v: v}
	}
	return v, nil
}

// Reset forgets everything.
func (p *Parts) Reset() {
	p.mu.Lock()
	defer p.mu.Unlock()
	clear(p.entries)
	p.epoch++
}

// Events caches formatted events (the parts of a client event that are the
// same for every reader), each tagged with its room's event position when
// it was formatted: a redaction or relation arrives as an event in the
// room, which moves the position. Bounded; past the bound it starts over.
type Events struct {
	mu      sync.Mutex
	max     int
	entries map[string]part
	epoch   uint64
}

// NewEvents keeps up to max formatted events.
func NewEvents(max int) *Events { return &Events{max: max, entries: map[string]part{}} }

// Get returns the formatted event under key at the room's position at,
// formatting it with format on a miss.
func (e *Events) Get(key string, at uint64, format func() any) any {
	return e.GetKeep(key, at, func() (any, bool) { return format(), true })
}

// GetKeep is Get where compute also says whether to keep what it computed
// (false: it may be out of date for at, so the next reader computes it
// again).
func (e *Events) GetKeep(key string, at uint64, compute func() (v any, keep bool)) any {
	e.mu.Lock()
	p, ok := e.entries[key]
	epoch := e.epoch
	e.mu.Unlock()
	if ok && p.at == at {
		return p.v
	}
	v, keep := compute()
	if !keep {
		return v
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.epoch == epoch {
		if len(e.entries) >= e.max {
			clear(e.entries)
		}
		e.entries[key] = part{at: at, v: v}
	}
	return v
}

// Reset forgets everything.
func (e *Events) Reset() {
	e.mu.Lock()
	defer e.mu.Unlock()
	clear(e.entries)
	e.epoch++
}
