package api_test

import (
	"context"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// A commit in a room the user is not in does not wake their long-poll:
// it returns at its timeout with no rooms, and the server counts no
// wake-up. A message in their own room wakes it at once.
func TestLongPollNotWokenByUnrelatedRoom(t *testing.T) {
	ts := startServer(t)
	ctx := context.Background()
	alice, bob := ts.register("alice"), ts.register("bob")
	mine, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	if err != nil {
		t.Fatal(err)
	}
	theirs, err := bob.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	if err != nil {
		t.Fatal(err)
	}
	first, err := alice.SyncRequest(ctx, 0, "", "", false, "offline")
	if err != nil {
		t.Fatal(err)
	}

	type result struct {
		resp *mautrix.RespSync
		took time.Duration
		err  error
	}
	poll := func(timeout time.Duration) chan result {
		ch := make(chan result, 1)
		go func() {
			t0 := time.Now()
			r, err := alice.SyncRequest(ctx, int(timeout.Milliseconds()), first.NextBatch, "", false, "offline")
			ch <- result{r, time.Since(t0), err}
		}()
		return ch
	}
	waitRegistered := func(before uint64) {
		// The long-poll registered once the server answered nothing yet;
		// give it a moment (a late registration only makes the check
		// below stricter: the sends then happen before the build).
		time.Sleep(150 * time.Millisecond)
		if got := ts.api.SyncWakeups(); got != before {
			t.Fatalf("wake-ups moved from %d to %d before any commit", before, got)
		}
	}

	before := ts.api.SyncWakeups()
	ch := poll(1500 * time.Millisecond)
	waitRegistered(before)
	for i := range 3 {
		if _, err := bob.SendText(ctx, theirs.RoomID, "not for alice"); err != nil {
			t.Fatalf("send %d: %v", i, err)
		}
	}
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	if got := ts.api.SyncWakeups() - before; got != 0 {
		t.Fatalf("alice's long-poll was woken %d times by commits in a room she is not in", got)
	}
	if r.took < 1400*time.Millisecond || len(r.resp.Rooms.Join) != 0 {
		t.Fatalf("long-poll returned after %v with %d joined rooms; want the timeout and none", r.took, len(r.resp.Rooms.Join))
	}

	// The control: a message in her room wakes her long-poll.
	before = ts.api.SyncWakeups()
	ch = poll(20 * time.Second)
	waitRegistered(before)
	if _, err := bob.JoinRoomByID(ctx, mine.RoomID); err != nil {
		t.Fatal(err)
	}
	r = <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	if r.took > 10*time.Second || len(r.resp.Rooms.Join[mine.RoomID].Timeline.Events) == 0 {
		t.Fatalf("bob's join did not wake alice's long-poll (took %v)", r.took)
	}
	if got := ts.api.SyncWakeups() - before; got < 1 {
		t.Fatal("the server counted no wake-up")
	}
}

// An incremental sync leaves out rooms that did not change, also when
// other rooms did; a room whose receipts or account data changed is in.
func TestIncrementalSyncSkipsOnlyUnchangedRooms(t *testing.T) {
	ts := startServer(t)
	ctx := context.Background()
	alice := ts.register("alice")
	var rooms []*mautrix.RespCreateRoom
	for range 3 {
		r, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{})
		if err != nil {
			t.Fatal(err)
		}
		rooms = append(rooms, r)
	}
	s0, err := alice.SyncRequest(ctx, 0, "", "", false, "offline")
	if err != nil {
		t.Fatal(err)
	}
	sent, err := alice.SendText(ctx, rooms[0].RoomID, "hello")
	if err != nil {
		t.Fatal(err)
	}
	if err := alice.SetRoomAccountData(ctx, rooms[1].RoomID, "org.example.note", map[string]any{"n": 1}); err != nil {
		t.Fatal(err)
	}
	s1, err := alice.SyncRequest(ctx, 0, s0.NextBatch, "", false, "offline")
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := s1.Rooms.Join[rooms[2].RoomID]; ok || len(s1.Rooms.Join) != 2 {
		t.Fatalf("joined rooms in the incremental sync: %v; want the two changed ones", keys(s1.Rooms.Join))
	}
	if len(s1.Rooms.Join[rooms[1].RoomID].AccountData.Events) != 1 {
		t.Fatal("the room account data change is missing")
	}
	if err := alice.SendReceipt(ctx, rooms[0].RoomID, sent.EventID, event.ReceiptTypeRead, nil); err != nil {
		t.Fatal(err)
	}
	s2, err := alice.SyncRequest(ctx, 0, s1.NextBatch, "", false, "offline")
	if err != nil {
		t.Fatal(err)
	}
	if len(s2.Rooms.Join) != 1 || len(s2.Rooms.Join[rooms[0].RoomID].Ephemeral.Events) != 1 {
		t.Fatalf("after a receipt: rooms %v", keys(s2.Rooms.Join))
	}
}

func keys[V any](m map[id.RoomID]V) []id.RoomID {
	var out []id.RoomID
	for k := range m {
		out = append(out, k)
	}
	return out
}

// A room joined after the since token comes whole, with limited set (the
// client pages back from prev_batch for the history before it), even when
// the filter leaves fewer events than the limit; the next incremental
// sync of that room is not limited.
func TestNewlyJoinedRoomTimelineIsLimited(t *testing.T) {
	ts := startServer(t)
	ctx := context.Background()
	alice, bob := ts.register("alice"), ts.register("bob")
	room, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if _, err := alice.SendText(ctx, room.RoomID, "before "+string(rune('a'+i))); err != nil {
			t.Fatal(err)
		}
	}
	filter := `{"room":{"timeline":{"limit":10,"types":["m.room.message"]},"state":{"types":[]}}}`
	first, err := bob.SyncRequest(ctx, 0, "", filter, false, "offline")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bob.JoinRoomByID(ctx, room.RoomID); err != nil {
		t.Fatal(err)
	}
	joined, err := bob.SyncRequest(ctx, 0, first.NextBatch, filter, false, "offline")
	if err != nil {
		t.Fatal(err)
	}
	jr := joined.Rooms.Join[room.RoomID]
	if jr == nil || len(jr.Timeline.Events) != 3 || !jr.Timeline.Limited {
		t.Fatalf("newly joined room: %+v, want its 3 messages, limited", jr)
	}
	if _, err := alice.SendText(ctx, room.RoomID, "after"); err != nil {
		t.Fatal(err)
	}
	next, err := bob.SyncRequest(ctx, 5000, joined.NextBatch, filter, false, "offline")
	if err != nil {
		t.Fatal(err)
	}
	jr = next.Rooms.Join[room.RoomID]
	if jr == nil || len(jr.Timeline.Events) != 1 || jr.Timeline.Limited {
		t.Fatalf("next sync: %+v, want the one new message, not limited", jr)
	}
}
