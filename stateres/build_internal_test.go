package stateres

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math"
	"reflect"
	"strings"
	"testing"

	"github.com/engram-hs/engram/stateres/canonicaljson"
)

// buildByMarshal is BuildEvent as it was before it wrote the canonical
// bytes itself: the fields json.Marshalled as a map, canonicalised,
// hashed and signed, then parsed. It is kept here as the oracle that the
// direct writer must match byte for byte.
func buildByMarshal(version *RoomVersion, proto *ProtoEvent, state StateLookup, prevEvents []PDU, origin, keyID string, key ed25519.PrivateKey) (*Event, error) {
	isCreate := proto.Type == MRoomCreate && proto.StateKey != nil && *proto.StateKey == ""
	tuples, err := AuthEventTuples(version, proto)
	if err != nil {
		return nil, err
	}
	var authEvents []PDU
	for _, t := range tuples {
		if ev := state.StateEvent(t.Type, t.StateKey); ev != nil {
			authEvents = append(authEvents, ev)
		}
	}
	maxDepth := int64(math.MaxInt64)
	if version.StrictCanonicalJSON {
		maxDepth = canonicaljson.MaxSafeInteger
	}
	depth := int64(1)
	for _, p := range prevEvents {
		if d := p.Depth(); d >= depth {
			depth = min(d+1, maxDepth)
		}
	}
	fields := map[string]any{
		"type": proto.Type, "sender": proto.Sender, "origin_server_ts": proto.OriginServerTS, "depth": depth,
		"hashes": map[string]string{}, "signatures": map[string]any{},
	}
	if proto.StateKey != nil {
		fields["state_key"] = *proto.StateKey
	}
	if !(isCreate && version.RoomIDFromCreate) {
		fields["room_id"] = proto.RoomID
	}
	if !version.V11Semantics {
		fields["origin"] = origin
	}
	content := contentOrEmpty(proto.Content)
	if proto.Redacts != "" {
		if version.V11Semantics {
			var m map[string]json.RawMessage
			if err := json.Unmarshal(content, &m); err != nil {
				return nil, err
			}
			if m == nil {
				m = map[string]json.RawMessage{}
			}
			m["redacts"], _ = json.Marshal(proto.Redacts)
			content, _ = json.Marshal(m)
		} else {
			fields["redacts"] = proto.Redacts
		}
	}
	fields["content"] = content
	refs := func(evs []PDU) any {
		if version.EventFormat != FormatV1 {
			return idsOf(evs)
		}
		out := make([][2]any, len(evs))
		for i, ev := range evs {
			sum := ev.(*Event).ReferenceHash()
			out[i] = [2]any{ev.EventID(), map[string]string{"sha256": base64.RawStdEncoding.EncodeToString(sum[:])}}
		}
		return out
	}
	fields["prev_events"] = refs(prevEvents)
	fields["auth_events"] = refs(authEvents)
	raw, err := json.Marshal(fields)
	if err != nil {
		return nil, err
	}
	canon, err := canonicaljson.Canonicalize(raw, version.StrictCanonicalJSON)
	if err != nil {
		return nil, err
	}
	if version.EventIDFormat == EventIDServerAssigned {
		sum := sha256.Sum256(canon)
		id := "$" + base64.RawURLEncoding.EncodeToString(sum[:]) + ":" + origin
		if canon, err = setKey(canon, "event_id", canonicaljson.AppendString(nil, id)); err != nil {
			return nil, err
		}
	}
	signed, err := hashAndSign(version, canon, origin, keyID, key)
	if err != nil {
		return nil, err
	}
	return parseCanonical(version, signed)
}

