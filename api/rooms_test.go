package api_test

import (
	"context"
	"fmt"
	"net/url"
	"slices"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

func text(i int) map[string]any {
	return map[string]any{"msgtype": "m.text", "body": fmt.Sprintf("msg %d", i)}
}

func TestRoomLifecycleAndSync(t *testing.T) {
	ts := startServer(t)
	ctx := context.Background()
	alice, bob := ts.register("alice"), ts.register("bob")

	room, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Name: "Test room", Topic: "testing", Preset: "private_chat", Invite: []id.UserID{bob.UserID}, RoomAliasName: "test"})
	if err != nil {
		t.Fatal(err)
	}
	// bob sees the invite with stripped state including the create event.
	s1, err := bob.SyncRequest(ctx, 0, "", "", false, "")
	if err != nil {
		t.Fatal(err)
	}
	inv := s1.Rooms.Invite[room.RoomID]
	if inv == nil {
		t.Fatalf("invite missing from bob's sync: %+v", s1.Rooms)
	}
	types := []string{}
	for _, e := range inv.State.Events {
		types = append(types, e.Type.Type)
		// The create event is complete (MSC4311, spec v1.16); the others
		// stay stripped.
		if e.Type.Type == "m.room.create" && (e.Timestamp == 0 || e.ID == "" || e.RoomID != room.RoomID) {
			t.Errorf("stripped create event is not complete: %+v", e)
		}
		if e.Type.Type == "m.room.name" && (e.Timestamp != 0 || e.ID != "") {
			t.Errorf("stripped name event has more than stripped state: %+v", e)
		}
	}
	if !slices.Contains(types, "m.room.create") || !slices.Contains(types, "m.room.member") || !slices.Contains(types, "m.room.name") {
		t.Fatalf("invite_state types = %v", types)
	}
	// Join by alias.
	if _, err := bob.JoinRoom(ctx, "#test:"+serverName, nil); err != nil {
		t.Fatal(err)
	}
	joined, err := bob.JoinedRooms(ctx)
	if err != nil || !slices.Contains(joined.JoinedRooms, room.RoomID) {
		t.Fatalf("joined_rooms = %+v, %v", joined, err)
	}
	members, err := alice.JoinedMembers(ctx, room.RoomID)
	if err != nil || len(members.Joined) != 2 {
		t.Fatalf("joined_members = %+v, %v", members, err)
	}

	// Power-level denial: bob (level 0) may not change power levels or the name.
	_, err = bob.SendStateEvent(ctx, room.RoomID, event.StateRoomName, "", map[string]any{"name": "hijack"})
	if errcode(err) != "M_FORBIDDEN" {
		t.Fatalf("bob renamed the room: %v", err)
	}
	var name event.RoomNameEventContent
	if err := alice.StateEvent(ctx, room.RoomID, event.StateRoomName, "", &name); err != nil || name.Name != "Test room" {
		t.Fatalf("name = %+v, %v", name, err)
	}

	// Transaction idempotency.
	r1, err := bob.SendMessageEvent(ctx, room.RoomID, event.EventMessage, text(0), mautrix.ReqSendEvent{TransactionID: "txn-1"})
	if err != nil {
		t.Fatal(err)
	}
	r2, err := bob.SendMessageEvent(ctx, room.RoomID, event.EventMessage, text(99), mautrix.ReqSendEvent{TransactionID: "txn-1"})
	if err != nil || r2.EventID != r1.EventID {
		t.Fatalf("retried txn gave %v, %v; want %s", r2, err, r1.EventID)
	}

	// Incremental sync with a limited timeline, then page back with
	// /messages from prev_batch: every message exactly once, no gaps.
	since := s1.NextBatch
	s2, err := bob.SyncRequest(ctx, 0, since, "", false, "")
	if err != nil {
		t.Fatal(err)
	}
	since = s2.NextBatch
	const n = 25
	sent := []id.EventID{r1.EventID}
	for i := 1; i <= n; i++ {
		r, err := alice.SendMessageEvent(ctx, room.RoomID, event.EventMessage, text(i))
		if err != nil {
			t.Fatal(err)
		}
		sent = append(sent, r.EventID)
	}
	s3, err := bob.SyncRequest(ctx, 0, since, "", false, "")
	if err != nil {
		t.Fatal(err)
	}
	jr := s3.Rooms.Join[room.RoomID]
	if jr == nil || !jr.Timeline.Limited || len(jr.Timeline.Events) != 10 || jr.Timeline.PrevBatch == "" {
		t.Fatalf("limited timeline expected: %+v", jr)
	}
	got := []id.EventID{}
	for _, e := range jr.Timeline.Events {
		got = append(got, e.ID)
	}
	from := jr.Timeline.PrevBatch
	var older []id.EventID
	for from != "" {
		page, err := bob.Messages(ctx, room.RoomID, from, "", mautrix.DirectionBackward, nil, 4)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range page.Chunk {
			older = append(older, e.ID)
		}
		from = page.End
	}
	slices.Reverse(older)
	all := append(older, got...)
	idx := slices.Index(all, sent[0])
	if idx < 0 || !slices.Equal(all[idx:], sent) {
		t.Fatalf("history after paging does not equal what was sent:\n got %v\nwant %v", all, sent)
	}
	seen := map[id.EventID]bool{}
	for _, e := range all {
		if seen[e] {
			t.Fatalf("duplicate %s in paged history", e)
		}
		seen[e] = true
	}
	// Forward pagination from the start returns the same order.
	fwd, err := bob.Messages(ctx, room.RoomID, "", "", mautrix.DirectionForward, nil, 1000)
	if err != nil {
		t.Fatal(err)
	}
	fwdIDs := []id.EventID{}
	for _, e := range fwd.Chunk {
		fwdIDs = append(fwdIDs, e.ID)
	}
	if !slices.Equal(fwdIDs, all) {
		t.Fatalf("forward history %v differs from backward %v", fwdIDs, all)
	}
	// The transaction ID is echoed to the sending device only.
	ev, err := bob.GetEvent(ctx, room.RoomID, r1.EventID)
	if err != nil || ev.Unsigned.TransactionID != "txn-1" {
		t.Fatalf("own event lacks transaction_id: %+v %v", ev, err)
	}
	ev, err = alice.GetEvent(ctx, room.RoomID, r1.EventID)
	if err != nil || ev.Unsigned.TransactionID != "" {
		t.Fatalf("other user sees transaction_id: %+v %v", ev, err)
	}

	// Redaction by a user without power on someone else's event: refused.
	if _, err := bob.RedactEvent(ctx, room.RoomID, sent[1]); errcode(err) != "M_FORBIDDEN" {
		t.Fatalf("bob redacted alice's event: %v", err)
	}
	if _, err := alice.RedactEvent(ctx, room.RoomID, sent[1]); err != nil {
		t.Fatal(err)
	}
	ev, err = bob.GetEvent(ctx, room.RoomID, sent[1])
	if err != nil || len(ev.Content.Raw) != 0 || ev.Unsigned.RedactedBecause == nil {
		t.Fatalf("redacted event = %+v, %v", ev, err)
	}

	// Kick, then bob can no longer send, and sees the leave in sync.
	s4, _ := bob.SyncRequest(ctx, 0, s3.NextBatch, "", false, "")
	if _, err := alice.KickUser(ctx, room.RoomID, &mautrix.ReqKickUser{UserID: bob.UserID, Reason: "bye"}); err != nil {
		t.Fatal(err)
	}
	if _, err := bob.SendMessageEvent(ctx, room.RoomID, event.EventMessage, text(1000)); errcode(err) != "M_FORBIDDEN" {
		t.Fatalf("kicked user could send: %v", err)
	}
	s5, err := bob.SyncRequest(ctx, 0, s4.NextBatch, "", false, "")
	if err != nil || s5.Rooms.Leave[room.RoomID] == nil {
		t.Fatalf("leave section missing: %+v %v", s5.Rooms, err)
	}
	if _, err := bob.ForgetRoom(ctx, room.RoomID); err != nil {
		t.Fatal(err)
	}
}

