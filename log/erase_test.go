package log

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/hashicorp/raft"
	"github.com/klauspost/compress/zstd"
	"github.com/rs/zerolog"
)

// secretPayload is a small (raw-stored) payload whose marker a search of
// the data directory can find.
func secretPayload(tag string, i int) []byte {
	return []byte(fmt.Sprintf(`{"body":"the secret %s-%d-MARKER-7c1e"}`, tag, i))
}

// holding reports the files under n's directory that still hold needle
// (FilesStillHolding, waiting at most a few seconds).
func holding(t *testing.T, n *Node, needle []byte) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	hits, err := FilesStillHolding(ctx, n.cfg.Dir, n.db, needle)
	if err != nil {
		t.Fatal(err)
	}
	return hits
}

func checkTombstone(t *testing.T, e Entry, kind Kind, content []byte, by uint64) {
	t.Helper()
	if e.Kind != KindErased {
		t.Fatalf("entry %d: kind %v, want erased (payload %q)", e.Offset, e.Kind, e.Payload)
	}
	var ts Tombstone
	if err := json.Unmarshal(e.Payload, &ts); err != nil {
		t.Fatalf("entry %d: tombstone %q: %v", e.Offset, e.Payload, err)
	}
	sum := sha256.Sum256(content)
	if want := (Tombstone{Kind: kind, SHA256: hex.EncodeToString(sum[:]), ErasedBy: by}); ts != want {
		t.Fatalf("entry %d: tombstone %+v, want %+v", e.Offset, ts, want)
	}
}

func TestErasureRewritesEntriesAndLeavesNoTrace(t *testing.T) {
	// The content still only in the write-ahead log and memtable, or
	// already in tables (older entries).
	for _, flushed := range []bool{false, true} {
		t.Run(fmt.Sprintf("flushed=%v", flushed), func(t *testing.T) { testErasure(t, flushed) })
	}
}

