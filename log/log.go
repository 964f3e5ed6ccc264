// Package log is Engram's only source of truth: an append-only, replicated
// log of entries stored in Pebble and replicated with Raft. Every PDU, EDU
// and server-side fact enters the system here; everything else is a
// projection folded from it (package projections).
//
// Importers name this package englog to keep it apart from the standard
// library's log.
package log

import (
	"context"
	"errors"
)

// Kind says what an entry's payload is. Kinds are stable on disk: never
// renumber one, only add new ones (see kinds.go).
type Kind uint16

// Entry is one committed record of the log.
type Entry struct {
	// Offset is dense and strictly increasing from 1: entry N+1 follows N
	// with no gap on every node.
	Offset uint64
	Kind   Kind
	// Time is the wall clock of the leader, in Unix milliseconds, assigned
	// when the entry was proposed. Projections use it instead of the clock.
	Time int64
	// Payload is the uncompressed payload; its encoding depends on Kind
	// (package log/facts holds the payload types).
	Payload []byte
}

// Proposal is an entry before it is committed: the caller has already made
// every decision (IDs, hashes, signatures, password hashes) so that applying
// it is deterministic.
type Proposal struct {
	Kind    Kind
	Payload []byte
}

// Log is the seam between writers (api, federation), readers (projections,
// operator tools) and the replicated store.
type Log interface {
	// Append proposes the entries, in order, as one unit and returns their
	// offsets once they are committed by a quorum, durable, and readable by
	// Read. Concurrent callers are group-committed: many Append calls share
	// one durable write. On error none of the entries was acknowledged (a
	// caller may retry; an entry appended twice is the caller's concern).
	Append(ctx context.Context, props ...Proposal) ([]uint64, error)

	// Read returns up to max entries with offsets >= from, in order. It
	// returns fewer (or none) when the log ends.
	Read(from uint64, max int) ([]Entry, error)

	// LastOffset is the offset of the newest committed entry (0 when empty).
	LastOffset() uint64

	// Wait blocks until LastOffset() > after or ctx is done. It is woken by
	// appends, never by polling.
	Wait(ctx context.Context, after uint64) error
}

// Errors callers branch on.
var (
	// ErrNotLeader: this node cannot accept writes now (no leader, or the
	// write could not be forwarded). Retry later.
	ErrNotLeader = errors.New("log: this node is not the leader and no leader is known")
	// ErrOffline: the log was opened by an offline tool (Config.Offline),
	// which never writes to a cluster's log.
	ErrOffline = errors.New("log: opened offline (a tool running while the server is stopped): it does not take writes")
	// ErrClosed: the log was closed.
	ErrClosed = errors.New("log: closed")
	// ErrCorrupt: an entry in the middle of the log failed its checksum. The
	// node must stop; restore from a backup or a peer.
	ErrCorrupt = errors.New("log: corrupt entry")
)
