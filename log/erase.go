package log

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sort"

	"github.com/cockroachdb/pebble/v2"
	"github.com/klauspost/compress/zstd"
)

// Erasure. The log is append-only except for one thing: an erase fact
// (KindErase) rewrites the entries it names, in place, as tombstones that
// keep their offset, kind, time and a SHA-256 of the content, and nothing
// else. Offsets stay dense, so nothing that counts or cites offsets moves;
// what the entries said is gone. This is what an admin's purge (a room
// deleted with purge, a history purge) and an erasure request need: the
// data removed from the disk, not hidden.
//
// The handler decides which entries go and records the decision as
// offsets (decide, then record); applying the fact is deterministic, so
// every node rewrites the same entries into the same bytes at the same
// point of the log. A node then removes the content from the rest of its
// disk in the background (erasure housekeeping, eraser.go): its raft log,
// Pebble's write-ahead logs and the tables still holding the old values.

// Erasure is the payload of a KindErase entry.
type Erasure struct {
	// Reason says what asked for it ("room_deleted", "history_purged",
	// "user_erased"), and Ref names that request (a delete or purge ID).
	Reason string `json:"reason"`
	Ref    string `json:"ref,omitempty"`
	// Ranges are the offsets to erase, as inclusive [first, last] runs.
	// Offsets at or after the erase entry's own, and erase entries, are
	// left alone.
	Ranges [][2]uint64 `json:"ranges"`
}

// EraseProposal encodes e, with its offsets sorted into runs.
func EraseProposal(reason, ref string, offsets []uint64) Proposal {
	offs := append([]uint64(nil), offsets...)
	sort.Slice(offs, func(i, j int) bool { return offs[i] < offs[j] })
	e := Erasure{Reason: reason, Ref: ref, Ranges: [][2]uint64{}}
	for _, o := range offs {
		if o == 0 {
			continue
		}
		if k := len(e.Ranges); k > 0 && o <= e.Ranges[k-1][1]+1 {
			e.Ranges[k-1][1] = max(e.Ranges[k-1][1], o)
			continue
		}
		e.Ranges = append(e.Ranges, [2]uint64{o, o})
	}
	b, err := json.Marshal(e)
	if err != nil {
		panic(err) // plain struct: cannot fail
	}
	return Proposal{Kind: KindErase, Payload: b}
}

// Count is how many offsets the erasure names.
func (e Erasure) Count() uint64 {
	var n uint64
	for _, r := range e.Ranges {
		if r[1] >= r[0] {
			n += r[1] - r[0] + 1
		}
	}
	return n
}

// Tombstone is the payload Read returns, as a KindErased entry, for an
// entry an erasure rewrote.
type Tombstone struct {
	Kind     Kind   `json:"kind"`      // the kind the entry had
	SHA256   string `json:"sha256"`    // of its (uncompressed) payload, hex
	ErasedBy uint64 `json:"erased_by"` // offset of the KindErase entry
}

// A tombstone is stored like any entry (same header, same checksum) with
// flagErased set, the original kind, time and raft index, and a 40-byte
// payload: the SHA-256 of the original payload, then be64 of the erase
// entry's offset.
const (
	flagErased     = 1 << 1
	tombstoneBytes = sha256.Size + 8
)

func encodeTombstone(off uint64, orig storedEntry, sum [sha256.Size]byte, by uint64) []byte {
	p := make([]byte, 0, tombstoneBytes)
	p = append(p, sum[:]...)
	p = binary.BigEndian.AppendUint64(p, by)
	return encodeStored(off, flagErased, orig.kind, orig.time, orig.raftIndex, p)
}

// tombstoneOf decodes a stored tombstone's payload.
func tombstoneOf(se storedEntry) (Tombstone, error) {
	if len(se.payload) != tombstoneBytes {
		return Tombstone{}, fmt.Errorf("tombstone payload is %d bytes, want %d", len(se.payload), tombstoneBytes)
	}
	return Tombstone{Kind: se.kind, SHA256: hex.EncodeToString(se.payload[:sha256.Size]),
		ErasedBy: binary.BigEndian.Uint64(se.payload[sha256.Size:])}, nil
}

// erasedEntry is how Read presents a tombstone: a KindErased entry, so
// every consumer that switches on Kind skips it (folding it is a no-op).
func erasedEntry(off uint64, se storedEntry) (Entry, error) {
	t, err := tombstoneOf(se)
	if err != nil {
		return Entry{}, err
	}
	b, _ := json.Marshal(t)
	return Entry{Offset: off, Kind: KindErased, Time: se.time, Payload: b}, nil
}

// contentSum is the SHA-256 of a stored entry's uncompressed payload.
func contentSum(dec *zstd.Decoder, se storedEntry) ([sha256.Size]byte, error) {
	p := se.payload
	if se.flags&flagZstd != 0 {
		var err error
		if p, err = dec.DecodeAll(se.payload, nil); err != nil {
			return [sha256.Size]byte{}, fmt.Errorf("payload does not decompress: %v", err)
		}
	}
	return sha256.Sum256(p), nil
}

