package projections

import (
	"bytes"
	"slices"

	"github.com/cockroachdb/pebble/v2"
)

// sortedForCommit returns a plain batch holding the final value of every
// key b writes, in key order, or nil when b must be committed as it is.
//
// Committing a batch inserts its records into the memtable's skiplist one
// by one, in the order Apply wrote them: projection keys are scattered
// (room IDs, user IDs), so each insert searched the skiplist from its top
// and committing was a fifth of a rooms rebuild. Pebble's inserter reuses
// the previous insert's position, which makes inserting keys in order
// cheap; and a key written several times in one batch (a counter, a room
// record) needs only its last write, as nothing can observe a batch's
// intermediate states.
//
// Only point writes can be reordered: a range deletion deletes the writes
// made before it and not those after it, so a batch with one is left
// alone.
func sortedForCommit(db *pebble.DB, b *pebble.Batch) *pebble.Batch {
	type record struct {
		kind       pebble.InternalKeyKind
		seq        int // position in b
		key, value []byte
	}
	recs := make([]record, 0, b.Count())
	for r := b.Reader(); ; {
		kind, key, value, ok, err := r.Next()
		if err != nil {
			return nil
		}
		if !ok {
			break
		}
		if kind != pebble.InternalKeyKindSet && kind != pebble.InternalKeyKindDelete {
			return nil
		}
		recs = append(recs, record{kind, len(recs), key, value})
	}
	// Of the writes to one key, the last stays last.
	slices.SortFunc(recs, func(x, y record) int {
		if c := bytes.Compare(x.key, y.key); c != 0 {
			return c
		}
		return x.seq - y.seq
	})
	out := db.NewBatchWithSize(len(b.Repr()))
	for i, r := range recs {
		if i+1 < len(recs) && bytes.Equal(r.key, recs[i+1].key) {
			continue // overwritten later in the batch
		}
		var err error
		if r.kind == pebble.InternalKeyKindSet {
			err = out.Set(r.key, r.value, nil)
		} else {
			err = out.Delete(r.key, nil)
		}
		if err != nil {
			out.Close()
			return nil
		}
	}
	return out
}

// commitSorted commits b to db, as sortedForCommit's batch when it can.
// NoSync: see applyBatch.
func commitSorted(db *pebble.DB, b *pebble.Batch) error {
	if sorted := sortedForCommit(db, b); sorted != nil {
		defer sorted.Close()
		return sorted.Commit(pebble.NoSync)
	}
	return b.Commit(pebble.NoSync)
}
