package push

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// cpuSeconds is the process's user+system CPU time: on a shared machine,
// evaluations per CPU second say more than per wall second.
func cpuSeconds() float64 {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return float64(ru.Utime.Sec+ru.Stime.Sec) + float64(ru.Utime.Usec+ru.Stime.Usec)/1e6
}

func ev(t testing.TB, s string) *Event {
	t.Helper()
	e, err := ParseEvent([]byte(s))
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func TestDefaultRules(t *testing.T) {
	const me = "@me:example.org"
	rs := Compile(Defaults(me))
	group := &Context{UserID: me, DisplayName: "Me Myself", MemberCount: 5, SenderPower: 0}
	dm := &Context{UserID: me, MemberCount: 2}
	admin := &Context{UserID: me, MemberCount: 5, SenderPower: 100}
	for _, tc := range []struct {
		name       string
		event      string
		ctx        *Context
		rule       string // "" no match
		notify, hl bool
		sound      string
	}{
		{"message in a group", `{"type":"m.room.message","content":{"msgtype":"m.text","body":"hi"}}`, group, ".m.rule.message", true, false, ""},
		{"message in a DM", `{"type":"m.room.message","content":{"msgtype":"m.text","body":"hi"}}`, dm, ".m.rule.room_one_to_one", true, false, "default"},
		{"notice", `{"type":"m.room.message","content":{"msgtype":"m.notice","body":"bot"}}`, group, ".m.rule.suppress_notices", false, false, ""},
		{"user mention", `{"type":"m.room.message","content":{"body":"hey","m.mentions":{"user_ids":["@x:y","@me:example.org"]}}}`, group, ".m.rule.is_user_mention", true, true, "default"},
		{"mention of someone else", `{"type":"m.room.message","content":{"body":"hey","m.mentions":{"user_ids":["@x:y"]}}}`, group, ".m.rule.message", true, false, ""},
		{"room mention without permission", `{"type":"m.room.message","content":{"body":"@room","m.mentions":{"room":true}}}`, group, ".m.rule.message", true, false, ""},
		{"room mention by an admin", `{"type":"m.room.message","content":{"body":"@room","m.mentions":{"room":true}}}`, admin, ".m.rule.is_room_mention", true, true, ""},
		{"room mention as a string", `{"type":"m.room.message","content":{"body":"@room","m.mentions":{"room":"true"}}}`, admin, ".m.rule.message", true, false, ""},
		{"edit", `{"type":"m.room.message","content":{"body":"* x","m.relates_to":{"rel_type":"m.replace","event_id":"$a"}}}`, dm, ".m.rule.suppress_edits", false, false, ""},
		{"invite for me", `{"type":"m.room.member","state_key":"@me:example.org","content":{"membership":"invite"}}`, group, ".m.rule.invite_for_me", true, false, "default"},
		{"someone else's invite", `{"type":"m.room.member","state_key":"@x:y","content":{"membership":"invite"}}`, group, ".m.rule.member_event", false, false, ""},
		{"tombstone", `{"type":"m.room.tombstone","state_key":"","content":{}}`, group, ".m.rule.tombstone", true, true, ""},
		{"tombstone not state", `{"type":"m.room.tombstone","content":{}}`, group, "", false, false, ""},
		{"reaction", `{"type":"m.reaction","content":{}}`, dm, ".m.rule.reaction", false, false, ""},
		{"call", `{"type":"m.call.invite","content":{}}`, group, ".m.rule.call", true, false, "ring"},
		{"encrypted DM", `{"type":"m.room.encrypted","content":{}}`, dm, ".m.rule.encrypted_room_one_to_one", true, false, "default"},
		{"poll start", `{"type":"org.matrix.msc3381.poll.start","content":{}}`, group, ".org.matrix.msc3930.rule.poll_start", true, false, ""},
		{"poll response", `{"type":"org.matrix.msc3381.poll.response","content":{}}`, group, ".org.matrix.msc3930.rule.poll_response", false, false, ""},
		{"custom event", `{"type":"org.example","content":{}}`, group, "", false, false, ""},
		// Legacy mention rules: only for events without m.mentions.
		{"user ID in the body", `{"type":"m.room.message","content":{"msgtype":"m.text","body":"Hello @me:example.org!"}}`, group, ".m.rule.contains_user_name", true, true, "default"},
		{"localpart inside a word", `{"type":"m.room.message","content":{"msgtype":"m.text","body":"meme time"}}`, group, ".m.rule.message", true, false, ""},
		{"user ID in the body with m.mentions", `{"type":"m.room.message","content":{"msgtype":"m.text","body":"Hello @me:example.org!","m.mentions":{}}}`, group, ".m.rule.message", true, false, ""},
		{"display name in the body", `{"type":"m.room.message","content":{"msgtype":"m.text","body":"ask me myself, please"}}`, group, ".m.rule.contains_display_name", true, true, "default"},
		{"display name in the body with m.mentions", `{"type":"m.room.message","content":{"msgtype":"m.text","body":"ask me myself","m.mentions":{"user_ids":[]}}}`, group, ".m.rule.message", true, false, ""},
		{"@room by an admin", `{"type":"m.room.message","content":{"msgtype":"m.text","body":"@room lunch"}}`, admin, ".m.rule.roomnotif", true, true, ""},
		{"@room without permission", `{"type":"m.room.message","content":{"msgtype":"m.text","body":"@room lunch"}}`, group, ".m.rule.message", true, false, ""},
		{"@room by an admin with m.mentions", `{"type":"m.room.message","content":{"msgtype":"m.text","body":"@room lunch","m.mentions":{}}}`, admin, ".m.rule.message", true, false, ""},
	} {
		r, ok := rs.Evaluate(ev(t, tc.event), tc.ctx)
		if tc.rule == "" {
			if ok {
				t.Errorf("%s: matched %s, want no rule", tc.name, r.RuleID)
			}
			continue
		}
		if !ok || r.RuleID != tc.rule || r.Notify != tc.notify || r.Highlight != tc.hl || r.Sound != tc.sound {
			t.Errorf("%s: got %+v (matched %v), want rule %s notify=%v highlight=%v sound=%q", tc.name, r, ok, tc.rule, tc.notify, tc.hl, tc.sound)
		}
	}
}

func TestConditions(t *testing.T) {
	p := func(s string) *string { return &s }
	one := func(c Condition) *Compiled {
		return Compile(Ruleset{Override: []Rule{{RuleID: "r", Enabled: true, Actions: []json.RawMessage{json.RawMessage(`"notify"`)}, Conditions: mustJSON(t, []Condition{c})}}})
	}
	match := func(c *Compiled, event string, ctx *Context) bool {
		if ctx == nil {
			ctx = &Context{}
		}
		_, ok := c.Evaluate(ev(t, event), ctx)
		return ok
	}
	// Spec examples (modules/push.md, Conditions).
	topic := one(Condition{Kind: "event_match", Key: "content.topic", Pattern: p("lunc?*")})
	for s, want := range map[string]bool{`"Lunch plans"`: true, `"LUNCH"`: true, `" lunch"`: false, `"lunc"`: false, `null`: false} {
		if got := match(topic, `{"type":"m.room.topic","content":{"topic":`+s+`}}`, nil); got != want {
			t.Errorf("lunc?* on topic %s: %v, want %v", s, got, want)
		}
	}
	body := one(Condition{Kind: "event_match", Key: "content.body", Pattern: p("ex*ple")})
	for s, want := range map[string]bool{"An example event.": true, "exple": true, "An exciting triple-whammy": true, "examples": false, "Anexample": false} {
		if got := match(body, fmt.Sprintf(`{"content":{"body":%q}}`, s), nil); got != want {
			t.Errorf("ex*ple on body %q: %v, want %v", s, got, want)
		}
	}
	fed := one(Condition{Kind: "event_property_is", Key: `content.m\.federate`, Value: json.RawMessage(`true`)})
	for s, want := range map[string]bool{`true`: true, `"true"`: false, `1`: false} {
		if got := match(fed, `{"content":{"m.federate":`+s+`}}`, nil); got != want {
			t.Errorf("m.federate is true on %s: %v, want %v", s, got, want)
		}
	}
	alias := one(Condition{Kind: "event_property_contains", Key: "content.alt_aliases", Value: json.RawMessage(`"#myroom:example.com"`)})
	if !match(alias, `{"content":{"alt_aliases":["#somewhere:example.org","#myroom:example.com"]}}`, nil) ||
		match(alias, `{"content":{"alt_aliases":[":example.com"]}}`, nil) || match(alias, `{"content":{"alt_aliases":"#myroom:example.com"}}`, nil) {
		t.Error("event_property_contains on alt_aliases")
	}
	name := one(Condition{Kind: "contains_display_name"})
	ctx := &Context{DisplayName: "Alice"}
	if !match(name, `{"content":{"body":"hi alice!"}}`, ctx) || match(name, `{"content":{"body":"hi alicex"}}`, ctx) || match(name, `{"content":{"body":"hi alice"}}`, &Context{}) {
		t.Error("contains_display_name")
	}
	for is, counts := range map[string][2][]int{"2": {{2}, {1, 3}}, "==3": {{3}, {2}}, ">=3": {{3, 9}, {2}}, "<3": {{1, 2}, {3}}, ">1": {{2}, {1}}, "<=1": {{0, 1}, {2}}} {
		c := one(Condition{Kind: "room_member_count", Is: is})
		for _, n := range counts[0] {
			if !match(c, `{}`, &Context{MemberCount: n}) {
				t.Errorf("room_member_count %s with %d members: no match", is, n)
			}
		}
		for _, n := range counts[1] {
			if match(c, `{}`, &Context{MemberCount: n}) {
				t.Errorf("room_member_count %s with %d members: match", is, n)
			}
		}
	}
	perm := one(Condition{Kind: "sender_notification_permission", Key: "room"})
	if match(perm, `{}`, &Context{SenderPower: 49}) || !match(perm, `{}`, &Context{SenderPower: 50}) ||
		match(perm, `{}`, &Context{SenderPower: 50, NotificationPower: map[string]int64{"room": 51}}) {
		t.Error("sender_notification_permission")
	}
	if match(one(Condition{Kind: "org.example.unknown"}), `{}`, nil) {
		t.Error("an unrecognised condition matched")
	}
	// Content, room and sender rules; a disabled rule is skipped.
	rs := Compile(Ruleset{
		Override: []Rule{{RuleID: "off", Enabled: false, Actions: []json.RawMessage{json.RawMessage(`"notify"`)}}},
		Content:  []Rule{{RuleID: "kw", Enabled: true, Pattern: p("cake"), Actions: []json.RawMessage{json.RawMessage(`"notify"`), json.RawMessage(`{"set_tweak":"highlight","value":false}`)}}},
		Room:     []Rule{{RuleID: "!muted:x", Enabled: true, Actions: []json.RawMessage{}}},
		Sender:   []Rule{{RuleID: "@boss:x", Enabled: true, Actions: []json.RawMessage{json.RawMessage(`"notify"`), json.RawMessage(`{"set_tweak":"highlight"}`)}}},
	})
	if r, ok := rs.Evaluate(ev(t, `{"room_id":"!muted:x","sender":"@boss:x","content":{"body":"Cake!"}}`), &Context{}); !ok || r.RuleID != "kw" || r.Highlight {
		t.Errorf("content rule: %+v", r)
	}
	if r, ok := rs.Evaluate(ev(t, `{"room_id":"!muted:x","sender":"@boss:x","content":{"body":"x"}}`), &Context{}); !ok || r.RuleID != "!muted:x" || r.Notify {
		t.Errorf("room rule: %+v", r)
	}
	if r, ok := rs.Evaluate(ev(t, `{"room_id":"!a:x","sender":"@boss:x","content":{"body":"x"}}`), &Context{}); !ok || r.RuleID != "@boss:x" || !r.Highlight {
		t.Errorf("sender rule: %+v", r)
	}
}

func TestSplitPath(t *testing.T) {
	for in, want := range map[string][]string{
		`content.m\.relates_to.rel_type`: {"content", "m.relates_to", "rel_type"},
		`a\\b.c`:                         {`a\b`, "c"},
		`x`:                              {"x"},
	} {
		if got := SplitPath(in); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("SplitPath(%q) = %q, want %q", in, got, want)
		}
	}
}

