package projections

import (
	"bytes"
	"cmp"
	"fmt"
	"slices"
	"sync"

	"github.com/cockroachdb/pebble/v2"
)

// SetUnread writes key like w.Set, for a key the fold never reads: only
// the projection's views do, after the batch commits. Neither w's Get
// nor its Iter sees it, in this batch or in any later one (a rebuild's
// Get may answer from the keys it saw written: writtenKeys), so a key
// written this way must be read by no Apply ever. It skips the batch's
// index: a search rebuild inserted every term row of every message into
// that skiplist, a tenth of the replay's CPU, only to sort them again at
// the commit.
//
// A key written unread is only ever written so: with SetUnread, and
// deleted with DeleteUnread, never with Set, Delete or DeleteRange. In a
// rebuild, the unread writes go to a store of their own that is never
// compacted (scratch.go), and are merged with the generation's other
// keys only when it is written out; a Delete of such a key would miss
// them. In order among themselves, they keep their order: a later
// DeleteUnread or SetUnread of a key wins.
func SetUnread(w Writer, key, value []byte) error {
	if bw, ok := w.(*batchWriter); ok {
		bw.unread.add(uint32(bw.b.Count()), pebble.InternalKeyKindSet, bw.abs(key), value)
		return nil
	}
	return w.Set(key, value)
}

// DeleteUnread deletes a key written with SetUnread.
func DeleteUnread(w Writer, key []byte) error {
	if bw, ok := w.(*batchWriter); ok {
		bw.unread.add(uint32(bw.b.Count()), pebble.InternalKeyKindDelete, bw.abs(key), nil)
		return nil
	}
	return w.Delete(key)
}

// unreadWrites are a batch's SetUnread and DeleteUnread writes, merged
// with the indexed batch's records at the commit (sortedForCommit), or
// in a rebuild committed to a store of their own (commitRebuild).
type unreadWrites struct {
	recs []unreadWrite
	buf  []byte // their keys and values
}

type unreadWrite struct {
	pos        uint32 // how many records the indexed batch held before it
	kind       pebble.InternalKeyKind
	key, value [2]int // in buf: start, end
}

// unreadBuffers keeps the buffers of committed batches' unread writes for
// the next batches: a rebuild's batch holds megabytes of them (search's
// term rows), which grown afresh by appending in every batch was a tenth
// of the search fold's Apply.
var unreadBuffers sync.Pool // of *unreadWrites, emptied

func (u *unreadWrites) add(pos uint32, kind pebble.InternalKeyKind, key, value []byte) {
	if u.buf == nil {
		if p, ok := unreadBuffers.Get().(*unreadWrites); ok {
			*u = *p
		}
	}
	k0 := len(u.buf)
	u.buf = append(u.buf, key...)
	v0 := len(u.buf)
	u.buf = append(u.buf, value...)
	u.recs = append(u.recs, unreadWrite{pos, kind, [2]int{k0, v0}, [2]int{v0, len(u.buf)}})
}

// release hands u's buffers to the next batch, once what they hold has
// been copied into the batch committed.
func (u *unreadWrites) release() {
	if u.buf != nil {
		unreadBuffers.Put(&unreadWrites{recs: u.recs[:0], buf: u.buf[:0]})
	}
	*u = unreadWrites{}
}

// commitRecord is one write of a batch being committed. order is its
// place among the batch's writes: the i-th record of the indexed batch is
// i<<32 | 0xffffffff, the j-th unread write made after p of them
// p<<32 | j, so it sorts after the indexed records before it and before
// the one that followed it.
type commitRecord struct {
	kind       pebble.InternalKeyKind
	order      uint64
	key, value []byte
}

// sortedForCommit returns a plain batch holding what b and unread write,
// or nil when b (with no unread writes) must be committed as it is.
//
// A batch of point writes is committed as the final value of every key,
// in key order. Committing a batch inserts its records into the
// memtable's skiplist one by one, in the order Apply wrote them:
// projection keys are scattered (room IDs, user IDs), so each insert
// searched the skiplist from its top and committing was a fifth of a
// rooms rebuild. Pebble's inserter reuses the previous insert's position,
// which makes inserting keys in order cheap; and a key written several
// times in one batch (a counter, a room record) needs only its last
// write, as nothing can observe a batch's intermediate states.
//
// Only point writes can be reordered: a range deletion deletes the writes
// made before it and not those after it, so a batch with one is committed
// in the order of its writes.
func sortedForCommit(db *pebble.DB, b *pebble.Batch, unread *unreadWrites) (*pebble.Batch, error) {
	recs := make([]commitRecord, 0, int(b.Count())+len(unread.recs))
	inOrder := false
	for r := b.Reader(); ; {
		kind, key, value, ok, err := r.Next()
		if err != nil {
			return nil, err
		}
		if !ok {
			break
		}
		switch kind {
		case pebble.InternalKeyKindSet, pebble.InternalKeyKindDelete:
		case pebble.InternalKeyKindRangeDelete:
			inOrder = true
		default:
			if len(unread.recs) > 0 {
				return nil, fmt.Errorf("projections: internal error: a batch with unread writes holds a record of kind %v", kind)
			}
			return nil, nil
		}
		recs = append(recs, commitRecord{kind, uint64(len(recs))<<32 | 0xffffffff, key, value})
	}
	if inOrder && len(unread.recs) == 0 {
		return nil, nil
	}
	for j, u := range unread.recs {
		recs = append(recs, commitRecord{u.kind, uint64(u.pos)<<32 | uint64(j), unread.buf[u.key[0]:u.key[1]], unread.buf[u.value[0]:u.value[1]]})
	}
	out := db.NewBatchWithSize(len(b.Repr()) + len(unread.buf))
	if inOrder {
		slices.SortFunc(recs, func(x, y commitRecord) int { return cmp.Compare(x.order, y.order) })
		for _, r := range recs {
			var err error
			switch r.kind {
			case pebble.InternalKeyKindSet:
				err = out.Set(r.key, r.value, nil)
			case pebble.InternalKeyKindDelete:
				err = out.Delete(r.key, nil)
			default:
				err = out.DeleteRange(r.key, r.value, nil)
			}
			if err != nil {
				out.Close()
				return nil, err
			}
		}
		return out, nil
	}
	// Of the writes to one key, the last stays last.
	slices.SortFunc(recs, func(x, y commitRecord) int {
		if c := bytes.Compare(x.key, y.key); c != 0 {
			return c
		}
		return cmp.Compare(x.order, y.order)
	})
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
			return nil, err
		}
	}
	return out, nil
}

// commitSorted commits b and unread to db, as sortedForCommit's batch when
// there is one. NoSync: see applyBatch.
func commitSorted(db *pebble.DB, b *pebble.Batch, unread *unreadWrites) error {
	sorted, err := sortedForCommit(db, b, unread)
	if err != nil {
		return err
	}
	if sorted == nil {
		return b.Commit(pebble.NoSync)
	}
	defer sorted.Close()
	if err := sorted.Commit(pebble.NoSync); err != nil {
		return err
	}
	unread.release()
	return nil
}

// commitRebuild commits a rebuild's batch: b to the scratch store db, and
// its unread writes to the scratch store's unread one (scratch.go).
func commitRebuild(db, unreadDB *pebble.DB, b *pebble.Batch, unread *unreadWrites) error {
	if b.Count() > 0 {
		if err := commitSorted(db, b, new(unreadWrites)); err != nil {
			return err
		}
	}
	if len(unread.recs) == 0 {
		return nil
	}
	u := unreadDB.NewBatch()
	defer u.Close()
	return commitSorted(unreadDB, u, unread)
}
