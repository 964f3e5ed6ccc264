package api_test

import (
	"bytes"
	"context"
	"io"
	"testing"
	"time"

	"github.com/engram-hs/engram/api"
	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/projections"
	"github.com/engram-hs/engram/roomwrite"
	"github.com/rs/zerolog"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// TestProjectionsAreAFunctionOfTheLog drives a realistic scenario through
// the API, then drops every API projection and replays it from the log:
// the rebuilt keyspaces must equal the live ones byte for byte.
func TestProjectionsAreAFunctionOfTheLog(t *testing.T) {
	ts := startServer(t)
	ctx := context.Background()
	alice, bob := ts.register("alice"), ts.register("bob")
	room, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat", Invite: []id.UserID{bob.UserID}, RoomAliasName: "replay", Visibility: "public"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bob.JoinRoomByID(ctx, room.RoomID); err != nil {
		t.Fatal(err)
	}
	var last id.EventID
	for i := 0; i < 20; i++ {
		r, err := bob.SendMessageEvent(ctx, room.RoomID, event.EventMessage, text(i))
		if err != nil {
			t.Fatal(err)
		}
		last = r.EventID
	}
	if _, err := alice.RedactEvent(ctx, room.RoomID, last); err != nil {
		t.Fatal(err)
	}
	if err := bob.SetDisplayName(ctx, "Bob B."); err != nil {
		t.Fatal(err)
	}
	if err := bob.SetAccountData(ctx, "x.y", map[string]any{"a": 1}); err != nil {
		t.Fatal(err)
	}
	if _, err := bob.UserTyping(ctx, room.RoomID, true, time.Second); err != nil {
		t.Fatal(err)
	}
	if err := bob.SendReceipt(ctx, room.RoomID, last, event.ReceiptTypeRead, nil); err != nil {
		t.Fatal(err)
	}
	reported := say(t, alice, room.RoomID, "reported")
	if code, body := ts.do("POST", "/_matrix/client/v3/rooms/"+room.RoomID.String()+"/report/"+reported.String(), bob.AccessToken,
		map[string]any{"reason": "spam", "score": -100}); code != 200 {
		t.Fatalf("report: %d %s", code, body)
	}
	if _, err := bob.CreateFilter(ctx, &mautrix.Filter{}); err != nil {
		t.Fatal(err)
	}
	// A pusher and a push rule (the notifications projection's inputs).
	if code, body := setPusher(t, ts, bob, httpPusher("com.example.app", "k", "http://127.0.0.1:1/_matrix/push/v1/notify", nil)); code != 200 {
		t.Fatalf("pushers/set: %d %v", code, body)
	}
	if code, body := ts.do("PUT", "/_matrix/client/v3/pushrules/global/content/hello", bob.AccessToken,
		map[string]any{"pattern": "root", "actions": []any{"notify", map[string]any{"set_tweak": "highlight"}}}); code != 200 {
		t.Fatalf("push rule: %d %v", code, body)
	}
	// To-device delivery and its acknowledgement, presence set by /sync,
	// a mention and a thread (notification counters), a knock.
	if code, _ := ts.do("PUT", "/_matrix/client/v3/sendToDevice/m.x/t1", alice.AccessToken, map[string]any{
		"messages": map[string]any{bob.UserID.String(): map[string]any{"*": map[string]any{"k": "v"}}}}); code != 200 {
		t.Fatalf("sendToDevice: %d", code)
	}
	s1, err := bob.SyncRequest(ctx, 0, "", "", false, "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bob.SyncRequest(ctx, 0, s1.NextBatch, "", false, "unavailable"); err != nil {
		t.Fatal(err)
	}
	root := say(t, alice, room.RoomID, "root")
	if _, err := bob.SendMessageEvent(ctx, room.RoomID, event.EventMessage, map[string]any{"msgtype": "m.text", "body": "hi",
		"m.mentions":   map[string]any{"user_ids": []string{alice.UserID.String()}},
		"m.relates_to": map[string]any{"rel_type": "m.thread", "event_id": root}}); err != nil {
		t.Fatal(err)
	}
	knockRoom, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat", RoomVersion: "10",
		InitialState: []*event.Event{{Type: event.StateJoinRules, Content: event.Content{Raw: map[string]any{"join_rule": "knock"}}}}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bob.KnockRoom(ctx, knockRoom.RoomID.String(), &mautrix.ReqKnockRoom{}); err != nil {
		t.Fatal(err)
	}
	if _, err := alice.LeaveRoom(ctx, room.RoomID); err != nil {
		t.Fatal(err)
	}
	if _, err := alice.Logout(ctx); err != nil {
		t.Fatal(err)
	}

	// Every projection the server registered, so that a new one is
	// compared without anyone remembering to list it here.
	var names []string
	for _, h := range ts.eng.Handles() {
		names = append(names, h.Name())
	}
	if len(names) < 4 {
		t.Fatalf("only %d projections registered: %v", len(names), names)
	}
	ts.api.Close()
	ts.hs.Close()
	// Closing the engine stops its appliers where they are; the live
	// digest must be of the whole log, as the replay's is, so wait for
	// every projection to fold the last entry first (on a loaded machine
	// the last writes were still being applied).
	end := ts.node.LastOffset()
	waitCtx, cancelWait := context.WithTimeout(ctx, 30*time.Second)
	for _, h := range ts.eng.Handles() {
		if err := h.WaitApplied(waitCtx, end); err != nil {
			t.Fatalf("projection %s did not reach offset %d: %v", h.Name(), end, err)
		}
	}
	cancelWait()
	if err := ts.eng.Close(); err != nil {
		t.Fatal(err)
	}
	live := map[string][]byte{}
	for _, n := range names {
		if live[n], err = ts.eng.Digest(n); err != nil {
			t.Fatal(err)
		}
	}
	_ = ts.node.Close()
	ts.hs = nil

	node, err := englog.Open(englog.Config{Dir: ts.dir, Logger: zerolog.New(io.Discard)})
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close()
	eng := projections.NewEngine(node, node.DB(), zerolog.New(io.Discard), nil)
	rw, err := roomwrite.New(roomwrite.Config{ServerName: ts.cfg.ServerName}, node, eng)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := api.New(ts.cfg, api.Deps{Log: node, Engine: eng, Rooms: rw, Logger: zerolog.New(io.Discard)})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	if err := eng.Rebuild(ctx); err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		d, err := eng.Digest(n)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(d, live[n]) {
			t.Errorf("projection %s differs after replay", n)
		}
	}
	_ = eng.Close()
}
