package projections

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/rs/zerolog"

	englog "github.com/engram-hs/engram/log"
)

// An erasure makes every projection fold the rewritten log afresh: what
// was erased is then in no projection and nowhere on the disk, replay
// equals the live projection, and a restart resumes from there.
func TestErasureRebuildsProjectionsFromTheRewrittenLog(t *testing.T) {
	dir := t.TempDir()
	node, err := englog.Open(englog.Config{Dir: dir, Logger: testLogger(t).Level(zerolog.ErrorLevel)})
	if err != nil {
		t.Fatal(err)
	}
	// The engine running when the test fails closes before the node it
	// folds: closing the node first turned any failure into a panic
	// (pebble: closed) that hid it.
	var e *Engine
	defer func() {
		if e != nil {
			e.Close()
		}
		node.Close()
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	start := func() (*Engine, *Handle) {
		e := NewEngine(node, node.DB(), testLogger(t), nil)
		h := e.Register(&timeline{name: "timeline", version: 1})
		if err := e.Start(ctx); err != nil {
			t.Fatal(err)
		}
		return e, h
	}
	var h *Handle
	e, h = start()
	appendMessages(t, node, 20, "!keep:x")
	const marker = "erase-me-91f3"
	var secret []uint64
	for i := 0; i < 5; i++ {
		payload, _ := json.Marshal(message{Room: "!gone:x", Sender: "@bob:x", Body: marker})
		offs, err := node.Append(ctx, englog.Proposal{Kind: englog.KindPDU, Payload: payload})
		if err != nil {
			t.Fatal(err)
		}
		secret = append(secret, offs[0])
	}
	if err := h.WaitApplied(ctx, node.LastOffset()); err != nil {
		t.Fatal(err)
	}
	if got := roomCount(t, h.Reader(), "!gone:x"); got != 5 {
		t.Fatalf("before the erasure the room counts %d, want 5", got)
	}
	if hits, _ := englog.FilesHolding(dir, []byte(marker)); len(hits) == 0 {
		t.Fatal("the marker is nowhere on disk before the erasure: the check cannot see it")
	}
	// Into tables, as older data is: only a compaction drops it there.
	if err := node.DB().Flush(); err != nil {
		t.Fatal(err)
	}

	offs, err := node.Append(ctx, englog.EraseProposal("room_deleted", "d1", secret))
	if err != nil {
		t.Fatal(err)
	}
	later := appendMessages(t, node, 3, "!keep:x")
	if err := h.WaitApplied(ctx, later[len(later)-1]); err != nil {
		t.Fatal(err)
	}
	if got := roomCount(t, h.Reader(), "!gone:x"); got != 0 {
		t.Fatalf("after the erasure the room counts %d, want 0", got)
	}
	if got := roomCount(t, h.Reader(), "!keep:x"); got != 23 {
		t.Fatalf("after the erasure the other room counts %d, want 23", got)
	}
	if starts := h.p.(*timeline).applyStarts(); !containsOffset(starts, 1) {
		t.Fatalf("the projection was not folded again from offset 1 (batches began at %v)", starts)
	}
	if err := node.WaitErasures(ctx); err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	defer wcancel()
	if hits, err := englog.FilesStillHolding(wctx, dir, node.DB(), []byte(marker)); err != nil || len(hits) > 0 {
		t.Fatalf("after the erasure the marker is still in %v (%v)", hits, err)
	}
	live := mustDigest(t, e, "timeline")
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}

	// Replay equals live (what engram verify checks).
	replay := NewEngine(node, node.DB(), testLogger(t), nil)
	replay.Register(&timeline{name: "timeline", version: 1})
	if err := replay.Rebuild(ctx); err != nil {
		t.Fatal(err)
	}
	if got := mustDigest(t, replay, "timeline"); !bytes.Equal(got, live) {
		t.Fatal("a replay of the log differs from the projection rebuilt after the erasure")
	}
	replay.Close()

	// A restart does not fold again: the erase entry is behind it.
	e, h = start()
	appendMessages(t, node, 1, "!keep:x")
	if err := h.WaitApplied(ctx, node.LastOffset()); err != nil {
		t.Fatal(err)
	}
	if starts := h.p.(*timeline).applyStarts(); containsOffset(starts, 1) || len(starts) == 0 {
		t.Fatalf("after a restart the projection folded from %v, want only the new entry", starts)
	}
	if got := roomCount(t, h.Reader(), "!keep:x"); got != 24 {
		t.Fatalf("after a restart the room counts %d, want 24", got)
	}
	_ = offs
}

func containsOffset(offs []uint64, o uint64) bool {
	for _, x := range offs {
		if x == o {
			return true
		}
	}
	return false
}

// TestThreeNodeErasure: every node of a cluster erases, rebuilds its
// projections from the rewritten log into the same state, and keeps
// nothing of what was erased on its disk.
func TestThreeNodeErasure(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a three-node cluster")
	}
	var ms []*clusterMember
	var peers []englog.Peer
	for i, a := range freeAddrs(t, 3) {
		p := englog.Peer{ID: fmt.Sprintf("n%d", i+1), Addr: a}
		peers = append(peers, p)
		ms = append(ms, &clusterMember{peer: p, dir: t.TempDir()})
	}
	for _, m := range ms {
		m.start(t, peers)
	}
	t.Cleanup(func() {
		for _, m := range ms {
			m.stop()
		}
	})
	appendOnLeader(t, ms, 30, "!keep:x")
	const marker = "cluster-erase-4b7d"
	payload, _ := json.Marshal(message{Room: "!gone:x", Sender: "@bob:x", Body: marker})
	props := []englog.Proposal{{Kind: englog.KindPDU, Payload: payload}, {Kind: englog.KindPDU, Payload: payload}}
	secret := proposeOnLeader(t, ms, props...)
	agree(t, ms, secret[len(secret)-1])
	proposeOnLeader(t, ms, englog.EraseProposal("room_deleted", "d1", secret))
	offs := appendOnLeader(t, ms, 5, "!keep:x")
	agree(t, ms, offs[len(offs)-1])
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, m := range ms {
		if got := roomCount(t, m.h.Reader(), "!gone:x"); got != 0 {
			t.Fatalf("%s: the erased room counts %d", m.peer.ID, got)
		}
		if err := m.node.WaitErasures(ctx); err != nil {
			t.Fatal(err)
		}
		if hits, err := englog.FilesStillHolding(ctx, m.dir, m.node.DB(), []byte(marker)); err != nil || len(hits) > 0 {
			t.Fatalf("%s still holds the erased text in %v (%v)", m.peer.ID, hits, err)
		}
	}
}

// proposeOnLeader appends props on whichever member leads (again on the
// next one when leadership moved).
func proposeOnLeader(t *testing.T, ms []*clusterMember, props ...englog.Proposal) []uint64 {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		offs, err := leaderOf(t, ms).node.Append(context.Background(), props...)
		if err == nil {
			return offs
		}
		if !errors.Is(err, englog.ErrNotLeader) || time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func freeAddrs(t *testing.T, n int) []string {
	t.Helper()
	var out []string
	var ls []net.Listener
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l) // held until all are taken: n distinct ports
		out = append(out, l.Addr().String())
	}
	for _, l := range ls {
		l.Close()
	}
	return out
}
