package stateres

import (
	"encoding/json"
	"reflect"
	"testing"
)

// sameEvent fails unless a and b answer every accessor alike.
func sameEvent(t *testing.T, what string, a, b *Event) {
	t.Helper()
	type view struct {
		ID, Room, Type, Sender, Origin, Redacts string
		StateKey                                *string
		Content, Hashes, Sigs, Unsigned, JSON   string
		Prev, Auth                              []string
		Depth, TS                               int64
		Ref                                     [32]byte
	}
	of := func(e *Event) view {
		return view{e.EventID(), e.RoomID(), e.Type(), e.Sender(), e.Origin(), e.Redacts(), e.StateKey(),
			string(e.Content()), string(e.Hashes()), string(e.Signatures()), string(e.Unsigned()), string(e.JSON()),
			e.PrevEventIDs(), e.AuthEventIDs(), e.Depth(), e.OriginServerTS(), e.ReferenceHash()}
	}
	if va, vb := of(a), of(b); !reflect.DeepEqual(va, vb) {
		t.Errorf("%s: trusted parse differs from ParseEvent:\n%+v\n%+v", what, va, vb)
	}
}

// TestParseTrustedEventMatchesParseEvent: for events of every room version
// (create events included, whose v12 room ID derives from the event ID),
// read back as the log stores them (JSON-encoded in a payload, which
// escapes <, > and &), the trusted parse answers what ParseEvent answers.
func TestParseTrustedEventMatchesParseEvent(t *testing.T) {
	key := specKey(t)
	for _, id := range KnownVersions() {
		v := mustVersion(t, id)
		state, last := buildRoom(t, v, key)
		create := state.StateEvent(MRoomCreate, "").(*Event)
		html, err := BuildEvent(v, &ProtoEvent{Type: "m.room.message", Sender: "@alice:origin.test", RoomID: create.RoomID(), OriginServerTS: 3000,
			Content: json.RawMessage(`{"body":"a < b & c > d \u2028","format":"org.matrix.custom.html","formatted_body":"<b>hi</b>"}`)},
			state, []PDU{last}, "origin.test", "ed25519:k", key)
		if err != nil {
			t.Fatal(err)
		}
		for _, ev := range []*Event{create, last, html} {
			payload, err := json.Marshal(struct {
				Event json.RawMessage `json:"event"`
			}{ev.JSON()})
			if err != nil {
				t.Fatal(err)
			}
			var back struct {
				Event json.RawMessage `json:"event"`
			}
			if err := json.Unmarshal(payload, &back); err != nil {
				t.Fatal(err)
			}
			want, err := ParseEvent(v, back.Event)
			if err != nil {
				t.Fatal(err)
			}
			got, err := ParseTrustedEvent(v, back.Event, ev.EventID())
			if err != nil {
				t.Fatalf("v%s %s: %v", id, ev.Type(), err)
			}
			sameEvent(t, "v"+id+" "+ev.Type(), got, want)
			if got.EventID() != ev.EventID() {
				t.Errorf("v%s %s: ID %s, want %s", id, ev.Type(), got.EventID(), ev.EventID())
			}
		}
		// Without a recorded ID (older log entries) it is ParseEvent.
		got, err := ParseTrustedEvent(v, last.JSON(), "")
		if err != nil {
			t.Fatal(err)
		}
		sameEvent(t, "v"+id+" without ID", got, last)
	}
}

// TestParseTrustedEventRefusesNonHashIDs: a recorded ID that cannot be a
// reference hash of the room version is an error, not adopted.
func TestParseTrustedEventRefusesNonHashIDs(t *testing.T) {
	v := mustVersion(t, "10")
	_, last := buildRoom(t, v, specKey(t))
	for _, bad := range []string{"$short", "nodollar" + last.EventID()[1:], "$" + last.EventID()[1:] + "AA", last.EventID()[:len(last.EventID())-1] + "+"} {
		if _, err := ParseTrustedEvent(v, last.JSON(), bad); err == nil {
			t.Errorf("event ID %q adopted", bad)
		}
	}
	// Format checks still apply.
	if _, err := ParseTrustedEvent(v, []byte(`{"type":"m.room.message"}`), last.EventID()); err == nil {
		t.Error("a PDU without sender, content and hashes parsed")
	}
}
