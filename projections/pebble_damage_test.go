package projections

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cockroachdb/pebble"
	"github.com/cockroachdb/pebble/sstable"
)

// TestPebbleCompactionDropsKeysAfterDamage pins the Pebble behaviour that
// sharedTableError works around: a compaction of a table with a damaged
// data block reports success and drops live keys that follow the block,
// keys no read had found damaged. When a Pebble upgrade makes the
// compaction fail instead, this test fails: then the sharers of a damaged
// table need no rebuild any more (healSharers can go).
func TestPebbleCompactionDropsKeysAfterDamage(t *testing.T) {
	dir := t.TempDir()
	opts := &pebble.Options{Logger: quietPebble{}}
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
	// Damage a data block a quarter into the table: in the a keys.
	ssts, _ := filepath.Glob(filepath.Join(dir, "*.sst"))
	if len(ssts) != 1 {
		t.Fatalf("tables %v, want one", ssts)
	}
	f, err := os.Open(ssts[0])
	if err != nil {
		t.Fatal(err)
	}
	readable, err := sstable.NewSimpleReadable(f)
	if err != nil {
		t.Fatal(err)
	}
	r, err := sstable.NewReader(readable, sstable.ReaderOptions{})
	if err != nil {
		t.Fatal(err)
	}
	layout, err := r.Layout()
	if err != nil {
		t.Fatal(err)
	}
	block := layout.Data[len(layout.Data)/4]
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

	db, err = pebble.Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	countB := func() int {
		it, err := db.NewIter(&pebble.IterOptions{LowerBound: []byte("b"), UpperBound: []byte("c")})
		if err != nil {
			t.Fatal(err)
		}
		c := 0
		for it.First(); it.Valid(); it.Next() {
			c++
		}
		if err := it.Close(); err != nil {
			t.Fatalf("reading the undamaged b keys: %v", err)
		}
		return c
	}
	if got := countB(); got != n {
		t.Fatalf("before the compaction %d b keys, want %d", got, n)
	}
	// The a keys are deleted (as a damaged generation is) and the table
	// compacted (as heal does, and as Pebble would by itself).
	if err := db.DeleteRange([]byte("a"), []byte("b"), pebble.Sync); err != nil {
		t.Fatal(err)
	}
	if err := db.Compact([]byte("a"), []byte("c"), false); err != nil {
		t.Fatalf("the compaction failed (%v): Pebble now reports the damage; healSharers may no longer be needed", err)
	}
	got := countB()
	if got == n {
		t.Fatalf("the compaction kept all %d b keys: Pebble no longer drops keys after a damaged block; healSharers may no longer be needed", n)
	}
	t.Logf("Pebble compaction over a damaged block: reported success, %d of %d live keys after it remain", got, n)
}