// BenchmarkEvaluate evaluates the default rules (and a keyword rule) for
// a stream of varied events and many members, and prints the
// evaluations per second per core as a JSON line.
//
// go test -run '^$' -bench BenchmarkEvaluate -benchtime 2000000x ./push/
func BenchmarkEvaluate(b *testing.B) {
	events := []string{
		`{"type":"m.room.message","room_id":"!r:x","sender":"@s:x","content":{"msgtype":"m.text","body":"lunch is ready, who is coming to the release meeting?"}}`,
		`{"type":"m.room.message","room_id":"!r:x","sender":"@s:x","content":{"msgtype":"m.text","body":"ping","m.mentions":{"user_ids":["@u7:x"]}}}`,
		`{"type":"m.room.message","room_id":"!r:x","sender":"@s:x","content":{"msgtype":"m.notice","body":"build passed"}}`,
		`{"type":"m.reaction","room_id":"!r:x","sender":"@s:x","content":{"m.relates_to":{"rel_type":"m.annotation","event_id":"$e","key":"👍"}}}`,
		`{"type":"m.room.encrypted","room_id":"!r:x","sender":"@s:x","content":{"algorithm":"m.megolm.v1.aes-sha2","ciphertext":"AwgAEnAC"}}`,
		`{"type":"m.room.message","room_id":"!r:x","sender":"@s:x","content":{"msgtype":"m.text","body":"* fixed","m.relates_to":{"rel_type":"m.replace","event_id":"$e"}}}`,
	}
	parsed := make([]*Event, len(events))
	for i, s := range events {
		parsed[i] = ev(b, s)
	}
	const members = 100
	rulesets := make([]*Compiled, members)
	ctxs := make([]*Context, members)
	kw := "cake"
	for m := range members {
		uid := fmt.Sprintf("@u%d:x", m)
		rs := Defaults(uid)
		rs.Content = append(rs.Content, Rule{RuleID: "kw", Enabled: true, Pattern: &kw, Actions: []json.RawMessage{json.RawMessage(`"notify"`)}})
		rulesets[m] = Compile(rs)
		ctxs[m] = &Context{UserID: uid, DisplayName: fmt.Sprintf("User %d", m), MemberCount: members, SenderPower: 0}
	}
	b.ResetTimer()
	cpu0 := cpuSeconds()
	start := time.Now()
	n := 0
	for i := 0; i < b.N; i++ {
		m := i % members
		rulesets[m].Evaluate(parsed[(i/members)%len(parsed)], ctxs[m])
		n++
	}
	secs := time.Since(start).Seconds()
	cpu := cpuSeconds() - cpu0
	if b.N >= 100000 {
		params := map[string]any{"members": members, "events": len(events), "rules": "defaults+1 keyword"}
		for name, v := range map[string]float64{"evaluations_per_s": float64(n) / secs, "evaluations_per_cpu_s": float64(n) / cpu} {
			out, _ := json.Marshal(map[string]any{"bench": "push", "name": name, "value": v, "unit": "event×member/s", "better": "higher", "params": params})
			fmt.Println(string(out))
		}
	}
}

