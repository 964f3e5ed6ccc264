// Package synccache keeps what /sync needs to answer an incremental sync
// without reading every joined room: a change clock (the log position of
// each room's and user's last change), the users' memberships, and the
// parts of a room's sync section that are the same for every member.
//
// Everything here is a copy of projection state, fed from the
// projections' after-commit hooks, which run before the projection's
// applied offset moves: once a reader has waited for offset pos, every
// change up to pos has been noted. Nothing is guessed: a batch that does
// not follow the previous one of its source (a rebuilt generation took
// over) moves the clock's horizon past it and empties the caches, and a
// sync whose token is older than the horizon takes the uncached path.
package synccache

import (
	"sync"
)

// Batch is what one committed batch of one source (a projection) may have
// changed.
type Batch struct {
	Source      string // the projection's name
	First, Last uint64 // the batch's offsets
	// Rooms: rooms that received events (timeline, state, members).
	Rooms []string
	// Ephemeral: rooms whose typing or receipts (and so unread counts)
	// changed.
	Ephemeral []string
	// RoomData: (user, room) pairs whose room account data changed.
	RoomData []UserRoom
	// AccountData: users whose account data changed, globally or in a
	// room.
	AccountData []string
	// Members: users whose membership of some room changed, and
	// MemberRooms those rooms; StateRooms: rooms whose current state
	// changed (members or not).
	Members, MemberRooms, StateRooms []string
}

// UserRoom names one user's data in one room.
type UserRoom struct{ User, Room string }

// Clock records the log position of the last change of each room (and of
// each user's account data), so that an incremental sync visits only the
// rooms that changed after its token. A change is recorded at its batch's
// last offset, never below its own: the clock may call a room changed
// that did not (the sync then finds nothing new in it), never the
// reverse.
type Clock struct {
	mu sync.RWMutex
	// horizon: every change at an offset above it has been noted.
	horizon uint64
	seen    map[string]uint64 // source -> last offset it reported
	rooms   map[string]uint64 // any change
	events  map[string]uint64 // events only
	members map[string]uint64 // member changes only
	state   map[string]uint64 // current state changes only
	ephem   map[string]uint64 // typing and receipts only
	data    map[UserRoom]uint64
	users   map[string]uint64 // account data, any room or global

	// onReset is called (under mu) when a source skipped offsets.
	onReset []func()
}

// NewClock returns a clock that covers nothing until its sources are
// attached.
func NewClock() *Clock {
	return &Clock{seen: map[string]uint64{}, rooms: map[string]uint64{}, events: map[string]uint64{}, members: map[string]uint64{}, state: map[string]uint64{}, ephem: map[string]uint64{}, data: map[UserRoom]uint64{}, users: map[string]uint64{}}
}

// Attach declares a source whose batches will follow offset applied (its
// checkpoint): what it folded up to there was never noted, so the clock
// covers only tokens from applied on.
func (c *Clock) Attach(source string, applied uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.seen[source] = applied
	c.horizon = max(c.horizon, applied)
}

// OnReset adds fn to what runs when a source skipped offsets (caches of
// projection state must start over). Call it before the sources report.
func (c *Clock) OnReset(fn func()) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.onReset = append(c.onReset, fn)
}

// Note records a committed batch.
func (c *Clock) Note(b Batch) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if prev, ok := c.seen[b.Source]; !ok || b.First != prev+1 {
		// Not attached, or more became visible at once than the batch
		// says: changes up to Last may have gone unnoted.
		c.horizon = max(c.horizon, b.Last)
		for _, fn := range c.onReset {
			fn()
		}
	}
	c.seen[b.Source] = max(c.seen[b.Source], b.Last)
	for _, r := range b.Rooms {
		c.rooms[r] = max(c.rooms[r], b.Last)
		c.events[r] = max(c.events[r], b.Last)
	}
	for _, r := range b.StateRooms {
		c.state[r] = max(c.state[r], b.Last)
	}
	for _, r := range b.MemberRooms {
		c.members[r] = max(c.members[r], b.Last)
	}
	for _, r := range b.Ephemeral {
		c.rooms[r] = max(c.rooms[r], b.Last)
		c.ephem[r] = max(c.ephem[r], b.Last)
	}
	for _, d := range b.RoomData {
		c.data[d] = max(c.data[d], b.Last)
	}
	for _, u := range b.AccountData {
		c.users[u] = max(c.users[u], b.Last)
	}
}

// View is a read of the clock for one sync build: one lock for all its
// rooms.
type View struct{ c *Clock }

// Read runs fn with the clock read-locked.
func (c *Clock) Read(fn func(View)) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	fn(View{c})
}

// Covers reports whether the clock has noted every change after since.
func (v View) Covers(since uint64) bool { return since >= v.c.horizon }

// RoomChangedAt is the position of the room's last change: events,
// typing or receipts (0: none since the horizon).
func (v View) RoomChangedAt(room string) uint64 { return v.c.rooms[room] }

// EventsChangedAt is the position of the room's last event (0: none since
// the horizon).
func (v View) EventsChangedAt(room string) uint64 { return v.c.events[room] }

// EphemeralChangedAt is the position of the room's last typing or receipt
// change (0: none since the horizon).
func (v View) EphemeralChangedAt(room string) uint64 { return v.c.ephem[room] }

// MembersChangedAt is the position of the last change of the room's
// members (0: none since the horizon).
func (v View) MembersChangedAt(room string) uint64 { return v.c.members[room] }

// StateChangedAt is the position of the last change of the room's current
// state (0: none since the horizon).
func (v View) StateChangedAt(room string) uint64 { return v.c.state[room] }

// RoomDataChangedAt is the position of the user's last account data
// change in the room.
func (v View) RoomDataChangedAt(user, room string) uint64 {
	return v.c.data[UserRoom{user, room}]
}

// AccountDataChangedAt is the position of the user's last account data
// change (any room or global).
func (v View) AccountDataChangedAt(user string) uint64 { return v.c.users[user] }
