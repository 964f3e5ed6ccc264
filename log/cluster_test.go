package log

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/rs/zerolog"
)

type testCluster struct {
	t      testing.TB
	peers  []Peer
	dirs   []string
	nodes  []*Node // nil while a node is down
	caCert []byte  // the cluster CA (PEM); nodes talk mutual TLS
	caKey  []byte
	tls    []*tls.Config
}

// testClusterTLS issues node id a certificate from the CA (PEM).
func testClusterTLS(t testing.TB, caCert, caKey []byte, id string) *tls.Config {
	t.Helper()
	cert, key, err := IssueNodeCert(caCert, caKey, id, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	conf, err := ClusterTLS(caCert, cert, key)
	if err != nil {
		t.Fatal(err)
	}
	return conf
}

func freeLoopbackAddrs(t testing.TB, k int) []string {
	t.Helper()
	var ls []net.Listener
	var addrs []string
	for i := 0; i < k; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
		addrs = append(addrs, l.Addr().String())
	}
	for _, l := range ls {
		l.Close()
	}
	return addrs
}

func clusterTune(c *raft.Config) {
	c.HeartbeatTimeout = 150 * time.Millisecond
	c.ElectionTimeout = 300 * time.Millisecond
	c.LeaderLeaseTimeout = 100 * time.Millisecond
	c.CommitTimeout = 5 * time.Millisecond
	// Only explicit snapshots, and compaction that keeps little, so a
	// lagging node must be caught up by snapshot.
	c.TrailingLogs = 5
	c.SnapshotThreshold = 1 << 30
	c.SnapshotInterval = 1 << 30
}

func newTestCluster(t testing.TB) *testCluster {
	addrs := freeLoopbackAddrs(t, 3)
	c := &testCluster{t: t}
	var err error
	if c.caCert, c.caKey, err = NewClusterCA("test", time.Now()); err != nil {
		t.Fatal(err)
	}
	for i, a := range addrs {
		c.peers = append(c.peers, Peer{ID: fmt.Sprintf("n%d", i+1), Addr: a})
		c.dirs = append(c.dirs, t.TempDir())
		c.tls = append(c.tls, testClusterTLS(t, c.caCert, c.caKey, c.peers[i].ID))
	}
	c.nodes = make([]*Node, 3)
	for i := range c.nodes {
		c.start(i)
	}
	t.Cleanup(func() {
		for i := range c.nodes {
			c.stop(i)
		}
	})
	return c
}

func (c *testCluster) start(i int) {
	c.t.Helper()
	n, err := Open(Config{
		Dir: c.dirs[i], NodeID: c.peers[i].ID, RaftAddr: c.peers[i].Addr, Peers: c.peers, TLS: c.tls[i],
		Logger: zerolog.New(zerolog.NewTestWriter(c.t)).Level(zerolog.ErrorLevel), tune: clusterTune,
	})
	if err != nil {
		c.t.Fatalf("open %s: %v", c.peers[i].ID, err)
	}
	c.nodes[i] = n
}

func (c *testCluster) stop(i int) {
	if c.nodes[i] != nil {
		if err := c.nodes[i].Close(); err != nil {
			c.t.Errorf("close %s: %v", c.peers[i].ID, err)
		}
		c.nodes[i] = nil
	}
}

