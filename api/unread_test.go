package api_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// rawSync runs /sync with raw query parameters and returns the decoded
// body.
func (ts *testServer) rawSync(c *mautrix.Client, params url.Values) map[string]any {
	ts.t.Helper()
	if params == nil {
		params = url.Values{}
	}
	params.Set("set_presence", "offline")
	code, body := ts.do("GET", "/_matrix/client/v3/sync?"+params.Encode(), c.AccessToken, nil)
	if code != 200 {
		ts.t.Fatalf("sync: %d %v", code, body)
	}
	return body
}

func joinedRoom(t *testing.T, body map[string]any, room id.RoomID) map[string]any {
	t.Helper()
	jr, _ := body["rooms"].(map[string]any)["join"].(map[string]any)[room.String()].(map[string]any)
	if jr == nil {
		t.Fatalf("room %s missing from rooms.join", room)
	}
	return jr
}

func counts(t *testing.T, m any) (int, int) {
	t.Helper()
	c, ok := m.(map[string]any)
	if !ok {
		t.Fatalf("counts missing: %v", m)
	}
	return int(c["notification_count"].(float64)), int(c["highlight_count"].(float64))
}

func TestUnreadNotifications(t *testing.T) {
	ts := startServer(t)
	ctx := context.Background()
	alice, bob := ts.register("alice"), ts.register("bob")
	room, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bob.JoinRoomByID(ctx, room.RoomID); err != nil {
		t.Fatal(err)
	}
	unread := func() (int, int) {
		t.Helper()
		return counts(t, joinedRoom(t, ts.rawSync(bob, nil), room.RoomID)["unread_notifications"])
	}
	if n, h := unread(); n != 0 || h != 0 {
		t.Fatalf("fresh room: %d/%d", n, h)
	}
	say(t, alice, room.RoomID, "one")
	second := say(t, alice, room.RoomID, "two")
	if _, err := alice.SendMessageEvent(ctx, room.RoomID, event.EventMessage, map[string]any{
		"msgtype": "m.text", "body": "hey bob", "m.mentions": map[string]any{"user_ids": []string{bob.UserID.String()}}}); err != nil {
		t.Fatal(err)
	}
	// Neither a notice nor an edit notifies.
	if _, err := alice.SendMessageEvent(ctx, room.RoomID, event.EventMessage, map[string]any{"msgtype": "m.notice", "body": "bot"}); err != nil {
		t.Fatal(err)
	}
	if _, err := alice.SendMessageEvent(ctx, room.RoomID, event.EventMessage, map[string]any{"msgtype": "m.text", "body": "* two",
		"m.new_content": map[string]any{"msgtype": "m.text", "body": "two"}, "m.relates_to": map[string]any{"rel_type": "m.replace", "event_id": second}}); err != nil {
		t.Fatal(err)
	}
	if n, h := unread(); n != 3 || h != 1 {
		t.Fatalf("after three messages and a mention: %d/%d, want 3/1", n, h)
	}
	if err := bob.SendReceipt(ctx, room.RoomID, second, event.ReceiptTypeRead, nil); err != nil {
		t.Fatal(err)
	}
	if n, h := unread(); n != 1 || h != 1 {
		t.Fatalf("after a receipt on the second message: %d/%d, want 1/1", n, h)
	}
	say(t, bob, room.RoomID, "I'm here") // one's own message reads up to it
	if n, h := unread(); n != 0 || h != 0 {
		t.Fatalf("after bob spoke: %d/%d", n, h)
	}

	// Threads: counted apart only when the filter asks for it.
	root := say(t, alice, room.RoomID, "root")
	reply, err := alice.SendMessageEvent(ctx, room.RoomID, event.EventMessage, map[string]any{"msgtype": "m.text", "body": "in thread",
		"m.relates_to": map[string]any{"rel_type": "m.thread", "event_id": root}})
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := unread(); n != 2 {
		t.Fatalf("without thread counts: %d, want 2", n)
	}
	threaded := func() (map[string]any, map[string]any) {
		t.Helper()
		f, _ := json.Marshal(map[string]any{"room": map[string]any{"timeline": map[string]any{"unread_thread_notifications": true}}})
		jr := joinedRoom(t, ts.rawSync(bob, url.Values{"filter": {string(f)}}), room.RoomID)
		th, _ := jr["unread_thread_notifications"].(map[string]any)
		return jr["unread_notifications"].(map[string]any), th
	}
	main, th := threaded()
	if n, _ := counts(t, main); n != 1 {
		t.Fatalf("main timeline count %d, want 1", n)
	}
	if th == nil {
		t.Fatal("unread_thread_notifications missing with a thread unread")
	}
	if n, _ := counts(t, th[root.String()]); n != 1 {
		t.Fatalf("thread count %v", th)
	}
	if err := bob.SendReceipt(ctx, room.RoomID, reply.EventID, event.ReceiptTypeRead, map[string]any{"thread_id": root.String()}); err != nil {
		t.Fatal(err)
	}
	main, th = threaded()
	if n, _ := counts(t, main); n != 1 || th != nil {
		t.Fatalf("after the threaded receipt: main %v, threads %v", main, th)
	}
	// Without thread counts the room's count drops too: the reply was read
	// by its thread's receipt.
	if n, _ := unread(); n != 1 {
		t.Fatalf("without thread counts after the threaded receipt: %d, want 1", n)
	}
	if _, ok := joinedRoom(t, ts.rawSync(bob, nil), room.RoomID)["unread_thread_notifications"]; ok {
		t.Fatal("unread_thread_notifications sent without being requested")
	}

	// An unthreaded and a threaded receipt on the same event: /sync shows
	// one receipt for bob there, the unthreaded one (MSC4102), in either
	// order of sending.
	for i, threads := range [][]string{{"", root.String()}, {"main", ""}} {
		ev := say(t, alice, room.RoomID, fmt.Sprintf("receipts %d", i))
		if i == 0 {
			// the unthreaded receipt for a thread event: the reply's thread
			ev = reply.EventID
		}
		for _, th := range threads {
			content := map[string]any{}
			if th != "" {
				content["thread_id"] = th
			}
			if err := bob.SendReceipt(ctx, room.RoomID, ev, event.ReceiptTypeRead, content); err != nil {
				t.Fatal(err)
			}
		}
		var info map[string]any
		eph, _ := joinedRoom(t, ts.rawSync(bob, nil), room.RoomID)["ephemeral"].(map[string]any)
		evs, _ := eph["events"].([]any)
		for _, e := range evs {
			if m := e.(map[string]any); m["type"] == "m.receipt" {
				info, _ = m["content"].(map[string]any)[ev.String()].(map[string]any)["m.read"].(map[string]any)[bob.UserID.String()].(map[string]any)
			}
		}
		if info == nil || info["thread_id"] != nil {
			t.Fatalf("receipts %v on %s: bob's receipt in /sync is %v, want the unthreaded one", threads, ev, info)
		}
	}
}