func TestLongPollSyncWakes(t *testing.T) {
	ts := startServer(t)
	ctx := context.Background()
	alice := ts.register("alice")
	room, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	if err != nil {
		t.Fatal(err)
	}
	s1, err := alice.SyncRequest(ctx, 0, "", "", false, "")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan *mautrix.RespSync, 1)
	start := time.Now()
	go func() {
		s, err := alice.SyncRequest(ctx, 20000, s1.NextBatch, "", false, "")
		if err != nil {
			t.Error(err)
		}
		done <- s
	}()
	time.Sleep(200 * time.Millisecond)
	r, err := alice.SendMessageEvent(ctx, room.RoomID, event.EventMessage, text(1))
	if err != nil {
		t.Fatal(err)
	}
	select {
	case s := <-done:
		jr := s.Rooms.Join[room.RoomID]
		if jr == nil || len(jr.Timeline.Events) != 1 || jr.Timeline.Events[0].ID != r.EventID {
			t.Fatalf("woken sync = %+v", s.Rooms)
		}
		if time.Since(start) > 10*time.Second {
			t.Fatal("long-poll was not woken by the send")
		}
	case <-time.After(15 * time.Second):
		t.Fatal("long-poll did not return")
	}
	// An empty long-poll returns after its timeout with nothing in it.
	s2, err := alice.SyncRequest(ctx, 0, s1.NextBatch, "", false, "")
	if err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	s3, err := alice.SyncRequest(ctx, 300, s2.NextBatch, "", false, "")
	if err != nil {
		t.Fatal(err)
	}
	if time.Since(start) < 300*time.Millisecond || len(s3.Rooms.Join) != 0 || s3.NextBatch != s2.NextBatch {
		t.Fatalf("empty long-poll: after %v, rooms %+v, next %s (was %s)", time.Since(start), s3.Rooms.Join, s3.NextBatch, s2.NextBatch)
	}
}

