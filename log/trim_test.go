package log

import (
	"bytes"
	"context"
	"math/rand"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// raftLogBytes is what the raft log's records hold (logical bytes).
func raftLogBytes(t *testing.T, n *Node) (held int64, first uint64) {
	t.Helper()
	first, _ = n.store.FirstIndex()
	it, err := n.db.NewIter(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer it.Close()
	for ok := it.SeekGE(prefixRaft); ok && bytes.HasPrefix(it.Key(), prefixRaft); ok = it.Next() {
		held += int64(len(it.Value()))
	}
	return held, first
}

// appendIncompressible appends count entries of size random bytes (the
// proposer's zstd cannot shrink them), in commands of perCmd entries.
func appendIncompressible(t *testing.T, n *Node, rng *rand.Rand, count, size, perCmd int) [][]byte {
	t.Helper()
	var all [][]byte
	for len(all) < count {
		var props []Proposal
		for i := 0; i < perCmd && len(all) < count; i++ {
			p := make([]byte, size)
			rng.Read(p)
			all = append(all, p)
			props = append(props, Proposal{Kind: KindPDU, Payload: p})
		}
		if _, err := n.Append(context.Background(), props...); err != nil {
			t.Fatal(err)
		}
	}
	return all
}

func checkTrimmedEntries(t *testing.T, n *Node, want [][]byte) {
	t.Helper()
	got, err := n.Read(1, len(want)+1)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("read %d entries, want %d", len(got), len(want))
	}
	for i := range want {
		if !bytes.Equal(got[i].Payload, want[i]) {
			t.Fatalf("entry %d differs after trimming", i+1)
		}
	}
}

// awaitTrimmed waits (the trimmer runs in the background) until the raft
// log no longer starts at index 1.
func awaitTrimmed(t *testing.T, n *Node) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if first, _ := n.store.FirstIndex(); first > 1 {
			return
		}
		if time.Now().After(deadline) {
			held, first := raftLogBytes(t, n)
			t.Fatalf("raft log never trimmed: %d bytes from index %d", held, first)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A live single node keeps its raft log to about trimKeep bytes
// beyond what was stored since the last pass, whatever the command size,
// and every entry stays readable, before and after a restart.
func TestRaftLogTrimmedWhileAppending(t *testing.T) {
	dir := t.TempDir()
	n := openSingle(t, dir)
	rng := rand.New(rand.NewSource(1))
	keep, every := n.trimKeep, n.store.trimEvery
	// 3 x (keep + every) in commands of 64 entries of 4 KiB.
	want := appendIncompressible(t, n, rng, int(3*(keep+every)/4096), 4096, 64)
	awaitTrimmed(t, n)
	// Past the last wake, at most every more was stored; one pass
	// may still be running, so wait for it to settle.
	var held int64
	var first uint64
	deadline := time.Now().Add(30 * time.Second)
	for {
		held, first = raftLogBytes(t, n)
		if held <= keep+every+maxCmdBytes || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if limit := keep + every + maxCmdBytes; held > limit {
		t.Fatalf("raft log holds %d bytes (from index %d), want <= %d", held, first, limit)
	}
	checkTrimmedEntries(t, n, want)
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	n = openSingle(t, dir)
	defer n.Close()
	checkTrimmedEntries(t, n, want)
	// Appends after the restart continue the same log.
	more := appendIncompressible(t, n, rng, 10, 100, 10)
	checkTrimmedEntries(t, n, append(want, more...))
}

// A raft log found long at Open (an older build kept it, or entries came in
// few large commands) is trimmed to trimKeep and its tables
// compacted, without losing an entry.
func TestRaftLogTrimmedAtOpen(t *testing.T) {
	dir := t.TempDir()
	quiet := zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)
	n, err := Open(Config{Dir: dir, Logger: quiet, noTrimmer: true})
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewSource(2))
	// Few, large commands: raft's own compaction (by command count) keeps
	// them all.
	memTable, _ := PebbleMemory(0)
	keep, every := raftTrimSizes(memTable, true)
	want := appendIncompressible(t, n, rng, int(2*(keep+every)/4096), 4096, 512)
	if err := n.DB().Flush(); err != nil {
		t.Fatal(err)
	}
	before, _ := raftLogBytes(t, n)
	if before < 2*(keep+every) {
		t.Fatalf("raft log holds %d bytes before the restart, want >= %d", before, 2*(keep+every))
	}
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}

	n = openSingle(t, dir)
	awaitTrimmed(t, n)
	held, first := raftLogBytes(t, n)
	if held > keep+maxCmdBytes {
		t.Fatalf("raft log holds %d bytes from index %d after Open, want <= %d", held, first, keep+maxCmdBytes)
	}
	// The first pass compacts what it deleted: the tables hold little more
	// than what is kept.
	deadline := time.Now().Add(30 * time.Second)
	for {
		disk, err := n.DB().EstimateDiskUsage(prefixRaft, prefixEnd(prefixRaft))
		if err != nil {
			t.Fatal(err)
		}
		if disk <= uint64(2*(keep+maxCmdBytes)) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("raft log still takes %d bytes on disk after its trim", disk)
		}
		time.Sleep(10 * time.Millisecond)
	}
	checkTrimmedEntries(t, n, want)
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	n = openSingle(t, dir)
	defer n.Close()
	checkTrimmedEntries(t, n, want)
}

// A follower that was down while the leader trimmed past it catches up by
// snapshot, and the cluster keeps taking writes.
func TestClusterFollowerCatchesUpAfterTrim(t *testing.T) {
	c := newTestCluster(t)
	want := map[uint64][]byte{}
	l := c.leader()
	c.appendOn(l, 10, "first", want)
	c.converge(want)

	lag := (l + 1) % 3
	c.stop(lag)
	c.appendOn(l, 40, "second", want)
	l = c.leader() // the node a restarted follower asks
	// Keep 1 byte: only the newest record stays (clusterTune leaves raft's
	// own compaction off, so the trim alone cuts the log).
	cut, err := c.nodes[l].trimRaftLog(1, false)
	if err != nil {
		t.Fatal(err)
	}
	first, _ := c.nodes[l].store.FirstIndex()
	last, _ := c.nodes[l].store.LastIndex()
	if cut == 0 || first != cut+1 || first != last {
		t.Fatalf("after the trim the leader's raft log is [%d, %d] (cut at %d), want only its newest record", first, last, cut)
	}
	c.start(lag)
	c.converge(want)
	snaps, _ := os.ReadDir(filepath.Join(c.dirs[lag], "raft-snapshots"))
	if len(snaps) == 0 {
		t.Fatal("the lagging node caught up without receiving a snapshot; the trim did not cut past it")
	}
	c.appendOn(c.leader(), 5, "third", want)
	c.converge(want)
}
