package api_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// syncer keeps one client's sync position.
type syncer struct {
	t     *testing.T
	c     *mautrix.Client
	since string
}

func (s *syncer) next() *mautrix.RespSync {
	s.t.Helper()
	r, err := s.c.SyncRequest(context.Background(), 0, s.since, "", false, event.PresenceOnline)
	if err != nil {
		s.t.Fatalf("%s sync: %v", s.c.UserID, err)
	}
	s.since = r.NextBatch
	return r
}

func ephemeralOf(r *mautrix.RespSync, room id.RoomID, typ event.Type) *event.Event {
	jr := r.Rooms.Join[room]
	if jr == nil {
		return nil
	}
	for _, e := range jr.Ephemeral.Events {
		if e.Type == typ {
			return e
		}
	}
	return nil
}

// TestThreeUsersMautrix drives three mautrix-go clients through a room's
// social life: typing, receipts and presence in the ephemeral and presence
// sections, profile changes fanned out as member events, a ban and unban
// with rejoin, and a leave and rejoin.
func TestThreeUsersMautrix(t *testing.T) {
	ts := startServer(t)
	ctx := context.Background()
	alice, bob, carol := ts.register("alice"), ts.register("bob"), ts.register("carol")
	room, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "three"})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []*mautrix.Client{bob, carol} {
		if _, err := c.JoinRoomByID(ctx, room.RoomID); err != nil {
			t.Fatal(err)
		}
	}
	as, bs, cs := &syncer{t: t, c: alice}, &syncer{t: t, c: bob}, &syncer{t: t, c: carol}
	as.next()
	bs.next()
	cs.next()

	// Typing and receipts reach the others through ephemeral events.
	if _, err := bob.UserTyping(ctx, room.RoomID, true, 20*time.Second); err != nil {
		t.Fatal(err)
	}
	hello := say(t, alice, room.RoomID, "hello all")
	if err := carol.SendReceipt(ctx, room.RoomID, hello, event.ReceiptTypeRead, nil); err != nil {
		t.Fatal(err)
	}
	cr := cs.next()
	typing := ephemeralOf(cr, room.RoomID, event.EphemeralEventTyping)
	if typing == nil || !slices.Contains(typing.Content.Raw["user_ids"].([]any), any(bob.UserID.String())) {
		t.Fatalf("carol did not see bob typing: %+v", cr.Rooms.Join[room.RoomID].Ephemeral.Events)
	}
	br := bs.next()
	rc := ephemeralOf(br, room.RoomID, event.EphemeralEventReceipt)
	if rc == nil {
		t.Fatal("bob did not get carol's receipt")
	}
	reads, _ := rc.Content.Raw[hello.String()].(map[string]any)["m.read"].(map[string]any)
	if reads[carol.UserID.String()] == nil {
		t.Fatalf("receipt content: %v", rc.Content.Raw)
	}
	if presenceOf(br, carol.UserID) == nil {
		t.Fatal("bob did not get carol's presence")
	}
	if _, err := bob.UserTyping(ctx, room.RoomID, false, 0); err != nil {
		t.Fatal(err)
	}
	cr = cs.next()
	if typing := ephemeralOf(cr, room.RoomID, event.EphemeralEventTyping); typing == nil || len(typing.Content.Raw["user_ids"].([]any)) != 0 {
		t.Fatalf("stopping typing did not reach carol: %+v", typing)
	}

	// Profile fan-out: bob's new name arrives as a member event in the room.
	if err := bob.SetDisplayName(ctx, "Bob the Builder"); err != nil {
		t.Fatal(err)
	}
	ar := as.next()
	renamed := false
	for _, e := range ar.Rooms.Join[room.RoomID].Timeline.Events {
		renamed = renamed || (e.Type == event.StateMember && e.GetStateKey() == bob.UserID.String() && e.Content.Raw["displayname"] == "Bob the Builder")
	}
	if !renamed {
		t.Fatal("alice did not see bob's new display name in the room")
	}
	jm, err := alice.JoinedMembers(ctx, room.RoomID)
	if err != nil || jm.Joined[bob.UserID].DisplayName != "Bob the Builder" {
		t.Fatalf("joined_members after the rename: %+v, %v", jm, err)
	}

	// A ban: carol's room moves to leave; she can neither speak nor rejoin.
	if _, err := alice.BanUser(ctx, room.RoomID, &mautrix.ReqBanUser{UserID: carol.UserID, Reason: "spam"}); err != nil {
		t.Fatal(err)
	}
	cr = cs.next()
	left := cr.Rooms.Leave[room.RoomID]
	if left == nil {
		t.Fatalf("carol's sync lacks the room in leave after the ban: %+v", cr.Rooms)
	}
	banned := false
	for _, e := range left.Timeline.Events {
		banned = banned || (e.Type == event.StateMember && e.GetStateKey() == carol.UserID.String() && e.Content.Raw["membership"] == "ban")
	}
	if !banned {
		t.Fatal("carol's leave section lacks her ban")
	}
	if _, err := carol.SendMessageEvent(ctx, room.RoomID, event.EventMessage, text(1)); errcode(err) != "M_FORBIDDEN" {
		t.Fatalf("banned user spoke: %v", err)
	}
	if _, err := carol.JoinRoomByID(ctx, room.RoomID); errcode(err) != "M_FORBIDDEN" {
		t.Fatalf("banned user rejoined: %v", err)
	}
	whileBanned := say(t, alice, room.RoomID, "while carol was banned")
	if _, err := carol.GetEvent(ctx, room.RoomID, whileBanned); errcode(err) != "M_NOT_FOUND" {
		t.Fatalf("banned user read an event sent after the ban: %v", err)
	}
	if _, err := bob.BanUser(ctx, room.RoomID, &mautrix.ReqBanUser{UserID: alice.UserID}); errcode(err) != "M_FORBIDDEN" {
		t.Fatalf("bob (power 0) banned alice: %v", err)
	}

	// Unban and rejoin: the room is joined again, and the shared history
	// includes what was said while she was out.
	if _, err := alice.UnbanUser(ctx, room.RoomID, &mautrix.ReqUnbanUser{UserID: carol.UserID}); err != nil {
		t.Fatal(err)
	}
	if _, err := carol.JoinRoomByID(ctx, room.RoomID); err != nil {
		t.Fatal(err)
	}
	cr = cs.next()
	if cr.Rooms.Join[room.RoomID] == nil {
		t.Fatalf("carol's room after rejoining: %+v", cr.Rooms)
	}
	if _, err := carol.GetEvent(ctx, room.RoomID, whileBanned); err != nil {
		t.Fatalf("shared history after rejoining: %v", err)
	}

	// bob leaves and rejoins.
	if _, err := bob.LeaveRoom(ctx, room.RoomID); err != nil {
		t.Fatal(err)
	}
	br = bs.next()
	if br.Rooms.Leave[room.RoomID] == nil || br.Rooms.Join[room.RoomID] != nil {
		t.Fatalf("bob's sync after leaving: %+v", br.Rooms)
	}
	say(t, carol, room.RoomID, "bob is gone")
	if _, err := bob.JoinRoomByID(ctx, room.RoomID); err != nil {
		t.Fatal(err)
	}
	br = bs.next()
	jr := br.Rooms.Join[room.RoomID]
	if jr == nil {
		t.Fatalf("bob's sync after rejoining: %+v", br.Rooms)
	}
	members, err := alice.JoinedMembers(ctx, room.RoomID)
	if err != nil || len(members.Joined) != 3 {
		t.Fatalf("joined members at the end: %+v, %v", members, err)
	}
}
