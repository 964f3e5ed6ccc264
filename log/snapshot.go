package log

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/hashicorp/raft"
)

// Snapshots are lazy. The event log is append-only and identical on every
// node, so "the state at offset N" is just entries 1..N, which this node
// keeps forever anyway. A local snapshot therefore stores only a small
// header (lazySnapMagic, last offset, applied raft index): taking one costs
// a sync, not a copy of the log, and snapshots take no disk space.
//
// Only when raft opens a snapshot (to send it to a follower that fell
// behind the raft log) does lazySnapshotStore materialize the full stream
// from Pebble into a temporary file, because raft must announce its size
// before sending. A snapshot received from a leader is stored in full and
// restored by fsm.Restore, which appends what this node lacks.
var lazySnapMagic = []byte("ENGLOGL1")

type lazySnapshotStore struct {
	*raft.FileSnapshotStore
	dir string
	fsm *fsm
}

func (s *lazySnapshotStore) Open(id string) (*raft.SnapshotMeta, io.ReadCloser, error) {
	meta, rc, err := s.FileSnapshotStore.Open(id)
	if err != nil {
		return nil, nil, err
	}
	br := bufio.NewReader(rc)
	head, err := br.Peek(len(lazySnapMagic) + 16)
	if err != nil || string(head[:len(lazySnapMagic)]) != string(lazySnapMagic) {
		// A full stream (received from a leader): hand it over as is.
		return meta, readCloser{Reader: br, Closer: rc}, nil
	}
	last := binary.BigEndian.Uint64(head[len(lazySnapMagic):])
	applied := binary.BigEndian.Uint64(head[len(lazySnapMagic)+8:])
	rc.Close()

	tmp, err := os.CreateTemp(s.dir, "materialize-*.tmp")
	if err != nil {
		return nil, nil, fmt.Errorf("log: materializing snapshot %s: %w", id, err)
	}
	cleanup := func() { tmp.Close(); os.Remove(tmp.Name()) }
	full := &fsmSnapshot{db: s.fsm.db, last: last, applied: applied}
	if err := full.write(tmp); err != nil {
		cleanup()
		return nil, nil, fmt.Errorf("log: materializing snapshot %s: %w", id, err)
	}
	size, err := tmp.Seek(0, io.SeekCurrent)
	if err == nil {
		_, err = tmp.Seek(0, io.SeekStart)
	}
	if err != nil {
		cleanup()
		return nil, nil, err
	}
	m := *meta
	m.Size = size
	return &m, readCloser{Reader: bufio.NewReaderSize(tmp, 64<<10), Closer: closerFunc(func() error { cleanup(); return nil })}, nil
}

// removeStale deletes materialized streams left by a crash mid-send.
func (s *lazySnapshotStore) removeStale() {
	stale, _ := filepath.Glob(filepath.Join(s.dir, "materialize-*.tmp"))
	for _, f := range stale {
		os.Remove(f)
	}
}

type readCloser struct {
	io.Reader
	io.Closer
}

type closerFunc func() error

func (f closerFunc) Close() error { return f() }
