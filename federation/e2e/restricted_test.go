package e2e

import (
	"net/url"
	"testing"

	"github.com/engram-hs/engram/internal/testca"
)

// A restricted room of A (members of an allowed room may join), B and C
// in it. charlie of C left the restricted room, so C holds a stale copy
// naming A and B. B's only user then leaves the allowed room, so B can
// no longer tell whether charlie may join. charlie's rejoin through B
// alone fails (B cannot authorise it) instead of C quietly joining
// through A, a server of its stale copy that the client did not name;
// through B then A it succeeds, authorised by A.
func TestRestrictedRejoinGoesOnlyThroughTheNamedServers(t *testing.T) {
	ca := testca.New(t)
	a, b, c := start(t, ca), start(t, ca), start(t, ca)
	alice := register(t, a, "alice")
	bob := register(t, b, "bob")
	charlie := register(t, c, "charlie")
	bobID, charlieID := "@bob:"+b.name, "@charlie:"+c.name
	var allowed, room struct {
		RoomID string `json:"room_id"`
	}
	if st := call(t, a, "POST", "/_matrix/client/v3/createRoom", alice, map[string]any{"preset": "public_chat", "room_version": "10"}, &allowed); st != 200 {
		t.Fatalf("createRoom (allowed): %d", st)
	}
	if st := call(t, a, "POST", "/_matrix/client/v3/createRoom", alice, map[string]any{
		"preset": "public_chat", "room_version": "10",
		"initial_state": []map[string]any{{"type": "m.room.join_rules", "state_key": "", "content": map[string]any{
			"join_rule": "restricted",
			"allow":     []map[string]any{{"type": "m.room_membership", "room_id": allowed.RoomID}},
		}}},
	}, &room); st != 200 {
		t.Fatalf("createRoom (restricted): %d", st)
	}
	var out struct {
		Errcode string `json:"errcode"`
		Error   string `json:"error"`
	}
	join := func(s server, token, roomID string, via ...string) int {
		t.Helper()
		q := url.Values{"server_name": via}
		out.Errcode, out.Error = "", ""
		return call(t, s, "POST", "/_matrix/client/v3/join/"+url.PathEscape(roomID)+"?"+q.Encode(), token, map[string]any{}, &out)
	}
	for _, r := range []string{allowed.RoomID, room.RoomID} {
		if st := join(b, bob, r, a.name); st != 200 {
			t.Fatalf("bob joins %s through A: %d %+v", r, st, out)
		}
		if st := join(c, charlie, r, a.name); st != 200 {
			t.Fatalf("charlie joins %s through A: %d %+v", r, st, out)
		}
	}
	if st := call(t, c, "POST", "/_matrix/client/v3/rooms/"+url.PathEscape(room.RoomID)+"/leave", charlie, map[string]any{}, nil); st != 200 {
		t.Fatalf("charlie leaves: %d", st)
	}
	eventually(t, "A and B to see charlie's leave", func() bool {
		return membership(t, a, alice, room.RoomID, charlieID) == "leave" && membership(t, b, bob, room.RoomID, charlieID) == "leave"
	})
	if st := call(t, b, "POST", "/_matrix/client/v3/rooms/"+url.PathEscape(allowed.RoomID)+"/leave", bob, map[string]any{}, nil); st != 200 {
		t.Fatalf("bob leaves the allowed room: %d", st)
	}
	eventually(t, "A to see bob's leave of the allowed room", func() bool {
		return membership(t, a, alice, allowed.RoomID, bobID) == "leave"
	})

	if st := join(c, charlie, room.RoomID, b.name); st != 400 || out.Errcode != "M_UNABLE_TO_GRANT_JOIN" {
		t.Fatalf("charlie's rejoin through B alone: %d %+v, want 400 M_UNABLE_TO_GRANT_JOIN (B cannot authorise it, and the client named no other server)\nC's log:\n%s", st, out, c.Logs())
	}
	if membership(t, a, alice, room.RoomID, charlieID) != "leave" {
		t.Fatal("A shows charlie joined after a join that failed")
	}
	if st := join(c, charlie, room.RoomID, b.name, a.name); st != 200 {
		t.Fatalf("charlie's rejoin through B then A: %d %+v", st, out)
	}
	if !joined(t, a, alice, room.RoomID, charlieID) {
		t.Fatal("A does not show charlie joined")
	}
}
