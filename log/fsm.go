package log

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"

	"github.com/cockroachdb/pebble/v2"
	"github.com/hashicorp/raft"
	"github.com/klauspost/compress/zstd"
)

// A raft command carries one or more entries from one or more Append calls
// (group commit). Layout: version byte, be64 time (Unix ms, shared by the
// command's entries), uvarint count, then per entry: flags byte, be16 kind,
// uvarint len, payload (already compressed by the proposer when large, so
// followers only copy bytes).
const cmdVersion = 1

func appendCmdEntry(dst []byte, flags byte, kind Kind, payload []byte) []byte {
	dst = append(dst, flags)
	dst = binary.BigEndian.AppendUint16(dst, uint16(kind))
	dst = binary.AppendUvarint(dst, uint64(len(payload)))
	return append(dst, payload...)
}

type cmdEntry struct {
	flags   byte
	kind    Kind
	payload []byte
}

func decodeCmd(data []byte) (ms int64, entries []cmdEntry, err error) {
	if len(data) < 9 || data[0] != cmdVersion {
		return 0, nil, errors.New("log: raft command has an unknown version (a newer engram wrote it? upgrade this node)")
	}
	ms = int64(binary.BigEndian.Uint64(data[1:9]))
	count, w := binary.Uvarint(data[9:])
	if w <= 0 || count > uint64(len(data)) {
		return 0, nil, errors.New("log: raft command has a bad entry count")
	}
	entries = make([]cmdEntry, 0, count)
	rest := data[9+w:]
	for i := uint64(0); i < count; i++ {
		if len(rest) < 3 {
			return 0, nil, errors.New("log: raft command is truncated")
		}
		e := cmdEntry{flags: rest[0], kind: Kind(binary.BigEndian.Uint16(rest[1:3]))}
		n, w := binary.Uvarint(rest[3:])
		if w <= 0 || uint64(len(rest)-3-w) < n {
			return 0, nil, errors.New("log: raft command has a bad payload length")
		}
		e.payload = rest[3+w : 3+w+int(n)]
		rest = rest[3+w+int(n):]
		entries = append(entries, e)
	}
	if len(rest) != 0 {
		return 0, nil, errors.New("log: raft command has trailing bytes")
	}
	return ms, entries, nil
}

// applyResult is what ApplyBatch answers for one raft command.
type applyResult struct {
	first uint64 // offset of the command's first entry
	err   error
}

// fsm folds committed raft commands into the event log. Offsets are
// assigned here, as last+1, so they are identical on every node.
type fsm struct {
	db    *pebble.DB
	dec   *zstd.Decoder
	guard *diskGuard

	lastOffset atomic.Uint64
	lastTime   atomic.Int64  // Time of the newest entry, so a new leader never stamps earlier
	applied    atomic.Uint64 // last raft index folded in; persisted in the same batch

	mu   sync.Mutex
	wake chan struct{} // closed and replaced on every append

	onApply func(entries int) // metrics hook; may be nil
	onErase func()            // wakes the erasure housekeeping; may be nil
	// dueMu orders the erasure housekeeping's read-then-clear of
	// keyEraseDue against an apply that extends it.
	dueMu sync.Mutex
}

func newFSM(db *pebble.DB, dec *zstd.Decoder, guard *diskGuard, last, applied uint64) *fsm {
	f := &fsm{db: db, dec: dec, guard: guard, wake: make(chan struct{})}
	f.lastOffset.Store(last)
	f.applied.Store(applied)
	return f
}

// waitCh returns a channel closed at the next append.
func (f *fsm) waitCh() <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.wake
}

func (f *fsm) published(last uint64) {
	f.lastOffset.Store(last)
	f.mu.Lock()
	close(f.wake)
	f.wake = make(chan struct{})
	f.mu.Unlock()
}

var errAlreadyApplied = errors.New("log: raft entry already applied (replay after restart)")

func (f *fsm) Apply(l *raft.Log) interface{} { return f.ApplyBatch([]*raft.Log{l})[0] }

