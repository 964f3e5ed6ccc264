package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"testing"
)

// TestRebuildAnswersByteForByte is the promise that projections are a pure
// function of the log: the real binary serves traffic, the client-visible
// answers are recorded, the server stops, `engram rebuild` drops every
// projection and replays it, and the restarted server answers the same
// requests with the same bytes. Only two things may differ, both derived
// from the wall clock at the time of the request rather than from the log:
//
//   - unsigned.age of events (now minus origin_server_ts, by the spec);
//   - last_active_ago of presence (now minus the time of the last presence
//     change, by the spec).
//
// They are cut out of the bodies (see stripClockFields) and nothing else is.
// Presence itself turns idle and offline by the reader's clock too (after
// 5 and 6 minutes without activity); the test takes seconds, far from
// those thresholds, so it keeps presence and currently_active.
func TestRebuildAnswersByteForByte(t *testing.T) {
	dir := t.TempDir()
	listen := freeAddr(t)
	cfg := writeConfig(t, dir, listen, "")
	p := startServer(t, dir, listen, nil, "--config", cfg)
	for _, u := range []string{"alice", "bob"} {
		if out, errOut, code := runTool(t, dir, nil, "register-user", "--config", cfg, "--user", u, "--password", "pw-"+u); code != 0 {
			t.Fatalf("register-user %s: code %d %s %s", u, code, out, errOut)
		}
	}
	alice := newRebuildClient(t, listen, "alice")
	bob := newRebuildClient(t, listen, "bob")
	traffic := driveTraffic(t, alice, bob)

	before := recordAnswers(t, traffic, alice, bob)
	p.stop()
	lastBefore := lastLogEntry(t, dir, cfg)

	_, errOut, code := runTool(t, dir, nil, "rebuild", "--config", cfg)
	if code != 0 || !strings.Contains(errOut, "100%") {
		t.Fatalf("rebuild: code %d\n%s", code, errOut)
	}

	p = startServer(t, dir, listen, nil, "--config", cfg)
	after := recordAnswers(t, traffic, alice, bob)
	p.stop()
	// The recording only reads: had it written to the log, the answers
	// could differ for that reason rather than because of the rebuild.
	if lastAfter := lastLogEntry(t, dir, cfg); lastAfter != lastBefore {
		t.Fatalf("the log changed while the answers were recorded again:\nbefore %s\nafter  %s", lastBefore, lastAfter)
	}

	if len(after) != len(before) {
		t.Fatalf("recorded %d answers before the rebuild and %d after", len(before), len(after))
	}
	differ := 0
	for i := range before {
		b, a := before[i], after[i]
		if b.request != a.request {
			t.Fatalf("request %d: %s before, %s after", i, b.request, a.request)
		}
		if b.status != a.status || !bytes.Equal(b.body, a.body) {
			differ++
			at := firstDiff(b.body, a.body)
			t.Errorf("%s differs after rebuild at byte %d:\nbefore %d ...%s...\nafter  %d ...%s...", b.request, at, b.status, around(b.body, at), a.status, around(a.body, at))
		}
	}
	t.Logf("%d answers compared, %d differ", len(before), differ)

	out, errOut, code := runTool(t, dir, nil, "verify", "--config", cfg)
	if code != 0 || !strings.Contains(out, "all projections match") {
		t.Fatalf("verify after rebuild: code %d\n%s\n%s", code, out, errOut)
	}
}

// lastLogEntry prints the newest log entry with the server stopped.
func lastLogEntry(t *testing.T, dir, cfg string) string {
	t.Helper()
	out, errOut, code := runTool(t, dir, nil, "log", "--config", cfg, "tail", "-n", "1")
	if code != 0 || strings.TrimSpace(out) == "" {
		t.Fatalf("log tail: code %d\n%s\n%s", code, out, errOut)
	}
	return strings.TrimSpace(out)
}

// rebuildClient is one logged-in user talking raw HTTP, so the test sees
// the exact bytes the server writes.
type rebuildClient struct {
	t      *testing.T
	base   string
	user   string // full user ID
	token  string
	txnSeq int
}

func newRebuildClient(t *testing.T, listen, localpart string) *rebuildClient {
	t.Helper()
	st, token := loginToken(t, listen, localpart, "pw-"+localpart)
	if st != http.StatusOK || token == "" {
		t.Fatalf("login %s = %d", localpart, st)
	}
	return &rebuildClient{t: t, base: "http://" + listen + "/_matrix/client/v3", user: "@" + localpart + ":test.local", token: token}
}

