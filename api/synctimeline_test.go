package api

import (
	"bytes"
	"encoding/json"
	"fmt"
	"testing"

	"github.com/engram-hs/engram/api/synccache"
)

// Every member's build of a room takes its timeline from the room's one
// shared window, and gets what it got from the projection: each user's
// history visibility (carol joined after it was closed), ignored users
// (bob ignores carol), the filter (types, senders, limits) with the
// limited flag, events older than the window, and an event of the window
// redacted after the window was read; byte for byte the uncached build
// (syncTestServer.build).
func TestSyncTimelineWindowSharedByMembers(t *testing.T) {
	ts := startSyncTestServer(t)
	alice, bob, carol := ts.register("alice"), ts.register("bob"), ts.register("carol")
	var room struct {
		RoomID string `json:"room_id"`
	}
	ts.call("POST", "/_matrix/client/v3/createRoom", alice.token, map[string]any{"preset": "public_chat"}, &room)
	ts.call("POST", path("/_matrix/client/v3/join/%s", room.RoomID), bob.token, map[string]any{}, nil)
	n := 0
	send := func(u syncTestUser, count int, body string) (last string) {
		for range count {
			n++
			var r struct {
				EventID string `json:"event_id"`
			}
			ts.call("PUT", path("/_matrix/client/v3/rooms/%s/send/m.room.message/w%d", room.RoomID, n), u.token, map[string]any{"msgtype": "m.text", "body": fmt.Sprintf("%s %d", body, n)}, &r)
			last = r.EventID
		}
		return last
	}
	send(alice, timelineWindowSize, "shared") // older than the window at the end
	ts.call("PUT", path("/_matrix/client/v3/rooms/%s/state/m.room.history_visibility/", room.RoomID), alice.token, map[string]any{"history_visibility": "joined"}, nil)
	send(bob, 5, "before carol")
	ts.call("POST", path("/_matrix/client/v3/join/%s", room.RoomID), carol.token, map[string]any{}, nil)
	since := ts.node.LastOffset()
	send(carol, 3, "from carol")
	ts.call("PUT", path("/_matrix/client/v3/user/%s/account_data/m.ignored_user_list", bob.sess.UserID), bob.token, map[string]any{"ignored_users": map[string]any{carol.sess.UserID: map[string]any{}}}, nil)
	toRedact := send(alice, 4, "after carol")

	limit := func(l int) *syncFilter {
		f := &syncFilter{}
		f.Room.Timeline = &roomEventFilter{Limit: &l}
		return f
	}
	onlyBob := &syncFilter{}
	onlyBob.Room.Timeline = &roomEventFilter{Senders: []string{bob.sess.UserID}}
	notMessages := &syncFilter{}
	notMessages.Room.Timeline = &roomEventFilter{NotTypes: []string{"m.room.message"}}
	builds := []struct {
		name  string
		u     syncTestUser
		since uint64
		f     *syncFilter
	}{
		{"alice, initial", alice, 0, nil},
		{"bob, initial, ignoring carol", bob, 0, nil},
		{"carol, initial, joined after the history closed", carol, 0, limit(20)},
		{"alice, past the window", alice, 0, limit(timelineWindowSize + 8)},
		{"alice, incremental, limited", alice, since, limit(2)},
		{"bob, incremental, ignoring carol", bob, since, nil},
		{"bob's messages only", alice, 0, onlyBob},
		{"no messages", carol, 0, notMessages},
	}
	check := func(when string) {
		for _, b := range builds {
			ts.build(b.u, b.since, b.f) // fails unless the same as uncached
		}
		roomAt, _ := ts.s.eventsChangedAt(room.RoomID)
		if _, err := ts.s.syncCache.parts.GetIf(synccache.PartKey{Kind: "timeline", Room: room.RoomID}, roomAt, nil, func(any) (any, int, bool, error) {
			t.Fatalf("%s: the builds left no timeline window of the room at its last event", when)
			return nil, 0, false, nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	check("first builds")
	_, resp, _ := ts.build(bob, 0, nil)
	if bytes.Contains(resp, []byte("from carol")) || !bytes.Contains(resp, []byte("after carol")) {
		t.Fatalf("bob's timeline shows the ignored carol, or not alice: %s", resp)
	}
	_, resp, _ = ts.build(carol, 0, limit(20))
	if bytes.Contains(resp, []byte("before carol")) || !bytes.Contains(resp, []byte("from carol")) {
		t.Fatalf("carol's timeline shows what was sent before she joined under joined visibility: %s", resp)
	}
	_, resp, _ = ts.build(alice, since, limit(2))
	if !bytes.Contains(resp, []byte(`"limited":true`)) {
		t.Fatalf("a timeline of 2 of 7 new events is not limited: %s", resp)
	}

	// One more event extends the window; a redaction reads it again, with
	// the redacted event as it now is.
	send(bob, 1, "extends")
	check("after one more event")
	ts.call("PUT", path("/_matrix/client/v3/rooms/%s/redact/%s/wr", room.RoomID, toRedact), alice.token, map[string]any{}, nil)
	check("after a redaction")
	_, resp, _ = ts.build(alice, 0, nil)
	var r struct {
		Rooms struct {
			Join map[string]struct {
				Timeline struct{ Events []json.RawMessage } `json:"timeline"`
			} `json:"join"`
		} `json:"rooms"`
	}
	if err := json.Unmarshal(resp, &r); err != nil {
		t.Fatal(err)
	}
	redacted := false
	for _, e := range r.Rooms.Join[room.RoomID].Timeline.Events {
		if bytes.Contains(e, []byte(toRedact)) && bytes.Contains(e, []byte(`"redacted_because"`)) {
			redacted = true
		}
	}
	if !redacted {
		t.Fatalf("the redacted event is not served redacted from the window: %s", resp)
	}
	// More events than the window keeps at once: read whole again.
	send(alice, timelineWindowSize+3, "flood")
	check("after more events than the window keeps")
}
