package log

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/hashicorp/raft"
)

// Key layout. Everything the log owns lives under 'L'; projections own 'P'.
// Integers in keys are big-endian so Pebble iterates them in numeric order.
//
//	'L' 'e' be64(offset)   event log entry (storedEntry encoding)
//	'L' 'r' be64(index)    raft log record
//	'L' 's' name           raft stable store of old versions (moved to the state file, stable.go)
//	'L' 'm' name           log meta (applied raft index, verified mark)
var (
	prefixEntry   = []byte{'L', 'e'}
	prefixRaft    = []byte{'L', 'r'}
	prefixStable  = []byte{'L', 's'}
	keyApplied    = []byte{'L', 'm', 'a'} // last raft index folded into the event log
	keyVerified   = []byte{'L', 'm', 'v'} // entries <= this offset passed a checksum scan at Open
	keyEraseDue   = []byte{'L', 'm', 'e'} // erasure housekeeping still to do (eraseDue)
	keyEraseScrub = []byte{'L', 'm', 'w'} // written by the eraser so that a flush rotates the WAL
)

func u64Key(prefix []byte, n uint64) []byte {
	k := make([]byte, len(prefix)+8)
	copy(k, prefix)
	binary.BigEndian.PutUint64(k[len(prefix):], n)
	return k
}

func entryKey(off uint64) []byte { return u64Key(prefixEntry, off) }
func raftKey(idx uint64) []byte  { return u64Key(prefixRaft, idx) }

