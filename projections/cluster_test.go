package projections

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	englog "github.com/engram-hs/engram/log"
)

// clusterMember is one node of a three-node Raft cluster on loopback with
// its own projection engine.
type clusterMember struct {
	peer englog.Peer
	dir  string
	node *englog.Node
	eng  *Engine
	h    *Handle
}

func (m *clusterMember) start(t *testing.T, peers []englog.Peer) {
	t.Helper()
	node, err := englog.Open(englog.Config{Dir: m.dir, NodeID: m.peer.ID, RaftAddr: m.peer.Addr, Peers: peers, Logger: testLogger(t)})
	if err != nil {
		t.Fatalf("open %s: %v", m.peer.ID, err)
	}
	m.node = node
	m.eng = NewEngine(node, node.DB(), testLogger(t), nil)
	// Version 2 of the test projection folds Entry.Time into what it
	// stores, so equal digests also mean the leader's timestamps replicated.
	m.h = m.eng.Register(&timeline{name: "timeline", version: 2})
	if err := m.eng.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func (m *clusterMember) stop() {
	if m.node == nil {
		return
	}
	_ = m.eng.Close()
	_ = m.node.Close()
	m.node = nil
}

// leaderOf waits until one of the running members leads.
func leaderOf(t *testing.T, ms []*clusterMember) *clusterMember {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		for _, m := range ms {
			if m.node != nil && m.node.IsLeader() {
				return m
			}
		}
		time.Sleep(20 * time.Millisecond) // raft exposes no election event to wait on
	}
	t.Fatal("no leader elected within 20s")
	return nil
}

// agree waits until every running member's projection applied upTo, then
// checks that their digests are equal to each other and to a fresh replay.
func agree(t *testing.T, ms []*clusterMember, upTo uint64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var want []byte
	for _, m := range ms {
		if m.node == nil {
			continue
		}
		if err := m.node.Wait(ctx, upTo-1); err != nil {
			t.Fatalf("%s never reached offset %d: %v", m.peer.ID, upTo, err)
		}
		if err := m.h.WaitApplied(ctx, upTo); err != nil {
			t.Fatalf("%s projection never applied %d: %v", m.peer.ID, upTo, err)
		}
		d, err := m.eng.Digest("timeline")
		if err != nil {
			t.Fatal(err)
		}
		if want == nil {
			want = freshDigest(t, m.node, &timeline{name: "timeline", version: 2})
		}
		if !bytes.Equal(d, want) {
			t.Fatalf("%s: projection digest %x differs from a fresh replay %x", m.peer.ID, d, want)
		}
	}
}

// TestThreeNodeProjectionsAgree: every node of a three-node cluster folds
// the replicated log into the same projection, through a leader change and
// a node that was down and catches up.
func TestThreeNodeProjectionsAgree(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a three-node cluster")
	}
	var ms []*clusterMember
	var peers []englog.Peer
	for i := 1; i <= 3; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		l.Close()
		p := englog.Peer{ID: fmt.Sprintf("n%d", i), Addr: addr}
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

	leader := leaderOf(t, ms)
	var last uint64
	for i := 0; i < 5; i++ {
		offs := appendMessages(t, leader.node, 40, fmt.Sprintf("!room%d:example.org", i))
		last = offs[len(offs)-1]
	}
	agree(t, ms, last)

	// The leader dies; the others elect a new one and writes go on.
	leader.stop()
	next := leaderOf(t, ms)
	offs := appendMessages(t, next.node, 60, "!after:example.org")
	last = offs[len(offs)-1]
	agree(t, ms, last)

	// The old leader comes back and catches up from its peers.
	leader.start(t, peers)
	agree(t, ms, last)
}
