package log

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/sstable"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/rs/zerolog"
)

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestDamagedLogBlockIsReportedNotFatal damages a table block of old log
// entries (older than the tail Open verifies) of a stopped node. The node
// opens and keeps serving; reading the damaged entries fails instead of
// returning less or crashing the process (Pebble's default), and one log
// line says that acknowledged log entries are damaged, after which
// offset, and what to do.
func TestDamagedLogBlockIsReportedNotFatal(t *testing.T) {
	dir := t.TempDir()
	n := openSingle(t, dir)
	const total = verifyTail + 2000
	for i := 0; i < total; i += 100 {
		props := make([]Proposal, 100)
		for j := range props {
			props[j] = Proposal{Kind: KindPDU, Payload: payloadFor(i + j)}
		}
		if _, err := n.Append(context.Background(), props...); err != nil {
			t.Fatal(err)
		}
	}
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	// Open once more: it checks every entry and marks them verified, so
	// the next Open checks only the tail.
	n = openSingle(t, dir)
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	db, err := pebble.Open(dir, pebbleOptions(zerolog.Nop(), nil, 0, &tableDamage{}))
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := db.Compact(context.Background(), []byte("L"), []byte("M"), false); err != nil {
		t.Fatal(err)
	}
	db.Close()
	damageFirstEntryBlock(t, dir)

	// Open checks from the verified mark: damage there refuses to open.
	raw, err := pebble.Open(dir, pebbleOptions(zerolog.Nop(), nil, 0, &tableDamage{}))
	if err != nil {
		t.Fatal(err)
	}
	_, err = recoverLog(raw, &diskGuard{}, zerolog.Nop(), total, 0)
	raw.Close()
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "from offset ") {
		t.Fatalf("checking every entry = %v, want ErrCorrupt naming the offset", err)
	}

	var out syncBuffer
	n, err = Open(Config{Dir: dir, Logger: zerolog.New(&out)})
	if err != nil {
		t.Fatalf("Open with damage below the verified tail: %v", err)
	}
	defer n.Close()
	if _, err := n.Read(1, 500); err == nil || !pebble.IsCorruptionError(err) {
		t.Fatalf("reading the damaged entries = %v, want a corruption error", err)
	}
	if got, err := n.Read(total-10, 10); err != nil || len(got) != 10 {
		t.Fatalf("reading the newest entries = %d entries, %v", len(got), err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(out.String(), "log entries are damaged") {
		if time.Now().After(deadline) {
			t.Fatalf("no line says the log entries are damaged:\n%s", out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !strings.Contains(out.String(), `"last_readable_offset"`) || !strings.Contains(out.String(), "restore") {
		t.Fatalf("the line should name the last readable offset and say how to repair:\n%s", out.String())
	}
}

// damageFirstEntryBlock flips 16 bytes in the second data block of the
// table that holds the oldest log entries.
func damageFirstEntryBlock(t *testing.T, dir string) {
	t.Helper()
	ssts, _ := filepath.Glob(filepath.Join(dir, "*.sst"))
	for _, path := range ssts {
		f, err := vfs.Default.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		readable, err := sstable.NewSimpleReadable(f)
		if err != nil {
			t.Fatal(err)
		}
		r, err := sstable.NewReader(context.Background(), readable, sstable.ReaderOptions{})
		if err != nil {
			t.Fatal(err)
		}
		it, err := r.NewIter(sstable.NoTransforms, nil, nil, sstable.AssertNoBlobHandles)
		if err != nil {
			t.Fatal(err)
		}
		kv := it.First()
		oldest := kv != nil && bytes.Equal(kv.K.UserKey, entryKey(1))
		it.Close()
		layout, err := r.Layout()
		r.Close()
		if err != nil {
			t.Fatal(err)
		}
		if !oldest || len(layout.Data) < 3 {
			continue
		}
		block := layout.Data[1]
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		for i := block.Offset + block.Length/2; i < block.Offset+block.Length/2+16; i++ {
			b[i] ^= 0xff
		}
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return
	}
	t.Fatalf("no table starts with log entry 1 (tables %v)", ssts)
}