func (f *fsm) ApplyBatch(logs []*raft.Log) []interface{} {
	resp := make([]interface{}, len(logs))
	if err := f.guard.failed(); err != nil {
		// The event log on this node is behind its raft log: applying
		// more would assign offsets from a wrong base.
		for i := range resp {
			resp[i] = applyResult{err: err}
		}
		return resp
	}
	b := f.db.NewBatch()
	defer b.Close()
	off, applied, lastTime := f.lastOffset.Load(), f.applied.Load(), f.lastTime.Load()
	startOff, startApplied := off, applied
	var erases []pendingErase
	for i, l := range logs {
		if l.Index <= applied {
			// Idempotence by raft index: a restart re-applies entries whose
			// effects are already in Pebble.
			resp[i] = applyResult{err: errAlreadyApplied}
			continue
		}
		applied = l.Index
		if l.Type != raft.LogCommand {
			continue
		}
		ms, entries, err := decodeCmd(l.Data)
		if err != nil {
			// Every node decodes the same bytes the same way, so skipping a
			// malformed command keeps them identical; the proposer sees why.
			resp[i] = applyResult{err: err}
			continue
		}
		resp[i] = applyResult{first: off + 1}
		lastTime = ms
		for _, e := range entries {
			off++
			if err := b.Set(entryKey(off), encodeStored(off, e.flags, e.kind, ms, l.Index, e.payload), nil); err != nil {
				return f.fail(resp, err)
			}
			if e.kind == KindErase {
				erases = append(erases, pendingErase{off: off, raftIndex: l.Index, flags: e.flags, payload: e.payload})
			}
		}
	}
	if applied == startApplied {
		return resp
	}
	if len(erases) > 0 {
		// Held until the commit: the housekeeping must not clear a due
		// this batch extends.
		f.dueMu.Lock()
		defer f.dueMu.Unlock()
		due, err := f.applyErasures(b, erases, batchValues(logs, startApplied, startOff, off))
		if err == nil && due.raftIndex != 0 {
			var prev eraseDue
			if prev, err = readEraseDue(f.db); err == nil {
				err = b.Set(keyEraseDue, prev.merge(due).encode(), nil)
			}
		}
		if err != nil {
			return f.fail(resp, err)
		}
	}
	if err := b.Set(keyApplied, u64Bytes(applied), nil); err != nil {
		return f.fail(resp, err)
	}
	// NoSync is safe here: the raft log (synced, same Pebble WAL) already
	// holds these entries durably. If a crash loses this batch, the applied
	// index is lost with it, and Raft re-applies the commands on restart.
	// Snapshot syncs before raft may compact them away.
	if err := f.guard.do("writing the event log", func() error { return b.Commit(pebble.NoSync) }); err != nil {
		return f.fail(resp, err)
	}
	f.applied.Store(applied)
	f.lastTime.Store(lastTime)
	if off != startOff {
		f.published(off)
		if f.onApply != nil {
			f.onApply(int(off - startOff))
		}
	}
	if len(erases) > 0 && f.onErase != nil {
		f.onErase()
	}
	return resp
}

// batchValues returns a lookup of the stored values this ApplyBatch wrote
// (offsets (startOff, endOff]), built on first use: only an erasure that
// names an entry of its own batch needs it, which happens when a restart
// re-applies both.
func batchValues(logs []*raft.Log, startApplied, startOff, endOff uint64) func(uint64) []byte {
	var vals map[uint64][]byte
	return func(target uint64) []byte {
		if target <= startOff || target > endOff {
			return nil
		}
		if vals == nil {
			vals = map[uint64][]byte{}
			off := startOff
			for _, l := range logs {
				if l.Index <= startApplied || l.Type != raft.LogCommand {
					continue
				}
				ms, entries, err := decodeCmd(l.Data)
				if err != nil {
					continue
				}
				for _, e := range entries {
					off++
					vals[off] = encodeStored(off, e.flags, e.kind, ms, l.Index, e.payload)
				}
			}
		}
		return vals[target]
	}
}

// fail trips the guard: the event log on this node is now behind its raft
// log, so accepting more would assign offsets from a wrong base.
func (f *fsm) fail(resp []interface{}, cause error) []interface{} {
	err := f.guard.trip(fmt.Errorf("log: writing the event log failed; free space or replace the disk, then restart this node (raft re-applies what is missing): %w", cause))
	for i := range resp {
		resp[i] = applyResult{err: err}
	}
	return resp
}

// Snapshot captures the offset and raft index reached: since the event log
// is append-only and identical on every node, a snapshot at offset N is just
// entries 1..N, and a receiver keeps the prefix it already has.
func (f *fsm) Snapshot() (raft.FSMSnapshot, error) {
	// Make every applied (NoSync) write durable before raft records this
	// snapshot and compacts the raft entries that could rebuild them.
	if err := f.guard.do("syncing before a snapshot", func() error { return f.db.LogData(nil, pebble.Sync) }); err != nil {
		return nil, err
	}
	return &fsmSnapshot{db: f.db, last: f.lastOffset.Load(), applied: f.applied.Load()}, nil
}

type fsmSnapshot struct {
	db            *pebble.DB
	last, applied uint64
}

// Full snapshot stream, as sent to followers: magic, be64 last offset, be64 applied raft index, then
// per entry uvarint len + stored value (checksummed, offsets implied), all
// inside one zstd frame.
var snapMagic = []byte("ENGLOGS1")

// Persist writes only the lazy header (see snapshot.go).
func (s *fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	hdr := append(append([]byte(nil), lazySnapMagic...), u64Bytes(s.last)...)
	if _, err := sink.Write(append(hdr, u64Bytes(s.applied)...)); err != nil {
		_ = sink.Cancel()
		return err
	}
	return sink.Close()
}