func TestEveryRoomVersion(t *testing.T) {
	ts := startServer(t)
	ctx := context.Background()
	alice, bob := ts.register("alice"), ts.register("bob")
	for v := 1; v <= 12; v++ {
		t.Run(fmt.Sprint("v", v), func(t *testing.T) {
			room, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{RoomVersion: id.RoomVersion(fmt.Sprint(v)), Preset: "public_chat", Name: "v"})
			if err != nil {
				t.Fatal(err)
			}
			var create event.CreateEventContent
			if err := alice.StateEvent(ctx, room.RoomID, event.StateCreate, "", &create); err != nil || string(create.RoomVersion) != fmt.Sprint(v) {
				t.Fatalf("create = %+v, %v", create, err)
			}
			if _, err := bob.JoinRoomByID(ctx, room.RoomID); err != nil {
				t.Fatal(err)
			}
			r, err := bob.SendMessageEvent(ctx, room.RoomID, event.EventMessage, text(v))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := alice.RedactEvent(ctx, room.RoomID, r.EventID); err != nil {
				t.Fatalf("moderator redaction: %v", err)
			}
			if _, err := bob.SendStateEvent(ctx, room.RoomID, event.StatePowerLevels, "", map[string]any{"users": map[string]int{string(bob.UserID): 100}}); errcode(err) != "M_FORBIDDEN" {
				t.Fatalf("bob raised his own power: %v", err)
			}
			ctxResp, err := bob.Context(ctx, room.RoomID, r.EventID, nil, 4)
			if err != nil || ctxResp.Event.ID != r.EventID || len(ctxResp.EventsBefore) != 2 {
				t.Fatalf("context = %+v, %v", ctxResp, err)
			}
		})
	}
	st, body := ts.do("POST", "/_matrix/client/v3/createRoom", alice.AccessToken, map[string]any{"room_version": "99"})
	if st != 400 || body["errcode"] != "M_UNSUPPORTED_ROOM_VERSION" {
		t.Fatalf("unknown version: %d %v", st, body)
	}
}

