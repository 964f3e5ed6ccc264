package appservice

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const bridgeYAML = `
id: irc
url: "http://127.0.0.1:9999"
as_token: "as-secret"
hs_token: "hs-secret"
sender_localpart: "_irc_bot"
namespaces:
  users:
    - exclusive: true
      regex: "@_irc_.*:example.org"
    - exclusive: false
      regex: "@irc_.*"
  aliases:
    - exclusive: true
      regex: "#_irc_.*"
  rooms:
    - exclusive: false
      regex: "!bridged:example.org"
`

func TestParseAndNamespaces(t *testing.T) {
	r, err := Parse([]byte(bridgeYAML), "example.org")
	if err != nil {
		t.Fatal(err)
	}
	if r.Sender() != "@_irc_bot:example.org" || !r.Pushes() || r.Throttled() {
		t.Fatalf("sender %q pushes %v throttled %v", r.Sender(), r.Pushes(), r.Throttled())
	}
	for _, c := range []struct {
		user string
		owns bool
	}{
		{"@_irc_bot:example.org", true},
		{"@_irc_alice:example.org", true},
		{"@irc_bob:example.org", true},
		// Anchored at the start, as Synapse matches: a user whose ID only
		// contains the pattern further in is not the appservice's.
		{"@x_irc_alice:example.org", false},
		{"@alice:example.org", false},
	} {
		if got := r.OwnsUser(c.user); got != c.owns {
			t.Errorf("OwnsUser(%s) = %v, want %v", c.user, got, c.owns)
		}
	}
	if !r.InterestedInAlias("#_irc_#chan:example.org") || r.InterestedInAlias("#chan:example.org") {
		t.Error("alias namespace")
	}
	if !r.InterestedInRoom("!bridged:example.org") || r.InterestedInRoom("!other:example.org") {
		t.Error("room namespace")
	}
	dir := t.TempDir()
	p := filepath.Join(dir, "irc.yaml")
	if err := os.WriteFile(p, []byte(bridgeYAML), 0o600); err != nil {
		t.Fatal(err)
	}
	set, err := Load([]string{p}, "example.org")
	if err != nil {
		t.Fatal(err)
	}
	if set.ByToken("as-secret") != set.ByID("irc") || set.ByToken("hs-secret") != nil {
		t.Error("lookup by token")
	}
	// Only exclusive namespaces (and the sender) are reserved.
	if set.ExclusiveUser("@_irc_x:example.org") == nil || set.ExclusiveUser("@irc_x:example.org") != nil || set.ExclusiveUser("@_irc_bot:example.org") == nil {
		t.Error("exclusive users")
	}
	if set.ExclusiveAlias("#_irc_x:example.org") == nil || set.ExclusiveAlias("#x:example.org") != nil {
		t.Error("exclusive aliases")
	}
	var none *Set
	if none.ByToken("as-secret") != nil || none.ExclusiveUser("@_irc_x:example.org") != nil {
		t.Error("a nil set holds nothing")
	}
	// Two registrations may not share an id or an as_token.
	if _, err := Load([]string{p, p}, "example.org"); err == nil || !strings.Contains(err.Error(), "both have id") {
		t.Errorf("duplicate registration: %v", err)
	}
}

func TestParseRefusesBadRegistrations(t *testing.T) {
	for name, c := range map[string]struct{ yaml, want string }{
		"missing tokens":  {"id: x\nsender_localpart: b\nurl: null\nnamespaces: {}\n", "missing as_token, hs_token"},
		"same tokens":     {"id: x\nas_token: t\nhs_token: t\nsender_localpart: b\nurl: null\n", "are the same"},
		"bad url":         {"id: x\nas_token: a\nhs_token: h\nsender_localpart: b\nurl: \"ftp://x\"\n", "not an http(s) URL"},
		"bad regex":       {"id: x\nas_token: a\nhs_token: h\nsender_localpart: b\nurl: null\nnamespaces: {users: [{exclusive: true, regex: \"@(\"}]}\n", "namespaces.users[0].regex"},
		"empty regex":     {"id: x\nas_token: a\nhs_token: h\nsender_localpart: b\nurl: null\nnamespaces: {rooms: [{exclusive: true}]}\n", "namespaces.rooms[0] has no regex"},
		"not a mapping":   {"- a\n- b\n", "not a registration file"},
		"missing id only": {"as_token: a\nhs_token: h\nsender_localpart: b\n", "missing id"},
	} {
		if _, err := Parse([]byte(c.yaml), "example.org"); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error containing %q", name, err, c.want)
		}
	}
	r, err := Parse([]byte("id: x\nas_token: a\nhs_token: h\nsender_localpart: b\nurl: null\nrate_limited: true\n"), "example.org")
	if err != nil || r.Pushes() || !r.Throttled() {
		t.Fatalf("url null: %v %v", r, err)
	}
}