func (s *fsmSnapshot) write(w io.Writer) error {
	zw, err := zstd.NewWriter(w, zstd.WithEncoderLevel(zstd.SpeedFastest))
	if err != nil {
		return err
	}
	bw := bufio.NewWriterSize(zw, 64<<10)
	hdr := append(append([]byte(nil), snapMagic...), u64Bytes(s.last)...)
	hdr = append(hdr, u64Bytes(s.applied)...)
	if _, err := bw.Write(hdr); err != nil {
		return err
	}
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: entryKey(1), UpperBound: entryKey(s.last + 1)})
	if err != nil {
		return err
	}
	defer it.Close()
	want := uint64(1)
	var lb [binary.MaxVarintLen64]byte
	for it.First(); it.Valid(); it.Next() {
		if got := binary.BigEndian.Uint64(it.Key()[len(prefixEntry):]); got != want {
			return fmt.Errorf("log: snapshot found offset %d where %d was expected (gap in the event log)", got, want)
		}
		want++
		v := it.Value()
		if _, err := bw.Write(lb[:binary.PutUvarint(lb[:], uint64(len(v)))]); err != nil {
			return err
		}
		if _, err := bw.Write(v); err != nil {
			return err
		}
	}
	if err := it.Error(); err != nil {
		return err
	}
	if want != s.last+1 {
		return fmt.Errorf("log: snapshot expected entries up to %d, the event log ends at %d", s.last, want-1)
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	return zw.Close()
}

func (s *fsmSnapshot) Release() {}

// Restore appends the entries this node lacks. Entries it already has are
// checked against the snapshot's checksums: a mismatch means the logs
// diverged, which must stop the node rather than be papered over.
func (f *fsm) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	zr, err := zstd.NewReader(rc, zstd.WithDecoderConcurrency(1))
	if err != nil {
		return err
	}
	defer zr.Close()
	r := bufio.NewReaderSize(zr, 64<<10)
	hdr := make([]byte, len(snapMagic)+16)
	if _, err := io.ReadFull(r, hdr); err != nil {
		return fmt.Errorf("log: snapshot header: %w", err)
	}
	if string(hdr[:len(snapMagic)]) != string(snapMagic) {
		return errors.New("log: snapshot has an unknown format")
	}
	last := binary.BigEndian.Uint64(hdr[len(snapMagic):])
	snapApplied := binary.BigEndian.Uint64(hdr[len(snapMagic)+8:])
	local := f.lastOffset.Load()
	var lastTime int64
	var due eraseDue // local content the snapshot holds erased
	b := f.db.NewBatch()
	defer func() { b.Close() }()
	for off := uint64(1); off <= last; off++ {
		n, err := binary.ReadUvarint(r)
		if err != nil {
			return fmt.Errorf("log: snapshot truncated at offset %d: %w", off, err)
		}
		v := make([]byte, n)
		if _, err := io.ReadFull(r, v); err != nil {
			return fmt.Errorf("log: snapshot truncated at offset %d: %w", off, err)
		}
		se, err := decodeStored(off, v)
		if err != nil {
			return fmt.Errorf("%w: snapshot entry %d: %v", ErrCorrupt, off, err)
		}
		lastTime = se.time
		if off <= local {
			mine, closer, err := f.db.Get(entryKey(off))
			if err != nil {
				return fmt.Errorf("log: reading local entry %d during restore: %w", off, err)
			}
			same, replace := sameEntry(f.dec, off, mine, v)
			closer.Close()
			if !same {
				return fmt.Errorf("%w: entry %d differs from the leader's snapshot: this node's log diverged; wipe its data directory and let it resync", ErrCorrupt, off)
			}
			if !replace {
				continue
			}
			// The leader erased this entry at a raft index this node
			// never applied (its raft log was compacted away): take the
			// tombstone, and clean the disk after it.
			due = due.merge(eraseDue{raftIndex: snapApplied, first: off, last: off})
		}
		if err := b.Set(entryKey(off), v, nil); err != nil {
			return err
		}
		if b.Len() > 4<<20 {
			if err := f.guard.do("restoring a snapshot", func() error { return b.Commit(pebble.NoSync) }); err != nil {
				return err
			}
			b.Close()
			b = f.db.NewBatch()
		}
	}
	applied := f.applied.Load()
	if snapApplied > applied {
		applied = snapApplied
	}
	if err := b.Set(keyApplied, u64Bytes(applied), nil); err != nil {
		return err
	}
	if due.raftIndex != 0 {
		f.dueMu.Lock()
		defer f.dueMu.Unlock()
		prev, err := readEraseDue(f.db)
		if err != nil {
			return err
		}
		if err := b.Set(keyEraseDue, prev.merge(due).encode(), nil); err != nil {
			return err
		}
	}
	// Sync: raft will drop its log up to the snapshot, so nothing could
	// re-apply these entries after a crash.
	if err := f.guard.do("restoring a snapshot", func() error { return b.Commit(pebble.Sync) }); err != nil {
		return err
	}
	f.applied.Store(applied)
	if last > local {
		f.lastTime.Store(lastTime)
		f.published(last)
	}
	if due.raftIndex != 0 && f.onErase != nil {
		f.onErase()
	}
	return nil
}
