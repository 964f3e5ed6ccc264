package e2e

import (
	"encoding/json"
	"fmt"
	"net/url"
	"os/exec"
	"testing"
	"time"

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

// eventually retries check for up to 30 s (delivery is asynchronous, and CI machines may be slow).
func eventually(t *testing.T, what string, check func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !check() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// hasMessage reports whether the room's latest messages on s, as token's
// user reads them, include body.
func hasMessage(t *testing.T, s server, token, roomID, body string) bool {
	t.Helper()
	var out struct {
		Chunk []struct {
			Type    string         `json:"type"`
			Content map[string]any `json:"content"`
		} `json:"chunk"`
	}
	if st := call(t, s, "GET", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/messages?dir=b&limit=50", token, nil, &out); st != 200 {
		return false
	}
	for _, e := range out.Chunk {
		if e.Type == "m.room.message" && e.Content["body"] == body {
			return true
		}
	}
	return false
}

func membership(t *testing.T, s server, token, roomID, userID string) string {
	t.Helper()
	var m struct {
		Membership string `json:"membership"`
	}
	call(t, s, "GET", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/state/m.room.member/"+url.PathEscape(userID), token, nil, &m)
	return m.Membership
}

// Two servers in one room through their client APIs: messages both
// ways, a power level change, a kick, a rejoin by room ID with via, and
// a ban of the remote user, each seen on both servers; `engram verify`
// passes on both afterwards.
func TestRoomTrafficBetweenTwoServers(t *testing.T) {
	ca := testca.New(t)
	a, b := start(t, ca), start(t, ca)
	alice := register(t, a, "alice")
	bob := register(t, b, "bob")
	aliceID, bobID := "@alice:"+a.name, "@bob:"+b.name
	var room struct {
		RoomID string `json:"room_id"`
	}
	if st := call(t, a, "POST", "/_matrix/client/v3/createRoom", alice, map[string]any{"room_alias_name": "yard", "preset": "public_chat", "room_version": "11"}, &room); st != 200 {
		t.Fatalf("createRoom: %d", st)
	}
	rid := url.PathEscape(room.RoomID)
	var out map[string]any
	if st := call(t, b, "POST", "/_matrix/client/v3/join/"+url.PathEscape("#yard:"+a.name), bob, map[string]any{}, &out); st != 200 {
		t.Fatalf("join: %d %v", st, out)
	}
	send := func(s server, token, body string, n int) {
		t.Helper()
		if st := call(t, s, "PUT", fmt.Sprintf("/_matrix/client/v3/rooms/%s/send/m.room.message/t%d", rid, n), token, map[string]string{"msgtype": "m.text", "body": body}, &out); st != 200 {
			t.Fatalf("send %q: %d %v", body, st, out)
		}
	}
	send(a, alice, "hello from A", 1)
	eventually(t, "A's message on B", func() bool { return hasMessage(t, b, bob, room.RoomID, "hello from A") })
	send(b, bob, "hello from B", 2)
	eventually(t, "B's message on A", func() bool { return hasMessage(t, a, alice, room.RoomID, "hello from B") })

	// Power levels: alice gives bob 50; B sees it, and bob may then set
	// the topic, which A accepts.
	var pl map[string]any
	call(t, a, "GET", "/_matrix/client/v3/rooms/"+rid+"/state/m.room.power_levels/", alice, nil, &pl)
	users := pl["users"].(map[string]any)
	users[bobID] = 50
	if st := call(t, a, "PUT", "/_matrix/client/v3/rooms/"+rid+"/state/m.room.power_levels/", alice, pl, &out); st != 200 {
		t.Fatalf("power levels: %d %v", st, out)
	}
	eventually(t, "the power levels on B", func() bool {
		var got struct {
			Users map[string]float64 `json:"users"`
		}
		call(t, b, "GET", "/_matrix/client/v3/rooms/"+rid+"/state/m.room.power_levels/", bob, nil, &got)
		return got.Users[bobID] == 50
	})
	if st := call(t, b, "PUT", "/_matrix/client/v3/rooms/"+rid+"/state/m.room.topic/", bob, map[string]string{"topic": "set on B"}, &out); st != 200 {
		t.Fatalf("bob's topic: %d %v", st, out)
	}
	eventually(t, "bob's topic on A", func() bool {
		var got struct {
			Topic string `json:"topic"`
		}
		call(t, a, "GET", "/_matrix/client/v3/rooms/"+rid+"/state/m.room.topic/", alice, nil, &got)
		return got.Topic == "set on B"
	})

	// A kick of the remote user reaches B.
	if st := call(t, a, "POST", "/_matrix/client/v3/rooms/"+rid+"/kick", alice, map[string]string{"user_id": bobID, "reason": "test"}, &out); st != 200 {
		t.Fatalf("kick: %d %v", st, out)
	}
	eventually(t, "the kick on B", func() bool { return membership(t, b, bob, room.RoomID, bobID) == "leave" })

	// Bob rejoins by room ID through A, then is banned.
	if st := call(t, b, "POST", "/_matrix/client/v3/join/"+rid+"?via="+url.QueryEscape(a.name), bob, map[string]any{}, &out); st != 200 {
		t.Fatalf("rejoin: %d %v", st, out)
	}
	eventually(t, "the rejoin on A", func() bool { return membership(t, a, alice, room.RoomID, bobID) == "join" })
	if st := call(t, a, "POST", "/_matrix/client/v3/rooms/"+rid+"/ban", alice, map[string]string{"user_id": bobID}, &out); st != 200 {
		t.Fatalf("ban: %d %v", st, out)
	}
	eventually(t, "the ban on B", func() bool { return membership(t, b, bob, room.RoomID, bobID) == "ban" })
	_ = aliceID

	for _, s := range []server{a, b} {
		s.Stop()
		if o, err := exec.Command(testserver.Binary(t), "verify", "--config", s.Config).CombinedOutput(); err != nil {
			t.Fatalf("engram verify on %s: %v\n%s", s.name, err, o)
		}
	}
}

// A user of A invites a user of B to a private room: B signs and records
// the invite, bob's /sync on B shows it with the room's name, bob joins
// by room ID alone (through the inviter's server), and both see each
// other joined.
func TestInviteAcrossServers(t *testing.T) {
	ca := testca.New(t)
	a, b := start(t, ca), start(t, ca)
	alice := register(t, a, "alice")
	bob := register(t, b, "bob")
	aliceID, bobID := "@alice:"+a.name, "@bob:"+b.name
	var room struct {
		RoomID string `json:"room_id"`
	}
	if st := call(t, a, "POST", "/_matrix/client/v3/createRoom", alice, map[string]any{"preset": "private_chat", "name": "Private", "room_version": "11"}, &room); st != 200 {
		t.Fatalf("createRoom: %d", st)
	}
	rid := url.PathEscape(room.RoomID)
	var out map[string]any
	if st := call(t, a, "POST", "/_matrix/client/v3/rooms/"+rid+"/invite", alice, map[string]string{"user_id": bobID}, &out); st != 200 {
		t.Fatalf("invite: %d %v\nA:\n%s\nB:\n%s", st, out, a.Logs(), b.Logs())
	}
	if m := membership(t, a, alice, room.RoomID, bobID); m != "invite" {
		t.Fatalf("bob's membership on A: %q", m)
	}
	var sync struct {
		Rooms struct {
			Invite map[string]struct {
				InviteState struct {
					Events []struct {
						Type       string         `json:"type"`
						Content    map[string]any `json:"content"`
						OriginTS   int64          `json:"origin_server_ts"`
						Signatures map[string]any `json:"signatures"`
					} `json:"events"`
				} `json:"invite_state"`
			} `json:"invite"`
		} `json:"rooms"`
	}
	eventually(t, "the invite in bob's /sync", func() bool {
		call(t, b, "GET", "/_matrix/client/v3/sync?timeout=0", bob, nil, &sync)
		_, ok := sync.Rooms.Invite[room.RoomID]
		return ok
	})
	named, created := false, false
	for _, e := range sync.Rooms.Invite[room.RoomID].InviteState.Events {
		if e.Type == "m.room.name" && e.Content["name"] == "Private" {
			named = true
		}
		// A sent the state as PDUs (spec v1.16); bob's client sees it
		// stripped, the create event complete (MSC4311).
		if e.Type == "m.room.create" && e.OriginTS > 0 {
			created = true
		}
		if e.Signatures != nil {
			t.Errorf("stripped state shows a PDU's signatures: %+v", e)
		}
	}
	if !created {
		t.Errorf("the invite's stripped state has no complete create event: %+v", sync.Rooms.Invite[room.RoomID])
	}
	if !named {
		t.Fatalf("the invite's stripped state has no room name: %+v", sync.Rooms.Invite[room.RoomID])
	}
	if st := call(t, b, "POST", "/_matrix/client/v3/rooms/"+rid+"/join", bob, map[string]any{}, &out); st != 200 {
		t.Fatalf("join after the invite: %d %v", st, out)
	}
	if !joined(t, b, bob, room.RoomID, aliceID) || !joined(t, a, alice, room.RoomID, bobID) {
		t.Fatal("after the join, both servers must show both users joined")
	}
}

// createRoom with a user of B in invite invites them over federation (B
// signs the invite, as for a later /invite): bob's /sync on B shows a
// direct invite and he joins by room ID alone. Inviting a user of an
// unreachable server is refused with an error, not recorded as if sent.
func TestCreateRoomInvitesAcrossServers(t *testing.T) {
	ca := testca.New(t)
	a, b := start(t, ca), start(t, ca)
	alice := register(t, a, "alice")
	bob := register(t, b, "bob")
	aliceID, bobID := "@alice:"+a.name, "@bob:"+b.name
	var room struct {
		RoomID string `json:"room_id"`
	}
	if st := call(t, a, "POST", "/_matrix/client/v3/createRoom", alice, map[string]any{"preset": "trusted_private_chat", "is_direct": true,
		"invite": []string{bobID}, "room_version": "11",
		"initial_state": []any{map[string]any{"type": "m.room.encryption", "state_key": "", "content": map[string]any{"algorithm": "m.megolm.v1.aes-sha2"}}}}, &room); st != 200 {
		t.Fatalf("createRoom: %d\nA:\n%s\nB:\n%s", st, a.Logs(), b.Logs())
	}
	if m := membership(t, a, alice, room.RoomID, bobID); m != "invite" {
		t.Fatalf("bob's membership on A: %q", m)
	}
	var sync struct {
		Rooms struct {
			Invite map[string]struct {
				InviteState struct {
					Events []struct {
						Type     string         `json:"type"`
						StateKey string         `json:"state_key"`
						Content  map[string]any `json:"content"`
					} `json:"events"`
				} `json:"invite_state"`
			} `json:"invite"`
		} `json:"rooms"`
	}
	eventually(t, "the invite in bob's /sync", func() bool {
		call(t, b, "GET", "/_matrix/client/v3/sync?timeout=0", bob, nil, &sync)
		_, ok := sync.Rooms.Invite[room.RoomID]
		return ok
	})
	direct, encrypted := false, false
	for _, e := range sync.Rooms.Invite[room.RoomID].InviteState.Events {
		if e.Type == "m.room.member" && e.StateKey == bobID && e.Content["is_direct"] == true {
			direct = true
		}
		if e.Type == "m.room.encryption" {
			encrypted = true
		}
	}
	if !direct || !encrypted {
		t.Fatalf("the invite's stripped state lacks is_direct (%v) or m.room.encryption (%v): %+v", direct, encrypted, sync.Rooms.Invite[room.RoomID])
	}
	var out map[string]any
	if st := call(t, b, "POST", "/_matrix/client/v3/join/"+url.PathEscape(room.RoomID), bob, map[string]any{}, &out); st != 200 {
		t.Fatalf("join after the invite: %d %v", st, out)
	}
	if !joined(t, b, bob, room.RoomID, aliceID) {
		t.Fatal("after the join, B must show alice joined")
	}
	eventually(t, "A to see bob joined", func() bool { return joined(t, a, alice, room.RoomID, bobID) })

	var e struct {
		Errcode string `json:"errcode"`
	}
	if st := call(t, a, "POST", "/_matrix/client/v3/createRoom", alice, map[string]any{"invite": []string{"@carol:127.0.0.1:1"}}, &e); st == 200 || e.Errcode == "" {
		t.Fatalf("createRoom inviting a user of an unreachable server: %d %+v", st, e)
	}
}

// A user of B rejects an invite to a room B does not hold: the leave goes
// through the inviter's server (make_leave, send_leave), A shows bob's
// membership as leave, and the invite leaves bob's /sync on B.
func TestRejectInviteAcrossServers(t *testing.T) {
	ca := testca.New(t)
	a, b := start(t, ca), start(t, ca)
	alice := register(t, a, "alice")
	bob := register(t, b, "bob")
	bobID := "@bob:" + b.name
	var room struct {
		RoomID string `json:"room_id"`
	}
	if st := call(t, a, "POST", "/_matrix/client/v3/createRoom", alice, map[string]any{"preset": "private_chat", "invite": []string{bobID}}, &room); st != 200 {
		t.Fatalf("createRoom: %d", st)
	}
	var sync struct {
		Rooms struct {
			Invite map[string]json.RawMessage `json:"invite"`
			Leave  map[string]json.RawMessage `json:"leave"`
		} `json:"rooms"`
	}
	eventually(t, "the invite in bob's /sync", func() bool {
		call(t, b, "GET", "/_matrix/client/v3/sync?timeout=0", bob, nil, &sync)
		_, ok := sync.Rooms.Invite[room.RoomID]
		return ok
	})
	var out map[string]any
	if st := call(t, b, "POST", "/_matrix/client/v3/rooms/"+url.PathEscape(room.RoomID)+"/leave", bob, map[string]any{}, &out); st != 200 {
		t.Fatalf("rejecting the invite: %d %v\nB:\n%s", st, out, b.Logs())
	}
	if m := membership(t, a, alice, room.RoomID, bobID); m != "leave" {
		t.Fatalf("bob's membership on A after rejecting: %q", m)
	}
	sync.Rooms.Invite, sync.Rooms.Leave = nil, nil
	call(t, b, "GET", "/_matrix/client/v3/sync?timeout=0", bob, nil, &sync)
	if _, ok := sync.Rooms.Invite[room.RoomID]; ok {
		t.Fatalf("the rejected invite is still in bob's /sync: %s", sync.Rooms.Invite[room.RoomID])
	}
	// Leaving again is a no-op.
	if st := call(t, b, "POST", "/_matrix/client/v3/rooms/"+url.PathEscape(room.RoomID)+"/leave", bob, map[string]any{}, &out); st != 200 {
		t.Fatalf("leaving again: %d %v", st, out)
	}
}
