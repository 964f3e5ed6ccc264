package projections

import (
	"fmt"
	"math/rand/v2"
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
	sorted, err := sortedForCommit(db, b, new(unreadWrites))
	if err != nil || sorted == nil {
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
	if sorted, err := sortedForCommit(db, r, new(unreadWrites)); sorted != nil || err != nil {
		t.Errorf("a batch with a range deletion was reordered (%v)", err)
	}
}

// TestUnreadWritesKeepTheirPlace: whatever the interleaving of SetUnread
// with Set, Delete and DeleteRange through the engine's Writer, the
// committed store is the one the writes made in their order would leave.
func TestUnreadWritesKeepTheirPlace(t *testing.T) {
	for seed := range 40 {
		rng := rand.New(rand.NewPCG(uint64(seed), 7))
		got, want := openDB(t, t.TempDir()), openDB(t, t.TempDir())
		prefix := []byte("p/")
		for _, db := range []*pebble.DB{got, want} {
			for k := range 8 {
				if err := db.Set(fmt.Appendf(nil, "p/k%d", k), []byte("before"), pebble.NoSync); err != nil {
					t.Fatal(err)
				}
			}
		}
		b := got.NewIndexedBatch()
		w := newBatchWriter(b, prefix, nil, nil)
		ref := want.NewBatch()
		withRanges := seed%2 == 1
		for i := range 60 {
			k := fmt.Appendf(nil, "k%d", rng.IntN(12))
			v := fmt.Appendf(nil, "v%d", i)
			abs := append(append([]byte(nil), prefix...), k...)
			var err error
			switch op := rng.IntN(10); {
			case op < 4:
				err = SetUnread(w, k, v)
				_ = ref.Set(abs, v, nil)
			case op < 7:
				err = w.Set(k, v)
				_ = ref.Set(abs, v, nil)
			case op < 9 || !withRanges:
				err = w.Delete(k)
				_ = ref.Delete(abs, nil)
			default:
				hi := fmt.Appendf(nil, "k%d", rng.IntN(12))
				err = w.DeleteRange(k, hi)
				_ = ref.DeleteRange(abs, append(append([]byte(nil), prefix...), hi...), nil)
			}
			if err != nil {
				t.Fatal(err)
			}
		}
		if err := commitSorted(got, b, &w.unread); err != nil {
			t.Fatal(err)
		}
		if err := ref.Commit(pebble.NoSync); err != nil {
			t.Fatal(err)
		}
		if g, wnt := dumpDB(t, got), dumpDB(t, want); g != wnt {
			t.Fatalf("seed %d (range deletions %v): committed\n%s\nwant\n%s", seed, withRanges, g, wnt)
		}
		b.Close()
		got.Close()
		want.Close()
	}
}

func dumpDB(t *testing.T, db *pebble.DB) string {
	t.Helper()
	it, err := db.NewIter(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer it.Close()
	var out []byte
	for it.First(); it.Valid(); it.Next() {
		out = fmt.Appendf(out, "%s=%s ", it.Key(), it.Value())
	}
	return string(out)
}
