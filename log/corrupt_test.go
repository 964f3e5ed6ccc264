package log

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/hashicorp/raft"
	"github.com/rs/zerolog"
)

// fillLog appends count entries, one Append (one raft command) each, and
// returns their payloads by offset.
func fillLog(t *testing.T, n *Node, count int) map[uint64][]byte {
	t.Helper()
	want := map[uint64][]byte{}
	for i := 0; i < count; i++ {
		p := payloadFor(i)
		offs, err := n.Append(context.Background(), Proposal{Kind: KindPDU, Payload: p})
		if err != nil {
			t.Fatal(err)
		}
		want[offs[0]] = p
	}
	return want
}

// flipByte corrupts one byte of the stored entry at off, behind the log's back.
func flipByte(t *testing.T, dir string, off uint64) {
	t.Helper()
	db, err := pebble.Open(dir, &pebble.Options{Logger: pebbleLogger{zerolog.Nop()}})
	if err != nil {
		t.Fatal(err)
	}
	v, closer, err := db.Get(entryKey(off))
	if err != nil {
		t.Fatal(err)
	}
	bad := append([]byte(nil), v...)
	closer.Close()
	bad[len(bad)-1] ^= 0x40
	if err := db.Set(entryKey(off), bad, pebble.Sync); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
}

func checkEntries(t *testing.T, n *Node, want map[uint64][]byte) {
	t.Helper()
	got, err := n.Read(1, len(want)+10)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("log holds %d entries, want %d", len(got), len(want))
	}
	for _, e := range got {
		if !bytes.Equal(e.Payload, want[e.Offset]) {
			t.Fatalf("entry %d = %q, want %q", e.Offset, e.Payload, want[e.Offset])
		}
	}
}

func TestCorruptTailIsTruncatedAndReapplied(t *testing.T) {
	dir := t.TempDir()
	n := openSingle(t, dir)
	want := fillLog(t, n, 40)
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	flipByte(t, dir, 40)

	var logs bytes.Buffer
	n, err := Open(Config{Dir: dir, Logger: zerolog.New(&logs)})
	if err != nil {
		t.Fatalf("Open with a torn tail: %v", err)
	}
	defer n.Close()
	if !strings.Contains(logs.String(), "torn tail truncated") || !strings.Contains(logs.String(), `"corrupt_offset":40`) {
		t.Fatalf("the truncation was not logged; logs:\n%s", logs.String())
	}
	// Raft still holds the command, so the cut entry comes back intact.
	checkEntries(t, n, want)
}

func TestCorruptTailBelowCompactedRaftLogRefusesToOpen(t *testing.T) {
	dir := t.TempDir()
	tune := func(c *raft.Config) {
		c.TrailingLogs = 2
		c.SnapshotThreshold = 1 << 30 // only the explicit snapshot below
		c.SnapshotInterval = 1 << 30
	}
	n, err := Open(Config{Dir: dir, Logger: zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel), tune: tune})
	if err != nil {
		t.Fatal(err)
	}
	fillLog(t, n, 30)
	if err := n.Raft().Snapshot().Error(); err != nil {
		t.Fatal(err)
	}
	if first, _ := n.store.FirstIndex(); first < 20 {
		t.Fatalf("raft log starts at %d after snapshot; compaction did not happen", first)
	}
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	// Entry 10's raft command is gone from the raft log, and snapshots are
	// lazy (they hold no entries): nothing could refill a cut there, so
	// Open must refuse and leave the disk as it found it.
	db, err := pebble.Open(dir, &pebble.Options{Logger: pebbleLogger{zerolog.Nop()}})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Set(keyVerified, u64Bytes(5), pebble.Sync); err != nil {
		t.Fatal(err)
	}
	for off := uint64(10); off <= 30; off++ {
		v, closer, err := db.Get(entryKey(off))
		if err != nil {
			t.Fatal(err)
		}
		bad := append([]byte(nil), v...)
		closer.Close()
		bad[0] ^= 1
		if err := db.Set(entryKey(off), bad, pebble.Sync); err != nil {
			t.Fatal(err)
		}
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	_, err = Open(Config{Dir: dir, Logger: zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel), tune: tune})
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "offset 10") {
		t.Fatalf("Open = %v, want ErrCorrupt at offset 10", err)
	}
	db, err = pebble.Open(dir, &pebble.Options{Logger: pebbleLogger{zerolog.Nop()}})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for off := uint64(1); off <= 30; off++ {
		if _, closer, err := db.Get(entryKey(off)); err != nil {
			t.Fatalf("entry %d was deleted by the refused Open: %v", off, err)
		} else {
			closer.Close()
		}
	}
}

func TestCorruptMiddleRefusesToOpen(t *testing.T) {
	dir := t.TempDir()
	n := openSingle(t, dir)
	fillLog(t, n, 60)
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	flipByte(t, dir, 25)
	_, err := Open(Config{Dir: dir, Logger: zerolog.Nop()})
	if !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Open = %v, want ErrCorrupt", err)
	}
	if !strings.Contains(err.Error(), "offset 25") || !strings.Contains(err.Error(), "restore") {
		t.Fatalf("error %q should name offset 25 and say how to restore", err)
	}
	// Read also refuses the damaged entry instead of returning it.
	db, err := pebble.Open(dir, &pebble.Options{Logger: pebbleLogger{zerolog.Nop()}})
	if err != nil {
		t.Fatal(err)
	}
	v, closer, err := db.Get(entryKey(25))
	if err != nil {
		t.Fatal(err)
	}
	_, derr := decodeStored(25, v)
	closer.Close()
	db.Close()
	if !errors.Is(derr, errChecksum) {
		t.Fatalf("decodeStored of the flipped entry = %v, want a checksum error", derr)
	}
}