func testErasure(t *testing.T, flushed bool) {
	dir := t.TempDir()
	n := openSingle(t, dir)
	ctx := context.Background()
	want := map[uint64][]byte{}
	var secrets []uint64
	for i := 0; i < 60; i++ {
		p := payloadFor(i)
		if i%10 == 3 {
			p = secretPayload("a", i)
		}
		offs, err := n.Append(ctx, Proposal{Kind: KindPDU, Payload: p})
		if err != nil {
			t.Fatal(err)
		}
		want[offs[0]] = p
		if i%10 == 3 {
			secrets = append(secrets, offs[0])
		}
	}
	// A large (per-entry compressed) payload is erased too.
	big := bytes.Repeat([]byte("big secret content;"), 400)
	offs, err := n.Append(ctx, Proposal{Kind: KindProfileSet, Payload: big})
	if err != nil {
		t.Fatal(err)
	}
	bigOff := offs[0]
	want[bigOff] = big
	marker := []byte("MARKER-7c1e")
	if hits, _ := FilesHolding(dir, marker); len(hits) == 0 {
		t.Fatal("the secrets are nowhere in the data directory before the erasure: the search cannot see them")
	}
	if flushed {
		// Into tables, as older entries are: only a compaction drops them.
		if err := n.db.Flush(); err != nil {
			t.Fatal(err)
		}
		if hits, _ := FilesHolding(dir, marker); len(hits) == 0 {
			t.Fatal("the secrets are in no table after a flush: the search cannot see them")
		}
	}

	// Named: the secrets, the big entry, an offset past the erasure (left
	// alone) and the erasure's own (left alone).
	named := append(append([]uint64(nil), secrets...), bigOff, bigOff+1, 1<<40)
	offs, err = n.Append(ctx, EraseProposal("history_purged", "p1", named))
	if err != nil {
		t.Fatal(err)
	}
	eraseOff := offs[0]
	if eraseOff != bigOff+1 {
		t.Fatalf("erase at %d, want %d", eraseOff, bigOff+1)
	}
	after := []byte(`{"body":"after the erasure"}`)
	if offs, err = n.Append(ctx, Proposal{Kind: KindPDU, Payload: after}); err != nil {
		t.Fatal(err)
	}
	want[offs[0]] = after

	check := func(n *Node) {
		t.Helper()
		got, err := n.Read(1, 1000)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != int(eraseOff)+1 {
			t.Fatalf("read %d entries, want %d", len(got), eraseOff+1)
		}
		erased := map[uint64]bool{bigOff: true}
		for _, o := range secrets {
			erased[o] = true
		}
		for _, e := range got {
			switch {
			case e.Offset == eraseOff:
				if e.Kind != KindErase {
					t.Fatalf("the erase entry reads as %v", e.Kind)
				}
			case erased[e.Offset]:
				kind := KindPDU
				if e.Offset == bigOff {
					kind = KindProfileSet
				}
				checkTombstone(t, e, kind, want[e.Offset], eraseOff)
			default:
				if !bytes.Equal(e.Payload, want[e.Offset]) {
					t.Fatalf("entry %d = %q, want %q (untouched)", e.Offset, e.Payload, want[e.Offset])
				}
			}
		}
	}
	check(n)
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := n.WaitErasures(wctx); err != nil {
		t.Fatal(err)
	}
	if hits := holding(t, n, marker); len(hits) > 0 {
		t.Fatalf("after the erasure the secrets are still in %v", hits)
	}
	if first, _ := n.store.FirstIndex(); first != 0 {
		var l raft.Log
		for i := first; ; i++ {
			if n.store.GetLog(i, &l) != nil {
				break
			}
			if bytes.Contains(l.Data, marker) {
				t.Fatalf("raft log record %d still carries a secret", i)
			}
		}
	}
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}

	// A restart reads the same log and takes writes.
	n = openSingle(t, dir)
	defer n.Close()
	check(n)
	if _, err := n.Append(ctx, Proposal{Kind: KindPDU, Payload: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	if hits := holding(t, n, marker); len(hits) > 0 {
		t.Fatalf("after a restart the secrets are in %v", hits)
	}
}

// testFSM is an fsm over its own Pebble, fed raft logs by hand.
func testFSM(t *testing.T) *fsm {
	t.Helper()
	db, err := pebble.Open(t.TempDir(), &pebble.Options{Logger: pebbleLogger{zerolog.Nop()}})
	if err != nil {
		t.Fatal(err)
	}
	dec, err := zstd.NewReader(nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dec.Close(); db.Close() })
	return newFSM(db, dec, &diskGuard{}, 0, 0)
}

func testCmd(idx uint64, props ...Proposal) *raft.Log {
	cmd := []byte{cmdVersion}
	cmd = append(cmd, u64Bytes(uint64(1000+idx))...)
	cmd = append(cmd, byte(len(props)))
	for _, p := range props {
		cmd = appendCmdEntry(cmd, 0, p.Kind, p.Payload)
	}
	return &raft.Log{Index: idx, Type: raft.LogCommand, Data: cmd}
}

func applyAll(t *testing.T, f *fsm, logs ...*raft.Log) {
	t.Helper()
	for i, r := range f.ApplyBatch(logs) {
		if res, ok := r.(applyResult); !ok || res.err != nil && !errors.Is(res.err, errAlreadyApplied) {
			t.Fatalf("apply log %d: %v", logs[i].Index, r)
		}
	}
}

func storedAt(t *testing.T, f *fsm, off uint64) []byte {
	t.Helper()
	v, err := f.getStored(off)
	if err != nil || v == nil {
		t.Fatalf("entry %d: %v (missing: %v)", off, err, v == nil)
	}
	return v
}

