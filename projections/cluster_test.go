package projections

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strconv"
	"syscall"
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
	// A restarted member binds its old port again; on a busy machine that
	// port may meanwhile be some connection's ephemeral source port, until
	// that connection closes.
	deadline := time.Now().Add(10 * time.Second)
	var node *englog.Node
	var err error
	for {
		node, err = englog.Open(englog.Config{Dir: m.dir, NodeID: m.peer.ID, RaftAddr: m.peer.Addr, Peers: peers, Logger: testLogger(t)})
		if err == nil || !errors.Is(err, syscall.EADDRINUSE) || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
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

// appendOnLeader appends n messages on whichever member leads, again on
// the next leader when leadership moved before they committed: raft's
// 250 ms lease lapses on a loaded machine (two shared cores, -race), and
// the leader found a moment ago then answers ErrNotLeader. A retried
// append may duplicate one whose commit was not acknowledged; every node
// holds the same log either way, which is what the digests compare.
func appendOnLeader(t *testing.T, ms []*clusterMember, n int, room string) []uint64 {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		props := make([]englog.Proposal, n)
		for i := range props {
			payload, _ := json.Marshal(message{Room: room, Sender: "@alice:example.org", Body: "hello " + strconv.Itoa(i)})
			props[i] = englog.Proposal{Kind: englog.KindPDU, Payload: payload}
		}
		offs, err := leaderOf(t, ms).node.Append(context.Background(), props...)
		if err == nil {
			return offs
		}
		if !errors.Is(err, englog.ErrNotLeader) || time.Now().After(deadline) {
			t.Fatal(err)
		}
		t.Logf("leadership moved during an append, again on the next leader: %v", err)
		time.Sleep(50 * time.Millisecond)
	}
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

	var last uint64
	for i := 0; i < 5; i++ {
		offs := appendOnLeader(t, ms, 40, fmt.Sprintf("!room%d:example.org", i))
		last = offs[len(offs)-1]
	}
	agree(t, ms, last)

	// The leader dies; the others elect a new one and writes go on.
	leader := leaderOf(t, ms)
	leader.stop()
	offs := appendOnLeader(t, ms, 60, "!after:example.org")
	last = offs[len(offs)-1]
	agree(t, ms, last)

	// The old leader comes back and catches up from its peers.
	leader.start(t, peers)
	agree(t, ms, last)
}