// raw sends a request and returns the status and the body as written.
func (c *rebuildClient) raw(method, path string, body any) (int, []byte) {
	c.t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			c.t.Fatal(err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, c.base+path, rd)
	if err != nil {
		c.t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		c.t.Fatalf("%s %s: reading the body: %v", method, path, err)
	}
	return resp.StatusCode, out
}

// ok sends a request that must succeed and decodes its answer into out.
func (c *rebuildClient) ok(method, path string, body, out any) {
	c.t.Helper()
	st, raw := c.raw(method, path, body)
	if st != http.StatusOK {
		c.t.Fatalf("%s %s as %s: %d %s", method, path, c.user, st, raw)
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			c.t.Fatalf("%s %s: %v in %s", method, path, err, raw)
		}
	}
}

func (c *rebuildClient) txn() string {
	c.txnSeq++
	return fmt.Sprintf("t%d", c.txnSeq)
}

func (c *rebuildClient) send(room, evType string, content any) string {
	c.t.Helper()
	var out struct {
		EventID string `json:"event_id"`
	}
	c.ok("PUT", "/rooms/"+url.PathEscape(room)+"/send/"+evType+"/"+c.txn(), content, &out)
	return out.EventID
}

func (c *rebuildClient) state(room, evType, stateKey string, content any) string {
	c.t.Helper()
	var out struct {
		EventID string `json:"event_id"`
	}
	c.ok("PUT", "/rooms/"+url.PathEscape(room)+"/state/"+evType+"/"+url.PathEscape(stateKey), content, &out)
	return out.EventID
}

func (c *rebuildClient) createRoom(req map[string]any) string {
	c.t.Helper()
	var out struct {
		RoomID string `json:"room_id"`
	}
	c.ok("POST", "/createRoom", req, &out)
	return out.RoomID
}

func (c *rebuildClient) sinceToken() string {
	c.t.Helper()
	var out struct {
		NextBatch string `json:"next_batch"`
	}
	c.ok("GET", "/sync?timeout=0", nil, &out)
	return out.NextBatch
}

// traffic is what the recording needs to know about the rooms made.
type traffic struct {
	rooms map[string][]string // user ID -> rooms to read
	since map[string]string   // user ID -> a /sync token from the middle of the traffic
}

