package api_test

import (
	"context"
	"net/url"
	"strings"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"
)

// TestPushRulesCarriedOverOnUpgrade: a user's push rules for a room come
// along to its successor, for the user who upgrades it, for a user who
// joins the new room later, and for the creator of a manual successor
// (createRoom with creation_content.predecessor), as Complement's
// TestPushRuleRoomUpgrade expects. Default rules and rules for other
// rooms stay as they are.
func TestPushRulesCarriedOverOnUpgrade(t *testing.T) {
	ts := startServer(t)
	ctx := context.Background()
	alice, bob := ts.register("alice"), ts.register("bob")
	base := "/_matrix/client/v3/pushrules/global/"
	setRules := func(c *mautrix.Client, room id.RoomID) {
		t.Helper()
		if st, body := ts.do("PUT", base+"room/"+url.PathEscape(string(room)), c.AccessToken, map[string]any{"actions": []any{"dont_notify"}}); st != 200 {
			t.Fatalf("room rule: %d %v", st, body)
		}
		if st, body := ts.do("PUT", base+"override/"+url.PathEscape("quiet-"+string(room)), c.AccessToken, map[string]any{
			"conditions": []any{map[string]any{"kind": "event_match", "key": "room_id", "pattern": string(room)}, map[string]any{"kind": "event_match", "key": "content.body", "pattern": "*cake*"}},
			"actions":    []any{},
		}); st != 200 {
			t.Fatalf("override rule: %d %v", st, body)
		}
	}
	// hasRules reports whether the user has the room rule and the override
	// rule (pointed at room) for room.
	hasRules := func(c *mautrix.Client, room id.RoomID) (roomRule, override bool) {
		t.Helper()
		st, body := ts.do("GET", base+"room/"+url.PathEscape(string(room)), c.AccessToken, nil)
		if st == 200 {
			acts, _ := body["actions"].([]any)
			roomRule = len(acts) == 1 && acts[0] == "dont_notify"
		}
		st, body = ts.do("GET", base+"override/"+url.PathEscape("quiet-"+string(room)), c.AccessToken, nil)
		if st == 200 {
			conds, _ := body["conditions"].([]any)
			override = len(conds) == 2 && conds[0].(map[string]any)["pattern"] == string(room) && conds[1].(map[string]any)["pattern"] == "*cake*"
		}
		return roomRule, override
	}

	old := createRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat", RoomVersion: "10"})
	other := createRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	if _, err := bob.JoinRoomByID(ctx, old); err != nil {
		t.Fatal(err)
	}
	setRules(alice, old)
	setRules(bob, old)
	setRules(alice, other)

	st, body := ts.do("POST", "/_matrix/client/v3/rooms/"+url.PathEscape(string(old))+"/upgrade", alice.AccessToken, map[string]any{"new_version": "11"})
	if st != 200 {
		t.Fatalf("upgrade: %d %v", st, body)
	}
	newRoom := id.RoomID(body["replacement_room"].(string))
	if r, o := hasRules(alice, newRoom); !r || !o {
		t.Errorf("the upgrader's rules for the new room: room rule %v, override %v; want both carried over", r, o)
	}
	if r, o := hasRules(alice, old); !r || !o {
		t.Errorf("the upgrader's rules for the old room are gone: room rule %v, override %v", r, o)
	}
	if r, o := hasRules(bob, newRoom); r || o {
		t.Errorf("bob has rules for the new room before joining it: room rule %v, override %v", r, o)
	}
	if _, err := bob.JoinRoomByID(ctx, newRoom); err != nil {
		t.Fatal(err)
	}
	if r, o := hasRules(bob, newRoom); !r || !o {
		t.Errorf("bob's rules for the new room after joining it: room rule %v, override %v; want both carried over", r, o)
	}

	// A manual successor: createRoom naming the old room as predecessor.
	st, body = ts.do("POST", "/_matrix/client/v3/createRoom", alice.AccessToken, map[string]any{
		"preset": "public_chat", "creation_content": map[string]any{"predecessor": map[string]any{"room_id": string(other)}},
	})
	if st != 200 {
		t.Fatalf("createRoom with a predecessor: %d %v", st, body)
	}
	manual := id.RoomID(body["room_id"].(string))
	if r, o := hasRules(alice, manual); !r || !o {
		t.Errorf("the creator's rules for a manual successor: room rule %v, override %v; want both carried over", r, o)
	}
	// A room without a predecessor gets nothing, and defaults are not
	// duplicated.
	plain := createRoom(t, alice, &mautrix.ReqCreateRoom{})
	if r, o := hasRules(alice, plain); r || o {
		t.Errorf("rules for a room without a predecessor: room rule %v, override %v", r, o)
	}
	st, body = ts.do("GET", "/_matrix/client/v3/pushrules/", alice.AccessToken, nil)
	if st != 200 {
		t.Fatalf("pushrules: %d %v", st, body)
	}
	seen := map[string]bool{}
	for _, kind := range []string{"override", "content", "room", "underride"} {
		for _, r := range body["global"].(map[string]any)[kind].([]any) {
			rid := r.(map[string]any)["rule_id"].(string)
			if seen[kind+rid] {
				t.Errorf("rule %s/%s appears twice", kind, rid)
			}
			seen[kind+rid] = true
			if strings.HasPrefix(rid, ".m.") && r.(map[string]any)["default"] != true {
				t.Errorf("default rule %s copied as a user rule", rid)
			}
		}
	}
}
