package api_test

import (
	"context"
	"net/url"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"

	englog "github.com/engram-hs/engram/log"
)

// TestDeactivateEraseErasesProfiles: a deactivation with erase, by an
// admin or by the user themself, erases every profile the user set from
// the log and the disk, not only from what the server answers.
func TestDeactivateEraseErasesProfiles(t *testing.T) {
	for _, route := range []string{"admin", "client"} {
		t.Run(route, func(t *testing.T) {
			ts := startServer(t)
			adm := ts.registerAdmin("root")
			bob := ts.register("bob")
			bobID := "@bob:" + serverName
			marker := "bob-profile-marker-e61c-" + route
			for _, name := range []string{marker + " one", marker + " two"} {
				if st, b := ts.do("PUT", "/_matrix/client/v3/profile/"+url.PathEscape(bobID)+"/displayname", bob.AccessToken, map[string]any{"displayname": name}); st != 200 {
					t.Fatalf("set displayname: %d %v", st, b)
				}
			}
			if hits, _ := englog.FilesHolding(ts.dir, []byte(marker)); len(hits) == 0 {
				t.Fatal("the display name is nowhere on disk before the erasure: the search cannot see it")
			}
			if route == "admin" {
				if st, b := ts.do("POST", "/_synapse/admin/v1/deactivate/"+url.PathEscape(bobID), adm, map[string]any{"erase": true}); st != 200 {
					t.Fatalf("deactivate with erase: %d %v", st, b)
				}
			} else {
				if st, b := ts.do("POST", "/_matrix/client/v3/account/deactivate", bob.AccessToken, map[string]any{"erase": true,
					"auth": map[string]any{"type": "m.login.password", "identifier": map[string]any{"type": "m.id.user", "user": "bob"}, "password": "pw-bob"}}); st != 200 {
					t.Fatalf("deactivate with erase: %d %v", st, b)
				}
			}
			if st, b := ts.do("GET", "/_synapse/admin/v2/users/"+url.PathEscape(bobID), adm, nil); st != 200 || b["deactivated"] != true || b["erased"] != true || b["displayname"] != nil {
				t.Fatalf("user details after the erasure: %d %v", st, b)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if err := ts.node.WaitErasures(ctx); err != nil {
				t.Fatal(err)
			}
			if hits, err := englog.FilesStillHolding(ctx, ts.dir, ts.node.DB(), []byte(marker)); err != nil || len(hits) > 0 {
				t.Fatalf("after the erasure the display name is still in %v (%v)", hits, err)
			}
		})
	}
}

// TestErasedUsersMessagesHiddenFromLaterJoiners: after bob is deactivated
// with erase, his messages stay visible to carol, who was in the room
// when he sent them, and are hidden from dave, who joins afterwards
// (Synapse's GDPR erasure), in /messages, /sync, /context and /event;
// alice's messages and bob's membership stay visible to dave. Reactivating
// bob shows them again.
func TestErasedUsersMessagesHiddenFromLaterJoiners(t *testing.T) {
	ts := startServer(t)
	ctx := context.Background()
	adm := ts.registerAdmin("root")
	alice, bob, carol, dave := ts.register("alice"), ts.register("bob"), ts.register("carol"), ts.register("dave")
	bobID := "@bob:" + serverName
	room := createRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"}) // history visibility: shared
	for _, c := range []*mautrix.Client{bob, carol} {
		if _, err := c.JoinRoom(ctx, room.String(), nil); err != nil {
			t.Fatal(err)
		}
	}
	secret := say(t, bob, room, "bob's words")
	say(t, alice, room, "alice's words")
	if st, b := ts.do("POST", "/_synapse/admin/v1/deactivate/"+url.PathEscape(bobID), adm, map[string]any{"erase": true}); st != 200 {
		t.Fatalf("deactivate with erase: %d %v", st, b)
	}
	if _, err := dave.JoinRoom(ctx, room.String(), nil); err != nil {
		t.Fatal(err)
	}

	bodies := func(c *mautrix.Client) map[string]bool {
		t.Helper()
		msgs, err := c.Messages(ctx, room, "", "", mautrix.DirectionBackward, nil, 100)
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]bool{}
		for _, e := range msgs.Chunk {
			if b, ok := e.Content.Raw["body"].(string); ok {
				out[b] = true
			}
			if e.Type == event.StateMember && e.GetStateKey() == bobID {
				out["bob's membership"] = true
			}
		}
		return out
	}
	if got := bodies(carol); !got["bob's words"] || !got["alice's words"] {
		t.Errorf("carol, in the room when bob spoke, sees %v", got)
	}
	if got := bodies(dave); got["bob's words"] || !got["alice's words"] || !got["bob's membership"] {
		t.Errorf("dave, who joined after the erasure, sees %v; want alice's words and bob's membership, not bob's words", got)
	}
	resp, err := dave.SyncRequest(ctx, 0, "", "", true, event.PresenceOnline)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range resp.Rooms.Join[room].Timeline.Events {
		if e.ID == secret {
			t.Errorf("dave's initial /sync holds bob's erased message")
		}
	}
	for _, path := range []string{"/event/", "/context/"} {
		if st, _ := ts.do("GET", "/_matrix/client/v3/rooms/"+url.PathEscape(room.String())+path+url.PathEscape(secret.String()), dave.AccessToken, nil); st != 404 {
			t.Errorf("GET %s of bob's erased message for dave: %d, want 404", path, st)
		}
		if st, _ := ts.do("GET", "/_matrix/client/v3/rooms/"+url.PathEscape(room.String())+path+url.PathEscape(secret.String()), carol.AccessToken, nil); st != 200 {
			t.Errorf("GET %s of bob's message for carol: %d, want 200", path, st)
		}
	}

	if st, b := ts.do("PUT", "/_synapse/admin/v2/users/"+url.PathEscape(bobID), adm, map[string]any{"deactivated": false, "password": "pw-bob-again"}); st != 200 {
		t.Fatalf("reactivate: %d %v", st, b)
	}
	if st, b := ts.do("GET", "/_synapse/admin/v2/users/"+url.PathEscape(bobID), adm, nil); st != 200 || b["erased"] != false {
		t.Fatalf("user details after reactivation: %d %v", st, b)
	}
	if got := bodies(dave); !got["bob's words"] {
		t.Errorf("after bob's reactivation dave sees %v; want bob's words again", got)
	}
}
