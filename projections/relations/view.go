package relations

import (
	"encoding/binary"

	"github.com/engram-hs/engram/projections"
)

// View answers queries over a Reader of this projection.
type View struct{ r projections.Reader }

// NewView wraps a reader of this projection's keyspace.
func NewView(r projections.Reader) View { return View{r: r} }

// Children lists the events of room relating to parent with relType (""
// any), in timeline order.
func (v View) Children(room, parent, relType string) ([]Child, error) {
	prefix := projections.Key(pChild, room, parent)
	if relType != "" {
		prefix = projections.Key(pChild, room, parent, relType)
	}
	prefix = append(prefix, sep)
	out, err := projections.ListJSON[Child](v.r, prefix, nil)
	if err != nil || relType != "" {
		return out, err
	}
	// Without a relation type, the keys are grouped by type: merge them
	// back into timeline order.
	sortByOffset(out)
	return out, nil
}

func sortByOffset(cs []Child) {
	for i := 1; i < len(cs); i++ {
		for j := i; j > 0 && cs[j].Offset < cs[j-1].Offset; j-- {
			cs[j], cs[j-1] = cs[j-1], cs[j]
		}
	}
}

// HasChildren reports whether any event of room relates to parent (a
// cheap test before building bundled aggregations): one point read of
// the children count, which most events lack.
func (v View) HasChildren(room, parent string) (bool, error) {
	_, ok, err := v.r.Get(projections.Key(pHas, room, parent))
	return ok, err
}

// Thread returns the summary of the thread on root in room, or nil.
func (v View) Thread(room, root string) (*Thread, error) {
	return projections.GetJSON[Thread](v.r, projections.Key(pRoot, room, root))
}

// Threads lists the room's threads, the most recently active first,
// starting below the activity offset before (0: from the newest), at
// most limit of them for which keep (nil: all) is true.
func (v View) Threads(room string, before uint64, limit int, keep func(*Thread) bool) ([]Thread, error) {
	lower := append(projections.Key(pThread, room), sep)
	upper := projections.PrefixEnd(lower)
	if before > 0 {
		upper = binary.BigEndian.AppendUint64(append([]byte(nil), lower...), before)
	}
	it := v.r.Iter(lower, upper)
	var out []Thread
	for ok := it.Last(); ok && len(out) < limit; ok = it.Prev() {
		k := it.Key()[len(lower):]
		if len(k) < 9 {
			continue
		}
		t, err := v.Thread(room, string(k[9:]))
		if err != nil {
			it.Close()
			return nil, err
		}
		if t != nil && (keep == nil || keep(t)) {
			out = append(out, *t)
		}
	}
	return out, it.Close()
}
