package log

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/cockroachdb/pebble/v2"
	"github.com/hashicorp/raft"
)

// Raft log trimming. Every entry is written twice: in the raft command that
// carried it (synced, so that raft may count it toward quorum) and in the
// event log once applied. Raft compacts its log only every SnapshotInterval,
// by command count (TrailingLogs), and a command holds anything from one
// entry to maxCmdEntries: a log generated or imported in large batches kept
// its whole raft log (the 100,000-entry bench log: 23 MB of raft log next
// to 28 MB of event log), and a live server 10,240 commands or more.
//
// Once applied and covered by a snapshot (which syncs the event log), a
// command is needed only by a follower catching up from before it; a
// follower further behind gets the snapshot instead. So the trimmer keeps
// the newest raft records by bytes (a single node, which has no follower,
// little; a cluster raftKeepCluster, its catch-up window), and runs after
// every trimEvery bytes of records stored and once at Open.
//
// trimEvery is an eighth of a memtable: the records a pass deletes are
// then mostly still in the memtable (which also holds their entries and
// the projections' writes), and are never written to a table at all, so
// the raft log stops doubling what a live server flushes and compacts.
// Each pass costs a raft snapshot (lazy: a few small synced writes).
const raftKeepCluster = 64 << 20

// raftTrimSizes returns how many bytes of raft records a node keeps and
// how many are stored between two trims, from its memtable size.
func raftTrimSizes(memTable int64, single bool) (keep, every int64) {
	every = max(memTable/8, 256<<10)
	keep = every
	if !single {
		keep = raftKeepCluster
	}
	return keep, every
}

func (n *Node) wakeTrimmer() {
	select {
	case n.trimWake <- struct{}{}:
	default:
	}
}

// trimmer trims the raft log to keep bytes whenever the store woke it, and
// once at start.
func (n *Node) trimmer(keep int64) {
	defer n.done.Done()
	// The first pass compacts what it deletes: a raft log found long at
	// Open (an older build's, or a bulk import's) sits in tables already.
	for compact := true; ; compact = false {
		if _, err := n.trimRaftLog(keep, compact); err != nil && !errors.Is(err, ErrClosed) {
			n.log.Warn().Err(err).Msg("log: trimming the raft log failed; the next pass retries")
		}
		select {
		case <-n.trimWake:
		case <-n.stop:
			return
		}
	}
}

// trimRaftLog deletes the raft records that are covered by a snapshot and
// older than the newest keep bytes of records (the newest record is always
// kept). compact also compacts the range deleted, to give its disk space
// back now rather than when Pebble's compactions reach it. It returns the
// last index deleted (0: nothing).
func (n *Node) trimRaftLog(keep int64, compact bool) (uint64, error) {
	first, _ := n.store.FirstIndex()
	from, err := n.store.keepFrom(keep)
	if err != nil || first == 0 || from <= first {
		return 0, err
	}
	if err := n.raft.Snapshot().Error(); err != nil && !errors.Is(err, raft.ErrNothingNewToSnapshot) {
		if errors.Is(err, raft.ErrRaftShutdown) {
			return 0, ErrClosed
		}
		return 0, fmt.Errorf("taking a raft snapshot: %w", err)
	}
	metas, err := n.snaps.List()
	if err != nil {
		return 0, fmt.Errorf("listing raft snapshots: %w", err)
	}
	if len(metas) == 0 {
		return 0, nil
	}
	// The snapshot synced the event log up to its index (fsm.Snapshot),
	// so the records up to it are no longer its only durable copy.
	last := min(from-1, metas[0].Index)
	if last < first {
		return 0, nil
	}
	// Not synced: a crash that loses the deletion only brings back records
	// that the next pass deletes again.
	if err := n.store.deleteRange(first, last, pebble.NoSync); err != nil {
		return 0, fmt.Errorf("deleting the raft log up to %d: %w", last, err)
	}
	if compact {
		if err := n.db.Compact(context.Background(), raftKey(first), raftKey(last+1), false); err != nil {
			return last, fmt.Errorf("compacting the raft log: %w", err)
		}
	}
	n.log.Debug().Uint64("from", first).Uint64("to", last).Msg("log: raft log trimmed")
	return last, nil
}

// keepFrom is the first raft index of the newest records that hold keep
// bytes (at least the newest record); 0 when the log is empty.
func (s *raftStore) keepFrom(keep int64) (uint64, error) {
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: prefixRaft, UpperBound: prefixEnd(prefixRaft)})
	if err != nil {
		return 0, err
	}
	defer it.Close()
	var held int64
	var from uint64
	for ok := it.Last(); ok; ok = it.Prev() {
		if from != 0 && held+int64(len(it.Value())) > keep {
			break
		}
		held += int64(len(it.Value()))
		from = binary.BigEndian.Uint64(it.Key()[len(prefixRaft):])
	}
	return from, it.Error()
}
