package rooms_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"maps"
	"testing"

	"github.com/rs/zerolog"

	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/projections"
	"github.com/engram-hs/engram/projections/rooms"
	"github.com/engram-hs/engram/stateres"
	"github.com/engram-hs/engram/stateres/resolve"
)

// testDAG builds a room's events by hand, on any branch: each event is
// built on the state the test gives it, so forks are explicit.
type testDAG struct {
	t      testing.TB
	v      *stateres.RoomVersion
	key    ed25519.PrivateKey
	roomID string
	ts     int64
	events map[string]stateres.PDU
}

func newTestDAG(t testing.TB, version string) *testDAG {
	v, ok := stateres.Version(version)
	if !ok {
		t.Fatalf("unknown room version %s", version)
	}
	seed := make([]byte, ed25519.SeedSize)
	return &testDAG{t: t, v: v, key: ed25519.NewKeyFromSeed(seed), roomID: "!fork:a.test", ts: 1_700_000_000_000, events: map[string]stateres.PDU{}}
}

type lookupFn func(typ, stateKey string) stateres.PDU

func (f lookupFn) StateEvent(typ, stateKey string) stateres.PDU { return f(typ, stateKey) }

func (d *testDAG) Event(id string) (stateres.PDU, bool) { e, ok := d.events[id]; return e, ok }

// build makes an event on top of prevs, authorised by state, and returns
// it with the state after it.
func (d *testDAG) build(state rooms.StateMap, prevs []stateres.PDU, typ, sender string, stateKey *string, content string) (stateres.PDU, rooms.StateMap) {
	d.t.Helper()
	d.ts++
	proto := &stateres.ProtoEvent{Type: typ, StateKey: stateKey, Sender: sender, Content: json.RawMessage(content), RoomID: d.roomID, OriginServerTS: d.ts}
	lookup := lookupFn(func(typ, sk string) stateres.PDU {
		return d.events[state[stateres.StateKeyTuple{Type: typ, StateKey: sk}]]
	})
	ev, err := stateres.BuildEvent(d.v, proto, lookup, prevs, "a.test", "ed25519:1", d.key)
	if err != nil {
		d.t.Fatal(err)
	}
	if d.v.RoomIDFromCreate && typ == stateres.MRoomCreate {
		d.roomID = ev.RoomID()
	}
	d.events[ev.EventID()] = ev
	after := maps.Clone(state)
	if stateKey != nil {
		after[stateres.StateKeyTuple{Type: typ, StateKey: *stateKey}] = ev.EventID()
	}
	return ev, after
}

func sk(s string) *string { return &s }

