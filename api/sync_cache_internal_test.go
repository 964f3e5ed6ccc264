package api

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"slices"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/crypto/bcrypt"

	"github.com/engram-hs/engram/api/synccache"
	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/projections"
	"github.com/engram-hs/engram/roomwrite"
)

// syncTestServer is the real API over a real log in a temporary
// directory, called in process.
type syncTestServer struct {
	t    *testing.T
	s    *Server
	node *englog.Node
}

func startSyncTestServer(t *testing.T) *syncTestServer {
	t.Helper()
	logger := zerolog.New(io.Discard)
	node, err := englog.Open(englog.Config{Dir: t.TempDir(), Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	eng := projections.NewEngine(node, node.DB(), logger, nil)
	rw, err := roomwrite.New(roomwrite.Config{ServerName: "sync.test", Logger: logger}, node, eng)
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(Config{ServerName: "sync.test", EnableRegistration: true, EnableRegistrationWithoutVerification: true, BcryptCost: bcrypt.MinCost}, Deps{Log: node, Engine: eng, Rooms: rw, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	if err := eng.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		s.Close()
		_ = eng.Close()
		_ = node.Close()
	})
	return &syncTestServer{t: t, s: s, node: node}
}

func (ts *syncTestServer) call(method, path, token string, body, out any) {
	ts.t.Helper()
	var rd io.Reader
	if body != nil {
		raw, _ := json.Marshal(body)
		rd = bytes.NewReader(raw)
	}
	req := httptest.NewRequest(method, path, rd)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	rec := httptest.NewRecorder()
	ts.s.Handler().ServeHTTP(rec, req)
	if rec.Code != http.StatusOK {
		ts.t.Fatalf("%s %s: %d %s", method, path, rec.Code, rec.Body)
	}
	if out != nil {
		if err := json.Unmarshal(rec.Body.Bytes(), out); err != nil {
			ts.t.Fatal(err)
		}
	}
}

type syncTestUser struct {
	token string
	sess  *session
}

func (ts *syncTestServer) register(name string) syncTestUser {
	var r struct {
		AccessToken string `json:"access_token"`
		UserID      string `json:"user_id"`
		DeviceID    string `json:"device_id"`
	}
	ts.call("POST", "/_matrix/client/v3/register", "", map[string]any{"username": name, "password": "pw-" + name, "auth": map[string]string{"type": "m.login.dummy"}}, &r)
	return syncTestUser{r.AccessToken, &session{UserID: r.UserID, DeviceID: r.DeviceID}}
}

// build builds the incremental sync (since, now] twice, with the sync
// cache and without it, and fails unless the two are byte for byte the
// same. It returns the cached build's joined rooms and whether the
// change clock answered (rather than the per-room offsets).
func (ts *syncTestServer) build(u syncTestUser, since uint64, f *syncFilter) (joined []string, resp []byte, clocked bool) {
	ts.t.Helper()
	ctx := context.Background()
	pos := ts.node.LastOffset()
	for _, h := range append(ts.s.syncHandles(), ts.s.notificationsH) {
		if err := h.WaitApplied(ctx, pos); err != nil {
			ts.t.Fatal(err)
		}
	}
	if f == nil {
		f = &syncFilter{}
	}
	now := nowMS()
	cached, _, _, err := ts.s.buildSync(u.sess, f, since, pos, false, syncOptions{}, now)
	if err != nil {
		ts.t.Fatal(err)
	}
	reference, _, _, err := ts.s.buildSync(u.sess, f, since, pos, false, syncOptions{uncached: true}, now)
	if err != nil {
		ts.t.Fatal(err)
	}
	// unsigned.age is the reader's clock minus the event's: the only part
	// of an event that differs between two builds of the same position.
	// The cached build is encoded as /sync sends it, the reference by
	// json.Marshal.
	a := ageRE.ReplaceAll(must(encodeSync(cached)), []byte(`"age":0`))
	b := ageRE.ReplaceAll(must(json.Marshal(reference)), []byte(`"age":0`))
	if !bytes.Equal(a, b) {
		ts.t.Fatalf("the cached build differs from the uncached one:\ncached:   %s\nuncached: %s", a, b)
	}
	for r := range cached["rooms"].(map[string]any)["join"].(map[string]any) {
		joined = append(joined, r)
	}
	slices.Sort(joined)
	ts.s.syncCache.clock.Read(func(v synccache.View) { clocked = v.Covers(since) })
	return joined, a, clocked
}

var ageRE = regexp.MustCompile(`"age":[0-9]+`)

func must(b []byte, err error) []byte {
	if err != nil {
		panic(err)
	}
	return b
}

func path(format string, args ...any) string {
	for i, a := range args {
		if s, ok := a.(string); ok {
			args[i] = url.PathEscape(s)
		}
	}
	return fmt.Sprintf(format, args...)
}

// An incremental sync of a user in 200 rooms after a change in one of
// them (a message, a receipt, typing, room account data, a state change,
// another user's join) returns exactly that room, built from the change
// clock, and the same bytes (device lists included) as the build without
// any cache; a change in
// none of them (global account data, a room they are not in) returns no
// room.
func TestIncrementalSyncCachedMatchesUncached(t *testing.T) {
	ts := startSyncTestServer(t)
	alice, bob := ts.register("alice"), ts.register("bob")
	rooms := make([]string, 200)
	for i := range rooms {
		var r struct {
			RoomID string `json:"room_id"`
		}
		ts.call("POST", "/_matrix/client/v3/createRoom", alice.token, map[string]any{"preset": "public_chat"}, &r)
		rooms[i] = r.RoomID
	}
	var other struct {
		RoomID string `json:"room_id"`
	}
	ts.call("POST", "/_matrix/client/v3/createRoom", bob.token, map[string]any{"preset": "public_chat"}, &other)
	var first struct {
		NextBatch string `json:"next_batch"`
	}
	ts.call("GET", "/_matrix/client/v3/sync?set_presence=offline", alice.token, nil, &first)
	since, err := parseToken(first.NextBatch)
	if err != nil {
		t.Fatal(err)
	}
	bobSince := since
	var lastEvent string
	steps := []struct {
		name   string
		change func()
		want   []string // joined rooms in the response
	}{
		{"nothing", func() {}, nil},
		{"message", func() {
			var r struct {
				EventID string `json:"event_id"`
			}
			ts.call("PUT", path("/_matrix/client/v3/rooms/%s/send/m.room.message/t1", rooms[17]), alice.token, map[string]any{"msgtype": "m.text", "body": "hi <b>&amp;</b> \"é\" \u2028"}, &r) // characters json.Marshal escapes, as encodeSync must
			lastEvent = r.EventID
		}, []string{rooms[17]}},
		{"receipt", func() {
			ts.call("POST", path("/_matrix/client/v3/rooms/%s/receipt/m.read/%s", rooms[17], lastEvent), alice.token, map[string]any{}, nil)
		}, []string{rooms[17]}},
		{"reaction", func() {
			ts.call("PUT", path("/_matrix/client/v3/rooms/%s/send/m.reaction/t6", rooms[17]), alice.token, map[string]any{"m.relates_to": map[string]any{"rel_type": "m.annotation", "event_id": lastEvent, "key": "+1"}}, nil)
		}, []string{rooms[17]}},
		{"an edit", func() {
			ts.call("PUT", path("/_matrix/client/v3/rooms/%s/send/m.room.message/t7", rooms[17]), alice.token, map[string]any{"msgtype": "m.text", "body": "* hi!", "m.new_content": map[string]any{"msgtype": "m.text", "body": "hi!"}, "m.relates_to": map[string]any{"rel_type": "m.replace", "event_id": lastEvent}}, nil)
		}, []string{rooms[17]}},
		{"a redaction", func() {
			var r struct {
				EventID string `json:"event_id"`
			}
			ts.call("PUT", path("/_matrix/client/v3/rooms/%s/send/m.room.message/t8", rooms[18]), alice.token, map[string]any{"msgtype": "m.text", "body": "oops"}, &r)
			ts.call("PUT", path("/_matrix/client/v3/rooms/%s/redact/%s/t9", rooms[18], r.EventID), alice.token, map[string]any{}, nil)
		}, []string{rooms[18]}},
		{"typing", func() {
			ts.call("PUT", path("/_matrix/client/v3/rooms/%s/typing/%s", rooms[42], alice.sess.UserID), alice.token, map[string]any{"typing": true, "timeout": 30000}, nil)
		}, []string{rooms[42]}},
		{"room account data", func() {
			ts.call("PUT", path("/_matrix/client/v3/user/%s/rooms/%s/account_data/org.example.note", alice.sess.UserID, rooms[99]), alice.token, map[string]any{"n": 1}, nil)
		}, []string{rooms[99]}},
		{"global account data", func() {
			ts.call("PUT", path("/_matrix/client/v3/user/%s/account_data/org.example.global", alice.sess.UserID), alice.token, map[string]any{"n": 2}, nil)
		}, nil},
		{"state", func() {
			ts.call("PUT", path("/_matrix/client/v3/rooms/%s/state/m.room.topic/", rooms[150]), alice.token, map[string]any{"topic": "new"}, nil)
		}, []string{rooms[150]}},
		{"a message while the history is shared", func() {
			ts.call("PUT", path("/_matrix/client/v3/rooms/%s/send/m.room.message/t4", rooms[199]), alice.token, map[string]any{"msgtype": "m.text", "body": "shared history"}, nil)
		}, []string{rooms[199]}},
		{"history visibility", func() {
			ts.call("PUT", path("/_matrix/client/v3/rooms/%s/state/m.room.history_visibility/", rooms[199]), alice.token, map[string]any{"history_visibility": "joined"}, nil)
		}, []string{rooms[199]}},
		{"a message before bob joins", func() {
			ts.call("PUT", path("/_matrix/client/v3/rooms/%s/send/m.room.message/t5", rooms[199]), alice.token, map[string]any{"msgtype": "m.text", "body": "before bob"}, nil)
		}, []string{rooms[199]}},
		{"another user joins", func() {
			ts.call("POST", path("/_matrix/client/v3/join/%s", rooms[199]), bob.token, map[string]any{}, nil)
		}, []string{rooms[199]}},
		{"another user talks in the room just joined", func() {
			ts.call("PUT", path("/_matrix/client/v3/rooms/%s/send/m.room.message/t2", rooms[199]), bob.token, map[string]any{"msgtype": "m.text", "body": "hello"}, nil)
		}, []string{rooms[199]}},
		{"a room alice is not in", func() {
			ts.call("PUT", path("/_matrix/client/v3/rooms/%s/send/m.room.message/t3", other.RoomID), bob.token, map[string]any{"msgtype": "m.text", "body": "elsewhere"}, nil)
		}, nil},
		{"another user leaves", func() {
			ts.call("POST", path("/_matrix/client/v3/rooms/%s/leave", rooms[199]), bob.token, map[string]any{}, nil)
		}, []string{rooms[199]}},
		{"alice joins a room", func() {
			ts.call("POST", path("/_matrix/client/v3/join/%s", other.RoomID), alice.token, map[string]any{}, nil)
		}, []string{other.RoomID}},
		{"alice leaves a room", func() {
			ts.call("POST", path("/_matrix/client/v3/rooms/%s/leave", rooms[3]), alice.token, map[string]any{}, nil)
		}, nil},
	}
	for _, st := range steps {
		st.change()
		joined, resp, clocked := ts.build(alice, since, nil)
		if !clocked {
			t.Fatalf("%s: the change clock does not cover token %d", st.name, since)
		}
		if !slices.Equal(joined, st.want) {
			t.Fatalf("%s: joined rooms %v, want %v", st.name, joined, st.want)
		}
		if st.name == "another user joins" {
			if !bytes.Contains(resp, []byte(`"m.joined_member_count":2`)) {
				t.Fatalf("%s: the summary did not count bob: %s", st.name, resp)
			}
			// Bob sees the room from his join, with the message sent while
			// the history was shared and not the one sent after it was
			// closed (history_visibility joined): the cached visibility
			// must have seen the change.
			joined, resp, _ := ts.build(bob, bobSince, nil)
			if !slices.Contains(joined, rooms[199]) || bytes.Contains(resp, []byte("before bob")) || !bytes.Contains(resp, []byte("shared history")) {
				t.Fatalf("bob's sync after joining: rooms %v, %s", joined, resp)
			}
		}
		// Device lists from the hint (the rooms whose members changed):
		// bob's join and leave are news to alice, as without the cache.
		var lists struct {
			DeviceLists struct{ Changed, Left []string } `json:"device_lists"`
		}
		if err := json.Unmarshal(resp, &lists); err != nil {
			t.Fatal(err)
		}
		if st.name == "another user joins" && !slices.Contains(lists.DeviceLists.Changed, bob.sess.UserID) {
			t.Fatalf("%s: device_lists.changed %v lacks bob", st.name, lists.DeviceLists.Changed)
		}
		if st.name == "another user leaves" && !slices.Contains(lists.DeviceLists.Left, bob.sess.UserID) {
			t.Fatalf("%s: device_lists.left %v lacks bob", st.name, lists.DeviceLists.Left)
		}
		if st.name == "alice leaves a room" && !bytes.Contains(resp, []byte(`"leave":{"`+rooms[3])) {
			t.Fatalf("%s: the room is not in the leave section: %s", st.name, resp)
		}
		since = ts.node.LastOffset()
	}
	// An initial sync, whose rooms' summaries and visibility come from the
	// caches the builds above filled, is the uncached one too.
	// Twice: the second from the state the first left in the cache.
	// The edit of the message, whose "nothing relates to it" the
	// "message" step's build kept, is bundled with it now.
	for range 2 {
		joined, resp, _ := ts.build(alice, 0, nil)
		if len(joined) != 200 {
			t.Fatalf("initial sync: %d joined rooms, want 200", len(joined))
		}
		if !bytes.Contains(resp, []byte(`"m.replace":{`)) {
			t.Fatalf("initial sync: the edited message has no bundled edit: %s", resp)
		}
	}
	// A message in a room moves its timeline's start: its cached state
	// must not be served for the new start.
	ts.call("PUT", path("/_matrix/client/v3/rooms/%s/state/m.room.name/", rooms[120]), alice.token, map[string]any{"name": "renamed"}, nil)
	for i := range 12 {
		ts.call("PUT", path("/_matrix/client/v3/rooms/%s/send/m.room.message/late%d", rooms[120], i), alice.token, map[string]any{"msgtype": "m.text", "body": "late"}, nil)
	}
	ts.build(alice, 0, nil)
	// Another client's timeline limit starts the timeline elsewhere at the
	// same position: the cached state is not that start's.
	three := 3
	ts.build(alice, 0, func() *syncFilter { f := &syncFilter{}; f.Room.Timeline = &roomEventFilter{Limit: &three}; return f }())
	// A limited incremental timeline in a room whose state did not change
	// after the token (no state read: the clock says so), then with a
	// state change before the timeline's start, which its state section
	// must carry.
	quiet := ts.node.LastOffset()
	for i := range 12 {
		ts.call("PUT", path("/_matrix/client/v3/rooms/%s/send/m.room.message/quiet%d", rooms[121], i), alice.token, map[string]any{"msgtype": "m.text", "body": "quiet"}, nil)
	}
	if _, resp, clocked := ts.build(alice, quiet, nil); !clocked || !bytes.Contains(resp, []byte(`"limited":true`)) || !bytes.Contains(resp, []byte(`"state":{"events":[]}`)) {
		t.Fatalf("limited sync of a room with quiet state (clocked %v): %s", clocked, resp)
	}
	ts.call("PUT", path("/_matrix/client/v3/rooms/%s/state/m.room.topic/", rooms[121]), alice.token, map[string]any{"topic": "changed"}, nil)
	for i := range 12 {
		ts.call("PUT", path("/_matrix/client/v3/rooms/%s/send/m.room.message/loud%d", rooms[121], i), alice.token, map[string]any{"msgtype": "m.text", "body": "loud"}, nil)
	}
	if _, resp, _ := ts.build(alice, quiet, nil); !bytes.Contains(resp, []byte(`"topic":"changed"`)) {
		t.Fatalf("limited sync after a topic change lacks it in state: %s", resp)
	}
	// The same through /sync itself, from the first token: every room
	// changed above, once.
	var r struct {
		Rooms struct {
			Join map[string]json.RawMessage `json:"join"`
		} `json:"rooms"`
	}
	ts.call("GET", "/_matrix/client/v3/sync?set_presence=offline&timeout=0&since="+url.QueryEscape(first.NextBatch), alice.token, nil, &r)
	if len(r.Rooms.Join) != 9 {
		t.Fatalf("/sync since the first token: %d joined rooms, want 9", len(r.Rooms.Join))
	}
}

// A room's cached state keeps its events' client form, not the events:
// a state event something relates to (its bundled relations need the
// event), a redacted one, one sent with a transaction ID, and a change
// of them, come out of an initial sync as without the cache, from the
// cache filled by another member's sync and from the one it left.
func TestCachedStateMatchesUncached(t *testing.T) {
	ts := startSyncTestServer(t)
	alice, bob := ts.register("alice"), ts.register("bob")
	var room struct {
		RoomID string `json:"room_id"`
	}
	ts.call("POST", "/_matrix/client/v3/createRoom", alice.token, map[string]any{"preset": "public_chat"}, &room)
	ts.call("POST", path("/_matrix/client/v3/join/%s", room.RoomID), bob.token, map[string]any{}, nil)
	var topic, name struct {
		EventID string `json:"event_id"`
	}
	ts.call("PUT", path("/_matrix/client/v3/rooms/%s/state/m.room.topic/", room.RoomID), alice.token, map[string]any{"topic": "referenced"}, &topic)
	ts.call("PUT", path("/_matrix/client/v3/rooms/%s/state/m.room.name/", room.RoomID), alice.token, map[string]any{"name": "to redact"}, &name)
	ts.call("PUT", path("/_matrix/client/v3/rooms/%s/send/m.room.message/ref", room.RoomID), bob.token, map[string]any{"msgtype": "m.text", "body": "about the topic", "m.relates_to": map[string]any{"rel_type": "m.reference", "event_id": topic.EventID}}, nil)
	ts.call("PUT", path("/_matrix/client/v3/rooms/%s/redact/%s/r1", room.RoomID, name.EventID), alice.token, map[string]any{}, nil)
	// The state events fall out of the timeline: the state section
	// carries them.
	send := func(n int) {
		for i := range n {
			ts.call("PUT", path("/_matrix/client/v3/rooms/%s/send/m.room.message/m%d-%d", room.RoomID, n, i), bob.token, map[string]any{"msgtype": "m.text", "body": "later"}, nil)
		}
	}
	send(12)
	stateOf := func(resp []byte) []byte {
		var r struct {
			Rooms struct {
				Join map[string]struct {
					State struct{ Events json.RawMessage } `json:"state"`
				} `json:"join"`
			} `json:"rooms"`
		}
		if err := json.Unmarshal(resp, &r); err != nil {
			t.Fatal(err)
		}
		return r.Rooms.Join[room.RoomID].State.Events
	}
	ts.build(bob, 0, nil)
	for range 2 {
		_, resp, _ := ts.build(alice, 0, nil)
		state := stateOf(resp)
		if !bytes.Contains(state, []byte(`"m.reference":{"chunk":[{"event_id"`)) {
			t.Fatalf("the referenced topic has no bundled reference in the state section: %s", state)
		}
		if !bytes.Contains(state, []byte(`"redacted_because"`)) || bytes.Contains(state, []byte("to redact")) {
			t.Fatalf("the redacted name is not served redacted in the state section: %s", state)
		}
	}
	ts.call("PUT", path("/_matrix/client/v3/rooms/%s/state/m.room.topic/", room.RoomID), alice.token, map[string]any{"topic": "changed"}, nil)
	send(11)
	for range 2 {
		_, resp, _ := ts.build(alice, 0, nil)
		if state := stateOf(resp); !bytes.Contains(state, []byte(`"topic":"changed"`)) || !bytes.Contains(state, []byte(`"prev_content":{"topic":"referenced"}`)) {
			t.Fatalf("the state section lacks the changed topic and what it replaced: %s", state)
		}
	}
	// A redaction of the replaced topic changes the prev_content of the
	// one in the cached state.
	ts.call("PUT", path("/_matrix/client/v3/rooms/%s/redact/%s/r2", room.RoomID, topic.EventID), alice.token, map[string]any{}, nil)
	send(10)
	for range 2 {
		if _, resp, _ := ts.build(alice, 0, nil); bytes.Contains(stateOf(resp), []byte(`"prev_content":{"topic":"referenced"}`)) {
			t.Fatalf("the state section still has the redacted topic as prev_content: %s", stateOf(resp))
		}
	}
}

// A room's state is kept for its members' initial syncs however many
// members it has, within the parts' byte budget: a room of 210 members
// (as in the 1,000-syncer load, where a bound of 200 events had every
// initial sync read each room's state whole) is served from the state the
// first member's sync left, the same as without the cache.
func TestLargeRoomStateCached(t *testing.T) {
	ts := startSyncTestServer(t)
	alice := ts.register("alice")
	var room struct {
		RoomID string `json:"room_id"`
	}
	ts.call("POST", "/_matrix/client/v3/createRoom", alice.token, map[string]any{"preset": "public_chat"}, &room)
	var last syncTestUser
	for i := range 209 {
		last = ts.register(fmt.Sprintf("m%d", i))
		ts.call("POST", path("/_matrix/client/v3/join/%s", room.RoomID), last.token, map[string]any{}, nil)
	}
	ts.build(alice, 0, nil)
	roomAt, _ := ts.s.eventsChangedAt(room.RoomID)
	var cached stateAt
	if _, err := ts.s.syncCache.parts.GetIf(synccache.PartKey{Kind: "state_before", Room: room.RoomID}, roomAt,
		func(v any) bool { cached = v.(stateAt); return true },
		func(any) (any, int, bool, error) { return nil, 0, false, nil }); err != nil {
		t.Fatal(err)
	}
	// The state before the timeline (its last 10 joins) is still more
	// than 200 events.
	if len(cached.evs) <= 200 {
		t.Fatalf("after an initial sync, the room's cached state holds %d events, want more than 200", len(cached.evs))
	}
	for _, e := range cached.evs {
		if e.rec != nil {
			t.Fatalf("the cached state keeps the event %s as read, not its client form", e.id)
		}
	}
	ts.build(last, 0, nil) // from the cache, compared with the uncached build
}

// A source that skips offsets (a rebuilt generation took over) moves the
// clock's horizon past the skipped batch and empties the caches: tokens
// from before it take the uncached path.
func TestClockHorizonAfterSkippedOffsets(t *testing.T) {
	ts := startSyncTestServer(t)
	alice := ts.register("alice")
	var r struct {
		RoomID string `json:"room_id"`
	}
	ts.call("POST", "/_matrix/client/v3/createRoom", alice.token, map[string]any{"preset": "public_chat"}, &r)
	before := ts.node.LastOffset()
	if _, _, clocked := ts.build(alice, before, nil); !clocked {
		t.Fatal("a fresh server's clock does not cover its own tokens")
	}
	if _, err := ts.s.memberships(alice.sess.UserID); err != nil {
		t.Fatal(err)
	}
	reset := false
	ts.s.syncCache.clock.OnReset(func() { reset = true })
	last := before + 1000
	ts.s.syncCache.clock.Note(synccache.Batch{Source: ts.s.roomsH.Name(), First: last - 10, Last: last})
	if !reset {
		t.Fatal("a skipped offset did not reset the caches")
	}
	if _, _, clocked := ts.build(alice, before, nil); clocked {
		t.Fatal("the clock still covers a token from before the skipped offsets")
	}
	var covered bool
	ts.s.syncCache.clock.Read(func(v synccache.View) { covered = v.Covers(last) })
	if !covered {
		t.Fatal("the clock does not cover the tokens after the skipped batch")
	}
}

// A sync that waited for a build slot builds up to what was folded
// meanwhile: with every slot taken, alice's sync (a message already
// waiting for it) reads its position and queues; a second message is
// committed and folded; once the slots free up, the one response carries
// both messages rather than the first alone (the second would have woken
// another sync at once).
func TestSyncBuildTakesWhatWasFoldedWhileWaiting(t *testing.T) {
	ts := startSyncTestServer(t)
	alice := ts.register("alice")
	var room struct {
		RoomID string `json:"room_id"`
	}
	ts.call("POST", "/_matrix/client/v3/createRoom", alice.token, map[string]any{"preset": "private_chat"}, &room)
	var first struct {
		NextBatch string `json:"next_batch"`
	}
	ts.call("GET", "/_matrix/client/v3/sync?set_presence=offline", alice.token, nil, &first)
	send := func(n int) {
		ts.call("PUT", path("/_matrix/client/v3/rooms/%s/send/m.room.message/t%d", room.RoomID, n), alice.token, map[string]any{"msgtype": "m.text", "body": fmt.Sprint("message ", n)}, nil)
	}
	var held []func()
	for range syncBuildSlots() {
		release, err := ts.s.syncCache.builds.acquire(context.Background(), 0)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, release)
	}
	freed := false
	free := func() {
		if !freed {
			freed = true
			for _, release := range held {
				release()
			}
		}
	}
	defer free()
	send(1)
	done := make(chan *httptest.ResponseRecorder)
	go func() {
		req := httptest.NewRequest("GET", "/_matrix/client/v3/sync?set_presence=offline&timeout=10000&since="+url.QueryEscape(first.NextBatch), nil)
		req.Header.Set("Authorization", "Bearer "+alice.token)
		rec := httptest.NewRecorder()
		ts.s.Handler().ServeHTTP(rec, req)
		done <- rec
	}()
	// The sync registers its wake-up right before reading its position,
	// then waits for the projections (caught up) and for a slot: wait
	// until it waits for the slot. (Its registration is no sign: a wake-up
	// from the fold of message 1, alice's own read position, may take it
	// away again before the test looks, and the test then waited forever.)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		q := ts.s.syncCache.builds
		q.mu.Lock()
		waiting := len(q.waiting)
		q.mu.Unlock()
		if waiting > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the sync never waited for a build slot")
		}
	}
	send(2)
	pos := ts.node.LastOffset()
	for _, h := range append(ts.s.syncHandles(), ts.s.notificationsH) {
		if err := h.WaitApplied(context.Background(), pos); err != nil {
			t.Fatal(err)
		}
	}
	free()
	rec := <-done
	if rec.Code != http.StatusOK {
		t.Fatalf("sync: %d %s", rec.Code, rec.Body)
	}
	var resp struct {
		Rooms struct {
			Join map[string]struct {
				Timeline struct {
					Events []struct {
						Content struct {
							Body string `json:"body"`
						} `json:"content"`
					} `json:"events"`
				} `json:"timeline"`
			} `json:"join"`
		} `json:"rooms"`
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &resp); err != nil {
		t.Fatal(err)
	}
	var bodies []string
	for _, e := range resp.Rooms.Join[room.RoomID].Timeline.Events {
		bodies = append(bodies, e.Content.Body)
	}
	if !slices.Equal(bodies, []string{"message 1", "message 2"}) {
		t.Errorf("timeline of the sync that waited for a slot = %q, want both messages", bodies)
	}
}

