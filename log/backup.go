package log

import (
	"bufio"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"

	"github.com/cockroachdb/pebble/v2"
	"github.com/klauspost/compress/zstd"
	"github.com/rs/zerolog"
)

// A backup is a directory of immutable segments, each a zstd stream of
// consecutive entries, and a manifest naming them with their SHA-256.
// Entries never change once written and offsets are dense, so any prefix
// of the log is a consistent backup and a later run only adds a segment
// for the entries after the last one.
//
//	DIR/manifest.json
//	DIR/segments/<first offset, 20 digits>-<last offset>.zst
//
// A segment's stream holds, per entry: be64 offset, be16 kind, be64 time
// (Unix ms), uvarint payload length, payload, and a CRC32C of the entry,
// the same discipline as the stored log.

// BackupManifest describes a backup.
type BackupManifest struct {
	Format   int             `json:"format"`
	Segments []BackupSegment `json:"segments"`
}

// BackupSegment is one segment file.
type BackupSegment struct {
	File      string `json:"file"`
	First     uint64 `json:"first_offset"`
	Last      uint64 `json:"last_offset"`
	FirstTime int64  `json:"first_time_ms"`
	LastTime  int64  `json:"last_time_ms"`
	Bytes     int64  `json:"bytes"`
	SHA256    string `json:"sha256"`
}

const backupFormat = 1

// LastOffset is the newest offset the backup holds (0 when empty).
func (m BackupManifest) LastOffset() uint64 {
	if len(m.Segments) == 0 {
		return 0
	}
	return m.Segments[len(m.Segments)-1].Last
}

// ReadBackupManifest reads DIR/manifest.json; a directory without one is
// an empty backup.
func ReadBackupManifest(dir string) (BackupManifest, error) {
	b, err := os.ReadFile(filepath.Join(dir, "manifest.json"))
	if errors.Is(err, os.ErrNotExist) {
		return BackupManifest{Format: backupFormat}, nil
	}
	if err != nil {
		return BackupManifest{}, err
	}
	var m BackupManifest
	if err := json.Unmarshal(b, &m); err != nil {
		return BackupManifest{}, fmt.Errorf("log: %s is not a backup manifest: %w", filepath.Join(dir, "manifest.json"), err)
	}
	if m.Format != backupFormat {
		return BackupManifest{}, fmt.Errorf("log: backup format %d is not known to this engram (it writes %d): use the engram that wrote it", m.Format, backupFormat)
	}
	for i, s := range m.Segments {
		if i > 0 && s.First != m.Segments[i-1].Last+1 || i == 0 && s.First != 1 || s.Last < s.First {
			return BackupManifest{}, fmt.Errorf("log: backup manifest in %s lists segment %s out of order (offsets %d..%d)", dir, s.File, s.First, s.Last)
		}
	}
	return m, nil
}

// WriteBackupSegment writes entries (consecutive, starting right after
// the backup's last offset) as one new segment, synced, and then the
// manifest naming it. A crash leaves either the old manifest or the new.
func WriteBackupSegment(dir string, m *BackupManifest, entries []Entry) error {
	if len(entries) == 0 {
		return nil
	}
	if want := m.LastOffset() + 1; entries[0].Offset != want {
		return fmt.Errorf("log: backup segment starts at offset %d, the backup ends at %d", entries[0].Offset, want-1)
	}
	segDir := filepath.Join(dir, "segments")
	if err := os.MkdirAll(segDir, 0o700); err != nil {
		return err
	}
	first, last := entries[0].Offset, entries[len(entries)-1].Offset
	name := fmt.Sprintf("%020d-%020d.zst", first, last)
	tmp, err := os.CreateTemp(segDir, name+".*.tmp")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	h := sha256.New()
	cw := &countWriter{w: io.MultiWriter(tmp, h)}
	zw, err := zstd.NewWriter(cw, zstd.WithEncoderLevel(zstd.SpeedDefault))
	if err != nil {
		tmp.Close()
		return err
	}
	bw := bufio.NewWriterSize(zw, 256<<10)
	var hdr [18 + binary.MaxVarintLen64]byte
	for i, e := range entries {
		if e.Offset != first+uint64(i) {
			tmp.Close()
			return fmt.Errorf("log: backup entries jump from %d to %d", first+uint64(i)-1, e.Offset)
		}
		binary.BigEndian.PutUint64(hdr[0:8], e.Offset)
		binary.BigEndian.PutUint16(hdr[8:10], uint16(e.Kind))
		binary.BigEndian.PutUint64(hdr[10:18], uint64(e.Time))
		n := 18 + binary.PutUvarint(hdr[18:], uint64(len(e.Payload)))
		crc := crc32Update(crc32Update(0, hdr[:n]), e.Payload)
		bw.Write(hdr[:n])
		bw.Write(e.Payload)
		var c [4]byte
		binary.BigEndian.PutUint32(c[:], crc)
		if _, err := bw.Write(c[:]); err != nil {
			tmp.Close()
			return err
		}
	}
	if err := bw.Flush(); err != nil {
		tmp.Close()
		return err
	}
	if err := zw.Close(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), filepath.Join(segDir, name)); err != nil {
		return err
	}
	next := *m
	next.Format = backupFormat
	next.Segments = append(append([]BackupSegment(nil), m.Segments...), BackupSegment{
		File: filepath.Join("segments", name), First: first, Last: last,
		FirstTime: entries[0].Time, LastTime: entries[len(entries)-1].Time,
		Bytes: cw.n, SHA256: hex.EncodeToString(h.Sum(nil)),
	})
	b, err := json.MarshalIndent(next, "", "  ")
	if err != nil {
		return err
	}
	if err := writeSynced(filepath.Join(dir, "manifest.json"), b); err != nil {
		return err
	}
	*m = next
	return nil
}