// TestDisplayNameHighlights: a message naming a member's display name in
// the room (without m.mentions) highlights them, with the name their
// member event holds when it is sent: a rename in the room moves it.
func TestDisplayNameHighlights(t *testing.T) {
	ts := startServer(t)
	ctx := context.Background()
	alice, bob := ts.register("alice"), ts.register("bob")
	room, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bob.JoinRoomByID(ctx, room.RoomID); err != nil {
		t.Fatal(err)
	}
	rename := func(name string) {
		t.Helper()
		if _, err := bob.SendStateEvent(ctx, room.RoomID, event.StateMember, bob.UserID.String(),
			map[string]any{"membership": "join", "displayname": name}); err != nil {
			t.Fatal(err)
		}
	}
	unread := func() (int, int) {
		t.Helper()
		return counts(t, joinedRoom(t, ts.rawSync(bob, nil), room.RoomID)["unread_notifications"])
	}
	rename("Bobby Tables")
	say(t, alice, room.RoomID, "hello bobby tables")
	if n, h := unread(); n != 1 || h != 1 {
		t.Fatalf("a message naming bob's display name: %d/%d, want 1/1", n, h)
	}
	rename("Robert")
	say(t, alice, room.RoomID, "hello bobby tables")
	if n, h := unread(); n != 2 || h != 1 {
		t.Fatalf("the old name after a rename: %d/%d, want 2/1", n, h)
	}
	say(t, alice, room.RoomID, "hello Robert")
	if n, h := unread(); n != 3 || h != 2 {
		t.Fatalf("the new name after a rename: %d/%d, want 3/2", n, h)
	}
}

