package stateres

import (
	"bytes"
	"encoding/base64"
	"errors"
	"strings"
	"testing"
)

func mustVersion(t testing.TB, id string) *RoomVersion {
	t.Helper()
	v, ok := Version(id)
	if !ok {
		t.Fatalf("unknown room version %s", id)
	}
	return v
}

const v4Message = `{
  "auth_events": ["$a", "$b"],
  "content": {"body": "hi", "msgtype": "m.text"},
  "depth": 5,
  "hashes": {"sha256": "x"},
  "origin_server_ts": 1700000000000,
  "prev_events": ["$p"],
  "room_id": "!r:example.org",
  "sender": "@u:example.org",
  "signatures": {"example.org": {"ed25519:1": "sig"}},
  "type": "m.room.message",
  "unsigned": {"age": 5}
}`

func TestParseEventV4Fields(t *testing.T) {
	ev, err := ParseEvent(mustVersion(t, "10"), []byte(v4Message))
	if err != nil {
		t.Fatal(err)
	}
	if ev.Type() != "m.room.message" || ev.Sender() != "@u:example.org" || ev.RoomID() != "!r:example.org" ||
		ev.Depth() != 5 || ev.OriginServerTS() != 1700000000000 || ev.StateKey() != nil || ev.IsState() {
		t.Errorf("fields wrong: %+v", ev)
	}
	if got := strings.Join(ev.AuthEventIDs(), ","); got != "$a,$b" {
		t.Errorf("auth events %s", got)
	}
	if got := strings.Join(ev.PrevEventIDs(), ","); got != "$p" {
		t.Errorf("prev events %s", got)
	}
	if string(ev.Content()) != `{"body":"hi","msgtype":"m.text"}` || string(ev.Unsigned()) != `{"age":5}` {
		t.Errorf("content %s unsigned %s", ev.Content(), ev.Unsigned())
	}
	// v4+ event IDs: $ + URL-safe unpadded base64 of the reference hash.
	ref := ev.ReferenceHash()
	if want := "$" + base64.RawURLEncoding.EncodeToString(ref[:]); ev.EventID() != want {
		t.Errorf("event ID %s, want %s", ev.EventID(), want)
	}
	// Parsing the stored JSON again gives the same event.
	again, err := ParseEvent(ev.Version(), ev.JSON())
	if err != nil || again.EventID() != ev.EventID() || !bytes.Equal(again.JSON(), ev.JSON()) {
		t.Errorf("round trip changed the event: %v", err)
	}
}

func TestParseEventIDFormats(t *testing.T) {
	v3, err := ParseEvent(mustVersion(t, "3"), []byte(v4Message))
	if err != nil {
		t.Fatal(err)
	}
	ref := v3.ReferenceHash()
	if want := "$" + base64.RawStdEncoding.EncodeToString(ref[:]); v3.EventID() != want {
		t.Errorf("v3 event ID %s, want %s", v3.EventID(), want)
	}
	// A claimed event_id in a v3+ event is dropped and does not change the ID.
	withID := strings.Replace(v4Message, `"depth"`, `"event_id": "$forged:evil.org", "depth"`, 1)
	forged, err := ParseEvent(mustVersion(t, "3"), []byte(withID))
	if err != nil || forged.EventID() != v3.EventID() || bytes.Contains(forged.JSON(), []byte("forged")) {
		t.Errorf("claimed event_id not ignored: %v %s", err, forged.JSON())
	}
}

func TestParseEventV1Format(t *testing.T) {
	raw := `{"auth_events":[["$a:x",{"sha256":"h"}]],"content":{},"depth":1,"event_id":"$e:x",
	  "hashes":{"sha256":"x"},"origin":"x","origin_server_ts":1,"prev_events":[["$p:x",{"sha256":"h"}]],
	  "room_id":"!r:x","sender":"@u:x","signatures":{},"type":"m.room.redaction","redacts":"$t:x"}`
	ev, err := ParseEvent(mustVersion(t, "1"), []byte(raw))
	if err != nil {
		t.Fatal(err)
	}
	if ev.EventID() != "$e:x" || ev.AuthEventIDs()[0] != "$a:x" || ev.PrevEventIDs()[0] != "$p:x" ||
		ev.Redacts() != "$t:x" || ev.Origin() != "x" {
		t.Errorf("v1 fields wrong: %+v", ev)
	}
	// v1 lists of plain IDs are malformed.
	bad := strings.Replace(raw, `[["$a:x",{"sha256":"h"}]]`, `["$a:x"]`, 1)
	if _, err := ParseEvent(mustVersion(t, "1"), []byte(bad)); !errors.Is(err, ErrInvalidEvent) {
		t.Errorf("v1 event with ID list accepted: %v", err)
	}
	// v1 events with out-of-range integers are accepted (lenient JSON).
	big := strings.Replace(raw, `"content":{}`, `"content":{"n":9007199254740993}`, 1)
	if _, err := ParseEvent(mustVersion(t, "1"), []byte(big)); err != nil {
		t.Errorf("lenient v1 event rejected: %v", err)
	}
	if _, err := ParseEvent(mustVersion(t, "6"), []byte(strings.Replace(v4Message, `"body": "hi"`, `"n": 1.5`, 1))); err == nil {
		t.Error("v6 event with a float accepted")
	}
}

func TestParseEventV11Redacts(t *testing.T) {
	raw := strings.Replace(strings.Replace(v4Message, `"type": "m.room.message"`, `"type": "m.room.redaction", "redacts": "$top"`, 1),
		`"body": "hi"`, `"redacts": "$inner"`, 1)
	for version, want := range map[string]string{"10": "$top", "11": "$inner", "12": "$inner"} {
		ev, err := ParseEvent(mustVersion(t, version), []byte(raw))
		if err != nil {
			t.Fatal(err)
		}
		if ev.Redacts() != want {
			t.Errorf("v%s Redacts() = %q, want %q", version, ev.Redacts(), want)
		}
	}
}