func pduProposal(t testing.TB, ev stateres.PDU, mod func(*facts.PDU)) englog.Proposal {
	f := facts.PDU{RoomVersion: ev.Version().ID, Event: ev.JSON(), EventID: ev.EventID()}
	if mod != nil {
		mod(&f)
	}
	p, err := facts.Encode(englog.KindPDU, f)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestStateAtEveryEventAcrossAFork builds a room that forks (one branch
// lowers bob's power, the other has bob change the topic), folds it, and
// checks the state the projection derives at every event and as the
// room's current state against state resolution run directly on the
// events, in three room versions (algorithms v1, v2 and v2.1). It also
// folds a rejected and a soft-failed event, which must never enter
// current state, and checks that a fold one entry per batch and a
// rebuild in one batch store the same bytes.
func TestStateAtEveryEventAcrossAFork(t *testing.T) {
	for _, version := range []string{"1", "10", "12"} {
		t.Run("v"+version, func(t *testing.T) { testFork(t, version) })
	}
}

func testFork(t *testing.T, version string) {
	ctx := context.Background()
	d := newTestDAG(t, version)
	alice, bob, carol := "@alice:a.test", "@bob:a.test", "@carol:a.test"
	plContent := func(users string) string {
		return `{"users":` + users + `,"users_default":0,"events_default":0,"state_default":50,"ban":50,"kick":50,"redact":50,"invite":0}`
	}
	createContent := `{"creator":"` + alice + `","room_version":"` + version + `"}`
	if d.v.RoomIDFromCreate {
		createContent = `{"room_version":"` + version + `"}`
	}
	var chain []stateres.PDU
	var proposals []englog.Proposal
	state := rooms.StateMap{}
	add := func(typ, sender string, stateKey *string, content string) stateres.PDU {
		var prevs []stateres.PDU
		if len(chain) > 0 {
			prevs = chain[len(chain)-1:]
		}
		ev, after := d.build(state, prevs, typ, sender, stateKey, content)
		state = after
		chain = append(chain, ev)
		proposals = append(proposals, pduProposal(t, ev, nil))
		return ev
	}
	add(stateres.MRoomCreate, alice, sk(""), createContent)
	add(stateres.MRoomMember, alice, sk(alice), `{"membership":"join"}`)
	users := `{"` + alice + `":100,"` + bob + `":50}`
	if d.v.RoomIDFromCreate {
		users = `{"` + bob + `":50}` // the creator's power is implied from v12 on
	}
	add(stateres.MRoomPowerLevels, alice, sk(""), plContent(users))
	add(stateres.MRoomJoinRules, alice, sk(""), `{"join_rule":"public"}`)
	topic0 := add("m.room.topic", alice, sk(""), `{"topic":"T0"}`)
	add(stateres.MRoomMember, bob, sk(bob), `{"membership":"join"}`)
	fork := add(stateres.MRoomMember, carol, sk(carol), `{"membership":"join"}`)
	forkState := state

	// Branch A: alice takes bob's power away. Branch B: bob, still at 50
	// there, changes the topic.
	lowered := `{}`
	if !d.v.RoomIDFromCreate {
		lowered = `{"` + alice + `":100}`
	}
	a1, stateA := d.build(forkState, []stateres.PDU{fork}, stateres.MRoomPowerLevels, alice, sk(""), plContent(lowered))
	b1, stateB := d.build(forkState, []stateres.PDU{fork}, "m.room.topic", bob, sk(""), `{"topic":"TB"}`)
	proposals = append(proposals, pduProposal(t, a1, nil), pduProposal(t, b1, nil))

	want, err := resolve.Resolve(d.v, []map[stateres.StateKeyTuple]string{stateA, stateB}, d)
	if err != nil {
		t.Fatal(err)
	}
	topicKey := stateres.StateKeyTuple{Type: "m.room.topic"}
	plKey := stateres.StateKeyTuple{Type: stateres.MRoomPowerLevels}
	if version != "1" {
		// Algorithm v2: the power event (branch A) is applied first, and
		// bob's topic then fails the auth checks at power 0.
		if want[plKey] != a1.EventID() || want[topicKey] != topic0.EventID() {
			t.Fatalf("resolve gave PL %s topic %s; want PL %s (branch A) and topic %s (before the fork)", want[plKey], want[topicKey], a1.EventID(), topic0.EventID())
		}
	}

	// A merge on top of both branches, a rejected event (carol, at power
	// 0, sets the name) and a soft-failed one (bob's name change on branch
	// B: allowed there, not by the current state).
	merge, stateM := d.build(want, []stateres.PDU{a1, b1}, "m.room.message", alice, nil, `{"body":"merged","msgtype":"m.text"}`)
	rejected, _ := d.build(stateM, []stateres.PDU{merge}, "m.room.name", carol, sk(""), `{"name":"rejected"}`)
	soft, _ := d.build(stateB, []stateres.PDU{b1}, "m.room.name", bob, sk(""), `{"name":"soft-failed"}`)
	proposals = append(proposals,
		pduProposal(t, merge, nil),
		pduProposal(t, rejected, func(f *facts.PDU) { f.Rejected = "auth: power level too low" }),
		pduProposal(t, soft, func(f *facts.PDU) { f.SoftFailed = true }))

	// Fold live, one entry per batch, checking the fork before the merge.
	dir := t.TempDir()
	node, err := englog.Open(englog.Config{Dir: dir, Logger: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close()
	engine := projections.NewEngine(node, node.DB(), zerolog.Nop(), nil)
	defer engine.Close()
	h := engine.Register(rooms.New(node, nil))
	if err := engine.Start(ctx); err != nil {
		t.Fatal(err)
	}
	v := rooms.NewView(h.Reader(), node)
	var last uint64
	for i, p := range proposals {
		offs, err := node.Append(ctx, p)
		if err != nil {
			t.Fatal(err)
		}
		last = offs[len(offs)-1]
		if err := h.WaitApplied(ctx, last); err != nil {
			t.Fatal(err)
		}
		if i == len(chain)+1 { // both branches folded, no merge yet
			cur, err := v.CurrentStateIDs(d.roomID)
			if err != nil {
				t.Fatal(err)
			}
			if !maps.Equal(cur, want) {
				t.Fatalf("current state over the two extremities:\n got %v\nwant %v", cur, want)
			}
			ext, _ := v.ForwardExtremities(d.roomID)
			if len(ext) != 2 {
				t.Fatalf("forward extremities %v, want the two branch tips", ext)
			}
		}
	}

	checkAt := func(id string, after bool, want rooms.StateMap) {
		t.Helper()
		var got rooms.StateMap
		var ok bool
		var err error
		if after {
			got, ok, err = v.StateIDsAfter(id)
		} else {
			got, ok, err = v.StateIDsBefore(id)
		}
		if err != nil || !ok {
			t.Fatalf("state at %s: ok=%v err=%v", id, ok, err)
		}
		if !maps.Equal(got, want) {
			t.Fatalf("state (after=%v) at %s:\n got %v\nwant %v", after, id, got, want)
		}
	}
	checkAt(fork.EventID(), true, forkState)
	checkAt(a1.EventID(), false, forkState)
	checkAt(a1.EventID(), true, stateA)
	checkAt(b1.EventID(), true, stateB)
	checkAt(merge.EventID(), false, want)
	checkAt(merge.EventID(), true, want)
	stateSoft := maps.Clone(stateB)
	stateSoft[stateres.StateKeyTuple{Type: "m.room.name"}] = soft.EventID()
	checkAt(soft.EventID(), false, stateB)
	checkAt(soft.EventID(), true, stateSoft)
	if _, ok, err := v.StateIDsBefore(rejected.EventID()); err != nil || ok {
		t.Fatalf("a rejected event has no state: ok=%v err=%v", ok, err)
	}

	// Current state: the merge is the only extremity; neither the
	// rejected nor the soft-failed name is in it, in the state records
	// clients read either.
	cur, err := v.CurrentStateIDs(d.roomID)
	if err != nil {
		t.Fatal(err)
	}
	if !maps.Equal(cur, want) {
		t.Fatalf("current state after the merge:\n got %v\nwant %v", cur, want)
	}
	if ext, _ := v.ForwardExtremities(d.roomID); len(ext) != 1 || ext[0] != merge.EventID() {
		t.Fatalf("forward extremities %v, want [%s]", ext, merge.EventID())
	}
	evs, err := v.State(d.roomID, "")
	if err != nil {
		t.Fatal(err)
	}
	fromRecords := rooms.StateMap{}
	for _, e := range evs {
		p, err := e.PDU()
		if err != nil {
			t.Fatal(err)
		}
		fromRecords[stateres.StateKeyTuple{Type: p.Type(), StateKey: *p.StateKey()}] = e.EventID
	}
	if !maps.Equal(fromRecords, want) {
		t.Fatalf("View.State:\n got %v\nwant %v", fromRecords, want)
	}

	// The auth chain of the merge: every event it reaches through
	// auth_events.
	chainIDs, err := v.AuthChain([]string{b1.EventID()})
	if err != nil {
		t.Fatal(err)
	}
	if len(chainIDs) < 3 {
		t.Fatalf("auth chain of bob's topic: %v", chainIDs)
	}

	live, err := engine.Digest("rooms")
	if err != nil {
		t.Fatal(err)
	}
	engine.Close()
	engine2 := projections.NewEngine(node, node.DB(), zerolog.Nop(), nil)
	defer engine2.Close()
	engine2.Register(rooms.New(node, nil))
	if err := engine2.Rebuild(ctx, "rooms"); err != nil {
		t.Fatal(err)
	}
	rebuilt, err := engine2.Digest("rooms")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(live, rebuilt) {
		t.Fatalf("a rebuild in one batch differs from the live fold, one entry per batch: %x vs %x", rebuilt, live)
	}
	_ = fmt.Sprint
}

// TestDroppedExtremities forks a room into two branches, folds an admin's
// drop of one tip (facts.ExtremitiesDropped), and checks that the room
// then has one forward extremity, that its current state did not change,
// that a drop naming every extremity or unknown events changes nothing,
// and that an event on the kept tip becomes the only extremity with the
// state after that tip.
func TestDroppedExtremities(t *testing.T) {
	ctx := context.Background()
	d := newTestDAG(t, "10")
	alice, bob := "@alice:a.test", "@bob:a.test"
	state := rooms.StateMap{}
	var props []englog.Proposal
	var last stateres.PDU
	add := func(typ, sender string, stateKey *string, content string) {
		var prevs []stateres.PDU
		if last != nil {
			prevs = []stateres.PDU{last}
		}
		last, state = d.build(state, prevs, typ, sender, stateKey, content)
		props = append(props, pduProposal(t, last, nil))
	}
	add(stateres.MRoomCreate, alice, sk(""), `{"creator":"`+alice+`","room_version":"10"}`)
	add(stateres.MRoomMember, alice, sk(alice), `{"membership":"join"}`)
	add(stateres.MRoomPowerLevels, alice, sk(""), `{"users":{"`+alice+`":100}}`)
	add(stateres.MRoomJoinRules, alice, sk(""), `{"join_rule":"public"}`)
	add(stateres.MRoomMember, bob, sk(bob), `{"membership":"join"}`)
	fork, forkState := last, state
	a1, stateA := d.build(forkState, []stateres.PDU{fork}, "m.room.topic", alice, sk(""), `{"topic":"A"}`)
	b1, _ := d.build(forkState, []stateres.PDU{fork}, "m.room.name", alice, sk(""), `{"name":"B"}`)
	props = append(props, pduProposal(t, a1, nil), pduProposal(t, b1, nil))

	node, err := englog.Open(englog.Config{Dir: t.TempDir(), Logger: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close()
	engine := projections.NewEngine(node, node.DB(), zerolog.Nop(), nil)
	defer engine.Close()
	h := engine.Register(rooms.New(node, nil))
	if err := engine.Start(ctx); err != nil {
		t.Fatal(err)
	}
	v := rooms.NewView(h.Reader(), node)
	apply := func(ps ...englog.Proposal) {
		t.Helper()
		offs, err := node.Append(ctx, ps...)
		if err != nil {
			t.Fatal(err)
		}
		if err := h.WaitApplied(ctx, offs[len(offs)-1]); err != nil {
			t.Fatal(err)
		}
	}
	drop := func(ids ...string) englog.Proposal {
		return facts.MustEncode(englog.KindExtremitiesDropped, facts.ExtremitiesDropped{RoomID: d.roomID, Drop: ids})
	}
	extremities := func() []string {
		t.Helper()
		ext, err := v.ForwardExtremities(d.roomID)
		if err != nil {
			t.Fatal(err)
		}
		return ext
	}
	apply(props...)
	before, err := v.CurrentStateIDs(d.roomID)
	if err != nil {
		t.Fatal(err)
	}
	if ext := extremities(); len(ext) != 2 {
		t.Fatalf("forward extremities %v, want the two branch tips", ext)
	}

	apply(drop(a1.EventID(), b1.EventID()), drop("$unknown"))
	if ext := extremities(); len(ext) != 2 {
		t.Fatalf("a drop of every extremity or of unknown events changed them to %v", ext)
	}
	apply(drop(b1.EventID()))
	if ext := extremities(); len(ext) != 1 || ext[0] != a1.EventID() {
		t.Fatalf("forward extremities after dropping %s: %v, want [%s]", b1.EventID(), ext, a1.EventID())
	}
	after, err := v.CurrentStateIDs(d.roomID)
	if err != nil {
		t.Fatal(err)
	}
	if !maps.Equal(before, after) {
		t.Fatalf("dropping an extremity changed the current state:\n got %v\nwant %v", after, before)
	}

	next, stateNext := d.build(stateA, []stateres.PDU{a1}, "m.room.topic", alice, sk(""), `{"topic":"A2"}`)
	apply(pduProposal(t, next, nil))
	if ext := extremities(); len(ext) != 1 || ext[0] != next.EventID() {
		t.Fatalf("forward extremities after an event on the kept tip: %v, want [%s]", ext, next.EventID())
	}
	cur, err := v.CurrentStateIDs(d.roomID)
	if err != nil {
		t.Fatal(err)
	}
	if !maps.Equal(cur, stateNext) {
		t.Fatalf("current state after an event on the kept tip:\n got %v\nwant %v", cur, stateNext)
	}
}
