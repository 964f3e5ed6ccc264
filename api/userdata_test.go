package api_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
)

func TestAccountDataTypingReceiptsFilters(t *testing.T) {
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
	s1, err := bob.SyncRequest(ctx, 0, "", "", false, "")
	if err != nil {
		t.Fatal(err)
	}

	if err := bob.SetAccountData(ctx, "org.example.settings", map[string]any{"theme": "dark"}); err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := bob.GetAccountData(ctx, "org.example.settings", &got); err != nil || got["theme"] != "dark" {
		t.Fatalf("account data = %v, %v", got, err)
	}
	if err := bob.SetRoomAccountData(ctx, room.RoomID, "org.example.room", map[string]any{"x": 1}); err != nil {
		t.Fatal(err)
	}
	msg, err := alice.SendMessageEvent(ctx, room.RoomID, event.EventMessage, text(1))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := alice.UserTyping(ctx, room.RoomID, true, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := alice.SendReceipt(ctx, room.RoomID, msg.EventID, event.ReceiptTypeRead, nil); err != nil {
		t.Fatal(err)
	}

	s2, err := bob.SyncRequest(ctx, 0, s1.NextBatch, "", false, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(s2.AccountData.Events) != 1 || s2.AccountData.Events[0].Type.Type != "org.example.settings" {
		t.Fatalf("global account data in sync: %+v", s2.AccountData.Events)
	}
	jr := s2.Rooms.Join[room.RoomID]
	if jr == nil {
		t.Fatal("room missing from sync")
	}
	if len(jr.AccountData.Events) != 1 || jr.AccountData.Events[0].Type.Type != "org.example.room" {
		t.Fatalf("room account data: %+v", jr.AccountData.Events)
	}
	var typing, receipt bool
	for _, e := range jr.Ephemeral.Events {
		raw, _ := json.Marshal(e.Content.Raw)
		switch e.Type.Type {
		case "m.typing":
			var c struct {
				UserIDs []string `json:"user_ids"`
			}
			_ = json.Unmarshal(raw, &c)
			typing = len(c.UserIDs) == 1 && c.UserIDs[0] == string(alice.UserID)
		case "m.receipt":
			var c map[string]map[string]map[string]any
			_ = json.Unmarshal(raw, &c)
			_, receipt = c[string(msg.EventID)]["m.read"][string(alice.UserID)]
		}
	}
	if !typing || !receipt {
		t.Fatalf("ephemeral typing=%v receipt=%v: %+v", typing, receipt, jr.Ephemeral.Events)
	}
	// Nothing changed since: the next sync carries none of it again.
	s3, err := bob.SyncRequest(ctx, 0, s2.NextBatch, "", false, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(s3.AccountData.Events) != 0 || s3.Rooms.Join[room.RoomID] != nil {
		t.Fatalf("unchanged data resent: %+v %+v", s3.AccountData, s3.Rooms.Join)
	}

	// Stored filter: a timeline limit of 2 and only m.room.message events.
	lim := 2
	f, err := bob.CreateFilter(ctx, &mautrix.Filter{Room: &mautrix.RoomFilter{Timeline: &mautrix.FilterPart{Limit: lim, Types: []event.Type{event.EventMessage}}}})
	if err != nil {
		t.Fatal(err)
	}
	for i := 2; i < 6; i++ {
		if _, err := alice.SendMessageEvent(ctx, room.RoomID, event.EventMessage, text(i)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := alice.SendStateEvent(ctx, room.RoomID, event.StateTopic, "", map[string]any{"topic": "t"}); err != nil {
		t.Fatal(err)
	}
	s4, err := bob.SyncRequest(ctx, 0, s3.NextBatch, f.FilterID, false, "")
	if err != nil {
		t.Fatal(err)
	}
	jr = s4.Rooms.Join[room.RoomID]
	if jr == nil || len(jr.Timeline.Events) != 2 || !jr.Timeline.Limited {
		t.Fatalf("filtered timeline: %+v", jr)
	}
	for _, e := range jr.Timeline.Events {
		if e.Type != event.EventMessage {
			t.Fatalf("filter let %s through", e.Type.Type)
		}
	}
}
