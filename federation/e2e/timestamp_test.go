package e2e

import (
	"fmt"
	"net/url"
	"slices"
	"testing"
	"time"

	"github.com/engram-hs/engram/internal/testca"
)

// sendTextID sends a text message and returns its event ID and its
// origin_server_ts as the server stored it.
func sendTextID(t *testing.T, s server, token, roomID, body string) (string, int64) {
	t.Helper()
	var sent struct {
		EventID string `json:"event_id"`
	}
	if st := call(t, s, "PUT", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/send/m.room.message/"+url.PathEscape(body), token, map[string]any{"msgtype": "m.text", "body": body}, &sent); st != 200 {
		t.Fatalf("send %q: %d", body, st)
	}
	var ev struct {
		TS int64 `json:"origin_server_ts"`
	}
	if st := call(t, s, "GET", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/event/"+url.PathEscape(sent.EventID), token, nil, &ev); st != 200 {
		t.Fatalf("event %s: %d", sent.EventID, st)
	}
	return sent.EventID, ev.TS
}

// timestampToEvent asks s for the event closest to ts in direction dir;
// it returns the status and the event ID.
func timestampToEvent(t *testing.T, s server, token, roomID string, ts int64, dir string) (int, string) {
	t.Helper()
	var out struct {
		EventID string `json:"event_id"`
		TS      int64  `json:"origin_server_ts"`
		Errcode string `json:"errcode"`
	}
	st := call(t, s, "GET", fmt.Sprintf("/_matrix/client/v1/rooms/%s/timestamp_to_event?ts=%d&dir=%s", url.PathEscape(roomID), ts, dir), token, nil, &out)
	if st == 404 && out.Errcode != "M_NOT_FOUND" {
		t.Fatalf("timestamp_to_event 404 with errcode %q", out.Errcode)
	}
	return st, out.EventID
}

