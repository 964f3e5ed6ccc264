package e2e

import (
	"encoding/json"
	"net/url"
	"strings"
	"testing"

	"github.com/engram-hs/engram/internal/testca"
)

// joinedPair: alice on a creates a public room, bob on b joins it by
// alias.
func joinedPair(t *testing.T, a, b server) (alice, bob, roomID string) {
	t.Helper()
	alice, bob = register(t, a, "alice"), register(t, b, "bob")
	var room struct {
		RoomID string `json:"room_id"`
	}
	if st := call(t, a, "POST", "/_matrix/client/v3/createRoom", alice, map[string]any{"room_alias_name": "edus", "preset": "public_chat", "room_version": "11"}, &room); st != 200 {
		t.Fatalf("createRoom: %d", st)
	}
	var out map[string]any
	if st := call(t, b, "POST", "/_matrix/client/v3/join/"+url.PathEscape("#edus:"+a.name), bob, map[string]any{}, &out); st != 200 {
		t.Fatalf("join: %d %v", st, out)
	}
	eventually(t, "A sees bob joined", func() bool { return joined(t, a, alice, room.RoomID, "@bob:"+b.name) })
	return alice, bob, room.RoomID
}

// syncJSON is bob's full /sync as raw JSON.
func syncJSON(t *testing.T, s server, token string) string {
	t.Helper()
	var out json.RawMessage
	call(t, s, "GET", "/_matrix/client/v3/sync?timeout=0", token, nil, &out)
	return string(out)
}

// Typing, a read receipt and a presence change of a user of A reach the
// room's user on B through the outbound queue (EDUs).
func TestEDUsBetweenTwoServers(t *testing.T) {
	ca := testca.New(t)
	a, b := start(t, ca), start(t, ca)
	alice, bob, roomID := joinedPair(t, a, b)
	aliceID := "@alice:" + a.name
	var sent struct {
		EventID string `json:"event_id"`
	}
	if st := call(t, a, "PUT", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/send/m.room.message/t1", alice, map[string]any{"msgtype": "m.text", "body": "read me"}, &sent); st != 200 {
		t.Fatalf("send: %d", st)
	}
	eventually(t, "the message on B", func() bool { return hasMessage(t, b, bob, roomID, "read me") })

	if st := call(t, a, "PUT", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/typing/"+url.PathEscape(aliceID), alice, map[string]any{"typing": true, "timeout": 30000}, nil); st != 200 {
		t.Fatalf("typing: %d", st)
	}
	eventually(t, "alice typing on B", func() bool {
		s := syncJSON(t, b, bob)
		return strings.Contains(s, `"m.typing"`) && strings.Contains(s, `"user_ids":["`+aliceID+`"]`)
	})
	if st := call(t, a, "POST", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/receipt/m.read/"+url.PathEscape(sent.EventID), alice, map[string]any{}, nil); st != 200 {
		t.Fatalf("receipt: %d", st)
	}
	eventually(t, "alice's receipt on B", func() bool {
		s := syncJSON(t, b, bob)
		return strings.Contains(s, `"m.receipt"`) && strings.Contains(s, sent.EventID) && strings.Contains(s, aliceID)
	})
	if st := call(t, a, "PUT", "/_matrix/client/v3/presence/"+url.PathEscape(aliceID)+"/status", alice, map[string]any{"presence": "unavailable", "status_msg": "at lunch"}, nil); st != 200 {
		t.Fatalf("presence: %d", st)
	}
	eventually(t, "alice's presence on B", func() bool {
		var p struct {
			Presence  string `json:"presence"`
			StatusMsg string `json:"status_msg"`
		}
		st := call(t, b, "GET", "/_matrix/client/v3/presence/"+url.PathEscape(aliceID)+"/status", bob, nil, &p)
		return st == 200 && p.Presence == "unavailable" && p.StatusMsg == "at lunch"
	})
}

// Messages sent while B is down arrive once B is back, also when A
// restarted in between: the queue is in A's log.
func TestMessagesQueuedDuringDowntimeArrive(t *testing.T) {
	ca := testca.New(t)
	a, b := start(t, ca), start(t, ca)
	alice, bob, roomID := joinedPair(t, a, b)
	b.Stop()
	for _, body := range []string{"while down 1", "while down 2"} {
		if st := call(t, a, "PUT", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/send/m.room.message/"+url.PathEscape(body), alice, map[string]any{"msgtype": "m.text", "body": body}, nil); st != 200 {
			t.Fatalf("send: %d", st)
		}
	}
	a.Stop()
	a = startAt(t, ca, a.name, a.DataDir)
	if st := call(t, a, "PUT", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/send/m.room.message/after", alice, map[string]any{"msgtype": "m.text", "body": "after A restarted"}, nil); st != 200 {
		t.Fatalf("send after restart: %d", st)
	}
	b = startAt(t, ca, b.name, b.DataDir)
	for _, body := range []string{"while down 1", "while down 2", "after A restarted"} {
		eventually(t, body+" on B", func() bool { return hasMessage(t, b, bob, roomID, body) })
	}
}

// Three servers: B and C join A's room through A; A passes each join on
// to the other, so B and C know of each other and their messages reach
// each other directly.
func TestThreeServersJoinThroughOne(t *testing.T) {
	ca := testca.New(t)
	a, b, c := start(t, ca), start(t, ca), start(t, ca)
	alice, bob, roomID := joinedPair(t, a, b)
	carol := register(t, c, "carol")
	var out map[string]any
	if st := call(t, c, "POST", "/_matrix/client/v3/join/"+url.PathEscape("#edus:"+a.name), carol, map[string]any{}, &out); st != 200 {
		t.Fatalf("carol's join: %d %v", st, out)
	}
	eventually(t, "B sees carol joined", func() bool { return joined(t, b, bob, roomID, "@carol:"+c.name) })
	if st := call(t, b, "PUT", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/send/m.room.message/b1", bob, map[string]any{"msgtype": "m.text", "body": "from B"}, nil); st != 200 {
		t.Fatalf("send: %d", st)
	}
	if st := call(t, c, "PUT", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/send/m.room.message/c1", carol, map[string]any{"msgtype": "m.text", "body": "from C"}, nil); st != 200 {
		t.Fatalf("send: %d", st)
	}
	eventually(t, "B's message on C", func() bool { return hasMessage(t, c, carol, roomID, "from B") })
	eventually(t, "C's message on B", func() bool { return hasMessage(t, b, bob, roomID, "from C") })
	eventually(t, "both on A", func() bool {
		return hasMessage(t, a, alice, roomID, "from B") && hasMessage(t, a, alice, roomID, "from C")
	})
}
