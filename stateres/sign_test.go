package stateres

import (
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/engram-hs/engram/stateres/canonicaljson"
	"github.com/engram-hs/engram/stateres/signing"
)

func specKey(t testing.TB) ed25519.PrivateKey {
	t.Helper()
	keys, err := signing.DecodeKeyFile([]byte("ed25519 1 YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1"))
	if err != nil {
		t.Fatal(err)
	}
	return keys[0].Private
}

// jsonEqual compares two JSON texts as values.
func jsonEqual(t *testing.T, got []byte, want string) {
	t.Helper()
	var a, b any
	if err := json.Unmarshal(got, &a); err != nil {
		t.Fatalf("bad JSON %s: %v", got, err)
	}
	if err := json.Unmarshal([]byte(want), &b); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(a, b) {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
}

// The spec's "Event Signing" test vectors (appendices).
func TestSpecEventSigningVectors(t *testing.T) {
	cases := []struct{ in, want string }{{
		`{"room_id":"!x:domain","sender":"@a:domain","origin":"domain","origin_server_ts":1000000,"signatures":{},"hashes":{},
		  "type":"X","content":{},"prev_events":[],"auth_events":[],"depth":3,"unsigned":{"age_ts":1000000}}`,
		`{"auth_events":[],"content":{},"depth":3,"hashes":{"sha256":"5jM4wQpv6lnBo7CLIghJuHdW+s2CMBJPUOGOC89ncos"},
		  "origin":"domain","origin_server_ts":1000000,"prev_events":[],"room_id":"!x:domain","sender":"@a:domain",
		  "signatures":{"domain":{"ed25519:1":"KxwGjPSDEtvnFgU00fwFz+l6d2pJM6XBIaMEn81SXPTRl16AqLAYqfIReFGZlHi5KLjAWbOoMszkwsQma+lYAg"}},
		  "type":"X","unsigned":{"age_ts":1000000}}`,
	}, {
		`{"content":{"body":"Here is the message content"},"event_id":"$0:domain","origin":"domain","origin_server_ts":1000000,
		  "type":"m.room.message","room_id":"!r:domain","sender":"@u:domain","signatures":{},"unsigned":{"age_ts":1000000}}`,
		`{"content":{"body":"Here is the message content"},"event_id":"$0:domain","hashes":{"sha256":"onLKD1bGljeBWQhWZ1kaP9SorVmRQNdN5aM2JYU2n/g"},
		  "origin":"domain","origin_server_ts":1000000,"type":"m.room.message","room_id":"!r:domain","sender":"@u:domain",
		  "signatures":{"domain":{"ed25519:1":"Wm+VzmOUOz08Ds+0NTWb1d4CZrVsJSikkeRxh6aCcUwu6pNC78FunoD7KNWzqFn241eYHYMGCA5McEiVPdhzBA"}},
		  "unsigned":{"age_ts":1000000}}`,
	}}
	for _, c := range cases {
		canon, err := canonicaljson.Canonicalize([]byte(c.in), true)
		if err != nil {
			t.Fatal(err)
		}
		got, err := hashAndSign(mustVersion(t, "1"), canon, "domain", "ed25519:1", specKey(t))
		if err != nil {
			t.Fatal(err)
		}
		jsonEqual(t, got, c.want)
	}
}

// memState is an in-memory StateLookup for tests.
type memState map[StateKeyTuple]PDU

func (s memState) StateEvent(typ, key string) PDU { return s[StateKeyTuple{typ, key}] }
func (s memState) add(ev *Event)                  { s[StateKeyTuple{ev.Type(), *ev.StateKey()}] = ev }

func ptr(s string) *string { return &s }

// buildRoom creates a small room (create, creator's join, power levels, join
// rules) and returns the state and the last event.
func buildRoom(t testing.TB, version *RoomVersion, key ed25519.PrivateKey) (memState, *Event) {
	t.Helper()
	state := memState{}
	var last *Event
	roomID := "!room:origin.test"
	steps := []ProtoEvent{
		{Type: MRoomCreate, StateKey: ptr(""), Sender: "@alice:origin.test", Content: json.RawMessage(`{"room_version":"` + version.ID + `","creator":"@alice:origin.test"}`)},
		{Type: MRoomMember, StateKey: ptr("@alice:origin.test"), Sender: "@alice:origin.test", Content: json.RawMessage(`{"membership":"join"}`)},
		{Type: MRoomPowerLevels, StateKey: ptr(""), Sender: "@alice:origin.test", Content: json.RawMessage(`{"users":{"@alice:origin.test":100}}`)},
		{Type: MRoomJoinRules, StateKey: ptr(""), Sender: "@alice:origin.test", Content: json.RawMessage(`{"join_rule":"public"}`)},
	}
	for i, p := range steps {
		p.OriginServerTS = int64(1000 + i)
		p.RoomID = roomID
		var prev []PDU
		if last != nil {
			prev = []PDU{last}
		}
		ev, err := BuildEvent(version, &p, state, prev, "origin.test", "ed25519:k", key)
		if err != nil {
			t.Fatalf("v%s build %s: %v", version.ID, p.Type, err)
		}
		if i == 0 && version.RoomIDFromCreate {
			roomID = ev.RoomID()
		}
		state.add(ev)
		last = ev
	}
	return state, last
}

func TestBuildEveryVersion(t *testing.T) {
	key := specKey(t)
	pub := key.Public().(ed25519.PublicKey)
	lookup := func(server, keyID string) (ed25519.PublicKey, bool) {
		return pub, server == "origin.test" && keyID == "ed25519:k"
	}
	for _, id := range KnownVersions() {
		v := mustVersion(t, id)
		state, last := buildRoom(t, v, key)
		create := state.StateEvent(MRoomCreate, "").(*Event)
		if v.RoomIDFromCreate && create.RoomID() != "!"+create.EventID()[1:] {
			t.Errorf("v%s: create room ID %s", id, create.RoomID())
		}
		if last.Depth() != 4 {
			t.Errorf("v%s: depth %d, want 4", id, last.Depth())
		}
		// A join by bob: auth events are create (before v12), power levels,
		// join rules (bob has no membership yet).
		join, err := BuildEvent(v, &ProtoEvent{Type: MRoomMember, StateKey: ptr("@bob:origin.test"), Sender: "@bob:origin.test",
			Content: json.RawMessage(`{"membership":"join"}`), RoomID: create.RoomID(), OriginServerTS: 2000},
			state, []PDU{last}, "origin.test", "ed25519:k", key)
		if err != nil {
			t.Fatal(err)
		}
		want := []string{state.StateEvent(MRoomPowerLevels, "").EventID(), state.StateEvent(MRoomJoinRules, "").EventID()}
		if !v.RoomIDFromCreate {
			want = append([]string{create.EventID()}, want...)
		}
		if !reflect.DeepEqual(join.AuthEventIDs(), want) {
			t.Errorf("v%s: auth events %v, want %v", id, join.AuthEventIDs(), want)
		}
		if err := join.CheckContentHash(); err != nil {
			t.Errorf("v%s: %v", id, err)
		}
		if err := VerifyEventSignatures(join, lookup); err != nil {
			t.Errorf("v%s: %v", id, err)
		}
		hasOrigin := join.Origin() == "origin.test"
		if hasOrigin == v.V11Semantics {
			t.Errorf("v%s: origin present = %v", id, hasOrigin)
		}
		// The built event survives the untrusted parser unchanged.
		again, err := ParseEvent(v, join.JSON())
		if err != nil || again.EventID() != join.EventID() {
			t.Errorf("v%s: reparse: %v", id, err)
		}
		// Tampering with the content breaks the hash but not the signature
		// (the signature covers the redacted form).
		tampered, err := ParseEvent(v, []byte(strings.Replace(string(join.JSON()), `"membership":"join"}`, `"membership":"join","x":1}`, 1)))
		if err != nil {
			t.Fatal(err)
		}
		if tampered.CheckContentHash() == nil {
			t.Errorf("v%s: tampered content passed the hash check", id)
		}
		if err := VerifyEventSignatures(tampered, lookup); err != nil {
			t.Errorf("v%s: redactable change broke the signature: %v", id, err)
		}
		if err := VerifyEventSignatures(join, func(string, string) (ed25519.PublicKey, bool) { return nil, false }); !errors.Is(err, ErrSignature) {
			t.Errorf("v%s: unknown keys: err = %v", id, err)
		}
		other, _ := signing.GenerateKey(strings.NewReader(strings.Repeat("x", 64)), "k")
		if err := VerifyEventSignatures(join, func(string, string) (ed25519.PublicKey, bool) { return other.Public(), true }); !errors.Is(err, ErrSignature) {
			t.Errorf("v%s: wrong key: err = %v", id, err)
		}
	}
}

func TestRestrictedJoinSigners(t *testing.T) {
	key := specKey(t)
	for _, id := range []string{"7", "8", "12"} {
		v := mustVersion(t, id)
		state, last := buildRoom(t, v, key)
		join, err := BuildEvent(v, &ProtoEvent{Type: MRoomMember, StateKey: ptr("@bob:remote.test"), Sender: "@bob:remote.test",
			Content: json.RawMessage(`{"membership":"join","join_authorised_via_users_server":"@alice:origin.test"}`),
			RoomID:  last.RoomID(), OriginServerTS: 3000}, state, []PDU{last}, "remote.test", "ed25519:r", key)
		if err != nil {
			t.Fatal(err)
		}
		signers := RequiredSigners(join)
		want := []string{"remote.test"}
		if v.RestrictedJoins {
			want = append(want, "origin.test")
			if !containsID(join.AuthEventIDs(), state.StateEvent(MRoomMember, "@alice:origin.test").EventID()) {
				t.Errorf("v%s: authorising user's membership missing from auth events", id)
			}
		}
		if !reflect.DeepEqual(signers, want) {
			t.Errorf("v%s: signers %v, want %v", id, signers, want)
		}
		pub := key.Public().(ed25519.PublicKey)
		all := func(string, string) (ed25519.PublicKey, bool) { return pub, true }
		if v.RestrictedJoins {
			if err := VerifyEventSignatures(join, all); !errors.Is(err, ErrSignature) {
				t.Errorf("v%s: join without the authorising server's signature accepted: %v", id, err)
			}
			countersigned, err := SignEvent(join, "origin.test", "ed25519:k", key)
			if err != nil {
				t.Fatal(err)
			}
			if countersigned.EventID() != join.EventID() {
				t.Errorf("v%s: countersigning changed the event ID", id)
			}
			if err := VerifyEventSignatures(countersigned, all); err != nil {
				t.Errorf("v%s: countersigned join: %v", id, err)
			}
		}
	}
}

func containsID(ids []string, id string) bool {
	for _, x := range ids {
		if x == id {
			return true
		}
	}
	return false
}

func TestAuthEventTuples(t *testing.T) {
	v10, v12 := mustVersion(t, "10"), mustVersion(t, "12")
	invite := &ProtoEvent{Type: MRoomMember, StateKey: ptr("@b:x"), Sender: "@a:x",
		Content: json.RawMessage(`{"membership":"invite","third_party_invite":{"signed":{"token":"tok"}}}`)}
	got, err := AuthEventTuples(v10, invite)
	if err != nil {
		t.Fatal(err)
	}
	want := []StateKeyTuple{{MRoomCreate, ""}, {MRoomPowerLevels, ""}, {MRoomMember, "@a:x"}, {MRoomMember, "@b:x"}, {MRoomJoinRules, ""}, {MRoomThirdPartyInvite, "tok"}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("v10 invite tuples %v, want %v", got, want)
	}
	got, _ = AuthEventTuples(v12, &ProtoEvent{Type: "m.room.message", Sender: "@a:x"})
	if !reflect.DeepEqual(got, []StateKeyTuple{{MRoomPowerLevels, ""}, {MRoomMember, "@a:x"}}) {
		t.Errorf("v12 message tuples %v", got)
	}
	leave := &ProtoEvent{Type: MRoomMember, StateKey: ptr("@a:x"), Sender: "@a:x", Content: json.RawMessage(`{"membership":"leave"}`)}
	got, _ = AuthEventTuples(v10, leave)
	if !reflect.DeepEqual(got, []StateKeyTuple{{MRoomCreate, ""}, {MRoomPowerLevels, ""}, {MRoomMember, "@a:x"}}) {
		t.Errorf("leave tuples %v", got)
	}
	if got, _ := AuthEventTuples(v10, &ProtoEvent{Type: MRoomCreate, StateKey: ptr(""), Sender: "@a:x"}); len(got) != 0 {
		t.Errorf("create tuples %v", got)
	}
	if _, err := AuthEventTuples(v10, &ProtoEvent{Type: MRoomMember, Sender: "@a:x"}); err == nil {
		t.Error("member without state key accepted")
	}
}

func TestBuildDepthCap(t *testing.T) {
	key := specKey(t)
	for id, limit := range map[string]int64{"5": 1<<63 - 1, "6": 1<<53 - 1} {
		v := mustVersion(t, id)
		// A real parsed event at the limit as the prev event.
		raw := strings.Replace(v4Message, `"depth": 5`, `"depth": `+itoa(limit), 1)
		p, err := ParseEvent(v, []byte(raw))
		if err != nil {
			t.Fatal(err)
		}
		ev, err := BuildEvent(v, &ProtoEvent{Type: "m.room.message", Sender: "@a:x", RoomID: "!r:x", Content: json.RawMessage(`{}`)}, memState{}, []PDU{p}, "x", "ed25519:1", key)
		if err != nil {
			t.Fatal(err)
		}
		if ev.Depth() != limit {
			t.Errorf("v%s: depth %d, want the cap %d", id, ev.Depth(), limit)
		}
	}
}

func itoa(n int64) string { b, _ := json.Marshal(n); return string(b) }

func TestBuildRedactionPlacement(t *testing.T) {
	key := specKey(t)
	for id, inContent := range map[string]bool{"10": false, "11": true} {
		v := mustVersion(t, id)
		ev, err := BuildEvent(v, &ProtoEvent{Type: MRoomRedaction, Sender: "@a:x", RoomID: "!r:x", Redacts: "$target", Content: json.RawMessage(`{"reason":"spam"}`)}, memState{}, nil, "x", "ed25519:1", key)
		if err != nil {
			t.Fatal(err)
		}
		if ev.Redacts() != "$target" {
			t.Errorf("v%s: Redacts() = %q", id, ev.Redacts())
		}
		if got := canonicaljson.Get(ev.Content(), "redacts") != nil; got != inContent {
			t.Errorf("v%s: redacts in content = %v", id, got)
		}
	}
}