// prefixEnd is the first key after every key that starts with prefix.
func prefixEnd(prefix []byte) []byte {
	end := append([]byte(nil), prefix...)
	end[len(end)-1]++
	return end
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Stored entry layout (the value under 'L' 'e' offset):
//
//	[0:4]   CRC32C over be64(offset) || value[4:]
//	[4]     flags (flagZstd: payload is zstd-compressed; flagErased: a tombstone, erase.go)
//	[5:7]   kind, big-endian
//	[7:15]  time, Unix ms, big-endian
//	[15:23] raft index of the command that carried the entry
//	[23:]   payload
//
// The offset is part of the checksum so a value copied under the wrong key
// is caught too. The raft index lets Open roll a torn tail back to a whole
// raft command, which Raft then re-applies.
const (
	storedHeader = 23
	flagZstd     = 1 << 0
)

func encodeStored(off uint64, flags byte, kind Kind, ms int64, raftIndex uint64, payload []byte) []byte {
	v := make([]byte, storedHeader+len(payload))
	v[4] = flags
	binary.BigEndian.PutUint16(v[5:7], uint16(kind))
	binary.BigEndian.PutUint64(v[7:15], uint64(ms))
	binary.BigEndian.PutUint64(v[15:23], raftIndex)
	copy(v[storedHeader:], payload)
	binary.BigEndian.PutUint32(v[0:4], storedCRC(off, v))
	return v
}

func storedCRC(off uint64, v []byte) uint32 {
	var o [8]byte
	binary.BigEndian.PutUint64(o[:], off)
	c := crc32.Update(0, castagnoli, o[:])
	return crc32.Update(c, castagnoli, v[4:])
}

// storedEntry is a decoded, checksum-verified stored value. Payload aliases
// the value it was decoded from.
type storedEntry struct {
	flags     byte
	kind      Kind
	time      int64
	raftIndex uint64
	payload   []byte
}

var errChecksum = errors.New("checksum mismatch")

func decodeStored(off uint64, v []byte) (storedEntry, error) {
	if len(v) < storedHeader {
		return storedEntry{}, fmt.Errorf("entry is %d bytes, shorter than its %d-byte header", len(v), storedHeader)
	}
	if binary.BigEndian.Uint32(v[0:4]) != storedCRC(off, v) {
		return storedEntry{}, errChecksum
	}
	return storedEntry{
		flags:     v[4],
		kind:      Kind(binary.BigEndian.Uint16(v[5:7])),
		time:      int64(binary.BigEndian.Uint64(v[7:15])),
		raftIndex: binary.BigEndian.Uint64(v[15:23]),
		payload:   v[storedHeader:],
	}, nil
}

// raftStore is raft's LogStore and StableStore on the shared Pebble DB.
// Every write is synced: an entry raft believes stored must survive power
// loss, because it is what lets the (unsynced) event log be rebuilt.
type raftStore struct {
	db    *pebble.DB
	guard *diskGuard
	space *diskSpace
	state *stateFile    // raft's stable store
	syncs atomic.Uint64 // durable raft writes, for benchmarks

	// sinceTrim counts the record bytes stored since the trimmer was last
	// woken (onTrim, may be nil), every trimEvery bytes (trim.go).
	sinceTrim atomic.Int64
	trimEvery int64
	onTrim    func()

	mu          sync.Mutex
	first, last uint64 // cached bounds of the raft log; 0 when empty
}

func newRaftStore(db *pebble.DB, guard *diskGuard, space *diskSpace, state *stateFile, stateCreated bool) (*raftStore, error) {
	s := &raftStore{db: db, guard: guard, space: space, state: state}
	if stateCreated {
		if err := s.migrateStable(); err != nil {
			return nil, err
		}
	}
	it, err := db.NewIter(&pebble.IterOptions{LowerBound: prefixRaft, UpperBound: prefixEnd(prefixRaft)})
	if err != nil {
		return nil, err
	}
	defer it.Close()
	if it.First() {
		s.first = binary.BigEndian.Uint64(it.Key()[len(prefixRaft):])
	}
	if it.Last() {
		s.last = binary.BigEndian.Uint64(it.Key()[len(prefixRaft):])
	}
	return s, it.Error()
}

func (s *raftStore) FirstIndex() (uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.first, nil
}

func (s *raftStore) LastIndex() (uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.last, nil
}

// Raft record layout: be64 term, type byte, be64 appendedAt (unix ns),
// uvarint len(extensions), extensions, data.
func encodeRaftLog(l *raft.Log) []byte {
	v := make([]byte, 0, 17+binary.MaxVarintLen64+len(l.Extensions)+len(l.Data))
	v = binary.BigEndian.AppendUint64(v, l.Term)
	v = append(v, byte(l.Type))
	var at int64
	if !l.AppendedAt.IsZero() {
		at = l.AppendedAt.UnixNano()
	}
	v = binary.BigEndian.AppendUint64(v, uint64(at))
	v = binary.AppendUvarint(v, uint64(len(l.Extensions)))
	v = append(v, l.Extensions...)
	return append(v, l.Data...)
}

func decodeRaftLog(idx uint64, v []byte, l *raft.Log) error {
	if len(v) < 17 {
		return fmt.Errorf("log: raft record %d is truncated", idx)
	}
	l.Index = idx
	l.Term = binary.BigEndian.Uint64(v[0:8])
	l.Type = raft.LogType(v[8])
	if at := int64(binary.BigEndian.Uint64(v[9:17])); at != 0 {
		l.AppendedAt = time.Unix(0, at)
	} else {
		l.AppendedAt = time.Time{}
	}
	rest := v[17:]
	n, w := binary.Uvarint(rest)
	if w <= 0 || uint64(len(rest)-w) < n {
		return fmt.Errorf("log: raft record %d has a bad extensions length", idx)
	}
	rest = rest[w:]
	l.Extensions = nil
	if n > 0 {
		l.Extensions = append([]byte(nil), rest[:n]...)
	}
	l.Data = append([]byte(nil), rest[n:]...)
	return nil
}

func (s *raftStore) GetLog(idx uint64, l *raft.Log) error {
	v, closer, err := s.db.Get(raftKey(idx))
	if errors.Is(err, pebble.ErrNotFound) {
		return raft.ErrLogNotFound
	}
	if err != nil {
		return err
	}
	defer closer.Close()
	return decodeRaftLog(idx, v, l)
}

func (s *raftStore) StoreLog(l *raft.Log) error { return s.StoreLogs([]*raft.Log{l}) }

func (s *raftStore) StoreLogs(logs []*raft.Log) error {
	if len(logs) == 0 {
		return nil
	}
	for _, l := range logs {
		if l.Type == raft.LogCommand {
			// Only commands carry entries; raft's own records are tiny and
			// keep elections going on a nearly full disk.
			if err := s.space.aboveFloor(); err != nil {
				return err
			}
			break
		}
	}
	b := s.db.NewBatch()
	defer b.Close()
	var size int64
	for _, l := range logs {
		v := encodeRaftLog(l)
		size += int64(len(v))
		if err := b.Set(raftKey(l.Index), v, nil); err != nil {
			return err
		}
	}
	// Sync: raft acknowledges (and counts toward quorum) only what is here.
	s.syncs.Add(1)
	if err := s.guard.do("storing raft entries", func() error { return b.Commit(pebble.Sync) }); err != nil {
		return err
	}
	s.mu.Lock()
	for _, l := range logs {
		if s.first == 0 || l.Index < s.first {
			s.first = l.Index
		}
		if l.Index > s.last {
			s.last = l.Index
		}
	}
	s.mu.Unlock()
	if s.onTrim != nil && s.sinceTrim.Add(size) >= s.trimEvery {
		s.sinceTrim.Store(0)
		s.onTrim()
	}
	return nil
}

// DeleteRange removes raft records [min, max]. Raft calls it to compact
// after a snapshot and to drop a conflicting suffix; it never touches the
// event log, which is never truncated by compaction.
func (s *raftStore) DeleteRange(min, max uint64) error {
	return s.deleteRange(min, max, pebble.Sync)
}

func (s *raftStore) deleteRange(min, max uint64, sync *pebble.WriteOptions) error {
	if err := s.guard.do("compacting the raft log", func() error {
		return s.db.DeleteRange(raftKey(min), raftKey(max+1), sync)
	}); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	// Re-read the bounds rather than reason about which end was cut.
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: prefixRaft, UpperBound: prefixEnd(prefixRaft)})
	if err != nil {
		return err
	}
	defer it.Close()
	s.first, s.last = 0, 0
	if it.First() {
		s.first = binary.BigEndian.Uint64(it.Key()[len(prefixRaft):])
	}
	if it.Last() {
		s.last = binary.BigEndian.Uint64(it.Key()[len(prefixRaft):])
	}
	return it.Error()
}