// A user of B joins a room of A that has history. B's copy of the room
// starts at the join, so jump to date there must ask A
// (/_matrix/federation/v1/timestamp_to_event) for the messages sent before
// it, going forwards (where B's own answer would be the join) and
// backwards (where B has none), and backfill what A names: /context on it
// then works on B, and /messages back from there reaches the message
// before it (and not the message itself: /context's tokens are positions
// in the backfilled history). A time before the room existed finds
// nothing on either.
func TestTimestampToEventAcrossServers(t *testing.T) {
	ca := testca.New(t)
	a, b := start(t, ca), start(t, ca)
	alice, bob := register(t, a, "alice"), register(t, b, "bob")
	var room struct {
		RoomID string `json:"room_id"`
	}
	beforeRoom := time.Now().UnixMilli() - 1000
	if st := call(t, a, "POST", "/_matrix/client/v3/createRoom", alice, map[string]any{"room_alias_name": "jump", "preset": "public_chat"}, &room); st != 200 {
		t.Fatalf("createRoom: %d", st)
	}
	roomID := room.RoomID
	time.Sleep(5 * time.Millisecond)
	first, firstTS := sendTextID(t, a, alice, roomID, "first")
	time.Sleep(5 * time.Millisecond)
	second, secondTS := sendTextID(t, a, alice, roomID, "second")
	if secondTS <= firstTS {
		t.Fatalf("the messages' timestamps are not ordered: %d then %d", firstTS, secondTS)
	}
	time.Sleep(5 * time.Millisecond)
	var out map[string]any
	if st := call(t, b, "POST", "/_matrix/client/v3/join/"+url.PathEscape("#jump:"+a.name), bob, map[string]any{}, &out); st != 200 {
		t.Fatalf("join: %d %v", st, out)
	}
	eventually(t, "A sees bob joined", func() bool { return joined(t, a, alice, roomID, "@bob:"+b.name) })

	// A answers from its whole copy of the room.
	if st, id := timestampToEvent(t, a, alice, roomID, firstTS, "f"); st != 200 || id != first {
		t.Fatalf("A, forwards from the first message's time: %d %s, want %s", st, id, first)
	}
	if st, id := timestampToEvent(t, b, bob, roomID, firstTS, "f"); st != 200 || id != first {
		t.Fatalf("B, forwards from the first message's time: %d %s, want %s (the first message)\n%s", st, id, first, b.Logs())
	}
	if st, id := timestampToEvent(t, b, bob, roomID, secondTS, "b"); st != 200 || id != second {
		t.Fatalf("B, backwards from the second message's time: %d %s, want %s (the second message)\n%s", st, id, second, b.Logs())
	}
	if st, id := timestampToEvent(t, b, bob, roomID, beforeRoom, "b"); st != 404 {
		t.Fatalf("B, backwards from before the room existed: %d %s, want 404", st, id)
	}

	// The answer was backfilled: /context on B, and /messages back from
	// its start reaches the first message.
	var ctx struct {
		Event struct {
			EventID string `json:"event_id"`
		} `json:"event"`
		Start string `json:"start"`
		End   string `json:"end"`
	}
	if st := call(t, b, "GET", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/context/"+url.PathEscape(second)+"?limit=0", bob, nil, &ctx); st != 200 || ctx.Event.EventID != second || ctx.Start == "" {
		t.Fatalf("B /context on the second message: %d %+v", st, ctx)
	}
	evs, _ := pageBack(t, b, bob, roomID, ctx.Start, 10)
	if got := bodies(evs); !slices.Equal(got, []string{"first"}) {
		t.Fatalf("B /messages back from before the second message (/context's start): %q, want only the first message", got)
	}
	evs, _ = pageBack(t, b, bob, roomID, ctx.End, 10)
	if got := bodies(evs); !slices.Equal(got, []string{"second", "first"}) {
		t.Fatalf("B /messages back from after the second message (/context's end): %q, want the second and the first message", got)
	}

	// In a room whose history is shown to members only from their join,
	// the messages before bob's join are found neither on B nor through
	// A: forwards from the message's time, bob's own join is the answer.
	var hidden struct {
		RoomID string `json:"room_id"`
	}
	if st := call(t, a, "POST", "/_matrix/client/v3/createRoom", alice, map[string]any{"room_alias_name": "jumpjoined", "preset": "public_chat",
		"initial_state": []any{map[string]any{"type": "m.room.history_visibility", "state_key": "", "content": map[string]any{"history_visibility": "joined"}}}}, &hidden); st != 200 {
		t.Fatalf("createRoom: %d", st)
	}
	time.Sleep(5 * time.Millisecond)
	_, secretTS := sendTextID(t, a, alice, hidden.RoomID, "before bob could see")
	time.Sleep(5 * time.Millisecond)
	if st := call(t, b, "POST", "/_matrix/client/v3/join/"+url.PathEscape("#jumpjoined:"+a.name), bob, map[string]any{}, nil); st != 200 {
		t.Fatalf("join: %d", st)
	}
	eventually(t, "bob's join on B", func() bool {
		return call(t, b, "GET", "/_matrix/client/v3/rooms/"+url.PathEscape(hidden.RoomID)+"/state/m.room.member/"+url.PathEscape("@bob:"+b.name), bob, nil, nil) == 200
	})
	if st, id := timestampToEvent(t, b, bob, hidden.RoomID, secretTS, "f"); st != 200 {
		t.Fatalf("B, forwards from the hidden message's time: %d %s, want bob's join", st, id)
	} else {
		var ev struct {
			Type     string `json:"type"`
			StateKey string `json:"state_key"`
		}
		if st := call(t, b, "GET", "/_matrix/client/v3/rooms/"+url.PathEscape(hidden.RoomID)+"/event/"+url.PathEscape(id), bob, nil, &ev); st != 200 || ev.Type != "m.room.member" || ev.StateKey != "@bob:"+b.name {
			t.Fatalf("B, forwards from the hidden message's time: %s, a %s (%d), want bob's join", id, ev.Type, st)
		}
	}
	if st, id := timestampToEvent(t, b, bob, hidden.RoomID, secretTS, "b"); st == 200 {
		var ev struct {
			Type    string         `json:"type"`
			Content map[string]any `json:"content"`
		}
		call(t, b, "GET", "/_matrix/client/v3/rooms/"+url.PathEscape(hidden.RoomID)+"/event/"+url.PathEscape(id), bob, nil, &ev)
		if ev.Type == "m.room.message" {
			t.Fatalf("B, backwards from the hidden message's time: %s, the message bob may not see", id)
		}
	}
}
