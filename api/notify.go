package api

import (
	"sync"
	"sync/atomic"

	"github.com/engram-hs/engram/api/synccache"
	"github.com/engram-hs/engram/projections/rooms"
	"github.com/engram-hs/engram/projections/userdata"
)

// notifier wakes /sync long-polls whose streams a committed batch
// touched. A waiter registers under its user and the rooms it is joined
// to; the projections say which users and rooms each batch touched, so a
// message in one room wakes that room's members' long-polls and no
// others.
type notifier struct {
	mu     sync.Mutex
	byUser map[string]map[*waiter]struct{}
	byRoom map[string]map[*waiter]struct{}
	all    map[*waiter]struct{}

	wakeups atomic.Uint64 // waiters woken so far
}

// waiter is one long-poll between two builds of its response. ch is
// closed once, when something it watches changed.
type waiter struct {
	ch    chan struct{}
	user  string
	rooms []string
}

func newNotifier() *notifier {
	return &notifier{byUser: map[string]map[*waiter]struct{}{}, byRoom: map[string]map[*waiter]struct{}{}, all: map[*waiter]struct{}{}}
}

// register watches a user's own streams and the given rooms. Register
// before reading the log position the response is built at, so a commit
// between the two still wakes the waiter.
func (n *notifier) register(user string, rooms []string) *waiter {
	w := &waiter{ch: make(chan struct{}), user: user, rooms: rooms}
	n.mu.Lock()
	defer n.mu.Unlock()
	add(n.byUser, user, w)
	for _, r := range rooms {
		add(n.byRoom, r, w)
	}
	n.all[w] = struct{}{}
	return w
}

func add(m map[string]map[*waiter]struct{}, k string, w *waiter) {
	set := m[k]
	if set == nil {
		set = map[*waiter]struct{}{}
		m[k] = set
	}
	set[w] = struct{}{}
}

func remove(m map[string]map[*waiter]struct{}, k string, w *waiter) {
	if set := m[k]; set != nil {
		delete(set, w)
		if len(set) == 0 {
			delete(m, k)
		}
	}
}

// unregister forgets a waiter (woken or not).
func (n *notifier) unregister(w *waiter) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.drop(w)
}

func (n *notifier) drop(w *waiter) {
	if _, ok := n.all[w]; !ok {
		return
	}
	delete(n.all, w)
	remove(n.byUser, w.user, w)
	for _, r := range w.rooms {
		remove(n.byRoom, r, w)
	}
}

func (n *notifier) fire(w *waiter) {
	n.drop(w)
	close(w.ch)
	n.wakeups.Add(1)
}

// wake wakes the waiters of the given users and rooms.
func (n *notifier) wake(users, rooms []string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, u := range users {
		for w := range n.byUser[u] {
			n.fire(w)
		}
	}
	for _, r := range rooms {
		for w := range n.byRoom[r] {
			n.fire(w)
		}
	}
}

// wakeAll wakes every waiter (shutdown).
func (n *notifier) wakeAll() {
	n.mu.Lock()
	defer n.mu.Unlock()
	for w := range n.all {
		n.fire(w)
	}
}

// SyncWakeups is how many times a /sync long-poll was woken by a commit
// (or by shutdown) since the server started: each wake-up costs the
// long-poll a rebuild of its response.
func (s *Server) SyncWakeups() uint64 { return s.notifier.wakeups.Load() }

// EventCacheStats are the hits and misses of the parsed-event cache.
func (s *Server) EventCacheStats() (hits, misses uint64) { return s.roomWrite.EventCacheStats() }

// roomsTouched notes the batch in the sync cache, then wakes the
// long-polls of the rooms that got events and of the users whose
// membership changed.
func (s *Server) roomsTouched(t rooms.Touched) {
	s.syncCache.members.Drop(t.Users)
	s.syncCache.clock.Note(synccache.Batch{Source: s.roomsH.Name(), First: t.First, Last: t.Last, Rooms: t.Rooms, Members: t.Users, MemberRooms: t.MemberRooms, StateRooms: t.StateRooms})
	s.notifier.wake(t.Users, t.Rooms)
}

// userdataTouched wakes the long-polls of the rooms with new typing or
// receipts, of the users whose own data changed, and of everyone sharing
// a joined room with a user whose presence changed.
func (s *Server) userdataTouched(t userdata.Touched) {
	data := make([]synccache.UserRoom, len(t.RoomAccountData))
	for i, d := range t.RoomAccountData {
		data[i] = synccache.UserRoom{User: d.UserID, Room: d.RoomID}
	}
	s.syncCache.clock.Note(synccache.Batch{Source: s.userdataH.Name(), First: t.First, Last: t.Last, Ephemeral: t.Rooms, RoomData: data, AccountData: t.AccountData})
	rs := t.Rooms
	if len(t.Presence) > 0 {
		v := s.roomsView()
		for _, u := range t.Presence {
			ms, err := v.Memberships(u)
			if err != nil {
				// Their co-members see the change on their next wake-up
				// or timeout; nothing is lost.
				s.logger.Warn().Err(err).Str("user", u).Msg("could not read memberships to wake co-members after a presence change")
				continue
			}
			for _, m := range ms {
				if m.Membership == "join" {
					rs = append(rs, m.RoomID)
				}
			}
		}
	}
	s.notifier.wake(t.Users, rs)
}