// appendJSONString gives json.Marshal's bytes for every string, those it
// quotes as they are and those that need escapes.
func TestAppendJSONString(t *testing.T) {
	for _, s := range []string{"", "join", "m1234.5", `a"b`, `back\slash`, "<b>&", "tab\there", "\x00", "é", "\u2028", string([]byte{0xff})} {
		if got, want := appendJSONString([]byte("x"), s), append([]byte("x"), must(json.Marshal(s))...); !bytes.Equal(got, want) {
			t.Errorf("%q: %s, want %s", s, got, want)
		}
	}
}

// heroes merges the joined and invited lists (each in state key order)
// into what sorting them together gave: the first five but the reader.
func TestHeroesAsSortedTogether(t *testing.T) {
	cases := []struct{ joined, invited []string }{
		{nil, nil},
		{[]string{"@a:x"}, nil},
		{[]string{"@b:x", "@d:x", "@f:x", "@h:x", "@j:x", "@l:x"}, []string{"@a:x", "@c:x", "@e:x"}},
		{[]string{"@m:x", "@n:x"}, []string{"@a:x", "@b:x", "@c:x", "@d:x", "@e:x", "@f:x"}},
		{[]string{"@a:x", "@b:x", "@c:x", "@d:x", "@e:x", "@f:x", "@g:x"}, []string{"@z:x"}},
	}
	for _, c := range cases {
		all := append(slices.Clone(c.joined), c.invited...)
		slices.Sort(all)
		for _, self := range append(slices.Clone(all), "@none:x") {
			want := []string{}
			for _, u := range all {
				if u != self && len(want) < 5 {
					want = append(want, u)
				}
			}
			if got := heroes(c.joined, c.invited, self); !slices.Equal(got, want) {
				t.Fatalf("heroes(%v, %v, %s) = %v, want %v", c.joined, c.invited, self, got, want)
			}
		}
	}
}