// driveTraffic exercises what projections fold: rooms of three presets,
// joins, invites, a leave, messages with transaction IDs, a reply, an
// edit, a thread, a reaction, state changes, a redaction, a profile
// change, typing, receipts, presence, global and room account data, tags.
func driveTraffic(t *testing.T, alice, bob *rebuildClient) traffic {
	t.Helper()
	public := alice.createRoom(map[string]any{"preset": "public_chat", "name": "Lobby", "topic": "all welcome", "room_alias_name": "lobby"})
	private := alice.createRoom(map[string]any{"preset": "private_chat", "name": "Plans", "invite": []string{bob.user}})
	direct := bob.createRoom(map[string]any{"preset": "trusted_private_chat", "is_direct": true, "invite": []string{alice.user}})
	left := alice.createRoom(map[string]any{"preset": "private_chat", "name": "Short-lived", "invite": []string{bob.user}})

	bob.ok("POST", "/join/"+url.PathEscape(public), map[string]any{}, nil)
	bob.ok("POST", "/join/"+url.PathEscape(private), map[string]any{}, nil)
	alice.ok("POST", "/join/"+url.PathEscape(direct), map[string]any{}, nil)
	bob.ok("POST", "/join/"+url.PathEscape(left), map[string]any{}, nil)

	first := alice.send(public, "m.room.message", map[string]any{"msgtype": "m.text", "body": "hello everyone"})
	bob.send(public, "m.room.message", map[string]any{"msgtype": "m.text", "body": "hi alice", "m.relates_to": map[string]any{"m.in_reply_to": map[string]any{"event_id": first}}})
	secret := bob.send(public, "m.room.message", map[string]any{"msgtype": "m.text", "body": "oops, my password"})
	alice.send(public, "m.reaction", map[string]any{"m.relates_to": map[string]any{"rel_type": "m.annotation", "event_id": first, "key": "👋"}})
	since := map[string]string{alice.user: alice.sinceToken(), bob.user: bob.sinceToken()}

	bob.ok("PUT", "/rooms/"+url.PathEscape(public)+"/redact/"+url.PathEscape(secret)+"/"+bob.txn(), map[string]any{"reason": "leaked"}, nil)
	alice.state(public, "m.room.topic", "", map[string]any{"topic": "all welcome, be nice"})
	alice.state(public, "m.room.name", "", map[string]any{"name": "The Lobby"})
	alice.state(public, "org.example.settings", "colour", map[string]any{"colour": "teal"})
	for i := range 6 {
		sender := alice
		if i%2 == 1 {
			sender = bob
		}
		sender.send(public, "m.room.message", map[string]any{"msgtype": "m.text", "body": fmt.Sprintf("message %d", i)})
	}
	root := alice.send(private, "m.room.message", map[string]any{"msgtype": "m.text", "body": "thread root"})
	bob.send(private, "m.room.message", map[string]any{"msgtype": "m.text", "body": "in the thread", "m.relates_to": map[string]any{"rel_type": "m.thread", "event_id": root}})
	alice.send(private, "m.room.message", map[string]any{"msgtype": "m.text", "body": "* thread root (edited)", "m.new_content": map[string]any{"msgtype": "m.text", "body": "thread root (edited)"}, "m.relates_to": map[string]any{"rel_type": "m.replace", "event_id": root}})
	bob.send(direct, "m.room.message", map[string]any{"msgtype": "m.text", "body": "just us"})
	alice.send(direct, "m.room.message", map[string]any{"msgtype": "m.notice", "body": "indeed"})
	alice.send(left, "m.room.message", map[string]any{"msgtype": "m.text", "body": "before bob leaves"})
	bob.ok("POST", "/rooms/"+url.PathEscape(left)+"/leave", map[string]any{"reason": "bye"}, nil)
	alice.send(left, "m.room.message", map[string]any{"msgtype": "m.text", "body": "after bob left"})

	// A profile change fans out as new member events in every joined room.
	bob.ok("PUT", "/profile/"+url.PathEscape(bob.user)+"/displayname", map[string]any{"displayname": "Bobby"}, nil)
	alice.ok("PUT", "/profile/"+url.PathEscape(alice.user)+"/avatar_url", map[string]any{"avatar_url": "mxc://test.local/alice"}, nil)
	last := bob.send(public, "m.room.message", map[string]any{"msgtype": "m.text", "body": "call me Bobby"})

	// Typing expires by the wall clock: ten minutes outlives the test, so
	// the typing notification is present in both recordings.
	alice.ok("PUT", "/rooms/"+url.PathEscape(public)+"/typing/"+url.PathEscape(alice.user), map[string]any{"typing": true, "timeout": 600000}, nil)
	bob.ok("POST", "/rooms/"+url.PathEscape(public)+"/receipt/m.read/"+url.PathEscape(last), map[string]any{}, nil)
	alice.ok("POST", "/rooms/"+url.PathEscape(public)+"/receipt/m.read.private/"+url.PathEscape(first), map[string]any{}, nil)
	bob.ok("POST", "/rooms/"+url.PathEscape(private)+"/receipt/m.read/"+url.PathEscape(root), map[string]any{"thread_id": "main"}, nil)
	bob.ok("PUT", "/presence/"+url.PathEscape(bob.user)+"/status", map[string]any{"presence": "unavailable", "status_msg": "lunch"}, nil)
	alice.ok("PUT", "/user/"+url.PathEscape(alice.user)+"/account_data/org.example.prefs", map[string]any{"theme": "dark"}, nil)
	bob.ok("PUT", "/user/"+url.PathEscape(bob.user)+"/account_data/m.direct", map[string]any{alice.user: []string{direct}}, nil)
	alice.ok("PUT", "/user/"+url.PathEscape(alice.user)+"/rooms/"+url.PathEscape(public)+"/account_data/org.example.draft", map[string]any{"text": "half a thought"}, nil)
	bob.ok("PUT", "/user/"+url.PathEscape(bob.user)+"/rooms/"+url.PathEscape(private)+"/tags/m.favourite", map[string]any{"order": 0.5}, nil)

	// Clients poll /sync: the first poll marks its user online (a fact in
	// the log).
	alice.sinceToken()
	bob.sinceToken()

	return traffic{
		rooms: map[string][]string{
			alice.user: {public, private, direct, left},
			bob.user:   {public, private, direct, left},
		},
		since: since,
	}
}

// answer is one recorded response.
type answer struct {
	request string
	status  int
	body    []byte
}

