package api_test

import (
	"context"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

func presenceOf(s *mautrix.RespSync, user id.UserID) *event.Event {
	for _, e := range s.Presence.Events {
		if e.Sender == user {
			return e
		}
	}
	return nil
}

func TestPresenceInSync(t *testing.T) {
	ts := startServer(t)
	ctx := context.Background()
	alice, bob, carol := ts.register("alice"), ts.register("bob"), ts.register("carol")
	room, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bob.JoinRoomByID(ctx, room.RoomID); err != nil {
		t.Fatal(err)
	}
	// carol shares no room with alice; her presence must not leak.
	if _, err := carol.SyncRequest(ctx, 0, "", "", false, "online"); err != nil {
		t.Fatal(err)
	}
	// bob syncs without set_presence: that marks him online.
	if _, err := bob.SyncRequest(ctx, 0, "", "", false, ""); err != nil {
		t.Fatal(err)
	}
	s1, err := alice.SyncRequest(ctx, 0, "", "", false, "offline")
	if err != nil {
		t.Fatal(err)
	}
	p := presenceOf(s1, bob.UserID)
	if p == nil || p.Content.Raw["presence"] != "online" || p.Content.Raw["last_active_ago"] == nil {
		t.Fatalf("bob's presence in alice's sync: %+v", s1.Presence.Events)
	}
	if presenceOf(s1, carol.UserID) != nil {
		t.Fatal("carol's presence reached alice, who shares no room with her")
	}
	if presenceOf(s1, alice.UserID) != nil {
		t.Fatal("set_presence=offline recorded a presence for alice")
	}
	// Unchanged presence is not sent again, and polling again writes nothing.
	if _, err := bob.SyncRequest(ctx, 0, "", "", false, "online"); err != nil {
		t.Fatal(err)
	}
	s2, err := alice.SyncRequest(ctx, 0, s1.NextBatch, "", false, "offline")
	if err != nil {
		t.Fatal(err)
	}
	if presenceOf(s2, bob.UserID) != nil {
		t.Fatalf("unchanged presence sent again: %+v", s2.Presence.Events)
	}
	if s2.NextBatch != s1.NextBatch {
		t.Fatalf("a sync with unchanged presence wrote to the log: %s -> %s", s1.NextBatch, s2.NextBatch)
	}
	if err := bob.SetPresence(ctx, mautrix.ReqPresence{Presence: event.PresenceUnavailable, StatusMsg: "lunch"}); err != nil {
		t.Fatal(err)
	}
	s3, err := alice.SyncRequest(ctx, 0, s2.NextBatch, "", false, "offline")
	if err != nil {
		t.Fatal(err)
	}
	p = presenceOf(s3, bob.UserID)
	if p == nil || p.Content.Raw["presence"] != "unavailable" || p.Content.Raw["status_msg"] != "lunch" {
		t.Fatalf("changed presence: %+v", s3.Presence.Events)
	}
	// An incremental sync's presence filter: by type (none read at all)
	// and by sender (bob's change checked against it before the rooms
	// alice shares with him).
	for filter, want := range map[string]bool{
		`{"presence":{"not_types":["*"]}}`:                             false,
		`{"presence":{"types":["m.typing"]}}`:                          false,
		`{"presence":{"types":["m.*"]}}`:                               true,
		`{"presence":{"not_senders":["` + bob.UserID.String() + `"]}}`: false,
		`{"presence":{"senders":["` + bob.UserID.String() + `"]}}`:     true,
	} {
		s, err := alice.SyncRequest(ctx, 0, s2.NextBatch, filter, false, "offline")
		if err != nil {
			t.Fatal(err)
		}
		if got := presenceOf(s, bob.UserID) != nil; got != want {
			t.Errorf("filter %s: bob's changed presence sent %v, want %v (%+v)", filter, got, want, s.Presence.Events)
		}
	}
	code, body := ts.do("GET", "/_matrix/client/v3/sync?set_presence=busy", alice.AccessToken, nil)
	if code != 400 || body["errcode"] != "M_INVALID_PARAM" {
		t.Fatalf("bad set_presence: %d %v", code, body)
	}
	// The presence filter can drop the section.
	code, body = ts.do("GET", `/_matrix/client/v3/sync?set_presence=offline&filter={"presence":{"not_types":["m.presence"]}}`, alice.AccessToken, nil)
	if code != 200 || len(body["presence"].(map[string]any)["events"].([]any)) != 0 {
		t.Fatalf("filtered presence: %d %v", code, body["presence"])
	}
}

func TestKnock(t *testing.T) {
	ts := startServer(t)
	ctx := context.Background()
	alice, bob := ts.register("alice"), ts.register("bob")
	room, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat", RoomVersion: "10", RoomAliasName: "knockme",
		InitialState: []*event.Event{{Type: event.StateJoinRules, Content: event.Content{Raw: map[string]any{"join_rule": "knock"}}}}})
	if err != nil {
		t.Fatal(err)
	}
	aliceSync, err := alice.SyncRequest(ctx, 0, "", "", false, "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bob.KnockRoom(ctx, "#knockme:"+serverName, &mautrix.ReqKnockRoom{Reason: "let me in"}); err != nil {
		t.Fatal(err)
	}
	s, err := bob.SyncRequest(ctx, 0, "", "", false, "")
	if err != nil {
		t.Fatal(err)
	}
	kr := s.Rooms.Knock[room.RoomID]
	if kr == nil {
		t.Fatalf("rooms.knock lacks the room: %+v", s.Rooms)
	}
	var sawCreate, sawKnock bool
	for _, e := range kr.State.Events {
		sawCreate = sawCreate || e.Type == event.StateCreate
		if e.Type == event.StateMember && e.GetStateKey() == bob.UserID.String() {
			sawKnock = e.Content.Raw["membership"] == "knock" && e.Content.Raw["reason"] == "let me in"
		}
	}
	if !sawCreate || !sawKnock {
		t.Fatalf("knock_state: %+v", kr.State.Events)
	}
	if len(s.Rooms.Join) != 0 {
		t.Fatalf("a knocker sees the room as joined: %v", s.Rooms.Join)
	}
	// The room sees the knock; alice admits bob with an invite.
	as, err := alice.SyncRequest(ctx, 0, aliceSync.NextBatch, "", false, "")
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, e := range as.Rooms.Join[room.RoomID].Timeline.Events {
		found = found || (e.Type == event.StateMember && e.GetStateKey() == bob.UserID.String() && e.Content.Raw["membership"] == "knock")
	}
	if !found {
		t.Fatal("alice did not see bob's knock")
	}
	if _, err := alice.InviteUser(ctx, room.RoomID, &mautrix.ReqInviteUser{UserID: bob.UserID}); err != nil {
		t.Fatal(err)
	}
	s2, err := bob.SyncRequest(ctx, 0, s.NextBatch, "", false, "")
	if err != nil || s2.Rooms.Invite[room.RoomID] == nil {
		t.Fatalf("invite after knock: %+v, %v", s2.Rooms, err)
	}

	// Join rule invite: knocking is forbidden. Room version 6: no knocking.
	closed, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat", RoomVersion: "10"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bob.KnockRoom(ctx, closed.RoomID.String(), &mautrix.ReqKnockRoom{}); errcode(err) != "M_FORBIDDEN" {
		t.Fatalf("knock on an invite-only room: %v", err)
	}
	old, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat", RoomVersion: "6",
		InitialState: []*event.Event{{Type: event.StateJoinRules, Content: event.Content{Raw: map[string]any{"join_rule": "knock"}}}}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bob.KnockRoom(ctx, old.RoomID.String(), &mautrix.ReqKnockRoom{}); errcode(err) != "M_FORBIDDEN" {
		t.Fatalf("knock on a v6 room: %v", err)
	}
	if _, err := bob.KnockRoom(ctx, "!nope:"+serverName, &mautrix.ReqKnockRoom{}); errcode(err) != "M_NOT_FOUND" {
		t.Fatalf("knock on an unknown room: %v", err)
	}
}
