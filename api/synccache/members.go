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
// caller's: nothing is cached for it.
type Members struct {
	mu      sync.Mutex
	max     int
	entries map[string][]rooms.Membership
	// version counts the drops per user (and reset all of them, through
	// epoch), so that a list read before a drop is not stored after it.
	version map[string]uint64
	epoch   uint64
}

// NewMembers keeps the lists of up to max users.
func NewMembers(max int) *Members {
	return &Members{max: max, entries: map[string][]rooms.Membership{}, version: map[string]uint64{}}
}

// Get returns the user's memberships, reading them with read on a miss.
// The slice is shared: callers must not modify it.
func (m *Members) Get(user string, read func() ([]rooms.Membership, error)) ([]rooms.Membership, error) {
	m.mu.Lock()
	if ms, ok := m.entries[user]; ok {
		m.mu.Unlock()
		return ms, nil
	}
	v, epoch := m.version[user], m.epoch
	m.mu.Unlock()
	ms, err := read()
	if err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.version[user] == v && m.epoch == epoch {
		if len(m.entries) >= m.max {
			clear(m.entries) // crude, and rare: the cache holds the syncing users
		}
		m.entries[user] = ms
	}
	return ms, nil
}

// Drop forgets the lists of users whose membership changed.
func (m *Members) Drop(users []string) {
	if len(users) == 0 {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, u := range users {
		delete(m.entries, u)
		m.version[u]++
	}
}

// Reset forgets every list.
func (m *Members) Reset() {
	m.mu.Lock()
	defer m.mu.Unlock()
	clear(m.entries)
	clear(m.version)
	m.epoch++
}