func mustJSON(t testing.TB, v any) json.RawMessage {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Conditions are kept raw: an empty list matches every event, a kind this
// build does not know (or conditions that are not objects) never matches.
func TestRawConditions(t *testing.T) {
	e := ev(t, `{"type":"m.room.message","content":{"body":"hi"}}`)
	for _, tc := range []struct {
		conds string
		match bool
	}{
		{`[]`, true},
		{``, true},
		{`[{"kind":"org.example.unknown","key":"x"}]`, false},
		{`["not an object"]`, false},
		{`{"kind":"event_match"}`, false},
	} {
		rs := Ruleset{Override: []Rule{{RuleID: "r", Enabled: true, Actions: []json.RawMessage{json.RawMessage(`"notify"`)}, Conditions: json.RawMessage(tc.conds)}}}
		_, ok := Compile(rs).Evaluate(e, &Context{UserID: "@a:x", MemberCount: 2})
		if ok != tc.match {
			t.Errorf("conditions %s: matched %v, want %v", tc.conds, ok, tc.match)
		}
	}
}

// TestParseEventCanonicalAndNot: an event parsed from its canonical JSON
// (members decoded one by one, signatures and the like only when a rule
// reads them) matches exactly as the same event with whitespace, which
// the general decoder parses.
func TestParseEventCanonicalAndNot(t *testing.T) {
	const canonical = `{"auth_events":["$a"],"content":{"body":"Hello","n":12,"nested":{"k":true}},"depth":7,"hashes":{"sha256":"abc"},"origin_server_ts":1700000000000,"prev_events":["$p"],"room_id":"!r:x","sender":"@s:x","signatures":{"x":{"ed25519:k":"sig"}},"type":"m.room.message"}`
	spaced := `{ "auth_events": ["$a"], "content": {"body": "Hello", "n": 12, "nested": {"k": true}}, "depth": 7, "hashes": {"sha256": "abc"},
		"origin_server_ts": 1700000000000, "prev_events": ["$p"], "room_id": "!r:x", "sender": "@s:x", "signatures": {"x": {"ed25519:k": "sig"}}, "type": "m.room.message" }`
	a, b := ev(t, canonical), ev(t, spaced)
	if a.lazy == nil || b.lazy != nil {
		t.Fatalf("lazy members: canonical %v, spaced %v; want the canonical one's left raw only", a.lazy, b.lazy)
	}
	for _, path := range []string{"type", "sender", "room_id", "depth", "origin_server_ts", "content.body", "content.n", "content.nested.k",
		"hashes.sha256", "signatures.x.ed25519:k", "auth_events", "prev_events", "content.missing", "signatures.y", "type.x"} {
		va, oka := a.lookup(SplitPath(path))
		vb, okb := b.lookup(SplitPath(path))
		if oka != okb || fmt.Sprint(va) != fmt.Sprint(vb) || fmt.Sprintf("%T", va) != fmt.Sprintf("%T", vb) {
			t.Errorf("%s: canonical %T %v (%v), spaced %T %v (%v)", path, va, va, oka, vb, vb, okb)
		}
	}
	if !a.hasBody || a.body != "hello" {
		t.Errorf("canonical body %q (%v)", a.body, a.hasBody)
	}
}

// BenchmarkParseEvent parses a message as the notifications fold gets it
// from the log (federation format, canonical JSON, as the load tool sends).
func BenchmarkParseEvent(b *testing.B) {
	raw := []byte(`{"auth_events":["$d5eqauO6V-TBo8kGH-GahyV-fjp9gd13Z6dhabehRQU","$SZMS_vRbNuHDyiG84CxmGbDVHqtxleEq6ZJFYjQaPx4","$3Y60ttQTDU3AV-ZWeEcfA6PaFHtoHkI5JqycA82482U"],"content":{"bench_id":"15456","body":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx","msgtype":"m.text"},"depth":163,"hashes":{"sha256":"etEiSNeH6jztTjp7acI1LXjWPKlNbFNnpMj5jmdJz7Q"},"origin_server_ts":1796421382817,"prev_events":["$K-vbkFDLLDTFKa9VqreZTCzXNJyBC8crwCXSYkGypGc"],"room_id":"!fVTRqn55O-FvcMRm:bench.localhost","sender":"@benchbe84e7_s119:bench.localhost","signatures":{"bench.localhost":{"ed25519:a_89fd":"6j7IfQZh+b3xddk8c5KDHzSud4U4IZxD6HnpxtvoTWPI27idqb+1+9O/+FHhH+gWjaNYQN43220HRTO3oEc9Dw"}},"type":"m.room.message"}`)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ParseEvent(raw); err != nil {
			b.Fatal(err)
		}
	}
}

