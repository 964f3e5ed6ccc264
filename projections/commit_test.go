package projections

import (
	"fmt"
	"testing"

	"github.com/cockroachdb/pebble/v2"
)

// TestSortedCommitKeepsLastWrite: a batch committed in key order, each key
// once, leaves the store as the batch committed as written would; a batch
// with a range deletion is not reordered (a write after the deletion must
// survive it).
func TestSortedCommitKeepsLastWrite(t *testing.T) {
	db := openDB(t, t.TempDir())
	defer db.Close()
	if err := db.Set([]byte("k5"), []byte("old"), pebble.NoSync); err != nil {
		t.Fatal(err)
	}
	b := db.NewIndexedBatch()
	defer b.Close()
	for i := 9; i >= 0; i-- {
		k := []byte(fmt.Sprintf("k%d", i))
		_ = b.Set(k, []byte("first"), nil)
		if i%3 == 0 {
			_ = b.Delete(k, nil)
		}
		if i%2 == 0 {
			_ = b.Set(k, []byte(fmt.Sprintf("last%d", i)), nil)
		}
	}
	_ = b.Delete([]byte("k5"), nil)
	sorted := sortedForCommit(db, b)
	if sorted == nil {
		t.Fatal("a batch of point writes was not sorted")
	}
	defer sorted.Close()
	if sorted.Count() != 10 {
		t.Errorf("sorted batch holds %d records, want one per key (10)", sorted.Count())
	}
	if err := sorted.Commit(pebble.NoSync); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 10; i++ {
		want := "first"
		switch {
		case i%2 == 0:
			want = fmt.Sprintf("last%d", i)
		case i%3 == 0 || i == 5:
			want = "" // deleted
		}
		v, closer, err := db.Get([]byte(fmt.Sprintf("k%d", i)))
		got := ""
		if err == nil {
			got = string(v)
			closer.Close()
		}
		if got != want {
			t.Errorf("k%d = %q, want %q", i, got, want)
		}
	}

	r := db.NewIndexedBatch()
	defer r.Close()
	_ = r.Set([]byte("a"), nil, nil)
	_ = r.DeleteRange([]byte("a"), []byte("z"), nil)
	_ = r.Set([]byte("b"), nil, nil)
	if sortedForCommit(db, r) != nil {
		t.Error("a batch with a range deletion was reordered")
	}
}
