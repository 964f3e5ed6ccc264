package log

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/cockroachdb/pebble/v2"
	"github.com/rs/zerolog"
)

// recovered is the event log state found on disk at Open.
type recovered struct {
	last     uint64 // last entry offset after any truncation
	lastTime int64  // Time of that entry
	applied  uint64 // last raft index folded in
}

// recoverLog checks the entries written since the last verified mark
// (always at least the last verifyTail entries) and repairs a torn tail.
//
// A tail is torn when the first bad entry is followed only by bad entries or
// by entries of the same raft command: that is what an interrupted write
// looks like. The tail is cut back to the start of the raft command before
// the bad entry and the applied raft index rewound, so Raft re-applies those
// commands from its own (synced) log or from a snapshot. A bad entry followed
// by good entries of later commands is damage in the middle: Open refuses.
//
// raftFirst is the first index still in the raft log: a cut that would need
// raft to re-apply anything older is refused (ErrCorrupt) before touching
// the disk, since nothing could refill it.
func recoverLog(db *pebble.DB, guard *diskGuard, logger zerolog.Logger, verifyTail, raftFirst uint64) (recovered, error) {
	var r recovered
	var err error
	if r.applied, err = getU64(db, keyApplied); err != nil {
		return r, err
	}
	verified, err := getU64(db, keyVerified)
	if err != nil {
		return r, err
	}
	it, err := db.NewIter(&pebble.IterOptions{LowerBound: prefixEntry, UpperBound: prefixEnd(prefixEntry)})
	if err != nil {
		return r, err
	}
	defer it.Close()
	if !it.Last() {
		return r, it.Error()
	}
	r.last = binary.BigEndian.Uint64(it.Key()[len(prefixEntry):])
	from := verified + 1
	if r.last > verifyTail && r.last-verifyTail+1 < from {
		from = r.last - verifyTail + 1
	}
	if from < 1 {
		from = 1
	}

	var (
		badAt      uint64 // first entry failing its check
		badErr     error
		badRaftIdx uint64 // raft index of the first bad entry, when readable
		want       = from
	)
	for ok := it.SeekGE(entryKey(from)); ok; ok = it.Next() {
		off := binary.BigEndian.Uint64(it.Key()[len(prefixEntry):])
		if off != want && badAt == 0 {
			badAt, badErr = want, fmt.Errorf("entry missing (next present is %d)", off)
		}
		want = off + 1
		se, err := decodeStored(off, it.Value())
		if err != nil {
			if badAt == 0 {
				badAt, badErr = off, err
				if len(it.Value()) >= storedHeader {
					badRaftIdx = binary.BigEndian.Uint64(it.Value()[15:23])
				}
			}
			continue
		}
		if badAt != 0 && se.raftIndex != badRaftIdx {
			return r, fmt.Errorf("%w at offset %d (%v) with intact entries after it up to %d: "+
				"stop this node and restore its data directory from a backup, or wipe it and let it resync from a peer",
				ErrCorrupt, badAt, badErr, r.last)
		}
	}
	if err := it.Error(); err != nil {
		if pebble.IsCorruptionError(err) {
			// A table block holding entries failed its checksum: nothing
			// after it can be read, so no cut can be trusted.
			return r, fmt.Errorf("%w: the log entries from offset %d on cannot be read (%w): "+
				"stop this node and restore its data directory from a backup, or wipe it and let it resync from a peer", ErrCorrupt, want, err)
		}
		return r, err
	}

	b := db.NewBatch()
	defer b.Close()
	if badAt != 0 {
		// Cut back to the first entry of the raft command holding badAt-1,
		// so only whole commands remain and the applied index stays exact.
		cut, applied := uint64(1), uint64(0)
		if badAt > 1 {
			prev, err := readStored(db, badAt-1)
			if err != nil {
				return r, fmt.Errorf("%w at offset %d (%v): restore the data directory from a backup", ErrCorrupt, badAt-1, err)
			}
			cut = badAt - 1
			for cut > 1 {
				p, err := readStored(db, cut-1)
				if err != nil || p.raftIndex != prev.raftIndex {
					break
				}
				cut--
			}
			applied = prev.raftIndex - 1
		}
		if applied > r.applied {
			applied = r.applied
		}
		if raftFirst == 0 || raftFirst > applied+1 {
			return r, fmt.Errorf("%w at offset %d (%v), and the raft log no longer holds the commands (it resumes at raft index %d, the cut needs %d) to rebuild it: "+
				"restore the data directory from a backup, or wipe it and let it resync from a peer", ErrCorrupt, badAt, badErr, raftFirst, applied+1)
		}
		if err := b.DeleteRange(entryKey(cut), entryKey(r.last+1), nil); err != nil {
			return r, err
		}
		if err := b.Set(keyApplied, u64Bytes(applied), nil); err != nil {
			return r, err
		}
		logger.Warn().Uint64("corrupt_offset", badAt).Str("reason", badErr.Error()).
			Uint64("truncated_from", cut).Uint64("truncated_to", r.last).Uint64("reapply_after_raft_index", applied).
			Msg("log: torn tail truncated; raft re-applies the lost commands")
		r.last, r.applied = cut-1, applied
	}
	if r.last > 0 {
		se, err := readStored(db, r.last)
		if err != nil {
			return r, fmt.Errorf("%w at offset %d (%v): restore the data directory from a backup", ErrCorrupt, r.last, err)
		}
		r.lastTime = se.time
	}
	if err := b.Set(keyVerified, u64Bytes(r.last), nil); err != nil {
		return r, err
	}
	return r, guard.do("recording the verified mark", func() error { return b.Commit(pebble.Sync) })
}

func readStored(db *pebble.DB, off uint64) (storedEntry, error) {
	v, closer, err := db.Get(entryKey(off))
	if errors.Is(err, pebble.ErrNotFound) {
		return storedEntry{}, errors.New("entry missing")
	}
	if err != nil {
		return storedEntry{}, err
	}
	defer closer.Close()
	se, err := decodeStored(off, v)
	se.payload = nil // aliases v, which closer frees
	return se, err
}