// migrateStable moves raft's term and vote from Pebble (where versions
// before the state file kept them) into the new state file.
func (s *raftStore) migrateStable() error {
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: prefixStable, UpperBound: prefixEnd(prefixStable)})
	if err != nil {
		return err
	}
	var kvs [][]byte
	for it.First(); it.Valid(); it.Next() {
		kvs = append(kvs, append([]byte(nil), it.Key()[len(prefixStable):]...), append([]byte(nil), it.Value()...))
	}
	if err := errors.Join(it.Error(), it.Close()); err != nil {
		return err
	}
	if len(kvs) == 0 {
		return nil
	}
	if err := s.state.set(kvs...); err != nil {
		return err
	}
	return s.guard.do("moving raft state to the state file", func() error {
		return s.db.DeleteRange(prefixStable, prefixEnd(prefixStable), pebble.Sync)
	})
}

func (s *raftStore) Set(k, v []byte) error { return s.state.set(k, v) }

func (s *raftStore) Get(k []byte) ([]byte, error) {
	if v := s.state.get(k); v != nil {
		return v, nil
	}
	return []byte{}, nil
}

func (s *raftStore) SetUint64(k []byte, v uint64) error {
	return s.Set(k, binary.BigEndian.AppendUint64(nil, v))
}

func (s *raftStore) GetUint64(k []byte) (uint64, error) {
	v, err := s.Get(k)
	if err != nil || len(v) == 0 {
		return 0, err
	}
	if len(v) != 8 {
		return 0, fmt.Errorf("log: raft stable key %q holds %d bytes, want 8", k, len(v))
	}
	return binary.BigEndian.Uint64(v), nil
}

// getU64 reads a big-endian uint64 meta value; absent means 0.
func getU64(db pebble.Reader, k []byte) (uint64, error) {
	v, closer, err := db.Get(k)
	if errors.Is(err, pebble.ErrNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	defer closer.Close()
	if len(v) != 8 {
		return 0, fmt.Errorf("log: meta key %q holds %d bytes, want 8", k, len(v))
	}
	return binary.BigEndian.Uint64(v), nil
}

func u64Bytes(n uint64) []byte { return binary.BigEndian.AppendUint64(nil, n) }