func memberKeys(t *testing.T, section any) map[string]bool {
	t.Helper()
	out := map[string]bool{}
	evs, _ := section.(map[string]any)["events"].([]any)
	for _, e := range evs {
		m := e.(map[string]any)
		if m["type"] == "m.room.member" {
			out[m["state_key"].(string)] = true
		}
	}
	return out
}

func TestLazyLoadMembersAndStateAfter(t *testing.T) {
	ts := startServer(t)
	ctx := context.Background()
	alice, bob, carol, dave := ts.register("alice"), ts.register("bob"), ts.register("carol"), ts.register("dave")
	room, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []*mautrix.Client{bob, carol, dave} {
		if _, err := c.JoinRoomByID(ctx, room.RoomID); err != nil {
			t.Fatal(err)
		}
	}
	say(t, dave, room.RoomID, "dave early")
	for i := 0; i < 3; i++ {
		say(t, alice, room.RoomID, fmt.Sprint("alice ", i))
	}
	lazy := func(redundant bool) url.Values {
		f, _ := json.Marshal(map[string]any{"room": map[string]any{
			"timeline": map[string]any{"limit": 2},
			"state":    map[string]any{"lazy_load_members": true, "include_redundant_members": redundant}}})
		return url.Values{"filter": {string(f)}}
	}
	s1 := ts.rawSync(bob, lazy(false))
	got := memberKeys(t, joinedRoom(t, s1, room.RoomID)["state"])
	if !got[alice.UserID.String()] || !got[bob.UserID.String()] || got[carol.UserID.String()] || got[dave.UserID.String()] {
		t.Fatalf("lazy initial sync members: %v; want alice and bob only", got)
	}
	// carol speaks: her member event comes with it, once.
	say(t, carol, room.RoomID, "carol speaks")
	p := lazy(false)
	p.Set("since", s1["next_batch"].(string))
	s2 := ts.rawSync(bob, p)
	if got := memberKeys(t, joinedRoom(t, s2, room.RoomID)["state"]); !got[carol.UserID.String()] || got[alice.UserID.String()] {
		t.Fatalf("incremental lazy members: %v; want carol only", got)
	}
	say(t, carol, room.RoomID, "carol again")
	p.Set("since", s2["next_batch"].(string))
	s3 := ts.rawSync(bob, p)
	if got := memberKeys(t, joinedRoom(t, s3, room.RoomID)["state"]); got[carol.UserID.String()] {
		t.Fatal("carol's member event sent again without include_redundant_members")
	}
	say(t, carol, room.RoomID, "carol thrice")
	p = lazy(true)
	p.Set("since", s3["next_batch"].(string))
	s4 := ts.rawSync(bob, p)
	if got := memberKeys(t, joinedRoom(t, s4, room.RoomID)["state"]); !got[carol.UserID.String()] {
		t.Fatal("include_redundant_members did not resend carol's member event")
	}

	// use_state_after: state_after replaces state and includes the
	// timeline's state changes.
	if _, err := alice.SendStateEvent(ctx, room.RoomID, event.StateTopic, "", map[string]any{"topic": "new topic"}); err != nil {
		t.Fatal(err)
	}
	s5 := ts.rawSync(bob, url.Values{"since": {s4["next_batch"].(string)}, "use_state_after": {"true"}})
	jr := joinedRoom(t, s5, room.RoomID)
	if _, ok := jr["state"]; ok {
		t.Fatal("state present with use_state_after")
	}
	found := false
	for _, e := range jr["state_after"].(map[string]any)["events"].([]any) {
		found = found || e.(map[string]any)["type"] == "m.room.topic"
	}
	if !found {
		t.Fatalf("state_after lacks the topic changed in the timeline: %v", jr["state_after"])
	}
	initial := joinedRoom(t, ts.rawSync(bob, url.Values{"use_state_after": {"true"}}), room.RoomID)
	if n := len(initial["state_after"].(map[string]any)["events"].([]any)); n < 8 {
		t.Fatalf("initial state_after has %d events, want the whole state", n)
	}
}
