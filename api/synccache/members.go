package synccache

import (
	"sync"

	"github.com/engram-hs/engram/projections/rooms"
)

// Members caches each user's memberships (rooms.View.Memberships: every
// room they are joined to, invited to, knocking on or left, in room ID
// order). An entry is dropped when a batch changes the user's membership
// of any room, before that batch becomes readable, so a reader that waited
// for offset pos never gets a list older than pos. A read error is the
// caller's: nothing is cached for it. The lists kept are bounded by their
// bytes (bounded).
type Members struct {
	mu      sync.Mutex
	entries bounded[string, []rooms.Membership]
	// version counts the drops per user (and reset all of them, through
	// epoch), so that a list read before a drop is not stored after it.
	version  map[string]uint64
	epoch    uint64
	computed uint64
}

// NewMembers keeps lists of up to budget bytes in all.
func NewMembers(budget int) *Members {
	return &Members{entries: newBounded[string, []rooms.Membership](budget), version: map[string]uint64{}}
}

// Get returns the user's memberships, reading them with read on a miss.
// The slice is shared: callers must not modify it.
func (m *Members) Get(user string, read func() ([]rooms.Membership, error)) ([]rooms.Membership, error) {
	m.mu.Lock()
	if ms, ok := m.entries.get(user); ok {
		m.mu.Unlock()
		return ms, nil
	}
	m.computed++
	v, epoch := m.version[user], m.epoch
	m.mu.Unlock()
	ms, err := read()
	if err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.version[user] == v && m.epoch == epoch {
		m.entries.put(user, ms, membershipsSize(user, ms))
	}
	return ms, nil
}

// membershipsSize is what a user's cached list holds: its strings and
// their headers.
func membershipsSize(user string, ms []rooms.Membership) int {
	n := len(user) + 24 // the slice's header
	for _, m := range ms {
		n += len(m.RoomID) + len(m.Membership) + len(m.EventID) + 3*16 + 8
	}
	return n
}

// Stats are the size of the lists kept and how many were read so far.
func (m *Members) Stats() (bytes int, computed uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.entries.bytes(), m.computed
}

// Drop forgets the lists of users whose membership changed.
func (m *Members) Drop(users []string) {
	if len(users) == 0 {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, u := range users {
		m.entries.delete(u)
		m.version[u]++
	}
}

// Reset forgets every list.
func (m *Members) Reset() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.entries.reset()
	clear(m.version)
	m.epoch++
}
