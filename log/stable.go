package log

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"sort"
	"sync"
)

// stateFile holds raft's stable store (current term, vote) and the offset
// this node last acknowledged, outside Pebble, for two reasons:
//
//   - hashicorp/raft panics when it cannot save its term. The file is
//     preallocated and only ever overwritten in place, so a full disk
//     cannot fail its writes (and a Pebble that gave up after a failed WAL
//     write does not take raft down with it).
//   - The acknowledged offset must survive damage to Pebble's newest WAL,
//     which Pebble drops silently on replay: comparing it with what the
//     log holds at start is how lost acknowledged entries are found.
//
// Layout: two slots of stateSlotSize bytes, written alternately, each
// CRC32C || be64 seq || be16 len || records (uvarint key len, key, uvarint
// value len, value). Open takes the valid slot with the higher seq, so a
// write torn by a crash leaves the previous state.
const (
	stateFileName = "STATE"
	stateSlotSize = 2048
	stateSlotHead = 14
)

// keyAcked is the state file's record of the newest offset this node has
// acknowledged to a writer.
var keyAcked = []byte("EngramAckedOffset")

type stateFile struct {
	mu   sync.Mutex
	f    *os.File
	seq  uint64
	vals map[string][]byte
}

// openStateFile opens dir/STATE, creating and preallocating it when absent
// (created reports that, so a caller can migrate older state into it).
func openStateFile(dir string) (s *stateFile, created bool, err error) {
	path := filepath.Join(dir, stateFileName)
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if errors.Is(err, os.ErrNotExist) {
		if err := createStateFile(dir, path); err != nil {
			return nil, false, fmt.Errorf("log: creating %s: %w", path, err)
		}
		created = true
		f, err = os.OpenFile(path, os.O_RDWR, 0)
	}
	if err != nil {
		return nil, false, fmt.Errorf("log: opening %s: %w", path, err)
	}
	s = &stateFile{f: f, vals: map[string][]byte{}}
	buf := make([]byte, 2*stateSlotSize)
	if _, err := f.ReadAt(buf, 0); err != nil {
		f.Close()
		return nil, false, fmt.Errorf("log: reading %s (truncated? restore it from a backup of the data directory): %w", path, err)
	}
	found := false
	for i := 0; i < 2; i++ {
		seq, vals, ok := decodeStateSlot(buf[i*stateSlotSize : (i+1)*stateSlotSize])
		if ok && (!found || seq > s.seq) {
			s.seq, s.vals, found = seq, vals, true
		}
	}
	if !found && !created {
		f.Close()
		return nil, false, fmt.Errorf("log: both slots of %s are damaged: raft's term and vote are lost; restore the data directory from a backup, or wipe it and let it resync from a peer", path)
	}
	return s, created, nil
}

func createStateFile(dir, path string) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	// An empty state with seq 1 (slot seq%2), so the file reads as valid.
	img := make([]byte, 2*stateSlotSize)
	slot, err := encodeStateSlot(1, map[string][]byte{})
	if err != nil {
		f.Close()
		return err
	}
	copy(img[stateSlotSize:], slot)
	if _, err := f.Write(img); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

func encodeStateSlot(seq uint64, vals map[string][]byte) ([]byte, error) {
	keys := make([]string, 0, len(vals))
	for k := range vals {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var body []byte
	for _, k := range keys {
		body = binary.AppendUvarint(body, uint64(len(k)))
		body = append(body, k...)
		body = binary.AppendUvarint(body, uint64(len(vals[k])))
		body = append(body, vals[k]...)
	}
	if stateSlotHead+len(body) > stateSlotSize {
		return nil, fmt.Errorf("log: state (%d bytes) does not fit a %d-byte slot", len(body), stateSlotSize-stateSlotHead)
	}
	slot := make([]byte, stateSlotSize)
	binary.BigEndian.PutUint64(slot[4:12], seq)
	binary.BigEndian.PutUint16(slot[12:14], uint16(len(body)))
	copy(slot[stateSlotHead:], body)
	binary.BigEndian.PutUint32(slot[0:4], crc32.Checksum(slot[4:stateSlotHead+len(body)], castagnoli))
	return slot, nil
}

func decodeStateSlot(slot []byte) (seq uint64, vals map[string][]byte, ok bool) {
	n := int(binary.BigEndian.Uint16(slot[12:14]))
	if stateSlotHead+n > len(slot) || binary.BigEndian.Uint32(slot[0:4]) != crc32.Checksum(slot[4:stateSlotHead+n], castagnoli) {
		return 0, nil, false
	}
	seq = binary.BigEndian.Uint64(slot[4:12])
	if seq == 0 {
		return 0, nil, false // an all-zero slot
	}
	vals = map[string][]byte{}
	rest := slot[stateSlotHead : stateSlotHead+n]
	for len(rest) > 0 {
		kl, w := binary.Uvarint(rest)
		if w <= 0 || uint64(len(rest)-w) < kl {
			return 0, nil, false
		}
		k := string(rest[w : w+int(kl)])
		rest = rest[w+int(kl):]
		vl, w := binary.Uvarint(rest)
		if w <= 0 || uint64(len(rest)-w) < vl {
			return 0, nil, false
		}
		vals[k] = append([]byte(nil), rest[w:w+int(vl)]...)
		rest = rest[w+int(vl):]
	}
	return seq, vals, true
}

// get returns a copy of the value of k (nil when absent).
func (s *stateFile) get(k []byte) []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.vals[string(k)]
	if !ok {
		return nil
	}
	return append([]byte{}, v...)
}

// set durably records k = v (and any other pairs given, atomically):
// written in place over the older slot (seq%2) and synced.
func (s *stateFile) set(kvs ...[]byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	next := make(map[string][]byte, len(s.vals)+len(kvs)/2)
	for k, v := range s.vals {
		next[k] = v
	}
	for i := 0; i+1 < len(kvs); i += 2 {
		next[string(kvs[i])] = append([]byte(nil), kvs[i+1]...)
	}
	slot, err := encodeStateSlot(s.seq+1, next)
	if err != nil {
		return err
	}
	if _, err := s.f.WriteAt(slot, int64((s.seq+1)%2)*stateSlotSize); err != nil {
		return fmt.Errorf("log: writing %s: %w", s.f.Name(), err)
	}
	if err := s.f.Sync(); err != nil {
		return fmt.Errorf("log: syncing %s: %w", s.f.Name(), err)
	}
	s.seq++
	s.vals = next
	return nil
}

func (s *stateFile) getU64(k []byte) uint64 {
	v := s.get(k)
	if len(v) != 8 {
		return 0
	}
	return binary.BigEndian.Uint64(v)
}

func (s *stateFile) close() error { return s.f.Close() }
