package stateres

import (
	"strings"
	"testing"

	"github.com/engram-hs/engram/stateres/canonicaljson"
)

func redactFixture(typ, content string) string {
	return `{"auth_events":[],"content":` + content + `,"depth":1,"hashes":{"sha256":"h"},"membership":"m",
	  "origin":"o","origin_server_ts":1,"prev_events":[],"prev_state":[],"room_id":"!r:x","sender":"@a:x",
	  "signatures":{"x":{"ed25519:1":"s"}},"state_key":"","type":"` + typ + `","unsigned":{"age":1},"redacts":"$t","extra":1}`
}

func redactedContent(t *testing.T, version, typ, content string) string {
	t.Helper()
	canon, err := canonicaljson.Canonicalize([]byte(redactFixture(typ, content)), false)
	if err != nil {
		t.Fatal(err)
	}
	out, err := Redact(mustVersion(t, version), canon)
	if err != nil {
		t.Fatal(err)
	}
	return string(canonicaljson.Get(out, "content"))
}

func TestRedactContentPerVersion(t *testing.T) {
	member := `{"membership":"join","displayname":"A","join_authorised_via_users_server":"@b:x","third_party_invite":{"signed":{"token":"t"},"display_name":"d"}}`
	create := `{"creator":"@a:x","room_version":"1","m.federate":false}`
	joinRules := `{"join_rule":"restricted","allow":[{"type":"m.room_membership"}],"other":1}`
	power := `{"ban":50,"events":{},"events_default":0,"invite":0,"kick":50,"redact":50,"state_default":50,"users":{},"users_default":0,"notifications":{"room":50}}`
	cases := []struct{ version, typ, content, want string }{
		{"1", MRoomMember, member, `{"membership":"join"}`},
		{"8", MRoomMember, member, `{"membership":"join"}`},
		{"9", MRoomMember, member, `{"join_authorised_via_users_server":"@b:x","membership":"join"}`},
		{"11", MRoomMember, member, `{"join_authorised_via_users_server":"@b:x","membership":"join","third_party_invite":{"signed":{"token":"t"}}}`},
		{"11", MRoomMember, `{"membership":"invite","third_party_invite":{"display_name":"d"}}`, `{"membership":"invite"}`},
		{"10", MRoomCreate, create, `{"creator":"@a:x"}`},
		{"11", MRoomCreate, create, `{"creator":"@a:x","m.federate":false,"room_version":"1"}`},
		{"7", MRoomJoinRules, joinRules, `{"join_rule":"restricted"}`},
		{"8", MRoomJoinRules, joinRules, `{"allow":[{"type":"m.room_membership"}],"join_rule":"restricted"}`},
		{"10", MRoomPowerLevels, power, `{"ban":50,"events":{},"events_default":0,"kick":50,"redact":50,"state_default":50,"users":{},"users_default":0}`},
		{"11", MRoomPowerLevels, power, `{"ban":50,"events":{},"events_default":0,"invite":0,"kick":50,"redact":50,"state_default":50,"users":{},"users_default":0}`},
		{"5", MRoomAliases, `{"aliases":["#a:x"]}`, `{"aliases":["#a:x"]}`},
		{"6", MRoomAliases, `{"aliases":["#a:x"]}`, `{}`},
		{"1", MRoomHistoryVisibility, `{"history_visibility":"shared","x":1}`, `{"history_visibility":"shared"}`},
		{"10", MRoomRedaction, `{"redacts":"$t","reason":"r"}`, `{}`},
		{"11", MRoomRedaction, `{"redacts":"$t","reason":"r"}`, `{"redacts":"$t"}`},
		{"12", MRoomRedaction, `{"redacts":"$t","reason":"r"}`, `{"redacts":"$t"}`},
		{"12", "m.room.message", `{"body":"b"}`, `{}`},
	}
	for _, c := range cases {
		if got := redactedContent(t, c.version, c.typ, c.content); got != c.want {
			t.Errorf("v%s %s: redacted content %s, want %s", c.version, c.typ, got, c.want)
		}
	}
}

func TestRedactTopLevel(t *testing.T) {
	canon, err := canonicaljson.Canonicalize([]byte(redactFixture("m.room.message", `{"body":"b"}`)), false)
	if err != nil {
		t.Fatal(err)
	}
	v10, _ := Redact(mustVersion(t, "10"), canon)
	want10 := `{"auth_events":[],"content":{},"depth":1,"hashes":{"sha256":"h"},"membership":"m","origin":"o","origin_server_ts":1,"prev_events":[],"prev_state":[],"room_id":"!r:x","sender":"@a:x","signatures":{"x":{"ed25519:1":"s"}},"state_key":"","type":"m.room.message"}`
	if string(v10) != want10 {
		t.Errorf("v10 redacted:\n%s\nwant\n%s", v10, want10)
	}
	v11, _ := Redact(mustVersion(t, "11"), canon)
	for _, gone := range []string{`"membership"`, `"origin"`, `"prev_state"`, `"redacts"`, `"unsigned"`, `"extra"`} {
		if strings.Contains(string(v11), gone) {
			t.Errorf("v11 redaction kept %s: %s", gone, v11)
		}
	}
}

func TestEventRedacted(t *testing.T) {
	ev, err := ParseEvent(mustVersion(t, "10"), []byte(v4Message))
	if err != nil {
		t.Fatal(err)
	}
	red := ev.Redacted()
	if red.EventID() != ev.EventID() || string(red.Content()) != `{}` || red.Unsigned() != nil {
		t.Errorf("redacted event: id %s content %s unsigned %s", red.EventID(), red.Content(), red.Unsigned())
	}
}
