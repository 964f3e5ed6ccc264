package log

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

func TestPebbleMemoryShares(t *testing.T) {
	for _, c := range []struct{ target, mem, cache int64 }{
		{0, 8 << 20, 48 << 20}, // DefaultMemoryTarget
		{128 << 20, 8 << 20, 48 << 20},
		{32 << 20, 2 << 20, 12 << 20},
		{1 << 30, 64 << 20, 384 << 20},
		{4 << 30, 64 << 20, 1536 << 20}, // memtables stop growing at 64 MiB
	} {
		mem, cache := PebbleMemory(c.target)
		if mem != c.mem || cache != c.cache {
			t.Errorf("PebbleMemory(%d) = %d, %d; want %d, %d", c.target, mem, cache, c.mem, c.cache)
		}
		if c.target > 0 && 2*mem+cache > c.target {
			t.Errorf("PebbleMemory(%d): memtables and cache (%d) exceed the target", c.target, 2*mem+cache)
		}
	}
}

// TestWALsTakeWhatTheyHold: after a few MB of appends, every write-ahead
// log on disk occupies about what it holds, not the 1.1x memtable size
// Pebble reserves for it by default, and the log reads back.
func TestWALsTakeWhatTheyHold(t *testing.T) {
	dir := t.TempDir()
	n := openSingle(t, dir)
	payload := bytes.Repeat([]byte("wal sizing;"), 300)
	const entries = 3000 // ~10 MB: the memtable (8 MiB by default) rotates
	for i := 0; i < entries; i += 50 {
		ps := make([]Proposal, 50)
		for j := range ps {
			ps[j] = Proposal{Kind: KindPDU, Payload: payload}
		}
		if _, err := n.Append(context.Background(), ps...); err != nil {
			t.Fatal(err)
		}
	}
	memTable, _ := PebbleMemory(0)
	ents, _ := os.ReadDir(dir)
	wals := 0
	for _, e := range ents {
		if !strings.HasSuffix(e.Name(), ".log") {
			continue
		}
		wals++
		fi, err := os.Stat(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		allocated := fi.Sys().(*syscall.Stat_t).Blocks * 512
		// Pebble's reservation would be 1.1x the memtable whatever the
		// WAL holds; allow filesystems some slack of their own.
		if allocated > fi.Size()+memTable/4 {
			t.Errorf("%s holds %d bytes but occupies %d on disk", e.Name(), fi.Size(), allocated)
		}
	}
	if wals == 0 {
		t.Fatal("no write-ahead log in the directory")
	}
	n.Close()
	n = openSingle(t, dir)
	defer n.Close()
	if last := n.LastOffset(); last != entries {
		t.Fatalf("reopened log ends at %d, want %d", last, entries)
	}
	es, err := n.Read(entries, 1)
	if err != nil || len(es) != 1 || !bytes.Equal(es[0].Payload, payload) {
		t.Fatalf("read back %v, %v", es, err)
	}
}