func TestPublicRoomDirectory(t *testing.T) {
	ts := startServer(t)
	ctx := context.Background()
	alice := ts.register("alice")
	pub, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Visibility: "public", Name: "Lobby", RoomAliasName: "lobby"})
	if err != nil {
		t.Fatal(err)
	}
	priv, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Name: "Secret"})
	if err != nil {
		t.Fatal(err)
	}
	st, body := ts.do("GET", "/_matrix/client/v3/publicRooms", alice.AccessToken, nil)
	chunk, _ := body["chunk"].([]any)
	if st != 200 || len(chunk) != 1 || chunk[0].(map[string]any)["room_id"] != string(pub.RoomID) || chunk[0].(map[string]any)["canonical_alias"] != "#lobby:"+serverName {
		t.Fatalf("publicRooms: %d %v", st, body)
	}
	if st, _ := ts.do("GET", "/_matrix/client/v3/publicRooms", "", nil); st != 401 {
		t.Fatalf("publicRooms without auth: %d", st)
	}
	if st, _ := ts.do("PUT", "/_matrix/client/v3/directory/list/room/"+string(priv.RoomID), alice.AccessToken, map[string]any{"visibility": "public"}); st != 200 {
		t.Fatalf("publish: %d", st)
	}
	st, body = ts.do("GET", "/_matrix/client/v3/directory/list/room/"+string(priv.RoomID), "", nil)
	if st != 200 || body["visibility"] != "public" {
		t.Fatalf("visibility: %d %v", st, body)
	}
	st, body = ts.do("GET", "/_matrix/client/v3/directory/room/%23lobby:"+serverName, "", nil)
	if st != 200 || body["room_id"] != string(pub.RoomID) {
		t.Fatalf("alias lookup: %d %v", st, body)
	}
}

// TestMessagesEndOnTheLastPage: a page that holds events carries an end
// token even when it reaches the start of the room (as Synapse answers,
// and Complement's TestRoomImageRoundtrip expects); paging on from it
// gives an empty chunk without end, where clients stop.
func TestMessagesEndOnTheLastPage(t *testing.T) {
	ts := startServer(t)
	ctx := context.Background()
	alice := ts.register("alice")
	room, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat"})
	if err != nil {
		t.Fatal(err)
	}
	say(t, alice, room.RoomID, "no url")
	file, err := alice.SendMessageEvent(ctx, room.RoomID, event.EventMessage, map[string]any{"msgtype": "m.file", "body": "a.png", "url": "mxc://example.org/abc"})
	if err != nil {
		t.Fatal(err)
	}
	path := "/_matrix/client/v3/rooms/" + url.PathEscape(room.RoomID.String()) + "/messages?dir=b&filter=" + url.QueryEscape(`{"contains_url":true}`)
	code, body := ts.do("GET", path, alice.AccessToken, nil)
	chunk, _ := body["chunk"].([]any)
	end, _ := body["end"].(string)
	if code != 200 || len(chunk) != 1 || chunk[0].(map[string]any)["event_id"] != file.EventID.String() || end == "" {
		t.Fatalf("the only page: %d %v, want the file event and an end token", code, body)
	}
	code, body = ts.do("GET", path+"&from="+url.QueryEscape(end), alice.AccessToken, nil)
	chunk, _ = body["chunk"].([]any)
	if _, hasEnd := body["end"]; code != 200 || len(chunk) != 0 || hasEnd {
		t.Fatalf("paging on from the last page's end: %d %v, want an empty chunk without end", code, body)
	}
}