// eraseDue is the housekeeping an applied erasure leaves to do on this
// node, persisted (keyEraseDue) in the batch that wrote the tombstones so
// that a crash cannot forget it: the raft log up to raftIndex must go,
// and the entry range [first, last] must be compacted.
type eraseDue struct {
	raftIndex   uint64
	first, last uint64
}

func (d eraseDue) encode() []byte {
	b := u64Bytes(d.raftIndex)
	b = binary.BigEndian.AppendUint64(b, d.first)
	return binary.BigEndian.AppendUint64(b, d.last)
}

func (d eraseDue) merge(o eraseDue) eraseDue {
	if d.raftIndex == 0 {
		return o
	}
	if o.raftIndex == 0 {
		return d
	}
	return eraseDue{raftIndex: max(d.raftIndex, o.raftIndex), first: min(d.first, o.first), last: max(d.last, o.last)}
}

func readEraseDue(db pebble.Reader) (eraseDue, error) {
	v, closer, err := db.Get(keyEraseDue)
	if errors.Is(err, pebble.ErrNotFound) {
		return eraseDue{}, nil
	}
	if err != nil {
		return eraseDue{}, err
	}
	defer closer.Close()
	if len(v) != 24 {
		return eraseDue{}, fmt.Errorf("log: meta key %q holds %d bytes, want 24", keyEraseDue, len(v))
	}
	return eraseDue{raftIndex: binary.BigEndian.Uint64(v), first: binary.BigEndian.Uint64(v[8:]), last: binary.BigEndian.Uint64(v[16:])}, nil
}

// pendingErase is an erase entry met while applying a batch of raft logs.
type pendingErase struct {
	off       uint64 // the erase entry's own offset
	raftIndex uint64
	flags     byte
	payload   []byte
}

// applyErasures writes the tombstones for the erase entries of one
// ApplyBatch into b, in log order, and returns the housekeeping they
// leave. Targets may be entries of this same batch (a restart re-applies
// an entry and its erasure together): inBatch gives their stored values.
// A malformed erasure erases nothing: every node decodes the same bytes
// the same way, so they stay identical.
func (f *fsm) applyErasures(b *pebble.Batch, erases []pendingErase, inBatch func(off uint64) []byte) (eraseDue, error) {
	var due eraseDue
	rewritten := map[uint64][]byte{} // tombstones written by this batch
	for _, pe := range erases {
		p := pe.payload
		if pe.flags&flagZstd != 0 {
			var err error
			if p, err = f.dec.DecodeAll(pe.payload, nil); err != nil {
				continue
			}
		}
		var e Erasure
		if json.Unmarshal(p, &e) != nil {
			continue
		}
		for _, r := range e.Ranges {
			for off := r[0]; off <= min(r[1], pe.off-1) && off >= 1; off++ {
				v := rewritten[off]
				if v == nil {
					v = inBatch(off)
				}
				if v == nil {
					var err error
					if v, err = f.getStored(off); err != nil {
						return due, err
					}
				}
				se, err := decodeStored(off, v)
				if err != nil {
					// Damage is not ours to paper over here; recoverLog
					// and reads report it. Leave the entry as it is.
					continue
				}
				if se.flags&flagErased != 0 || se.kind == KindErase || se.kind == KindErased {
					continue // already erased, or an erasure itself (kept: the audit)
				}
				sum, err := contentSum(f.dec, se)
				if err != nil {
					continue
				}
				t := encodeTombstone(off, se, sum, pe.off)
				if err := b.Set(entryKey(off), t, nil); err != nil {
					return due, err
				}
				rewritten[off] = t
				due = due.merge(eraseDue{raftIndex: pe.raftIndex, first: off, last: off})
			}
		}
	}
	return due, nil
}

func (f *fsm) getStored(off uint64) ([]byte, error) {
	v, closer, err := f.db.Get(entryKey(off))
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer closer.Close()
	return append([]byte(nil), v...), nil
}

// sameEntry tells whether a snapshot's stored value and this node's agree:
// equal checksums, or one is the tombstone of the other (the sender
// applied an erasure this node has not yet, or the reverse).
// replace says the snapshot's value should overwrite the local one.
func sameEntry(dec *zstd.Decoder, off uint64, mine, theirs []byte) (same, replace bool) {
	if len(mine) >= 4 && len(theirs) >= 4 && string(mine[:4]) == string(theirs[:4]) {
		return true, false
	}
	m, err1 := decodeStored(off, mine)
	o, err2 := decodeStored(off, theirs)
	if err1 != nil || err2 != nil {
		return false, false
	}
	mErased, oErased := m.flags&flagErased != 0, o.flags&flagErased != 0
	if mErased == oErased {
		// Two tombstones of the same content by different erasures are
		// the same entry; anything else differs.
		return mErased && len(m.payload) == tombstoneBytes && len(o.payload) == tombstoneBytes &&
			string(m.payload[:sha256.Size]) == string(o.payload[:sha256.Size]), false
	}
	content, tomb := m, o
	if mErased {
		content, tomb = o, m
	}
	if content.kind != tomb.kind || len(tomb.payload) != tombstoneBytes {
		return false, false
	}
	sum, err := contentSum(dec, content)
	if err != nil || string(sum[:]) != string(tomb.payload[:sha256.Size]) {
		return false, false
	}
	return true, oErased
}
