package api_test

import (
	"context"
	"net/url"
	"slices"
	"strings"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// TestFilterRefusesMalformedIDs: a filter naming rooms or senders by
// something that is not a room or user ID is refused with 400, and a
// well-formed one is still stored.
func TestFilterRefusesMalformedIDs(t *testing.T) {
	ts := startServer(t)
	alice := ts.register("alice")
	path := "/_matrix/client/v3/user/" + alice.UserID.String() + "/filter"
	for _, f := range []map[string]any{
		{"room": map[string]any{"timeline": map[string]any{"rooms": []string{"not_a_room_id"}}}},
		{"room": map[string]any{"timeline": map[string]any{"senders": []string{"not_a_sender_id"}}}},
		{"room": map[string]any{"state": map[string]any{"not_senders": []string{"@nohost"}}}},
		{"room": map[string]any{"not_rooms": []string{"#alias:example.org"}}},
		{"presence": map[string]any{"senders": []string{"!room:example.org"}}},
	} {
		if code, body := ts.do("POST", path, alice.AccessToken, f); code != 400 || body["errcode"] != "M_INVALID_PARAM" {
			t.Errorf("filter %v: %d %v, want 400 M_INVALID_PARAM", f, code, body)
		}
	}
	ok := map[string]any{"room": map[string]any{
		"rooms":    []string{"!abc:example.org"},
		"timeline": map[string]any{"senders": []string{alice.UserID.String()}, "not_rooms": []string{"!def:example.org"}},
	}}
	if code, body := ts.do("POST", path, alice.AccessToken, ok); code != 200 || body["filter_id"] == nil {
		t.Errorf("a well-formed filter: %d %v, want 200 with filter_id", code, body)
	}
}

// TestInvalidUTF8IsNotJSON: a body with invalid UTF-8 is refused as
// M_NOT_JSON before /register looks at authentication.
func TestInvalidUTF8IsNotJSON(t *testing.T) {
	ts := startServer(t)
	if code, body := ts.do("POST", "/_matrix/client/v3/register", "", []byte("{ \"test\":\"a\x81\" }")); code != 400 || body["errcode"] != "M_NOT_JSON" {
		t.Errorf("invalid UTF-8 to /register: %d %v, want 400 M_NOT_JSON", code, body)
	}
	if code, body := ts.do("POST", "/_matrix/client/v3/register", "", []byte(`{"test":"a\u00e9"}`)); code != 401 || body["flows"] == nil {
		t.Errorf("valid UTF-8 to /register: %d %v, want 401 with flows", code, body)
	}
}

// TestForgottenRoomIsNotReadable: after leaving and forgetting a room the
// user reads it as someone who was never in it: /messages (even without
// its parameters), /state and /members are 403, while a left but not
// forgotten room stays readable up to the leave. An incremental /sync
// across the leave still shows it in rooms.leave; an initial one does not.
func TestForgottenRoomIsNotReadable(t *testing.T) {
	ts := startServer(t)
	alice, bob := ts.register("alice"), ts.register("bob")
	room := createRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	if _, err := bob.JoinRoomByID(context.Background(), room); err != nil {
		t.Fatal(err)
	}
	say(t, bob, room, "hello")
	before := ts.rawSync(bob, nil)["next_batch"].(string)
	if _, err := bob.LeaveRoom(context.Background(), room); err != nil {
		t.Fatal(err)
	}
	p := "/_matrix/client/v3/rooms/" + url.PathEscape(room.String())
	if code, body := ts.do("GET", p+"/messages?dir=b", bob.AccessToken, nil); code != 200 || len(body["chunk"].([]any)) == 0 {
		t.Fatalf("a left room's /messages: %d %v, want 200 with the history", code, body)
	}
	if code, body := ts.do("POST", p+"/forget", bob.AccessToken, map[string]any{}); code != 200 {
		t.Fatalf("forget: %d %v", code, body)
	}
	leftIn := func(body map[string]any) bool {
		rooms, _ := body["rooms"].(map[string]any)
		leave, _ := rooms["leave"].(map[string]any)
		return leave[room.String()] != nil
	}
	includeLeave := `{"room":{"include_leave":true}}`
	if !leftIn(ts.rawSync(bob, url.Values{"since": {before}, "filter": {includeLeave}})) {
		t.Error("the incremental /sync across the leave does not show the forgotten room in rooms.leave")
	}
	if leftIn(ts.rawSync(bob, url.Values{"filter": {includeLeave}})) {
		t.Error("an initial /sync with include_leave shows the forgotten room")
	}
	for _, path := range []string{"/messages", "/messages?dir=b", "/state", "/members", "/state/m.room.create/"} {
		if code, body := ts.do("GET", p+path, bob.AccessToken, nil); code != 403 || body["errcode"] != "M_FORBIDDEN" {
			t.Errorf("GET %s after forgetting: %d %v, want 403 M_FORBIDDEN", path, code, body)
		}
	}
	if code, body := ts.do("POST", p+"/forget", alice.AccessToken, map[string]any{}); code != 400 || body["errcode"] != "M_UNKNOWN" {
		t.Errorf("forgetting a joined room: %d %v, want 400 M_UNKNOWN", code, body)
	}
}

// TestJoinedMembersKeys: every member of /joined_members has both
// display_name and avatar_url, null where the member has none.
func TestJoinedMembersKeys(t *testing.T) {
	ts := startServer(t)
	alice := ts.register("alice")
	room := createRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	code, body := ts.do("GET", "/_matrix/client/v3/rooms/"+url.PathEscape(room.String())+"/joined_members", alice.AccessToken, nil)
	joined, _ := body["joined"].(map[string]any)
	me, _ := joined[alice.UserID.String()].(map[string]any)
	if code != 200 || me == nil {
		t.Fatalf("joined_members: %d %v", code, body)
	}
	if av, ok := me["avatar_url"]; !ok || av != nil {
		t.Errorf("avatar_url of a member without one: %v (present %v), want null", av, ok)
	}
	if me["display_name"] != "alice" {
		t.Errorf("display_name: %v, want alice", me["display_name"])
	}
}

// TestCanonicalAliasChecked: m.room.canonical_alias names only valid
// aliases (400 M_INVALID_PARAM) that point to the room (400 M_BAD_ALIAS);
// an alias of the room is accepted, as alias and in alt_aliases.
func TestCanonicalAliasChecked(t *testing.T) {
	ts := startServer(t)
	alice := ts.register("alice")
	room1 := createRoom(t, alice, &mautrix.ReqCreateRoom{})
	room2 := createRoom(t, alice, &mautrix.ReqCreateRoom{})
	alias := func(a string) string { return "#" + a + ":" + serverName }
	for a, room := range map[string]string{"one": room1.String(), "two": room2.String()} {
		if code, body := ts.do("PUT", "/_matrix/client/v3/directory/room/"+url.PathEscape(alias(a)), alice.AccessToken, map[string]any{"room_id": room}); code != 200 {
			t.Fatalf("alias %s: %d %v", a, code, body)
		}
	}
	put := func(content map[string]any) (int, map[string]any) {
		return ts.do("PUT", "/_matrix/client/v3/rooms/"+url.PathEscape(room2.String())+"/state/m.room.canonical_alias/", alice.AccessToken, content)
	}
	for _, c := range []struct {
		content map[string]any
		code    int
		errcode string
	}{
		{map[string]any{"alias": alias("two")}, 200, ""},
		{map[string]any{"alias": alias("two"), "alt_aliases": []string{alias("two")}}, 200, ""},
		{map[string]any{"alias": alias("one")}, 400, "M_BAD_ALIAS"},
		{map[string]any{"alias": alias("nowhere")}, 400, "M_BAD_ALIAS"},
		{map[string]any{"alias": alias("two"), "alt_aliases": []string{alias("one")}}, 400, "M_BAD_ALIAS"},
		{map[string]any{"alias": alias("two"), "alt_aliases": []string{"%not_an_alias:" + serverName}}, 400, "M_INVALID_PARAM"},
		{map[string]any{"alias": "#no-server"}, 400, "M_INVALID_PARAM"},
		{map[string]any{"alias": 7}, 400, "M_INVALID_PARAM"},
		{map[string]any{}, 200, ""},
	} {
		code, body := put(c.content)
		if code != c.code || (c.errcode != "" && body["errcode"] != c.errcode) {
			t.Errorf("canonical alias %v: %d %v, want %d %s", c.content, code, body, c.code, c.errcode)
		}
	}
	if code, body := ts.do("PUT", "/_matrix/client/v3/directory/room/"+url.PathEscape("#has space:"+serverName), alice.AccessToken, map[string]any{"room_id": room1.String()}); code != 400 || body["errcode"] != "M_INVALID_PARAM" {
		t.Errorf("an alias with a space: %d %v, want 400 M_INVALID_PARAM", code, body)
	}
}

// TestDeleteDeviceAuthAsOtherUser: deleting one's device with another
// user's valid credentials is a final 403 and the device stays; a wrong
// password is challenged again (401); the owner's own password deletes it.
func TestDeleteDeviceAuthAsOtherUser(t *testing.T) {
	ts := startServer(t)
	ts.register("alice")
	ts.register("bob")
	alice, second := ts.login("alice"), ts.login("alice")
	path := "/_matrix/client/v3/devices/" + url.PathEscape(second.DeviceID.String())
	auth := func(user, pw string) map[string]any {
		return map[string]any{"auth": map[string]any{"type": "m.login.password", "password": pw,
			"identifier": map[string]any{"type": "m.id.user", "user": user}}}
	}
	if code, body := ts.do("DELETE", path, alice.AccessToken, auth(uid("bob").String(), "pw-bob")); code != 403 || body["errcode"] != "M_FORBIDDEN" || body["flows"] != nil {
		t.Errorf("with bob's credentials: %d %v, want a plain 403 M_FORBIDDEN", code, body)
	}
	if code, body := ts.do("DELETE", path, alice.AccessToken, auth(uid("bob").String(), "wrong")); code != 401 || body["flows"] == nil {
		t.Errorf("with a wrong password: %d %v, want 401 with flows", code, body)
	}
	if code, body := ts.do("GET", path, alice.AccessToken, nil); code != 200 {
		t.Fatalf("the device after refused deletions: %d %v, want it still there", code, body)
	}
	if code, body := ts.do("DELETE", path, alice.AccessToken, auth("alice", "pw-alice")); code != 200 {
		t.Errorf("with alice's own password: %d %v, want 200", code, body)
	}
	if code, _ := ts.do("GET", path, alice.AccessToken, nil); code != 404 {
		t.Errorf("the deleted device: %d, want 404", code)
	}
}

// TestJoinKeepsCustomContent: custom keys of a /join body land in the
// membership event; membership and join_authorised_via_users_server stay
// the server's.
func TestJoinKeepsCustomContent(t *testing.T) {
	ts := startServer(t)
	alice, bob := ts.register("alice"), ts.register("bob")
	room := createRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	body := map[string]any{"foo": "bar", "membership": "leave", "reason": "hi", "join_authorised_via_users_server": alice.UserID}
	if code, resp := ts.do("POST", "/_matrix/client/v3/join/"+url.PathEscape(room.String()), bob.AccessToken, body); code != 200 || resp["room_id"] != room.String() {
		t.Fatalf("join: %d %v", code, resp)
	}
	code, c := ts.do("GET", "/_matrix/client/v3/rooms/"+url.PathEscape(room.String())+"/state/m.room.member/"+url.PathEscape(bob.UserID.String()), alice.AccessToken, nil)
	if code != 200 || c["foo"] != "bar" || c["membership"] != "join" || c["reason"] != "hi" || c["join_authorised_via_users_server"] != nil || c["displayname"] != "bob" {
		t.Errorf("bob's membership content: %d %v, want foo=bar, membership join, reason hi, his display name, no authoriser", code, c)
	}
	if code, resp := ts.do("POST", "/_matrix/client/v3/join/"+url.PathEscape(room.String()), bob.AccessToken, map[string]any{"reason": 5}); code != 400 {
		t.Errorf("a non-string reason: %d %v, want 400", code, resp)
	}
}

// TestTxnScopedToRequestPath: a transaction ID is scoped to the device and
// the request path: a retry in the same room answers the first event even
// with new content, while the same ID in another room, for another event
// type or redacting another event is a new event. The sender's copy
// echoes the ID as the client sent it.
func TestTxnScopedToRequestPath(t *testing.T) {
	ts := startServer(t)
	alice := ts.register("alice")
	room1 := createRoom(t, alice, &mautrix.ReqCreateRoom{})
	room2 := createRoom(t, alice, &mautrix.ReqCreateRoom{})
	send := func(room id.RoomID, path string, body map[string]any) string {
		t.Helper()
		code, resp := ts.do("PUT", "/_matrix/client/v3/rooms/"+url.PathEscape(room.String())+path, alice.AccessToken, body)
		id, _ := resp["event_id"].(string)
		if code != 200 || id == "" {
			t.Fatalf("PUT %s: %d %v", path, code, resp)
		}
		return id
	}
	msg := func(b string) map[string]any { return map[string]any{"msgtype": "m.text", "body": b} }
	first := send(room1, "/send/m.room.message/abc", msg("first"))
	if again := send(room1, "/send/m.room.message/abc", msg("second")); again != first {
		t.Errorf("a retry in the same room answered %s, want %s", again, first)
	}
	other := send(room2, "/send/m.room.message/abc", msg("first"))
	otherType := send(room1, "/send/org.example.note/abc", msg("note"))
	if other == first || otherType == first || other == otherType {
		t.Errorf("the same txn ID in another room (%s) or for another type (%s) reused %s", other, otherType, first)
	}
	r1 := send(room1, "/redact/"+url.PathEscape(first)+"/abc", map[string]any{})
	r2 := send(room1, "/redact/"+url.PathEscape(otherType)+"/abc", map[string]any{})
	if r1 == r2 || r1 == first || send(room1, "/redact/"+url.PathEscape(first)+"/abc", map[string]any{}) != r1 {
		t.Errorf("redactions with one txn ID: %s and %s (retry must answer the first)", r1, r2)
	}
	code, ev := ts.do("GET", "/_matrix/client/v3/rooms/"+url.PathEscape(room1.String())+"/event/"+url.PathEscape(r1), alice.AccessToken, nil)
	unsigned, _ := ev["unsigned"].(map[string]any)
	if code != 200 || unsigned["transaction_id"] != "abc" {
		t.Errorf("the redaction's unsigned: %d %v, want transaction_id abc", code, unsigned)
	}
}

// TestSettingStateTwiceIsIdempotent: setting a state event to what its
// sender already set it to answers the same event; new content is a new
// event, and so is setting it back.
func TestSettingStateTwiceIsIdempotent(t *testing.T) {
	ts := startServer(t)
	alice := ts.register("alice")
	room := createRoom(t, alice, &mautrix.ReqCreateRoom{})
	put := func(content map[string]any) string {
		t.Helper()
		code, resp := ts.do("PUT", "/_matrix/client/v3/rooms/"+url.PathEscape(room.String())+"/state/org.example.state/", alice.AccessToken, content)
		if code != 200 {
			t.Fatalf("PUT state: %d %v", code, resp)
		}
		return resp["event_id"].(string)
	}
	first := put(map[string]any{"a": 1, "b": "x"})
	if again := put(map[string]any{"b": "x", "a": 1}); again != first {
		t.Errorf("the same state again answered %s, want %s", again, first)
	}
	second := put(map[string]any{"a": 2})
	third := put(map[string]any{"a": 1, "b": "x"})
	if second == first || third == first || third == second {
		t.Errorf("changed state reused an event: %s %s %s", first, second, third)
	}
}

// TestDeletingAliasUpdatesCanonicalAlias: deleting an alias takes it out
// of the room's m.room.canonical_alias, as alias and in alt_aliases.
func TestDeletingAliasUpdatesCanonicalAlias(t *testing.T) {
	ts := startServer(t)
	alice := ts.register("alice")
	room := createRoom(t, alice, &mautrix.ReqCreateRoom{})
	one, two := "#one:"+serverName, "#two:"+serverName
	for _, a := range []string{one, two} {
		if code, body := ts.do("PUT", "/_matrix/client/v3/directory/room/"+url.PathEscape(a), alice.AccessToken, map[string]any{"room_id": room.String()}); code != 200 {
			t.Fatalf("alias %s: %d %v", a, code, body)
		}
	}
	state := "/_matrix/client/v3/rooms/" + url.PathEscape(room.String()) + "/state/m.room.canonical_alias/"
	if code, body := ts.do("PUT", state, alice.AccessToken, map[string]any{"alias": one, "alt_aliases": []string{one, two}}); code != 200 {
		t.Fatalf("canonical alias: %d %v", code, body)
	}
	del := func(a string) {
		t.Helper()
		if code, body := ts.do("DELETE", "/_matrix/client/v3/directory/room/"+url.PathEscape(a), alice.AccessToken, nil); code != 200 {
			t.Fatalf("delete %s: %d %v", a, code, body)
		}
	}
	del(one)
	code, c := ts.do("GET", state, alice.AccessToken, nil)
	if alt, _ := c["alt_aliases"].([]any); code != 200 || c["alias"] != nil || len(alt) != 1 || alt[0] != two {
		t.Errorf("after deleting %s: %d %v, want only alt_aliases [%s]", one, code, c, two)
	}
	del(two)
	if code, c = ts.do("GET", state, alice.AccessToken, nil); code != 200 || len(c) != 0 {
		t.Errorf("after deleting both: %d %v, want {}", code, c)
	}
}

// TestIgnoredUsers: with bob in alice's m.ignored_user_list, his invites
// never reach her /sync and his messages are missing from her timeline
// and /messages, while his state events (a new display name) still arrive; carol's invite and
// messages do. Once he is no longer ignored, his new messages arrive.
func TestIgnoredUsers(t *testing.T) {
	ts := startServer(t)
	ctx := context.Background()
	alice, bob, carol := ts.register("alice"), ts.register("bob"), ts.register("carol")
	shared := createRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	for _, c := range []*mautrix.Client{bob, carol} {
		if _, err := c.JoinRoomByID(ctx, shared); err != nil {
			t.Fatal(err)
		}
	}
	ignore := func(users map[string]any) {
		t.Helper()
		if code, body := ts.do("PUT", "/_matrix/client/v3/user/"+url.PathEscape(alice.UserID.String())+"/account_data/m.ignored_user_list", alice.AccessToken, map[string]any{"ignored_users": users}); code != 200 {
			t.Fatalf("ignore: %d %v", code, body)
		}
	}
	ignore(map[string]any{bob.UserID.String(): map[string]any{}})
	since := ts.rawSync(alice, nil)["next_batch"].(string)
	bobRoom := createRoom(t, bob, &mautrix.ReqCreateRoom{Preset: "private_chat", Invite: []id.UserID{alice.UserID}})
	carolRoom := createRoom(t, carol, &mautrix.ReqCreateRoom{Preset: "private_chat", Invite: []id.UserID{alice.UserID}})
	say(t, bob, shared, "from bob")
	say(t, carol, shared, "from carol")
	if err := bob.SetDisplayName(ctx, "Bobby"); err != nil { // a new m.room.member event
		t.Fatal(err)
	}
	bodies := func(evs []any) (out []string) {
		for _, e := range evs {
			e := e.(map[string]any)
			c, _ := e["content"].(map[string]any)
			if b, ok := c["body"].(string); ok {
				out = append(out, b)
			}
			if n, ok := c["displayname"].(string); ok && e["type"] == "m.room.member" {
				out = append(out, "member:"+n)
			}
		}
		return out
	}
	for name, params := range map[string]url.Values{"initial": nil, "incremental": {"since": {since}}} {
		body := ts.rawSync(alice, params)
		rooms := body["rooms"].(map[string]any)
		invites, _ := rooms["invite"].(map[string]any)
		if invites[bobRoom.String()] != nil || invites[carolRoom.String()] == nil {
			t.Errorf("%s /sync invites: %v, want carol's room %s and not bob's %s", name, invites, carolRoom, bobRoom)
		}
		tl := joinedRoom(t, body, shared)["timeline"].(map[string]any)["events"].([]any)
		got := strings.Join(bodies(tl), "|")
		if strings.Contains(got, "from bob") || !strings.Contains(got, "from carol") || !strings.Contains(got, "member:Bobby") {
			t.Errorf("%s /sync timeline: %q, want carol's message and bob's new membership, not bob's message", name, got)
		}
	}
	code, msgs := ts.do("GET", "/_matrix/client/v3/rooms/"+url.PathEscape(shared.String())+"/messages?dir=b&limit=50", alice.AccessToken, nil)
	if got := strings.Join(bodies(msgs["chunk"].([]any)), "|"); code != 200 || strings.Contains(got, "from bob") || !strings.Contains(got, "from carol") || !strings.Contains(got, "member:Bobby") {
		t.Errorf("/messages: %d %q, want carol's message and bob's new membership, not bob's message", code, got)
	}
	ignore(map[string]any{})
	since = ts.rawSync(alice, nil)["next_batch"].(string)
	say(t, bob, shared, "bob again")
	tl := joinedRoom(t, ts.rawSync(alice, url.Values{"since": {since}}), shared)["timeline"].(map[string]any)["events"].([]any)
	if got := strings.Join(bodies(tl), "|"); !strings.Contains(got, "bob again") {
		t.Errorf("after un-ignoring, the timeline is %q, want bob's new message", got)
	}
}

// TestPresenceOfNewlySharedUsers: an incremental /sync carries the
// presence of users who began to share a room with the syncing user
// since the token, although it was set before: the room's members for a
// user who joins, the joiner for the members already there. The next
// incremental /sync does not repeat it.
func TestPresenceOfNewlySharedUsers(t *testing.T) {
	ts := startServer(t)
	ctx := context.Background()
	alice, bob := ts.register("alice"), ts.register("bob")
	for _, c := range []*mautrix.Client{alice, bob} {
		if err := c.SetPresence(ctx, mautrix.ReqPresence{Presence: event.PresenceOnline, StatusMsg: "here"}); err != nil {
			t.Fatal(err)
		}
	}
	room := createRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	sync := func(c *mautrix.Client, since string) (string, []string) {
		body := ts.rawSync(c, url.Values{"since": {since}})
		var senders []string
		if p, ok := body["presence"].(map[string]any); ok {
			for _, e := range p["events"].([]any) {
				senders = append(senders, e.(map[string]any)["sender"].(string))
			}
		}
		return body["next_batch"].(string), senders
	}
	aliceSince := ts.rawSync(alice, nil)["next_batch"].(string)
	bobSince := ts.rawSync(bob, nil)["next_batch"].(string)
	if _, err := bob.JoinRoomByID(ctx, room); err != nil {
		t.Fatal(err)
	}
	var got []string
	if bobSince, got = sync(bob, bobSince); !slices.Contains(got, alice.UserID.String()) {
		t.Errorf("bob's incremental /sync after joining: presence of %v, want alice's", got)
	}
	if aliceSince, got = sync(alice, aliceSince); !slices.Contains(got, bob.UserID.String()) {
		t.Errorf("alice's incremental /sync after bob joined: presence of %v, want bob's", got)
	}
	if _, got = sync(bob, bobSince); slices.Contains(got, alice.UserID.String()) {
		t.Errorf("bob's next incremental /sync repeats alice's presence: %v", got)
	}
	if _, got = sync(alice, aliceSince); slices.Contains(got, bob.UserID.String()) {
		t.Errorf("alice's next incremental /sync repeats bob's presence: %v", got)
	}
}

// TestMembersAt: /members?at= answers the members as of a /sync or
// pagination token: bob, who joined later, is not among them.
func TestMembersAt(t *testing.T) {
	ts := startServer(t)
	alice, bob := ts.register("alice"), ts.register("bob")
	room := createRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	say(t, alice, room, "hello")
	body := ts.rawSync(alice, url.Values{"filter": {`{"room":{"timeline":{"limit":1}}}`}})
	next := body["next_batch"].(string)
	prev := joinedRoom(t, body, room)["timeline"].(map[string]any)["prev_batch"].(string)
	// A first /sync whose timeline holds the whole room (Complement's
	// TestGetRoomMembersAtPoint): its prev_batch is a point with members,
	// the sync's own position as Synapse gives it, not before the create.
	full := joinedRoom(t, ts.rawSync(alice, nil), room)["timeline"].(map[string]any)
	if full["limited"] != false {
		t.Fatalf("the default timeline of a room of 6 events is limited: %v", full)
	}
	fullPrev := full["prev_batch"].(string)
	if _, err := bob.JoinRoomByID(context.Background(), room); err != nil {
		t.Fatal(err)
	}
	say(t, bob, room, "hello back")
	members := func(query string) []string {
		t.Helper()
		code, resp := ts.do("GET", "/_matrix/client/v3/rooms/"+url.PathEscape(room.String())+"/members"+query, alice.AccessToken, nil)
		if code != 200 {
			t.Fatalf("members%s: %d %v", query, code, resp)
		}
		var out []string
		for _, e := range resp["chunk"].([]any) {
			out = append(out, e.(map[string]any)["state_key"].(string))
		}
		slices.Sort(out)
		return out
	}
	for _, tok := range []string{next, prev, fullPrev} {
		if got := members("?at=" + url.QueryEscape(tok)); !slices.Equal(got, []string{alice.UserID.String()}) {
			t.Errorf("members at %s: %v, want only alice", tok, got)
		}
	}
	if got := members(""); len(got) != 2 {
		t.Errorf("members now: %v, want alice and bob", got)
	}
	if code, _ := ts.do("GET", "/_matrix/client/v3/rooms/"+url.PathEscape(room.String())+"/members?at=nonsense", alice.AccessToken, nil); code != 400 {
		t.Errorf("members at a malformed token: %d, want 400", code)
	}
}

// TestUnsignedMembership: events served to a reader carry their
// membership at the event (unsigned.membership): leave before they
// joined, join from their join on, in /sync, /messages and /event alike.
func TestUnsignedMembership(t *testing.T) {
	ts := startServer(t)
	alice, bob := ts.register("alice"), ts.register("bob")
	room := createRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	pre := say(t, alice, room, "prejoin")
	if _, err := bob.JoinRoomByID(context.Background(), room); err != nil {
		t.Fatal(err)
	}
	post := say(t, alice, room, "postjoin")
	check := func(where string, evs []any) {
		t.Helper()
		seenJoin := false
		for _, e := range evs {
			e := e.(map[string]any)
			if e["type"] == "m.room.member" && e["state_key"] == bob.UserID.String() {
				seenJoin = true
			}
			want := "leave"
			if seenJoin {
				want = "join"
			}
			if got := e["unsigned"].(map[string]any)["membership"]; got != want {
				t.Errorf("%s: %s %v has unsigned.membership %v, want %s", where, e["type"], e["event_id"], got, want)
			}
		}
		if !seenJoin {
			t.Errorf("%s: bob's join is missing", where)
		}
	}
	check("/sync", joinedRoom(t, ts.rawSync(bob, nil), room)["timeline"].(map[string]any)["events"].([]any))
	_, msgs := ts.do("GET", "/_matrix/client/v3/rooms/"+url.PathEscape(room.String())+"/messages?dir=f&limit=50", bob.AccessToken, nil)
	check("/messages", msgs["chunk"].([]any))
	for id, want := range map[id.EventID]string{pre: "leave", post: "join"} {
		_, ev := ts.do("GET", "/_matrix/client/v3/rooms/"+url.PathEscape(room.String())+"/event/"+url.PathEscape(id.String()), bob.AccessToken, nil)
		if got := ev["unsigned"].(map[string]any)["membership"]; got != want {
			t.Errorf("/event %s: unsigned.membership %v, want %s", id, got, want)
		}
	}
}

// TestRejectedInviteInLeave: an invitee who rejects an invite sees the
// room in rooms.leave of their next incremental /sync with their leave in
// its timeline, in a "joined"-visibility room too.
func TestRejectedInviteInLeave(t *testing.T) {
	ts := startServer(t)
	alice, bob := ts.register("alice"), ts.register("bob")
	for _, hv := range []string{"joined", "shared"} {
		room := createRoom(t, bob, &mautrix.ReqCreateRoom{Preset: "private_chat", InitialState: []*event.Event{{
			Type: event.StateHistoryVisibility, StateKey: new(string), Content: event.Content{Raw: map[string]any{"history_visibility": hv}},
		}}})
		since := ts.rawSync(alice, nil)["next_batch"].(string)
		if _, err := bob.InviteUser(context.Background(), room, &mautrix.ReqInviteUser{UserID: alice.UserID}); err != nil {
			t.Fatal(err)
		}
		if _, err := alice.LeaveRoom(context.Background(), room); err != nil {
			t.Fatal(err)
		}
		body := ts.rawSync(alice, url.Values{"since": {since}})
		lr, _ := body["rooms"].(map[string]any)["leave"].(map[string]any)[room.String()].(map[string]any)
		found := false
		if lr != nil {
			for _, e := range lr["timeline"].(map[string]any)["events"].([]any) {
				e := e.(map[string]any)
				c, _ := e["content"].(map[string]any)
				found = found || (e["type"] == "m.room.member" && e["state_key"] == alice.UserID.String() && c["membership"] == "leave")
			}
		}
		if !found {
			t.Errorf("%s room: alice's incremental /sync after rejecting has rooms.leave %v, want her leave in the timeline", hv, lr)
		}
	}
}

// TestV12CreatorsAndLevels: in a room version 12 room the default
// tombstone level is 150; power levels naming a creator are 400; bad
// additional_creators are 400 M_BAD_JSON; a trusted_private_chat's
// invitees join the requested additional_creators; no one sends a second
// m.room.create (400).
func TestV12CreatorsAndLevels(t *testing.T) {
	ts := startServer(t)
	alice, bob, carol := ts.register("alice"), ts.register("bob"), ts.register("carol")
	create := func(body map[string]any) (int, map[string]any) {
		body["room_version"] = "12"
		return ts.do("POST", "/_matrix/client/v3/createRoom", alice.AccessToken, body)
	}
	code, resp := create(map[string]any{})
	room, _ := resp["room_id"].(string)
	if code != 200 {
		t.Fatalf("createRoom: %d %v", code, resp)
	}
	state := "/_matrix/client/v3/rooms/" + url.PathEscape(room) + "/state/"
	_, pl := ts.do("GET", state+"m.room.power_levels/", alice.AccessToken, nil)
	if ev, _ := pl["events"].(map[string]any); ev["m.room.tombstone"] != float64(150) {
		t.Errorf("tombstone level %v, want 150", ev["m.room.tombstone"])
	}
	if code, resp := ts.do("PUT", state+"m.room.power_levels/", alice.AccessToken, map[string]any{"users": map[string]int{alice.UserID.String(): 100}}); code != 400 || resp["errcode"] != "M_BAD_JSON" {
		t.Errorf("power levels naming the creator: %d %v, want 400 M_BAD_JSON", code, resp)
	}
	if code, resp := ts.do("PUT", state+"m.room.create/", alice.AccessToken, map[string]any{"room_version": "12", "entropy": 1}); code != 400 {
		t.Errorf("a second m.room.create: %d %v, want 400", code, resp)
	}
	for _, bad := range []any{"@bob:test.local", []any{42}, []any{"not-a-user"}, []any{"@x:dom$ain.com"}} {
		if code, resp := create(map[string]any{"creation_content": map[string]any{"additional_creators": bad}}); code != 400 || resp["errcode"] != "M_BAD_JSON" {
			t.Errorf("additional_creators %v: %d %v, want 400 M_BAD_JSON", bad, code, resp)
		}
	}
	if code, resp := create(map[string]any{"power_level_content_override": map[string]any{"users": map[string]int{alice.UserID.String(): 100}}}); code != 400 || resp["errcode"] != "M_INVALID_ROOM_STATE" {
		t.Errorf("power_level_content_override naming the creator: %d %v, want 400 M_INVALID_ROOM_STATE", code, resp)
	}
	code, resp = create(map[string]any{"preset": "trusted_private_chat", "invite": []string{bob.UserID.String()},
		"creation_content": map[string]any{"additional_creators": []string{carol.UserID.String()}}})
	if code != 200 {
		t.Fatalf("trusted_private_chat: %d %v", code, resp)
	}
	_, cc := ts.do("GET", "/_matrix/client/v3/rooms/"+url.PathEscape(resp["room_id"].(string))+"/state/m.room.create/", alice.AccessToken, nil)
	var got []string
	for _, u := range cc["additional_creators"].([]any) {
		got = append(got, u.(string))
	}
	slices.Sort(got)
	if want := []string{bob.UserID.String(), carol.UserID.String()}; !slices.Equal(got, want) {
		t.Errorf("additional_creators %v, want %v", got, want)
	}
}