// TestBuildEventMatchesParse: in every room version, for ordinary and
// awkward input (escapes, HTML characters json.Marshal escapes, bytes
// that are not UTF-8, null and unsorted content, redactions), BuildEvent
// gives the bytes the marshalling builder gave, and an *Event equal in
// every field to what parsing those bytes gives; input either refuses,
// both refuse.
func TestBuildEventMatchesParse(t *testing.T) {
	key := specKey(t)
	long := strings.Repeat("é", 200) // 400 bytes, 200 codepoints
	for _, id := range KnownVersions() {
		v := mustVersion(t, id)
		state, last := buildRoom(t, v, key)
		room := last.RoomID()
		protos := []ProtoEvent{
			{Type: "m.room.message", Sender: "@alice:origin.test", Content: json.RawMessage(`{"msgtype":"m.text","body":"hi <b>&</b> \u2028 \"q\" \\ \t😀"}`)},
			{Type: "m.room.message", Sender: "@alice:origin.test", Content: json.RawMessage(` { "z" : 1 , "a" : [ true , null , "x" ] , "m" : { "b" : {} , "a" : -5 } } `)},
			{Type: "m.room.message", Sender: "@alice:origin.test"},
			{Type: "m.room.message", Sender: "@alice:origin.test", Content: json.RawMessage(`null`)},
			{Type: "m.room.message", Sender: "@alice:origin.test", Content: json.RawMessage(`[1]`)},
			{Type: "m.room.message", Sender: "@alice:origin.test", Content: json.RawMessage(`{"n":1.5}`)},
			{Type: "m.room.message", Sender: "@alice:origin.test", Content: json.RawMessage(`{"a":`)},
			{Type: "x.\xff\xfebad", Sender: "@al\xc3ice:origin.test", StateKey: ptr("k\x80"), Content: json.RawMessage(`{}`)},
			{Type: "m.topic<>&", StateKey: ptr(""), Sender: "@alice:origin.test", Content: json.RawMessage(`{"topic":"t"}`)},
			{Type: MRoomMember, StateKey: ptr("@bob:origin.test"), Sender: "@alice:origin.test", Content: json.RawMessage(`{"membership":"invite"}`)},
			{Type: MRoomRedaction, Sender: "@alice:origin.test", Redacts: last.EventID(), Content: json.RawMessage(`{"reason":"spam","zz":1}`)},
			{Type: MRoomRedaction, Sender: "@alice:origin.test", Redacts: last.EventID(), Content: json.RawMessage(`null`)},
			{Type: MRoomRedaction, Sender: "@alice:origin.test", Content: json.RawMessage(`{"redacts":"$in_content"}`)},
			{Type: "m.room.message", Sender: "@alice:origin.test", Redacts: "$not_a_redaction"},
			{Type: long, StateKey: ptr(long), Sender: "@alice:origin.test"},
			{Type: "m.room.message", Sender: "@" + strings.Repeat("a", 300) + ":origin.test"},
			{Type: "m.room.message", Sender: "@alice:origin.test", Content: json.RawMessage(`{"body":"` + strings.Repeat("x", MaxPDUBytes) + `"}`)},
			{Type: "m.room.message", Sender: "@alice:origin.test", OriginServerTS: 1 << 60},
			{Type: "m.room.message", Sender: "@alice:origin.test", OriginServerTS: -1},
		}
		for i, p := range protos {
			p.RoomID = room
			if p.OriginServerTS == 0 {
				p.OriginServerTS = int64(7000 + i)
			}
			name := fmt.Sprintf("v%s/%d", id, i)
			want, wantErr := buildByMarshal(v, &p, state, []PDU{last}, "origin.test", "ed25519:k", key)
			got, err := BuildEvent(v, &p, state, []PDU{last}, "origin.test", "ed25519:k", key)
			if (err != nil) != (wantErr != nil) {
				t.Errorf("%s: BuildEvent error %v, the marshalling builder's %v", name, err, wantErr)
				continue
			}
			if err != nil {
				continue
			}
			if !bytes.Equal(got.JSON(), want.JSON()) {
				t.Errorf("%s: bytes differ\n got %s\nwant %s", name, got.JSON(), want.JSON())
			}
			parsed, err := parseCanonical(v, got.JSON())
			if err != nil {
				t.Fatalf("%s: parse the built event: %v", name, err)
			}
			if !reflect.DeepEqual(got, parsed) {
				t.Errorf("%s: built event differs from its parse\n got %+v\nwant %+v", name, *got, *parsed)
			}
		}
	}
}

// BenchmarkBuildEvent is one local message built, hashed and signed in
// a v12 room (ed25519 signing, about 20 us here, is the floor).
func BenchmarkBuildEvent(b *testing.B) {
	key := specKey(b)
	v := mustVersion(b, "12")
	state, last := buildRoom(b, v, key)
	p := ProtoEvent{Type: "m.room.message", Sender: "@alice:origin.test", RoomID: last.RoomID(), OriginServerTS: 5000,
		Content: json.RawMessage(`{"msgtype":"m.text","body":"a typical message of moderate length, with some unicode: héllo wörld 😀"}`)}
	b.Run("direct", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := BuildEvent(v, &p, state, []PDU{last}, "origin.test", "ed25519:k", key); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("marshal", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := buildByMarshal(v, &p, state, []PDU{last}, "origin.test", "ed25519:k", key); err != nil {
				b.Fatal(err)
			}
		}
	})
}