func TestParseEventV12Create(t *testing.T) {
	raw := `{"auth_events":[],"content":{"room_version":"12"},"depth":1,"hashes":{"sha256":"x"},
	  "origin_server_ts":1,"prev_events":[],"sender":"@c:x","signatures":{},"state_key":"","type":"m.room.create"}`
	ev, err := ParseEvent(mustVersion(t, "12"), []byte(raw))
	if err != nil {
		t.Fatal(err)
	}
	if ev.RoomID() != "!"+ev.EventID()[1:] || *ev.StateKey() != "" {
		t.Errorf("v12 create room ID %s for event %s", ev.RoomID(), ev.EventID())
	}
	withRoom := strings.Replace(raw, `"depth":1`, `"depth":1,"room_id":"!r:x"`, 1)
	if _, err := ParseEvent(mustVersion(t, "12"), []byte(withRoom)); !errors.Is(err, ErrInvalidEvent) {
		t.Errorf("v12 create with room_id accepted: %v", err)
	}
	// Other events of a v12 room need a room_id; a v11 create needs one too.
	if _, err := ParseEvent(mustVersion(t, "11"), []byte(raw)); !errors.Is(err, ErrInvalidEvent) {
		t.Errorf("v11 create without room_id accepted: %v", err)
	}
}

func TestParseEventLimits(t *testing.T) {
	v := mustVersion(t, "10")
	long := strings.Repeat("a", 256)
	cases := map[string]string{
		"long type":       strings.Replace(v4Message, `"m.room.message"`, `"`+long+`"`, 1),
		"long sender":     strings.Replace(v4Message, `"@u:example.org"`, `"@`+long+`"`, 1),
		"long room":       strings.Replace(v4Message, `"!r:example.org"`, `"!`+long+`"`, 1),
		"long state key":  strings.Replace(v4Message, `"depth"`, `"state_key":"`+long+`","depth"`, 1),
		"missing sender":  strings.Replace(v4Message, `"sender": "@u:example.org",`, ``, 1),
		"missing hashes":  strings.Replace(v4Message, `"hashes": {"sha256": "x"},`, ``, 1),
		"hash not string": strings.Replace(v4Message, `{"sha256": "x"}`, `{"sha256": 1}`, 1),
		"content array":   strings.Replace(v4Message, `{"body": "hi", "msgtype": "m.text"}`, `[]`, 1),
		"too big":         strings.Replace(v4Message, `"hi"`, `"`+strings.Repeat("b", MaxPDUBytes)+`"`, 1),
		"many prev":       strings.Replace(v4Message, `["$p"]`, `["$1","$2","$3","$4","$5","$6","$7","$8","$9","$10","$11","$12","$13","$14","$15","$16","$17","$18","$19","$20","$21"]`, 1),
		"many auth":       strings.Replace(v4Message, `["$a", "$b"]`, `["$1","$2","$3","$4","$5","$6","$7","$8","$9","$10","$11"]`, 1),
		"depth string":    strings.Replace(v4Message, `"depth": 5`, `"depth": "5"`, 1),
		"not object":      `[]`,
	}
	for name, raw := range cases {
		if _, err := ParseEvent(v, []byte(raw)); !errors.Is(err, ErrInvalidEvent) {
			t.Errorf("%s: err = %v, want ErrInvalidEvent", name, err)
		}
	}
	ok := strings.Replace(v4Message, `"m.room.message"`, `"`+long[:255]+`"`, 1)
	if _, err := ParseEvent(v, []byte(ok)); err != nil {
		t.Errorf("255-byte type rejected: %v", err)
	}
}

// type and state_key are bounded in codepoints before room version 11
// and in bytes from 11 on: a 70-codepoint, 280-byte state key is valid in
// a v10 room (such events exist and must still be accepted as prev and
// auth events) and invalid in a v11 one.
func TestParseEventKeyLimitsByVersion(t *testing.T) {
	wide := strings.Repeat("💥", 70) // 280 bytes
	withKey := func(sk, typ string) []byte {
		raw := strings.Replace(v4Message, `"depth"`, `"state_key":"`+sk+`","depth"`, 1)
		return []byte(strings.Replace(raw, `"m.room.message"`, `"`+typ+`"`, 1))
	}
	if _, err := ParseEvent(mustVersion(t, "10"), withKey(wide, "m.room.message")); err != nil {
		t.Fatalf("v10: a 280-byte, 70-codepoint state key rejected: %v", err)
	}
	if _, err := ParseEvent(mustVersion(t, "10"), withKey("k", "m."+strings.Repeat("é", 200))); err != nil {
		t.Fatalf("v10: a 402-byte, 202-codepoint type rejected: %v", err)
	}
	if _, err := ParseEvent(mustVersion(t, "10"), withKey(strings.Repeat("é", 256), "m.room.message")); !errors.Is(err, ErrInvalidEvent) {
		t.Fatalf("v10: a 256-codepoint state key: err = %v, want ErrInvalidEvent", err)
	}
	for _, v := range []string{"11", "12"} {
		if _, err := ParseEvent(mustVersion(t, v), withKey(wide, "m.room.message")); !errors.Is(err, ErrInvalidEvent) || !strings.Contains(err.Error(), "state_key") {
			t.Fatalf("v%s: a 280-byte state key: err = %v, want ErrInvalidEvent about state_key", v, err)
		}
		if _, err := ParseEvent(mustVersion(t, v), withKey(wide[:252], "m.room.message")); err != nil {
			t.Fatalf("v%s: a 252-byte state key rejected: %v", v, err)
		}
	}
}
