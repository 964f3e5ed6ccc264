package notifications

import (
	"bytes"
	"encoding/json"
	"slices"
	"testing"

	"github.com/engram-hs/engram/projections"
)

// memReader is a sorted in-memory keyspace.
type memReader map[string][]byte

func (m memReader) Get(k []byte) ([]byte, bool, error) {
	v, ok := m[string(k)]
	return slices.Clone(v), ok, nil
}

func (m memReader) Iter(lower, upper []byte) projections.Iterator {
	var keys []string
	for k := range m {
		if (lower == nil || k >= string(lower)) && (upper == nil || k < string(upper)) {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	return &memIter{m: m, keys: keys, i: -1}
}

type memIter struct {
	m    memReader
	keys []string
	i    int
}

func (it *memIter) First() bool          { it.i = 0; return it.Valid() }
func (it *memIter) Last() bool           { it.i = len(it.keys) - 1; return it.Valid() }
func (it *memIter) Next() bool           { it.i++; return it.Valid() }
func (it *memIter) Prev() bool           { it.i--; return it.Valid() }
func (it *memIter) Valid() bool          { return it.i >= 0 && it.i < len(it.keys) }
func (it *memIter) Key() []byte          { return []byte(it.keys[it.i]) }
func (it *memIter) Value() []byte        { return it.m[it.keys[it.i]] }
func (it *memIter) Close() error         { return nil }
func (it *memIter) SeekGE(k []byte) bool { panic("unused") }
func (it *memIter) SeekLT(k []byte) bool { panic("unused") }

// The views read a user's notifications from version 7's rows (the
// event's record they name) and from the copies versions 5 and 6 stored
// in the row itself, which serve while version 7 is rebuilt; a row whose
// event record was pruned is not listed.
func TestViewReadsEveryRowFormat(t *testing.T) {
	const user = "@a:x"
	old := Notification{RoomID: "!r:x", EventID: "$old", Offset: 5, At: 50, Actions: []json.RawMessage{json.RawMessage(`"notify"`)}, ThreadID: ScopeMain}
	cur := Notification{RoomID: "!r:x", EventID: "$new", Offset: 9, At: 90, Actions: []json.RawMessage{json.RawMessage(`"notify"`)}, Highlight: true, ThreadID: ScopeMain}
	oldJSON, _ := json.Marshal(old)
	curJSON, _ := json.Marshal(cur)
	r := memReader{
		string(withOffset(projections.Key(pNotif, user), 5)): oldJSON,
		string(withOffset(projections.Key(pNotif, user), 7)): append(offsetBytes(70), 0), // its record pruned
		string(withOffset(projections.Key(pNotif, user), 9)): append(offsetBytes(90), 1),
		string(variantKey(9, 0)):                             append(offsetBytes(90), []byte(`{"event_id":"$someone-else's"}`)...),
		string(variantKey(9, 1)):                             append(offsetBytes(90), curJSON...),
	}
	v := NewView(r)
	got, err := v.Notifications(user, 0, 10, false)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].EventID != "$new" || !got[0].Highlight || got[1].EventID != "$old" || got[1].At != 50 {
		t.Fatalf("Notifications = %+v", got)
	}
	after, err := v.NotificationsAfter(user, 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(after) != 2 || after[0].EventID != "$old" || after[1].EventID != "$new" {
		t.Fatalf("NotificationsAfter = %+v", after)
	}
	// Retention reads a row's log time whichever way it holds it (a row
	// holds its notification whole when its event notified in more than
	// 256 ways).
	for _, c := range []struct {
		row  []byte
		want int64
	}{{oldJSON, 50}, {append(offsetBytes(90), 1), 90}} {
		if at, err := recordAt([]byte("k"), c.row); err != nil || at != c.want {
			t.Fatalf("recordAt(%q) = %d, %v; want %d", c.row, at, err, c.want)
		}
	}
	r[string(withOffset(projections.Key(pNotif, user), 9))] = []byte{1, 2, 3}
	if _, err := v.Notifications(user, 0, 10, false); err == nil || !bytes.Contains([]byte(err.Error()), []byte("rebuild")) {
		t.Fatalf("a corrupt row: %v, want an error that says to rebuild", err)
	}
}