// A restart re-applies an entry and the erasure of it in one batch: the
// erasure still finds it, and applying an erasure again changes nothing.
func TestErasureOfEntriesInItsOwnBatch(t *testing.T) {
	f := testFSM(t)
	a, b := []byte("content a"), []byte("content b")
	applyAll(t, f,
		testCmd(1, Proposal{Kind: KindPDU, Payload: a}, Proposal{Kind: KindPDU, Payload: b}),
		testCmd(2, EraseProposal("test", "", []uint64{1})),
	)
	se, err := decodeStored(1, storedAt(t, f, 1))
	if err != nil || se.flags&flagErased == 0 {
		t.Fatalf("entry 1 not a tombstone: %+v %v", se, err)
	}
	ts, _ := tombstoneOf(se)
	if sum := sha256.Sum256(a); ts.SHA256 != hex.EncodeToString(sum[:]) || ts.ErasedBy != 3 || ts.Kind != KindPDU {
		t.Fatalf("tombstone %+v", ts)
	}
	if se, _ := decodeStored(2, storedAt(t, f, 2)); !bytes.Equal(se.payload, b) {
		t.Fatalf("entry 2 = %q, want it untouched", se.payload)
	}
	due, err := readEraseDue(f.db)
	if err != nil || due != (eraseDue{raftIndex: 2, first: 1, last: 1}) {
		t.Fatalf("due = %+v, %v", due, err)
	}
	first := storedAt(t, f, 1)
	// Replayed logs are skipped; a second erasure of the same entry keeps
	// the first tombstone.
	applyAll(t, f, testCmd(2, EraseProposal("test", "", []uint64{1})), testCmd(3, EraseProposal("again", "", []uint64{1, 3})))
	if !bytes.Equal(storedAt(t, f, 1), first) {
		t.Fatal("a second erasure rewrote the tombstone")
	}
	if se, _ := decodeStored(3, storedAt(t, f, 3)); se.kind != KindErase || se.flags&flagErased != 0 {
		t.Fatal("an erasure erased another erasure")
	}
	// Garbage is recorded and erases nothing.
	applyAll(t, f, testCmd(4, Proposal{Kind: KindErase, Payload: []byte("{not json")}))
	if se, _ := decodeStored(2, storedAt(t, f, 2)); se.flags&flagErased != 0 {
		t.Fatal("a malformed erasure erased something")
	}
}

// A follower whose raft log was compacted past an erasure gets the
// tombstones in the leader's snapshot and takes them over its content;
// a tombstone that is not of its content is divergence.
func TestRestoreTakesTombstonesOverContent(t *testing.T) {
	content := []Proposal{{Kind: KindPDU, Payload: []byte("alpha")}, {Kind: KindPDU, Payload: []byte("beta")}}
	leader, follower := testFSM(t), testFSM(t)
	applyAll(t, leader, testCmd(1, content...), testCmd(2, EraseProposal("test", "", []uint64{2})))
	applyAll(t, follower, testCmd(1, content...))

	snap := func(f *fsm) *bytes.Buffer {
		var buf bytes.Buffer
		s := &fsmSnapshot{db: f.db, last: f.lastOffset.Load(), applied: f.applied.Load()}
		if err := s.write(&buf); err != nil {
			t.Fatal(err)
		}
		return &buf
	}
	if err := follower.Restore(readCloser{Reader: snap(leader), Closer: closerFunc(func() error { return nil })}); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(storedAt(t, follower, 2), storedAt(t, leader, 2)) {
		t.Fatal("the follower kept its content where the leader's snapshot has a tombstone")
	}
	if due, _ := readEraseDue(follower.db); due.raftIndex != 2 || due.first != 2 || due.last != 2 {
		t.Fatalf("follower due = %+v: the housekeeping would not run", due)
	}

	// Another follower whose entry 2 differs: the tombstone is not of it.
	other := testFSM(t)
	applyAll(t, other, testCmd(1, Proposal{Kind: KindPDU, Payload: []byte("alpha")}, Proposal{Kind: KindPDU, Payload: []byte("gamma")}))
	err := other.Restore(readCloser{Reader: snap(leader), Closer: closerFunc(func() error { return nil })})
	if !errors.Is(err, ErrCorrupt) {
		t.Fatalf("restore over diverged content = %v, want ErrCorrupt", err)
	}
}

