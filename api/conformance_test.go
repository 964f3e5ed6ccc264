package api_test

import (
	"context"
	"fmt"
	"net/url"
	"strings"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
)

// TestConformanceFixes: behaviours clients and the conformance suite
// check: kicking someone not in the room is 403; an event over 64 KiB is
// 413 M_TOO_LARGE; a non-member reading an event of a room that is not
// world-readable gets 404; the initial /sync carries m.push_rules; a
// topic set at creation has its rich m.topic form.
func TestConformanceFixes(t *testing.T) {
	ts := startServer(t)
	ctx := context.Background()
	alice, bob := ts.register("alice"), ts.register("bob")
	topic := "lunch plans"
	room := createRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "private_chat", Topic: topic})
	path := func(format string, a ...any) string {
		return fmt.Sprintf("/_matrix/client/v3/rooms/%s"+format, append([]any{url.PathEscape(room.String())}, a...)...)
	}

	if code, body := ts.do("POST", path("/kick"), alice.AccessToken, map[string]any{"user_id": bob.UserID}); code != 403 {
		t.Errorf("kicking a non-member: %d %v, want 403", code, body)
	}
	big := strings.Repeat("x", 70000)
	if code, body := ts.do("PUT", path("/send/m.room.message/big1"), alice.AccessToken, map[string]any{"msgtype": "m.text", "body": big}); code != 413 || body["errcode"] != "M_TOO_LARGE" {
		t.Errorf("a 70 KB event: %d %v, want 413 M_TOO_LARGE", code, body["errcode"])
	}
	id := say(t, alice, room, "members only")
	if code, body := ts.do("GET", path("/event/%s", url.PathEscape(id.String())), bob.AccessToken, nil); code != 404 {
		t.Errorf("a non-member reading an event: %d %v, want 404", code, body)
	}

	resp, err := alice.SyncRequest(ctx, 0, "", "", false, event.PresenceOnline)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, e := range resp.AccountData.Events {
		if e.Type.Type == "m.push_rules" {
			found = strings.Contains(string(e.Content.VeryRaw), ".m.rule.is_user_mention")
		}
	}
	if !found {
		t.Error("the initial /sync has no m.push_rules with the default rules")
	}

	code, body := ts.do("GET", path("/state/m.room.topic/"), alice.AccessToken, nil)
	mt, _ := body["m.topic"].(map[string]any)
	texts, _ := mt["m.text"].([]any)
	if code != 200 || body["topic"] != topic || len(texts) != 1 || texts[0].(map[string]any)["body"] != topic {
		t.Errorf("topic content %d %v, want the plain and the rich topic", code, body)
	}
}

// TestMutualRooms: the rooms both users are joined to; the caller's own
// ID and a malformed one are refused.
func TestMutualRooms(t *testing.T) {
	ts := startServer(t)
	ctx := context.Background()
	alice, bob := ts.register("alice"), ts.register("bob")
	shared := createRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	createRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"}) // alice only
	if _, err := bob.JoinRoom(ctx, shared.String(), nil); err != nil {
		t.Fatal(err)
	}
	code, body := ts.do("GET", "/_matrix/client/v1/mutual_rooms?user_id="+url.QueryEscape(bob.UserID.String()), alice.AccessToken, nil)
	joined, _ := body["joined"].([]any)
	if code != 200 || len(joined) != 1 || joined[0] != shared.String() || body["count"] != float64(1) {
		t.Errorf("mutual rooms: %d %v, want [%s]", code, body, shared)
	}
	for _, u := range []string{alice.UserID.String(), "bob", ""} {
		if code, body := ts.do("GET", "/_matrix/client/v1/mutual_rooms?user_id="+url.QueryEscape(u), alice.AccessToken, nil); code != 400 || body["errcode"] != "M_INVALID_PARAM" {
			t.Errorf("user_id %q: %d %v, want 400 M_INVALID_PARAM", u, code, body)
		}
	}
}
