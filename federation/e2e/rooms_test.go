package e2e

import (
	"net/url"
	"os/exec"
	"testing"

	"github.com/engram-hs/engram/internal/testca"
	"github.com/engram-hs/engram/internal/testserver"
)

// joined reports whether userID's membership of roomID, as server s's
// client API shows it to token's user, is "join".
func joined(t *testing.T, s server, token, roomID, userID string) bool {
	t.Helper()
	var m struct {
		Membership string `json:"membership"`
	}
	st := call(t, s, "GET", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/state/m.room.member/"+url.PathEscape(userID), token, nil, &m)
	return st == 200 && m.Membership == "join"
}

// A user of B joins a room of A by its alias, through B's client API:
// B resolves the alias over federation, joins through A (make_join,
// send_join), and then holds the room's state; A holds the join.
// `engram verify` passes on B afterwards: everything the join fetched
// is in its log.
func TestJoinByAliasBetweenTwoServers(t *testing.T) {
	ca := testca.New(t)
	a, b := start(t, ca), start(t, ca)
	alice := register(t, a, "alice")
	bob := register(t, b, "bob")
	aliceID, bobID := "@alice:"+a.name, "@bob:"+b.name
	var room struct {
		RoomID string `json:"room_id"`
	}
	if st := call(t, a, "POST", "/_matrix/client/v3/createRoom", alice, map[string]any{"room_alias_name": "hall", "preset": "public_chat", "name": "The Hall", "room_version": "11"}, &room); st != 200 {
		t.Fatalf("createRoom: %d", st)
	}
	var out struct {
		RoomID  string `json:"room_id"`
		Errcode string `json:"errcode"`
		Error   string `json:"error"`
	}
	if st := call(t, b, "POST", "/_matrix/client/v3/join/"+url.PathEscape("#hall:"+a.name), bob, map[string]any{}, &out); st != 200 || out.RoomID != room.RoomID {
		t.Fatalf("join by alias: %d %+v\nB's log:\n%s", st, out, b.Logs())
	}
	if !joined(t, b, bob, room.RoomID, bobID) || !joined(t, b, bob, room.RoomID, aliceID) {
		t.Fatal("B does not show bob and alice joined")
	}
	var name struct {
		Name string `json:"name"`
	}
	if st := call(t, b, "GET", "/_matrix/client/v3/rooms/"+url.PathEscape(room.RoomID)+"/state/m.room.name/", bob, nil, &name); st != 200 || name.Name != "The Hall" {
		t.Fatalf("room name on B: %d %+v", st, name)
	}
	if !joined(t, a, alice, room.RoomID, bobID) {
		t.Fatal("A does not show bob joined")
	}
	// Joining again is idempotent and local.
	if st := call(t, b, "POST", "/_matrix/client/v3/join/"+url.PathEscape(room.RoomID), bob, map[string]any{}, &out); st != 200 {
		t.Fatalf("second join: %d %+v", st, out)
	}
	// An unknown room on a server that does not exist: a clear error.
	if st := call(t, b, "POST", "/_matrix/client/v3/join/"+url.PathEscape("!nope:unreachable.invalid"), bob, map[string]any{}, &out); st < 400 || out.Errcode == "" {
		t.Fatalf("join of an unreachable room: %d %+v", st, out)
	}

	b.Stop()
	if o, err := exec.Command(testserver.Binary(t), "verify", "--config", b.Config).CombinedOutput(); err != nil {
		t.Fatalf("engram verify on B after the join: %v\n%s", err, o)
	}
}
