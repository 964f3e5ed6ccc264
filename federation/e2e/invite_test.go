package e2e

import (
	"encoding/json"
	"net/url"
	"slices"
	"testing"

	"github.com/engram-hs/engram/internal/testca"
)

// leftTimeline is the membership events for userID in the timeline of
// roomID under rooms.leave of token's /sync on s (with left rooms).
func leftTimeline(t *testing.T, s server, token, roomID, userID string) []string {
	t.Helper()
	return leftMemberships(t, s, token, userID, true)[roomID]
}

// leftMemberships maps every room under rooms.leave of token's full /sync
// on s (include_leave as given) to its timeline's membership events for
// userID, each as "sender membership".
func leftMemberships(t *testing.T, s server, token, userID string, includeLeave bool) map[string][]string {
	t.Helper()
	var out struct {
		Rooms struct {
			Leave map[string]struct {
				Timeline struct {
					Events []struct {
						Type     string         `json:"type"`
						StateKey string         `json:"state_key"`
						Sender   string         `json:"sender"`
						Content  map[string]any `json:"content"`
					} `json:"events"`
				} `json:"timeline"`
			} `json:"leave"`
		} `json:"rooms"`
	}
	filter, _ := json.Marshal(map[string]any{"room": map[string]any{"include_leave": includeLeave}})
	if st := call(t, s, "GET", "/_matrix/client/v3/sync?filter="+url.QueryEscape(string(filter)), token, nil, &out); st != 200 {
		t.Fatalf("sync: %d", st)
	}
	got := map[string][]string{}
	for roomID, r := range out.Rooms.Leave {
		got[roomID] = nil
		for _, e := range r.Timeline.Events {
			if e.Type == "m.room.member" && e.StateKey == userID {
				m, _ := e.Content["membership"].(string)
				got[roomID] = append(got[roomID], e.Sender+" "+m)
			}
		}
	}
	return got
}

// invited reports whether token's initial /sync on s shows roomID
// under rooms.invite.
func invited(t *testing.T, s server, token, roomID string) bool {
	t.Helper()
	var out struct {
		Rooms struct {
			Invite map[string]json.RawMessage `json:"invite"`
		} `json:"rooms"`
	}
	if st := call(t, s, "GET", "/_matrix/client/v3/sync", token, nil, &out); st != 200 {
		t.Fatalf("sync: %d", st)
	}
	return out.Rooms.Invite[roomID] != nil
}

