package log

import (
	"context"
	"errors"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// TestOfflineOpenNeverJoinsTheCluster: a stopped cluster node opened
// Offline (what verify, rebuild, backup and log do) reads its own store
// and neither listens on its raft address nor dials a peer; the running
// nodes keep their leader and term.
func TestOfflineOpenNeverJoinsTheCluster(t *testing.T) {
	c := newTestCluster(t)
	want := map[uint64][]byte{}
	l := c.appendLeader(20, "before", want)
	c.converge(want)
	down := (l + 1) % 3
	c.stop(down)

	// Hold the stopped node's raft port: opening Offline must not need it.
	own, err := net.Listen("tcp", c.peers[down].Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer own.Close()
	// Its peers are given as a counting listener: a node that joined
	// the cluster would dial them within an election timeout.
	fake, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var fakeAccepts atomic.Int64
	go func() {
		for {
			conn, err := fake.Accept()
			if err != nil {
				return
			}
			fakeAccepts.Add(1)
			conn.Close()
		}
	}()
	defer fake.Close()
	peers := append([]Peer(nil), c.peers...)
	for i := range peers {
		if i != down {
			peers[i].Addr = fake.Addr().String()
		}
	}

	n, err := Open(Config{
		Dir: c.dirs[down], NodeID: c.peers[down].ID, RaftAddr: c.peers[down].Addr, Peers: peers, TLS: c.tls[down],
		Logger: zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.ErrorLevel), tune: clusterTune, Offline: true,
	})
	if err != nil {
		t.Fatalf("open offline: %v", err)
	}
	if n.Raft() != nil {
		t.Fatal("an offline cluster node started raft")
	}
	if n.LastOffset() != uint64(len(want)) {
		t.Fatalf("offline node reads up to %d, want %d", n.LastOffset(), len(want))
	}
	got, err := n.Read(1, len(want)+5)
	if err != nil || len(got) != len(want) {
		t.Fatalf("offline read: %d entries, %v", len(got), err)
	}
	for _, e := range got {
		if string(e.Payload) != string(want[e.Offset]) {
			t.Fatalf("offline entry %d = %q, want %q", e.Offset, e.Payload, want[e.Offset])
		}
	}
	if _, err := n.Append(context.Background(), Proposal{Kind: KindPDU, Payload: []byte("x")}); !errors.Is(err, ErrOffline) {
		t.Fatalf("Append offline = %v, want ErrOffline", err)
	}
	// Give a raft that was started by mistake time to call an election.
	time.Sleep(3 * clusterElection)
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	if b := fakeAccepts.Load(); b != 0 {
		t.Fatalf("the offline node dialled its peers %d time(s)", b)
	}
	// And the node rejoins normally afterwards.
	own.Close()
	c.start(down)
	c.appendLeader(5, "after", want)
	c.converge(want)
}

// clusterElection is clusterTune's election timeout.
const clusterElection = 300 * time.Millisecond

// appendLeader appends count entries on the current leader and returns it.
func (c *testCluster) appendLeader(count int, tag string, into map[uint64][]byte) int {
	c.t.Helper()
	l := c.leader()
	c.appendOn(l, count, tag, into)
	return l
}
