package projections

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/sstable"
	"github.com/cockroachdb/pebble/v2/vfs"
)

// TestPebbleDamageStopsCompactionAndExciseRemovesIt pins the two Pebble
// behaviours healing relies on (healHandle):
//   - a compaction of a table with a damaged data block reports the
//     damage and keeps every live key of the table (Pebble v1.1 reported
//     success and dropped the keys after the block, 979 of 2,000 left in
//     this very test, which is why every projection sharing a damaged table
//     used to be rebuilt). Pebble retries it, so a manual Compact over the
//     damage never returns by itself: healing never waits on one;
//   - excising the damaged generation's range takes the damaged block out
//     of the LSM, after which compactions succeed and the other keys of
//     the table still read in full.
func TestPebbleDamageStopsCompactionAndExciseRemovesIt(t *testing.T) {
	dir := t.TempDir()
	var reports atomic.Int32
	opts := &pebble.Options{Logger: quietPebble{}, FormatMajorVersion: pebble.FormatNewest,
		EventListener: &pebble.EventListener{DataCorruption: func(pebble.DataCorruptionInfo) { reports.Add(1) }}}
	db, err := pebble.Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	val := []byte(strings.Repeat("v", 200))
	const n = 2000
	for _, p := range []string{"a", "b"} {
		for i := 0; i < n; i++ {
			if err := db.Set([]byte(fmt.Sprintf("%s%05d", p, i)), val, nil); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := db.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	damageBlock(t, dir, 4)

	db, err = pebble.Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	count := func(lower, upper string) (int, error) {
		it, err := db.NewIter(&pebble.IterOptions{LowerBound: []byte(lower), UpperBound: []byte(upper)})
		if err != nil {
			return 0, err
		}
		c := 0
		for it.First(); it.Valid(); it.Next() {
			c++
		}
		return c, it.Close()
	}
	if got, err := count("b", "c"); err != nil || got != n {
		t.Fatalf("before the compaction: %d b keys (%v), want %d", got, err, n)
	}
	if _, err := count("a", "b"); !pebble.IsCorruptionError(err) {
		t.Fatalf("reading the damaged a keys: %v, want a corruption error", err)
	}
	// The a keys are deleted (as a damaged generation is) and the table
	// compacted.
	if err := db.DeleteRange([]byte("a"), []byte("b"), pebble.Sync); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	err = db.Compact(ctx, []byte("a"), []byte("c"), false)
	cancel()
	if err == nil {
		t.Fatal("the compaction over the damaged block succeeded: check that it kept every b key before trusting it (Pebble v1.1 dropped them)")
	}
	if reports.Load() == 0 {
		t.Fatal("no DataCorruption event for the damaged table")
	}
	if got, err := count("b", "c"); err != nil || got != n {
		t.Fatalf("after the failed compaction: %d b keys (%v), want all %d", got, err, n)
	}
	if err := db.Excise(context.Background(), pebble.KeyRange{Start: []byte("a"), End: []byte("b")}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel = context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := db.Compact(ctx, []byte("a"), []byte("c"), false); err != nil {
		t.Fatalf("compacting after the excise: %v", err)
	}
	if got, err := count("a", "c"); err != nil || got != n {
		t.Fatalf("after the excise: %d keys (%v), want the %d b keys", got, err, n)
	}
}

// damageBlock flips 16 bytes in the middle of the data block 1/fraction
// into the only table in dir (a closed Pebble directory).
func damageBlock(t *testing.T, dir string, fraction int) {
	t.Helper()
	ssts, _ := filepath.Glob(filepath.Join(dir, "*.sst"))
	if len(ssts) != 1 {
		t.Fatalf("tables %v, want one", ssts)
	}
	f, err := vfs.Default.Open(ssts[0])
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
	layout, err := r.Layout()
	if err != nil {
		t.Fatal(err)
	}
	block := layout.Data[len(layout.Data)/fraction]
	r.Close()
	b, err := os.ReadFile(ssts[0])
	if err != nil {
		t.Fatal(err)
	}
	for i := block.Offset + block.Length/2; i < block.Offset+block.Length/2+16; i++ {
		b[i] ^= 0xff
	}
	if err := os.WriteFile(ssts[0], b, 0o600); err != nil {
		t.Fatal(err)
	}
}
