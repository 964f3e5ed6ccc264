// Package projections folds the log into read models. A projection is a
// name, a schema version, and a deterministic Apply over a batch of log
// entries; the engine runs it, stores its checkpoint in the same Pebble
// batch as its writes, rebuilds it by replay when its version changes, and
// lets readers wait until it has applied a given offset (read-your-writes).
//
// Concrete projections live in sub-packages (accounts, rooms, sync, ...) and
// are read by other packages only through their query methods.
package projections

import (
	englog "github.com/engram-hs/engram/log"
)

// Projection is a read model folded from the log.
//
// Apply must be a deterministic function of the entries and of what the
// projection itself stored before: no clock (use Entry.Time), no randomness,
// no network, no filesystem. It writes only through w; the engine commits
// w together with the checkpoint, so a batch is applied entirely or not at
// all. An error stops the projection (it is a bug or corruption, not bad
// input: bad input is recorded as such, not refused at apply time).
// Apply must not modify the entries: a rebuild hands the same batch to
// every projection it rebuilds, concurrently.
type Projection interface {
	// Name is stable and unique; it names the keyspace ("accounts").
	Name() string
	// Version is the schema version. Changing it makes the engine rebuild
	// the projection from offset 1 into a shadow keyspace, then switch.
	Version() int
	Apply(w Writer, entries []englog.Entry) error
}

// AfterCommitter is optionally implemented by projections that wake
// waiters (for example /sync long-polls) once a batch is durable in the
// projection. It must not change the projection's state. When a rebuilt
// generation takes over, it is called once with the rebuild's last batch:
// everything up to that batch's last offset became visible at once.
type AfterCommitter interface {
	AfterCommit(entries []englog.Entry)
}

// Reader reads a projection's keyspace. Keys are relative to it.
type Reader interface {
	// Get returns a copy of the value, or ok=false when the key is absent.
	Get(key []byte) (value []byte, ok bool, err error)
	// Iter iterates keys in [lower, upper); nil bounds are open.
	Iter(lower, upper []byte) Iterator
}

// Writer is a Reader over the pending batch (it sees its own writes) that
// can also write. It is valid only during Apply.
type Writer interface {
	Reader
	Set(key, value []byte) error
	Delete(key []byte) error
	DeleteRange(start, end []byte) error
}

// Iterator walks keys in order. Key and Value are valid until the next
// move; copy them to keep them.
type Iterator interface {
	First() bool
	Last() bool
	Next() bool
	Prev() bool
	SeekGE(key []byte) bool
	SeekLT(key []byte) bool
	Valid() bool
	Key() []byte
	Value() []byte
	Close() error
}