// TestBodyWordMatchesRegexp holds the body patterns without wildcards,
// matched by containsWord, to the glob regexp they were matched by before
// (and patterns with wildcards still are): every body of up to three
// characters from an alphabet of word and non-word characters, ASCII and
// not, some of which lower-case to other lengths or to ASCII.
func TestBodyWordMatchesRegexp(t *testing.T) {
	alphabet := []string{"a", "B", "k", "_", "0", " ", "@", ".", "é", "É", "\u212a", "İ", "🙂"}
	patterns := []string{"@room", "a", "ab", "b_", "k", "K", "é", "i\u0307", " ", "a b", "@", "🙂", ""}
	bodies := []string{""}
	for n, prev := 0, []string{""}; n < 3; n++ {
		var next []string
		for _, p := range prev {
			for _, c := range alphabet {
				next = append(next, p+c)
			}
		}
		bodies, prev = append(bodies, next...), next
	}
	bodies = append(bodies, "hi @room!", "ping alice.", "Alice", "x@roomy", "über_a b")
	for _, p := range patterns {
		c, ok := compileCond(Condition{Kind: "event_match", Key: "content.body", Pattern: &p})
		if !ok {
			t.Fatalf("pattern %q does not compile", p)
		}
		if p != "" && c.word == "" {
			t.Fatalf("pattern %q: not matched as a word", p)
		}
		re := regexp.MustCompile(globRegexp(strings.ToLower(p), true))
		for _, b := range bodies {
			e := ev(t, string(mustJSON(t, map[string]any{"content": map[string]string{"body": b}})))
			if got, want := c.holds(e, &Context{}), re.MatchString(strings.ToLower(b)); got != want {
				t.Errorf("pattern %q on body %q: %v, the regexp says %v", p, b, got, want)
			}
		}
	}
}

