package rooms

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"testing"

	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/projections"
	"github.com/engram-hs/engram/stateres"
	"github.com/rs/zerolog"
)

// Replay does not depend on the build: a log holding a PDU of a room
// version the fold does not fold and a PDU that does not parse folds to
// the same bytes whether or not the build's version table knows that
// version. Both are recorded as unfoldable, with their reasons.
func TestReplayIsBuildIndependent(t *testing.T) {
	ctx := context.Background()
	_, key, _ := ed25519.GenerateKey(nil)
	v12, _ := stateres.Version("12")
	future := *v12
	future.ID = "org.example.future"

	build := func(version *stateres.RoomVersion, proto stateres.ProtoEvent, state map[stateres.StateKeyTuple]stateres.PDU, prev []stateres.PDU) *stateres.Event {
		t.Helper()
		ev, err := stateres.BuildEvent(version, &proto, lookupMap(state), prev, "x.test", "ed25519:k", key)
		if err != nil {
			t.Fatal(err)
		}
		if sk := ev.StateKey(); sk != nil {
			state[stateres.StateKeyTuple{Type: ev.Type(), StateKey: *sk}] = ev
		}
		return ev
	}
	alice := "@alice:x.test"
	str := func(s string) *string { return &s }
	pdu := func(version string, ev []byte, id string) englog.Proposal {
		return facts.MustEncode(englog.KindPDU, facts.PDU{RoomVersion: version, Event: ev, EventID: id})
	}

	var props []englog.Proposal
	// A room of a folded version: create, join, message.
	st := map[stateres.StateKeyTuple]stateres.PDU{}
	create := build(v12, stateres.ProtoEvent{Type: stateres.MRoomCreate, StateKey: str(""), Sender: alice, OriginServerTS: 1, Content: json.RawMessage(`{"room_version":"12"}`)}, st, nil)
	join := build(v12, stateres.ProtoEvent{Type: stateres.MRoomMember, StateKey: str(alice), Sender: alice, RoomID: create.RoomID(), OriginServerTS: 2, Content: json.RawMessage(`{"membership":"join"}`)}, st, []stateres.PDU{create})
	props = append(props, pdu("12", create.JSON(), create.EventID()), pdu("12", join.JSON(), join.EventID()))
	// A room of a version no build of this fold folds, built as a later
	// build that knows it would.
	fst := map[stateres.StateKeyTuple]stateres.PDU{}
	fcreate := build(&future, stateres.ProtoEvent{Type: stateres.MRoomCreate, StateKey: str(""), Sender: alice, OriginServerTS: 3, Content: json.RawMessage(`{"room_version":"org.example.future"}`)}, fst, nil)
	props = append(props, pdu(future.ID, fcreate.JSON(), fcreate.EventID()))
	// A PDU of a folded version that does not parse.
	props = append(props, pdu("12", []byte(`{"type":"m.room.message","content":{}}`), "$malformed"))
	msg := build(v12, stateres.ProtoEvent{Type: "m.room.message", Sender: alice, RoomID: create.RoomID(), OriginServerTS: 4, Content: json.RawMessage(`{"body":"hi"}`)}, st, []stateres.PDU{join})
	props = append(props, pdu("12", msg.JSON(), msg.EventID()))

	node, err := englog.Open(englog.Config{Dir: t.TempDir(), Logger: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close()
	if _, err := node.Append(ctx, props...); err != nil {
		t.Fatal(err)
	}
	engine := projections.NewEngine(node, node.DB(), zerolog.Nop(), nil)
	defer engine.Close()
	h := engine.Register(New(node, nil))

	fold := func() []byte {
		t.Helper()
		if err := engine.Rebuild(ctx, "rooms"); err != nil {
			t.Fatal(err)
		}
		d, err := engine.Digest("rooms")
		if err != nil || len(d) == 0 {
			t.Fatalf("digest: %x, %v", d, err)
		}
		return d
	}
	before := fold()
	v := NewView(h.Reader(), node)
	un, err := v.Unfoldables()
	if err != nil {
		t.Fatal(err)
	}
	if len(un) != 2 || un[0].Reason != UnfoldableVersion || un[0].EventID != fcreate.EventID() || un[1].Reason != UnfoldableMalformed || un[1].EventID != "$malformed" {
		t.Fatalf("unfoldable records %+v, want the future room's create (%s) then the malformed PDU", un, UnfoldableVersion)
	}
	if rec, err := v.Event(msg.EventID()); err != nil || rec == nil {
		t.Fatalf("the message after them was not folded: %v %v", rec, err)
	}

	// A build whose version table knows the future version.
	versionTable = func(id string) (*stateres.RoomVersion, bool) {
		if id == future.ID {
			return &future, true
		}
		return stateres.Version(id)
	}
	defer func() { versionTable = stateres.Version }()
	if after := fold(); !bytes.Equal(before, after) {
		t.Fatalf("the same log folds to digest %x with one version table and %x with another", before, after)
	}
}

type lookupMap map[stateres.StateKeyTuple]stateres.PDU

func (m lookupMap) StateEvent(typ, sk string) stateres.PDU {
	return m[stateres.StateKeyTuple{Type: typ, StateKey: sk}]
}
