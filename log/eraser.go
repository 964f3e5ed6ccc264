package log

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"sort"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/hashicorp/raft"
)

// Erasure housekeeping. Applying an erase fact rewrites the entries in the
// event log (erase.go), but their content is still elsewhere on this
// node's disk: in the raft log (the commands that carried them), in
// Pebble's write-ahead logs, and in the tables that held the old values
// until a compaction drops them. The eraser removes it from all three, on
// every node, after each erasure it applies (keyEraseDue says what is
// left to do, so a restart resumes it):
//
//  1. a raft snapshot, then the raft log up to the erasure is deleted (a
//     follower that still needs those commands gets the snapshot instead,
//     which carries the tombstones);
//  2. the write-ahead logs are flushed and the obsolete ones deleted, and
//     none is reused in place meanwhile (walFS);
//  3. the erased entries' range and the raft log's are compacted, which
//     rewrites the tables without the old values.
//
// Content outside this node is not touched: backups taken before the
// erasure keep it, and so does a projection until it is rebuilt from the
// rewritten log (the projections engine does that when it reaches the
// erase fact).

// eraseRetry is how long the eraser waits after a failed pass.
const eraseRetry = 5 * time.Second

func (n *Node) wakeEraser() {
	select {
	case n.eraseWake <- struct{}{}:
	default:
	}
}

// eraser runs the housekeeping whenever an erasure was applied.
func (n *Node) eraser() {
	defer n.done.Done()
	for {
		due, err := readEraseDue(n.db)
		if err == nil && due.raftIndex != 0 {
			if err = n.settleErasure(due); err == nil {
				err = n.clearEraseDue(due)
			}
		}
		if err != nil {
			n.log.Warn().Err(err).Msg("log: removing erased entries from the disk failed; retrying (the entries read as erased already)")
		}
		n.eraseMu.Lock()
		close(n.eraseDone)
		n.eraseDone = make(chan struct{})
		n.eraseMu.Unlock()
		if err == nil {
			if again, _ := readEraseDue(n.db); again.raftIndex != 0 {
				continue // another erasure came meanwhile
			}
		}
		var retry <-chan time.Time
		if err != nil {
			retry = time.After(eraseRetry)
		}
		select {
		case <-n.eraseWake:
		case <-retry:
		case <-n.stop:
			return
		}
	}
}

// WaitErasures blocks until this node has removed every applied erasure's
// content from its disk (or ctx is done). Tests and tools that check the
// disk use it.
func (n *Node) WaitErasures(ctx context.Context) error {
	for {
		n.eraseMu.Lock()
		ch := n.eraseDone
		n.eraseMu.Unlock()
		due, err := readEraseDue(n.db)
		if err != nil {
			return err
		}
		if due.raftIndex == 0 {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		case <-n.stop:
			return ErrClosed
		}
	}
}

func (n *Node) settleErasure(due eraseDue) error {
	start := time.Now()
	// 1. The raft log. The snapshot covers due.raftIndex (the erasure is
	// applied), so the commands up to it are no longer needed by anyone.
	if err := n.raft.Snapshot().Error(); err != nil && !errors.Is(err, raft.ErrNothingNewToSnapshot) {
		return fmt.Errorf("taking a raft snapshot: %w", err)
	}
	metas, err := n.snaps.List()
	if err != nil {
		return fmt.Errorf("listing raft snapshots: %w", err)
	}
	if len(metas) == 0 || metas[0].Index < due.raftIndex {
		return fmt.Errorf("no raft snapshot covers raft index %d yet", due.raftIndex)
	}
	// The event log is written without syncing (the raft log is its
	// durable copy): make it durable before that copy goes.
	if err := n.guard.do("syncing before an erasure", func() error { return n.db.LogData(nil, pebble.Sync) }); err != nil {
		return err
	}
	if first, _ := n.store.FirstIndex(); first != 0 && first <= due.raftIndex {
		if err := n.store.DeleteRange(first, due.raftIndex); err != nil {
			return fmt.Errorf("deleting the raft log up to %d: %w", due.raftIndex, err)
		}
	}
	// 2. The write-ahead logs.
	if err := n.ScrubWALs(); err != nil {
		return fmt.Errorf("removing old write-ahead logs: %w", err)
	}
	// 3. The tables. Compact flushes what it needs and waits.
	ctx := context.Background()
	if err := n.db.Compact(ctx, entryKey(due.first), entryKey(due.last+1), false); err != nil {
		return fmt.Errorf("compacting the erased entries: %w", err)
	}
	if err := n.db.Compact(ctx, prefixRaft, raftKey(due.raftIndex+1), false); err != nil {
		return fmt.Errorf("compacting the raft log: %w", err)
	}
	n.log.Info().Uint64("from_offset", due.first).Uint64("to_offset", due.last).Uint64("raft_index", due.raftIndex).
		Dur("took", time.Since(start)).Msg("log: erased entries removed from this node's disk (raft log, write-ahead logs, tables)")
	return nil
}

// ScrubWALs removes every write-ahead log that may hold erased content:
// with reuse off (walFS), the memtables are flushed, after which every
// WAL that existed before the flush is obsolete, and those still on disk
// (kept for reuse) are deleted. The projections engine calls it too,
// after it rebuilt a projection from a log with erased entries.
func (n *Node) ScrubWALs() error {
	dir := n.cfg.Dir
	names, err := n.wal.FS.List(dir)
	if err != nil {
		return err
	}
	var before []string
	for _, name := range names {
		if isWAL(name) {
			before = append(before, n.wal.FS.PathJoin(dir, name))
		}
	}
	scrub := n.wal.scrub
	scrub.mu.Lock()
	scrub.armed = true
	scrub.mu.Unlock()
	defer func() {
		scrub.mu.Lock()
		scrub.armed = false
		scrub.mu.Unlock()
	}()
	// A write makes sure the flush rotates the WAL even if the memtable
	// was flushed since the erasure.
	if err := n.db.Set(keyEraseScrub, nil, pebble.NoSync); err != nil {
		return err
	}
	if err := n.db.Flush(); err != nil {
		return err
	}
	sort.Strings(before)
	scrub.mu.Lock()
	defer scrub.mu.Unlock()
	for _, f := range before {
		if err := n.wal.FS.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	return nil
}

// clearEraseDue removes the due mark once its housekeeping is done,
// unless an erasure applied meanwhile extended it.
func (n *Node) clearEraseDue(done eraseDue) error {
	n.fsm.dueMu.Lock()
	defer n.fsm.dueMu.Unlock()
	now, err := readEraseDue(n.db)
	if err != nil {
		return err
	}
	if !bytes.Equal(now.encode(), done.encode()) {
		return nil
	}
	return n.guard.do("recording an erasure done", func() error { return n.db.Delete(keyEraseDue, pebble.Sync) })
}
