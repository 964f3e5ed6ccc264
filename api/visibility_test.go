package api_test

import (
	"context"
	"fmt"
	"net/url"
	"slices"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// bodies returns the bodies of the m.room.message events among evs.
func bodies(evs []*event.Event) []string {
	var out []string
	for _, e := range evs {
		if e.Type == event.EventMessage {
			b, _ := e.Content.Raw["body"].(string)
			out = append(out, b)
		}
	}
	return out
}

func say(t *testing.T, c *mautrix.Client, room id.RoomID, body string) id.EventID {
	t.Helper()
	r, err := c.SendMessageEvent(context.Background(), room, event.EventMessage, map[string]any{"msgtype": "m.text", "body": body})
	if err != nil {
		t.Fatal(err)
	}
	return r.EventID
}

func setVisibility(t *testing.T, c *mautrix.Client, room id.RoomID, hv string) {
	t.Helper()
	if _, err := c.SendStateEvent(context.Background(), room, event.StateHistoryVisibility, "", map[string]any{"history_visibility": hv}); err != nil {
		t.Fatal(err)
	}
}

func history(t *testing.T, c *mautrix.Client, room id.RoomID) []string {
	t.Helper()
	msgs, err := c.Messages(context.Background(), room, "", "", mautrix.DirectionBackward, nil, 100)
	if err != nil {
		t.Fatal(err)
	}
	out := bodies(msgs.Chunk)
	slices.Reverse(out)
	return out
}

func TestHistoryVisibility(t *testing.T) {
	ts := startServer(t)
	ctx := context.Background()
	alice, bob, carol := ts.register("alice"), ts.register("bob"), ts.register("carol")

	for _, tc := range []struct {
		hv string
		// what bob, invited after "before-invite" and joined after
		// "before-join", sees of the history
		want []string
	}{
		{"shared", []string{"before-invite", "before-join", "after-join"}},
		{"invited", []string{"before-join", "after-join"}},
		{"joined", []string{"after-join"}},
		{"world_readable", []string{"before-invite", "before-join", "after-join"}},
	} {
		t.Run(tc.hv, func(t *testing.T) {
			room, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat"})
			if err != nil {
				t.Fatal(err)
			}
			setVisibility(t, alice, room.RoomID, tc.hv)
			beforeInvite := say(t, alice, room.RoomID, "before-invite")
			if _, err := alice.InviteUser(ctx, room.RoomID, &mautrix.ReqInviteUser{UserID: bob.UserID}); err != nil {
				t.Fatal(err)
			}
			say(t, alice, room.RoomID, "before-join")
			if _, err := bob.JoinRoomByID(ctx, room.RoomID); err != nil {
				t.Fatal(err)
			}
			say(t, alice, room.RoomID, "after-join")
			if got := history(t, bob, room.RoomID); !slices.Equal(got, tc.want) {
				t.Fatalf("/messages: bob sees %v, want %v", got, tc.want)
			}
			s, err := bob.SyncRequest(ctx, 0, "", "", false, "offline")
			if err != nil {
				t.Fatal(err)
			}
			if got := bodies(s.Rooms.Join[room.RoomID].Timeline.Events); !slices.Equal(got, tc.want) {
				t.Fatalf("/sync: bob sees %v, want %v", got, tc.want)
			}
			_, getErr := bob.GetEvent(ctx, room.RoomID, beforeInvite)
			visible := slices.Contains(tc.want, "before-invite")
			if visible != (getErr == nil) || (!visible && errcode(getErr) != "M_NOT_FOUND") {
				t.Fatalf("/event of a message before the invite: %v (visible: %v)", getErr, visible)
			}
			_, ctxErr := bob.Context(ctx, room.RoomID, beforeInvite, nil, 4)
			if visible != (ctxErr == nil) {
				t.Fatalf("/context of a message before the invite: %v (visible: %v)", ctxErr, visible)
			}
			// carol never joined: only a world_readable room is readable.
			_, err = carol.Messages(ctx, room.RoomID, "", "", mautrix.DirectionBackward, nil, 10)
			if tc.hv == "world_readable" {
				if err != nil {
					t.Fatalf("world_readable room unreadable by a non-member: %v", err)
				}
			} else if errcode(err) != "M_FORBIDDEN" {
				t.Fatalf("non-member read a %s room: %v", tc.hv, err)
			}
		})
	}

	// A user who left sees nothing sent after the leave.
	room, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bob.JoinRoomByID(ctx, room.RoomID); err != nil {
		t.Fatal(err)
	}
	say(t, alice, room.RoomID, "while-joined")
	if _, err := bob.LeaveRoom(ctx, room.RoomID); err != nil {
		t.Fatal(err)
	}
	after := say(t, alice, room.RoomID, "after-leave")
	if got := history(t, bob, room.RoomID); !slices.Equal(got, []string{"while-joined"}) {
		t.Fatalf("left user sees %v", got)
	}
	if _, err := bob.GetEvent(ctx, room.RoomID, after); errcode(err) != "M_NOT_FOUND" {
		t.Fatalf("left user fetched an event sent after the leave: %v", err)
	}
	// State reads stop at the leave too.
	if _, err := alice.SendStateEvent(ctx, room.RoomID, event.StateRoomName, "", map[string]any{"name": "renamed after bob left"}); err != nil {
		t.Fatal(err)
	}
	if _, err := carol.JoinRoomByID(ctx, room.RoomID); err != nil {
		t.Fatal(err)
	}
	var name event.RoomNameEventContent
	if err := bob.StateEvent(ctx, room.RoomID, event.StateRoomName, "", &name); errcode(err) != "M_NOT_FOUND" {
		t.Fatalf("left user read a name set after the leave: %+v, %v", name, err)
	}
	mem, err := bob.Members(ctx, room.RoomID)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range mem.Chunk {
		if e.GetStateKey() == carol.UserID.String() {
			t.Fatal("left user sees a member who joined after the leave")
		}
		if e.GetStateKey() == bob.UserID.String() && e.Content.Raw["membership"] != "leave" {
			t.Fatalf("left user's own membership: %v", e.Content.Raw)
		}
	}
	// Forward pagination from the start ends at the leave too.
	code, body := ts.do("GET", fmt.Sprintf("/_matrix/client/v3/rooms/%s/messages?dir=f&limit=50", url.PathEscape(room.RoomID.String())), bob.AccessToken, nil)
	if code != 200 {
		t.Fatalf("forward /messages: %d %v", code, body)
	}
	for _, e := range body["chunk"].([]any) {
		if c, _ := e.(map[string]any)["content"].(map[string]any); c["body"] == "after-leave" {
			t.Fatal("forward /messages leaked an event after the leave")
		}
	}
}

// TestContextStateAtEvent: /context returns the state at the last event
// returned, not the current state.
func TestContextStateAtEvent(t *testing.T) {
	ts := startServer(t)
	ctx := context.Background()
	alice := ts.register("alice")
	room, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat", Name: "first"})
	if err != nil {
		t.Fatal(err)
	}
	ev := say(t, alice, room.RoomID, "under the first name")
	if _, err := alice.SendStateEvent(ctx, room.RoomID, event.StateRoomName, "", map[string]any{"name": "second"}); err != nil {
		t.Fatal(err)
	}
	// limit=0: no events after it, so the state is the state at the event.
	code, body := ts.do("GET", fmt.Sprintf("/_matrix/client/v3/rooms/%s/context/%s?limit=0", url.PathEscape(room.RoomID.String()), url.PathEscape(ev.String())), alice.AccessToken, nil)
	if code != 200 {
		t.Fatalf("/context: %d %v", code, body)
	}
	name := ""
	for _, e := range body["state"].([]any) {
		if m := e.(map[string]any); m["type"] == "m.room.name" {
			name, _ = m["content"].(map[string]any)["name"].(string)
		}
	}
	if name != "first" {
		t.Fatalf("/context state has room name %q, want the name at the event", name)
	}
	// With the rename among the events after, the state is at the rename.
	c, err := alice.Context(ctx, room.RoomID, ev, nil, 10)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range c.State {
		if e.Type == event.StateRoomName {
			name, _ = e.Content.Raw["name"].(string)
		}
	}
	if name != "second" {
		t.Fatalf("/context state has room name %q after the rename", name)
	}
}
