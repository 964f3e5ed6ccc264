package log

import (
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/rs/zerolog"
)

// A cluster node writes its event log without syncing (its raft log is
// the durable copy), so a crash can lose the event log's tail of entries
// the node had acknowledged. At Open the log is then shorter than the
// acknowledged offset; raft applies the lost commands again once the node
// hears the commit index. That is expected, not damage: the node says so
// in an info line once the entries are back, and warns only if they stay
// missing. Here the crash is made by hand: a stopped follower loses its
// newest commands from the event log (with the applied raft index wound
// back, as a lost NoSync batch leaves it) and had acknowledged them.
func TestClusterNodeRefillsItsLostTailWithoutAlarm(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a three-node cluster")
	}
	c := newTestCluster(t)
	want := map[uint64][]byte{}
	c.appendOn(c.leader(), 30, "a", want)
	c.converge(want)
	f := (c.leader() + 1) % 3
	c.stop(f)

	db, err := pebble.Open(c.dirs[f], &pebble.Options{Logger: pebbleLogger{zerolog.Nop()}})
	if err != nil {
		t.Fatal(err)
	}
	last := uint64(len(want))
	keep, err := readStored(db, last-3)
	if err != nil {
		t.Fatal(err)
	}
	cut := last - 3
	for cut > 1 {
		p, err := readStored(db, cut-1)
		if err != nil {
			t.Fatal(err)
		}
		if p.raftIndex != keep.raftIndex {
			break
		}
		cut--
	}
	if err := db.DeleteRange(entryKey(cut), entryKey(last+1), pebble.Sync); err != nil {
		t.Fatal(err)
	}
	if err := db.Set(keyApplied, u64Bytes(keep.raftIndex-1), pebble.Sync); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	st, _, err := openStateFile(c.dirs[f])
	if err != nil {
		t.Fatal(err)
	}
	if err := st.set(keyAcked, u64Bytes(last)); err != nil {
		t.Fatal(err)
	}
	if err := st.close(); err != nil {
		t.Fatal(err)
	}

	var out syncBuffer
	n, err := Open(Config{
		Dir: c.dirs[f], NodeID: c.peers[f].ID, RaftAddr: c.peers[f].Addr, Peers: c.peers, TLS: c.tls[f],
		Logger: zerolog.New(&out).Level(zerolog.InfoLevel), tune: clusterTune,
	})
	if err != nil {
		t.Fatalf("reopening %s: %v", c.peers[f].ID, err)
	}
	c.nodes[f] = n
	if got := n.LastOffset(); got >= last {
		t.Fatalf("the follower opened at offset %d: the tail was not lost (want below %d), so this test tests nothing", got, last)
	}
	c.converge(want)
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(out.String(), "applied again from the raft log") {
		if time.Now().After(deadline) {
			t.Fatalf("no line saying the lost tail came back; the log said:\n%s", out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if s := out.String(); strings.Contains(s, `"level":"warn"`) && strings.Contains(s, "acknowledged entries") {
		t.Fatalf("a warning about acknowledged entries for a tail that came back:\n%s", s)
	}
}