// An incremental build's presence carries the changed users who share a
// joined room with the reader, and no one else, the same as without the
// cache: asked about fewer users than the reader's rooms (their
// memberships) and about more (the rooms' member lists).
func TestPresenceOfChangedUsersSharingARoom(t *testing.T) {
	ts := startSyncTestServer(t)
	alice, bob, carol, dave := ts.register("alice"), ts.register("bob"), ts.register("carol"), ts.register("dave")
	room := func(members ...syncTestUser) {
		var r struct {
			RoomID string `json:"room_id"`
		}
		ts.call("POST", "/_matrix/client/v3/createRoom", alice.token, map[string]any{"preset": "public_chat"}, &r)
		for _, u := range members {
			ts.call("POST", path("/_matrix/client/v3/join/%s", r.RoomID), u.token, map[string]any{}, nil)
		}
	}
	room(bob)
	room(dave)
	var elsewhere struct {
		RoomID string `json:"room_id"`
	}
	ts.call("POST", "/_matrix/client/v3/createRoom", carol.token, map[string]any{"preset": "public_chat"}, &elsewhere)
	setPresence := func(u syncTestUser, status string) {
		ts.call("PUT", path("/_matrix/client/v3/presence/%s/status", u.sess.UserID), u.token, map[string]any{"presence": "online", "status_msg": status}, nil)
	}
	for _, st := range []struct {
		name    string
		changed []syncTestUser
		want    []string
	}{
		{"one changed user", []syncTestUser{bob}, []string{bob.sess.UserID}},
		{"more changed users than rooms", []syncTestUser{bob, carol, dave}, []string{bob.sess.UserID, dave.sess.UserID}},
	} {
		since := ts.node.LastOffset()
		for _, u := range st.changed {
			setPresence(u, st.name)
		}
		_, resp, _ := ts.build(alice, since, nil) // fails unless the same as uncached
		var r struct {
			Presence struct {
				Events []struct{ Sender string } `json:"events"`
			} `json:"presence"`
		}
		if err := json.Unmarshal(resp, &r); err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, e := range r.Presence.Events {
			got = append(got, e.Sender)
		}
		if !slices.Equal(got, st.want) {
			t.Fatalf("%s: presence of %v, want %v", st.name, got, st.want)
		}
	}
}