// Invites of a user of B to rooms of A, which B does not hold:
//   - alice rescinds one (kicks bob): B records the leave A sends it, and
//     bob's /sync shows the room left with alice's leave in its timeline;
//   - alice, who did not invite bob there, cannot rescind alice2's
//     invite (B cannot check her power in a room it does not hold): bob
//     stays invited on B;
//   - bob rejects one through A: his /sync shows his own leave;
//   - bob joins one: his join carries the invite as prev_content and
//     alice as prev_sender.
func TestInvitesRescindedRejectedAndJoinedAcrossServers(t *testing.T) {
	ca := testca.New(t)
	a, b := start(t, ca), start(t, ca)
	alice := register(t, a, "alice")
	alice2 := register(t, a, "alice2")
	bob := register(t, b, "bob")
	aliceID, alice2ID, bobID := "@alice:"+a.name, "@alice2:"+a.name, "@bob:"+b.name
	create := func(invite ...string) string {
		t.Helper()
		var room struct {
			RoomID string `json:"room_id"`
		}
		if st := call(t, a, "POST", "/_matrix/client/v3/createRoom", alice, map[string]any{"preset": "private_chat", "invite": invite}, &room); st != 200 {
			t.Fatalf("createRoom: %d", st)
		}
		eventually(t, "B to hold bob's invite", func() bool { return invited(t, b, bob, room.RoomID) })
		return room.RoomID
	}
	kick := func(token, roomID string) int {
		t.Helper()
		return call(t, a, "POST", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/kick", token, map[string]any{"user_id": bobID, "reason": "rescinded"}, nil)
	}

	rescinded := create(bobID)
	if st := kick(alice, rescinded); st != 200 {
		t.Fatalf("alice rescinds: %d", st)
	}
	eventually(t, "bob's /sync to show the rescinded invite", func() bool {
		got := leftTimeline(t, b, bob, rescinded, bobID)
		return len(got) == 1 && got[0] == aliceID+" leave"
	})

	// alice2 invites bob; alice, not his inviter, kicks him.
	var room struct {
		RoomID string `json:"room_id"`
	}
	if st := call(t, a, "POST", "/_matrix/client/v3/createRoom", alice, map[string]any{"preset": "private_chat", "invite": []string{alice2ID}}, &room); st != 200 {
		t.Fatalf("createRoom: %d", st)
	}
	kept := room.RoomID
	if st := call(t, a, "POST", "/_matrix/client/v3/join/"+url.PathEscape(kept), alice2, map[string]any{}, nil); st != 200 {
		t.Fatalf("alice2 joins: %d", st)
	}
	if st := call(t, a, "POST", "/_matrix/client/v3/rooms/"+url.PathEscape(kept)+"/invite", alice2, map[string]any{"user_id": bobID}, nil); st != 200 {
		t.Fatalf("alice2 invites bob: %d", st)
	}
	eventually(t, "B to hold alice2's invite", func() bool { return invited(t, b, bob, kept) })
	if st := kick(alice, kept); st != 200 {
		t.Fatalf("alice kicks bob: %d", st)
	}
	// A message after the kick, received on B, shows that B had the
	// kick's transaction before it; bob must still be invited.
	seen := create(bobID)
	if st := kick(alice, seen); st != 200 {
		t.Fatalf("alice rescinds the marker room: %d", st)
	}
	eventually(t, "the marker rescission on B", func() bool { return len(leftTimeline(t, b, bob, seen, bobID)) == 1 })
	if !invited(t, b, bob, kept) {
		t.Fatal("bob is no longer invited on B after a kick by someone else than his inviter")
	}

	rejected := create(bobID)
	if st := call(t, b, "POST", "/_matrix/client/v3/rooms/"+url.PathEscape(rejected)+"/leave", bob, map[string]any{}, nil); st != 200 {
		t.Fatalf("bob rejects: %d", st)
	}
	if got := leftTimeline(t, b, bob, rejected, bobID); len(got) != 1 || got[0] != bobID+" leave" {
		t.Fatalf("bob's left room after rejecting: %q, want his own leave", got)
	}

	joinedRoom := create(bobID)
	if st := call(t, b, "POST", "/_matrix/client/v3/join/"+url.PathEscape(joinedRoom), bob, map[string]any{}, nil); st != 200 {
		t.Fatalf("bob joins: %d", st)
	}
	var ev struct {
		Unsigned struct {
			PrevContent map[string]any `json:"prev_content"`
			PrevSender  string         `json:"prev_sender"`
		} `json:"unsigned"`
	}
	var page struct {
		Chunk []json.RawMessage `json:"chunk"`
	}
	if code := call(t, b, "GET", "/_matrix/client/v3/rooms/"+url.PathEscape(joinedRoom)+"/messages?dir=b&limit=5", bob, nil, &page); code != 200 {
		t.Fatalf("messages: %d", code)
	}
	found := false
	for _, raw := range page.Chunk {
		var head struct {
			Type     string `json:"type"`
			StateKey string `json:"state_key"`
		}
		_ = json.Unmarshal(raw, &head)
		if head.Type == "m.room.member" && head.StateKey == bobID {
			if err := json.Unmarshal(raw, &ev); err != nil {
				t.Fatal(err)
			}
			found = true
			break
		}
	}
	if !found || ev.Unsigned.PrevContent["membership"] != "invite" || ev.Unsigned.PrevSender != aliceID {
		t.Fatalf("bob's join on B: found %v, unsigned %+v, want prev_content.membership invite and prev_sender %s", found, ev.Unsigned, aliceID)
	}
}

// A user of A banned from a room of B, and one kicked from it: a full
// /sync on A without include_leave still shows each room under leave
// with the ban or kick in its timeline (as Synapse does), so a client
// that starts after it learns why the room went away. A room the user
// left by themselves stays out of it.
func TestFullSyncShowsRoomsBannedOrKickedFrom(t *testing.T) {
	ca := testca.New(t)
	a, b := start(t, ca), start(t, ca)
	alice := register(t, a, "alice")
	bob := register(t, b, "bob")
	aliceID := "@alice:" + a.name
	rooms := map[string]string{}
	for _, how := range []string{"ban", "kick", "leave"} {
		var room struct {
			RoomID string `json:"room_id"`
		}
		if st := call(t, b, "POST", "/_matrix/client/v3/createRoom", bob, map[string]any{"preset": "public_chat"}, &room); st != 200 {
			t.Fatalf("createRoom: %d", st)
		}
		if st := call(t, a, "POST", "/_matrix/client/v3/join/"+url.PathEscape(room.RoomID)+"?server_name="+url.QueryEscape(b.name), alice, map[string]any{}, nil); st != 200 {
			t.Fatalf("alice joins: %d", st)
		}
		if how == "leave" {
			if st := call(t, a, "POST", "/_matrix/client/v3/rooms/"+url.PathEscape(room.RoomID)+"/leave", alice, map[string]any{}, nil); st != 200 {
				t.Fatalf("alice leaves: %d", st)
			}
		} else if st := call(t, b, "POST", "/_matrix/client/v3/rooms/"+url.PathEscape(room.RoomID)+"/"+how, bob, map[string]any{"user_id": aliceID}, nil); st != 200 {
			t.Fatalf("bob %ss alice: %d", how, st)
		}
		rooms[how] = room.RoomID
	}
	want := map[string]string{"ban": "@bob:" + b.name + " ban", "kick": "@bob:" + b.name + " leave"}
	eventually(t, "alice's full /sync to show the ban and the kick", func() bool {
		left := leftMemberships(t, a, alice, aliceID, false)
		if _, ok := left[rooms["leave"]]; ok {
			t.Fatal("a full /sync without include_leave shows a room alice left by herself")
		}
		for how, w := range want {
			if !slices.Contains(left[rooms[how]], w) {
				return false
			}
		}
		return true
	})
}

// A user of A banned from a room of B (so A, with no joined user left,
// holds a copy it is no longer sent the room's events for), unbanned and
// invited again: A records the invite against its copy, alice's /sync
// shows it, and she joins through B.
func TestInviteAfterUnbanAcrossServers(t *testing.T) {
	ca := testca.New(t)
	a, b := start(t, ca), start(t, ca)
	alice := register(t, a, "alice")
	bob := register(t, b, "bob")
	aliceID := "@alice:" + a.name
	var room struct {
		RoomID string `json:"room_id"`
	}
	if st := call(t, b, "POST", "/_matrix/client/v3/createRoom", bob, map[string]any{"preset": "public_chat"}, &room); st != 200 {
		t.Fatalf("createRoom: %d", st)
	}
	roomPath := "/_matrix/client/v3/rooms/" + url.PathEscape(room.RoomID)
	if st := call(t, a, "POST", "/_matrix/client/v3/join/"+url.PathEscape(room.RoomID)+"?server_name="+url.QueryEscape(b.name), alice, map[string]any{}, nil); st != 200 {
		t.Fatalf("alice joins: %d", st)
	}
	for _, how := range []string{"ban", "unban"} {
		if st := call(t, b, "POST", roomPath+"/"+how, bob, map[string]any{"user_id": aliceID}, nil); st != 200 {
			t.Fatalf("bob %ss alice: %d", how, st)
		}
	}
	eventually(t, "A to hold the unban", func() bool {
		got := leftTimeline(t, a, alice, room.RoomID, aliceID)
		return len(got) > 0 && got[len(got)-1] == "@bob:"+b.name+" leave"
	})
	if st := call(t, b, "POST", roomPath+"/invite", bob, map[string]any{"user_id": aliceID}, nil); st != 200 {
		t.Fatalf("bob invites alice: %d", st)
	}
	eventually(t, "alice's /sync on A to show the invite", func() bool { return invited(t, a, alice, room.RoomID) })
	if st := call(t, a, "POST", "/_matrix/client/v3/join/"+url.PathEscape(room.RoomID)+"?server_name="+url.QueryEscape(b.name), alice, map[string]any{}, nil); st != 200 {
		t.Fatalf("alice accepts the invite: %d\nA's log:\n%s", st, a.Logs())
	}
	eventually(t, "B to show alice joined", func() bool { return joined(t, b, bob, room.RoomID, aliceID) })
}