func TestClusterErasesOnEveryNode(t *testing.T) {
	c := newTestCluster(t)
	ctx := context.Background()
	l := c.leader()
	want := map[uint64][]byte{}
	c.appendOn(l, 20, "before", want)
	var secrets []uint64
	for i := 0; i < 5; i++ {
		offs, err := c.nodes[l].Append(ctx, Proposal{Kind: KindPDU, Payload: secretPayload("c", i)})
		if err != nil {
			t.Fatal(err)
		}
		secrets = append(secrets, offs[0])
		want[offs[0]] = secretPayload("c", i)
	}
	c.converge(want)
	// One follower is down during the erasure: it learns of it by
	// snapshot, the leader's raft log no longer holding the commands.
	lag := (l + 1) % 3
	c.stop(lag)
	offs, err := c.nodes[l].Append(ctx, EraseProposal("room_deleted", "d1", secrets))
	if err != nil {
		t.Fatal(err)
	}
	eraseOff := offs[0]
	more := map[uint64][]byte{}
	c.appendOn(l, 10, "after", more)
	c.start(lag)
	marker := []byte("MARKER-7c1e")
	for i, n := range c.nodes {
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		for n.LastOffset() < eraseOff+10 {
			if err := n.Wait(wctx, n.LastOffset()); err != nil {
				t.Fatalf("%s stuck at %d", c.peers[i].ID, n.LastOffset())
			}
		}
		if err := n.WaitErasures(wctx); err != nil {
			t.Fatalf("%s: %v", c.peers[i].ID, err)
		}
		cancel()
		got, err := n.Read(1, int(eraseOff)+20)
		if err != nil {
			t.Fatal(err)
		}
		for _, o := range secrets {
			checkTombstone(t, got[o-1], KindPDU, want[o], eraseOff)
		}
		for o, p := range more {
			if !bytes.Equal(got[o-1].Payload, p) {
				t.Fatalf("%s entry %d = %q, want %q", c.peers[i].ID, o, got[o-1].Payload, p)
			}
		}
		if hits := holding(t, n, marker); len(hits) > 0 {
			t.Fatalf("%s still holds the secrets in %v", c.peers[i].ID, hits)
		}
	}
	snaps, _ := c.nodes[lag].snaps.List()
	if len(snaps) == 0 {
		t.Fatal("the lagging node caught up without a snapshot; the snapshot path went untested")
	}
}

// A node stopped between an erasure and its housekeeping finishes the
// housekeeping when it starts again.
func TestErasureHousekeepingResumesAfterARestart(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	quiet := zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)
	n, err := Open(Config{Dir: dir, Logger: quiet, noEraser: true})
	if err != nil {
		t.Fatal(err)
	}
	var secrets []uint64
	for i := 0; i < 5; i++ {
		offs, err := n.Append(ctx, Proposal{Kind: KindPDU, Payload: secretPayload("r", i)})
		if err != nil {
			t.Fatal(err)
		}
		secrets = append(secrets, offs[0])
	}
	if err := n.db.Flush(); err != nil {
		t.Fatal(err)
	}
	if _, err := n.Append(ctx, EraseProposal("test", "", secrets)); err != nil {
		t.Fatal(err)
	}
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	marker := []byte("MARKER-7c1e")
	if hits, _ := FilesHolding(dir, marker); len(hits) == 0 {
		t.Fatal("without its housekeeping the erasure left nothing on disk: this test tests nothing")
	}
	n = openSingle(t, dir)
	defer n.Close()
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := n.WaitErasures(wctx); err != nil {
		t.Fatal(err)
	}
	if hits := holding(t, n, marker); len(hits) > 0 {
		t.Fatalf("after a restart the secrets are still in %v", hits)
	}
}