func (c *testCluster) leader() int {
	c.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		for i, n := range c.nodes {
			if n != nil && n.IsLeader() {
				return i
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	c.t.Fatal("no leader elected within 15s")
	return -1
}

// appendOn appends count entries on node i, retrying while leadership
// settles, and returns the payloads by offset.
func (c *testCluster) appendOn(i, count int, tag string, into map[uint64][]byte) {
	c.t.Helper()
	ambiguous := 0
	for k := 0; k < count; k++ {
		p := []byte(fmt.Sprintf(`{"tag":%q,"k":%d,"body":"%s"}`, tag, k, bytes.Repeat([]byte("x"), k*13%300)))
		offs, err := c.nodes[i].Append(context.Background(), Proposal{Kind: KindPDU, Payload: p})
		if errors.Is(err, ErrNotLeader) && ambiguous < 3 {
			// Leadership moved while committing (a loaded machine can
			// elect twice in a row): the entry may or may not be in the
			// log. Retry on the new leader; the log is read back below.
			ambiguous++
			i = c.leader()
			k--
			continue
		}
		if err != nil {
			c.t.Fatalf("append %s #%d on %s: %v", tag, k, c.peers[i].ID, err)
		}
		into[offs[0]] = p
	}
	if ambiguous == 0 {
		return
	}
	c.collect(i, tag, into)
}

// collect takes tag's entries as node i's log holds them: every one
// acknowledged is there at its offset, and the only extras are retried
// entries that made it after all.
func (c *testCluster) collect(i int, tag string, into map[uint64][]byte) {
	c.t.Helper()
	n := c.nodes[i]
	got, err := n.Read(1, int(n.LastOffset())+1)
	if err != nil {
		c.t.Fatal(err)
	}
	prefix := []byte(fmt.Sprintf(`{"tag":%q,`, tag))
	for _, e := range got {
		if bytes.HasPrefix(e.Payload, prefix) {
			if p, ok := into[e.Offset]; ok && !bytes.Equal(p, e.Payload) {
				c.t.Fatalf("entry %d = %q, acknowledged as %q", e.Offset, e.Payload, p)
			}
			into[e.Offset] = e.Payload
		}
	}
}

// converge waits until every running node has want entries, then checks
// they all hold exactly the expected entries in the same order.
func (c *testCluster) converge(want map[uint64][]byte) {
	c.t.Helper()
	total := uint64(len(want))
	for i, n := range c.nodes {
		if n == nil {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		for n.LastOffset() < total {
			if err := n.Wait(ctx, n.LastOffset()); err != nil {
				cancel()
				c.t.Fatalf("%s stuck at offset %d, want %d: %v", c.peers[i].ID, n.LastOffset(), total, err)
			}
		}
		cancel()
		got, err := n.Read(1, int(total)+10)
		if err != nil {
			c.t.Fatal(err)
		}
		if uint64(len(got)) != total {
			c.t.Fatalf("%s holds %d entries, want %d", c.peers[i].ID, len(got), total)
		}
		for _, e := range got {
			if !bytes.Equal(e.Payload, want[e.Offset]) {
				c.t.Fatalf("%s entry %d = %q, want %q", c.peers[i].ID, e.Offset, e.Payload, want[e.Offset])
			}
		}
	}
}

func TestThreeNodeCluster(t *testing.T) {
	c := newTestCluster(t)
	want := map[uint64][]byte{}

	// A follower refuses appends. On a loaded machine leadership can move
	// to the chosen follower between picking it and appending, and then
	// the probe is an entry like any other: pick again.
	probe := []byte(`{"tag":"probe","k":0}`)
	for tries := 0; ; tries++ {
		follower := (c.leader() + 1) % 3
		_, err := c.nodes[follower].Append(context.Background(), Proposal{Kind: KindPDU, Payload: probe})
		if errors.Is(err, ErrNotLeader) {
			break
		}
		if err != nil || tries == 3 {
			t.Fatalf("Append on a follower = %v, want ErrNotLeader", err)
		}
	}
	l := c.leader()
	c.appendOn(l, 30, "first", want)
	// The leader's own entries committed any probe that landed.
	c.collect(c.leader(), "probe", want)
	c.converge(want)

	// Kill the leader: a new one is elected and writes continue.
	c.stop(l)
	l2 := c.leader()
	if l2 == l {
		t.Fatal("the stopped node is still leader")
	}
	c.appendOn(l2, 30, "second", want)
	c.converge(want)

	// The old leader comes back and catches up from the raft log.
	c.start(l)
	c.converge(want)

	// A node that was down while the leader compacted its raft log catches
	// up by snapshot.
	l3 := c.leader()
	lag := (l3 + 1) % 3
	c.stop(lag)
	c.appendOn(l3, 40, "third", want)
	if err := c.nodes[l3].Raft().Snapshot().Error(); err != nil {
		t.Fatalf("snapshot: %v", err)
	}
	if first, _ := c.nodes[l3].store.FirstIndex(); first <= 40 {
		t.Fatalf("leader's raft log still starts at %d; compaction did not happen", first)
	}
	// Snapshots are lazy: the leader's holds a header, not the log.
	metas, err := c.nodes[l3].snaps.List()
	if err != nil || len(metas) == 0 || metas[0].Size > 64 {
		t.Fatalf("leader snapshots = %+v (err %v), want one lazy snapshot of a few bytes", metas, err)
	}
	c.start(lag)
	c.converge(want)
	snaps, _ := os.ReadDir(filepath.Join(c.dirs[lag], "raft-snapshots"))
	if len(snaps) == 0 {
		t.Fatal("the lagging node caught up without receiving a snapshot; the snapshot path went untested")
	}
	// And the cluster still takes writes after all that.
	c.appendOn(c.leader(), 5, "fourth", want)
	c.converge(want)
}