// recordAnswers reads, for each user, every answer the promise covers.
// Event IDs to ask /event and /context about come from the timelines.
func recordAnswers(t *testing.T, tr traffic, users ...*rebuildClient) []answer {
	t.Helper()
	var out []answer
	get := func(c *rebuildClient, path string) []byte {
		t.Helper()
		st, body := c.raw("GET", path, nil)
		stripped, err := stripClockFields(body)
		if err != nil {
			t.Fatalf("GET %s as %s: %v in %s", path, c.user, err, body)
		}
		out = append(out, answer{request: c.user + " GET " + path, status: st, body: stripped})
		return body
	}
	leaveFilter := url.QueryEscape(`{"room":{"include_leave":true}}`)
	// set_presence=offline: a /sync otherwise records the user's sync
	// activity (at most once a minute), and the recordings must only read.
	const quiet = "set_presence=offline"
	for _, c := range users {
		get(c, "/sync?"+quiet)
		get(c, "/sync?full_state=true&"+quiet)
		get(c, "/sync?filter="+leaveFilter+"&"+quiet)
		get(c, "/sync?since="+tr.since[c.user]+"&"+quiet)
		get(c, "/sync?full_state=true&since="+tr.since[c.user]+"&"+quiet)
		eventIDs := map[string]bool{}
		for _, room := range tr.rooms[c.user] {
			r := "/rooms/" + url.PathEscape(room)
			forward := get(c, r+"/messages?dir=f&limit=100")
			get(c, r+"/messages?dir=b&limit=100")
			// Follow the pagination tokens too: they are answers.
			page := get(c, r+"/messages?dir=b&limit=3")
			var p struct {
				End string `json:"end"`
			}
			if json.Unmarshal(page, &p) == nil && p.End != "" {
				get(c, r+"/messages?dir=b&limit=3&from="+url.QueryEscape(p.End))
			}
			get(c, r+"/state")
			get(c, r+"/members")
			get(c, r+"/joined_members")
			var chunk struct {
				Chunk []struct {
					EventID string `json:"event_id"`
				} `json:"chunk"`
			}
			if err := json.Unmarshal(forward, &chunk); err != nil {
				t.Fatalf("/messages of %s: %v", room, err)
			}
			for _, e := range chunk.Chunk {
				eventIDs[room+"\x00"+e.EventID] = true
			}
		}
		keys := make([]string, 0, len(eventIDs))
		for k := range eventIDs {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		if len(keys) < 20 {
			t.Fatalf("%s sees only %d events in its rooms' timelines", c.user, len(keys))
		}
		for _, k := range keys {
			room, ev, _ := strings.Cut(k, "\x00")
			r := "/rooms/" + url.PathEscape(room)
			get(c, r+"/event/"+url.PathEscape(ev))
			get(c, r+"/context/"+url.PathEscape(ev)+"?limit=4")
		}
	}
	// A recording that is mostly errors would compare equal and prove
	// nothing.
	failed := 0
	for _, a := range out {
		if a.status != http.StatusOK {
			failed++
		}
	}
	if failed > len(out)/10 {
		t.Fatalf("%d of %d recorded requests failed", failed, len(out))
	}
	return out
}

// stripClockFields copies a JSON document byte for byte, leaving out only
// the members whose value is computed from the wall clock at request time:
// "age" in an "unsigned" object, and "last_active_ago" (a presence-only
// field). Whitespace outside strings is refused rather than normalised, so
// that everything kept is compared as written.
func stripClockFields(doc []byte) ([]byte, error) {
	s := &jsonStripper{in: doc}
	out, err := s.value(false)
	if err != nil {
		return nil, err
	}
	if s.pos != len(doc) {
		return nil, fmt.Errorf("unexpected %q at byte %d after the document", doc[s.pos], s.pos)
	}
	return out, nil
}

type jsonStripper struct {
	in  []byte
	pos int
}

func (s *jsonStripper) fail(what string) error {
	if s.pos >= len(s.in) {
		return fmt.Errorf("%s: document ends at byte %d", what, s.pos)
	}
	return fmt.Errorf("%s: unexpected %q at byte %d", what, s.in[s.pos], s.pos)
}

// value returns the rewritten bytes of the value at pos. inUnsigned says
// the value is the "unsigned" member of an object.
func (s *jsonStripper) value(inUnsigned bool) ([]byte, error) {
	if s.pos >= len(s.in) {
		return nil, s.fail("value")
	}
	switch c := s.in[s.pos]; {
	case c == '{':
		return s.object(inUnsigned)
	case c == '[':
		return s.array()
	case c == '"':
		start := s.pos
		if err := s.skipString(); err != nil {
			return nil, err
		}
		return s.in[start:s.pos], nil
	case c == '-' || (c >= '0' && c <= '9') || c == 't' || c == 'f' || c == 'n':
		start := s.pos
		for s.pos < len(s.in) && !bytes.ContainsRune([]byte(",]}"), rune(s.in[s.pos])) {
			if c := s.in[s.pos]; c == ' ' || c == '\n' || c == '\t' || c == '\r' {
				return nil, s.fail("literal")
			}
			s.pos++
		}
		return s.in[start:s.pos], nil
	}
	return nil, s.fail("value")
}

func (s *jsonStripper) skipString() error {
	s.pos++ // opening quote
	for s.pos < len(s.in) {
		switch s.in[s.pos] {
		case '\\':
			s.pos += 2
		case '"':
			s.pos++
			return nil
		default:
			s.pos++
		}
	}
	return s.fail("string")
}

func (s *jsonStripper) object(inUnsigned bool) ([]byte, error) {
	out := []byte{'{'}
	s.pos++
	if s.pos < len(s.in) && s.in[s.pos] == '}' {
		s.pos++
		return append(out, '}'), nil
	}
	kept := 0
	for {
		if s.pos >= len(s.in) || s.in[s.pos] != '"' {
			return nil, s.fail("object key")
		}
		keyStart := s.pos
		if err := s.skipString(); err != nil {
			return nil, err
		}
		key := s.in[keyStart:s.pos]
		if s.pos >= len(s.in) || s.in[s.pos] != ':' {
			return nil, s.fail("colon")
		}
		s.pos++
		v, err := s.value(string(key) == `"unsigned"`)
		if err != nil {
			return nil, err
		}
		drop := (inUnsigned && string(key) == `"age"`) || string(key) == `"last_active_ago"`
		if !drop {
			if kept > 0 {
				out = append(out, ',')
			}
			out = append(out, key...)
			out = append(out, ':')
			out = append(out, v...)
			kept++
		}
		if s.pos >= len(s.in) {
			return nil, s.fail("object")
		}
		switch s.in[s.pos] {
		case ',':
			s.pos++
		case '}':
			s.pos++
			return append(out, '}'), nil
		default:
			return nil, s.fail("object")
		}
	}
}

func (s *jsonStripper) array() ([]byte, error) {
	out := []byte{'['}
	s.pos++
	if s.pos < len(s.in) && s.in[s.pos] == ']' {
		s.pos++
		return append(out, ']'), nil
	}
	for {
		v, err := s.value(false)
		if err != nil {
			return nil, err
		}
		out = append(out, v...)
		if s.pos >= len(s.in) {
			return nil, s.fail("array")
		}
		switch s.in[s.pos] {
		case ',':
			s.pos++
			out = append(out, ',')
		case ']':
			s.pos++
			return append(out, ']'), nil
		default:
			return nil, s.fail("array")
		}
	}
}

// around is the part of body near byte at, for readable failures.
func around(body []byte, at int) []byte {
	return body[max(at-300, 0):min(at+300, len(body))]
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

func TestStripClockFieldsKeepsEverythingElse(t *testing.T) {
	cases := []struct{ in, want string }{
		{`{"unsigned":{"age":12,"transaction_id":"t1"},"age":3}`, `{"unsigned":{"transaction_id":"t1"},"age":3}`},
		{`{"unsigned":{"transaction_id":"t1","age":12}}`, `{"unsigned":{"transaction_id":"t1"}}`},
		{`{"unsigned":{"age":12}}`, `{"unsigned":{}}`},
		{`[{"content":{"presence":"online","last_active_ago":5,"currently_active":true}}]`, `[{"content":{"presence":"online","currently_active":true}}]`},
		{`{"unsigned":{"redacted_because":{"unsigned":{"age":1},"content":{"age":2}}}}`, `{"unsigned":{"redacted_because":{"unsigned":{},"content":{"age":2}}}}`},
		{`{"a":"\"unsigned\":{\"age\":1}","b":[1,-2.5e3,true,null,{}]}`, `{"a":"\"unsigned\":{\"age\":1}","b":[1,-2.5e3,true,null,{}]}`},
	}
	for _, c := range cases {
		got, err := stripClockFields([]byte(c.in))
		if err != nil || string(got) != c.want {
			t.Errorf("stripClockFields(%s) = %s, %v; want %s", c.in, got, err, c.want)
		}
	}
	for _, bad := range []string{`{"a": 1}`, `{"a":1`, `[1,2`, `{"a":1}x`} {
		if _, err := stripClockFields([]byte(bad)); err == nil {
			t.Errorf("stripClockFields(%s) accepted it", bad)
		}
	}
}