// TestResultActions: a notifying rule's actions as GET /notifications
// shows them ("notify", then each tweak by name, a bare highlight as
// true), and none for a rule that does not notify.
func TestResultActions(t *testing.T) {
	rs := Compile(Ruleset{Override: []Rule{
		{RuleID: "mute", Enabled: true, Actions: []json.RawMessage{json.RawMessage(`"dont_notify"`)}, Conditions: json.RawMessage(`[{"kind":"event_match","key":"type","pattern":"m.mute"}]`)},
		{RuleID: "loud", Enabled: true, Actions: []json.RawMessage{json.RawMessage(`{"set_tweak":"sound","value":"beer.wav"}`), json.RawMessage(`"notify"`), json.RawMessage(`{"set_tweak":"highlight"}`)}},
	}})
	for event, want := range map[string]string{
		`{"type":"m.mute"}`:         `null`,
		`{"type":"m.room.message"}`: `["notify",{"set_tweak":"highlight","value":true},{"set_tweak":"sound","value":"beer.wav"}]`,
	} {
		r, ok := rs.Evaluate(ev(t, event), &Context{})
		if got := string(mustJSON(t, r.Actions)); !ok || got != want {
			t.Errorf("%s: actions %s (matched %v), want %s", event, got, ok, want)
		}
	}
}