// ReadBackupSegment checks a segment against its manifest entry (size,
// SHA-256, every entry's CRC and offset) and calls fn for each entry, in
// order, until fn returns false.
func ReadBackupSegment(dir string, s BackupSegment, fn func(Entry) bool) error {
	f, err := os.Open(filepath.Join(dir, s.File))
	if err != nil {
		return fmt.Errorf("log: backup segment %s: %w", s.File, err)
	}
	defer f.Close()
	// The whole file's digest first: a damaged segment is named before
	// anything is restored from it.
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return fmt.Errorf("log: reading backup segment %s: %w", s.File, err)
	}
	if n != s.Bytes || hex.EncodeToString(h.Sum(nil)) != s.SHA256 {
		return fmt.Errorf("%w: backup segment %s is damaged (%d bytes, SHA-256 differs from the manifest's): restore from another copy of the backup", ErrCorrupt, s.File, n)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return err
	}
	zr, err := zstd.NewReader(f, zstd.WithDecoderConcurrency(1))
	if err != nil {
		return err
	}
	defer zr.Close()
	r := bufio.NewReaderSize(zr, 256<<10)
	var hdr [18]byte
	for want := s.First; want <= s.Last; want++ {
		bad := func(why string) error {
			return fmt.Errorf("%w: backup segment %s, offset %d: %s", ErrCorrupt, s.File, want, why)
		}
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return bad("truncated")
		}
		size, err := binary.ReadUvarint(r)
		if err != nil || size > 1<<30 {
			return bad("bad length")
		}
		e := Entry{Offset: binary.BigEndian.Uint64(hdr[0:8]), Kind: Kind(binary.BigEndian.Uint16(hdr[8:10])), Time: int64(binary.BigEndian.Uint64(hdr[10:18])), Payload: make([]byte, size)}
		if _, err := io.ReadFull(r, e.Payload); err != nil {
			return bad("truncated")
		}
		var c [4]byte
		if _, err := io.ReadFull(r, c[:]); err != nil {
			return bad("truncated")
		}
		var lb [binary.MaxVarintLen64]byte
		crc := crc32Update(crc32Update(crc32Update(0, hdr[:]), lb[:binary.PutUvarint(lb[:], size)]), e.Payload)
		if crc != binary.BigEndian.Uint32(c[:]) {
			return bad("checksum mismatch")
		}
		if e.Offset != want {
			return bad(fmt.Sprintf("holds offset %d", e.Offset))
		}
		if !fn(e) {
			return nil
		}
	}
	return nil
}

// ImportLog creates a new log in dir (which must hold none) from entries
// given in order from offset 1, as `engram restore` does: the event log
// only, so the node starts as a fresh one-voter raft whose history is
// these entries, and projections rebuild from them.
func ImportLog(dir string, next func() (Entry, bool, error)) (last uint64, err error) {
	if ents, _ := os.ReadDir(dir); len(ents) > 0 {
		return 0, fmt.Errorf("log: %s is not empty: restore into a new data directory", dir)
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return 0, err
	}
	opts := pebbleOptions(zerolog.Nop(), nil, 0, &tableDamage{})
	db, err := pebble.Open(dir, opts)
	opts.Cache.Unref()
	if err != nil {
		return 0, err
	}
	defer func() {
		if cerr := db.Close(); err == nil {
			err = cerr
		}
	}()
	b := db.NewBatch()
	for {
		e, ok, err := next()
		if err != nil {
			b.Close()
			return last, err
		}
		if !ok {
			break
		}
		if e.Offset != last+1 {
			b.Close()
			return last, fmt.Errorf("log: import expected offset %d, got %d", last+1, e.Offset)
		}
		last = e.Offset
		// Payloads are stored raw: Pebble's zstd blocks compress them
		// together (see compressMin); raft index 0 marks imported entries.
		if err := b.Set(entryKey(last), encodeStored(last, 0, e.Kind, e.Time, 0, e.Payload), nil); err != nil {
			b.Close()
			return last, err
		}
		if b.Len() > 8<<20 {
			if err := b.Commit(pebble.NoSync); err != nil {
				b.Close()
				return last, err
			}
			b.Close()
			b = db.NewBatch()
		}
	}
	// applied = 0: raft's own fresh log starts at index 1.
	if err := b.Set(keyVerified, u64Bytes(last), nil); err != nil {
		b.Close()
		return last, err
	}
	if err := b.Commit(pebble.Sync); err != nil {
		b.Close()
		return last, err
	}
	b.Close()
	return last, nil
}

func crc32Update(c uint32, p []byte) uint32 { return crc32.Update(c, castagnoli, p) }

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

func writeSynced(path string, b []byte) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
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
	return os.Rename(tmp, path)
}
