package e2e

import (
	"encoding/json"
	"net/url"
	"testing"

	"github.com/engram-hs/engram/internal/testca"
)

// A user of B knocks on a knock room of A that B does not hold: the
// knock goes through A (make_knock, send_knock), A shows bob's membership
// as knock, and bob's /sync on B shows the room under rooms.knock with
// the stripped state A answered with. A join without an invite is 403
// M_FORBIDDEN, also for a knock_restricted room with no allow list.
func TestKnockAcrossServers(t *testing.T) {
	ca := testca.New(t)
	a, b := start(t, ca), start(t, ca)
	alice := register(t, a, "alice")
	bob := register(t, b, "bob")
	bobID := "@bob:" + b.name
	for _, tc := range []struct{ version, rule string }{{"7", "knock"}, {"10", "knock_restricted"}} {
		var room struct {
			RoomID string `json:"room_id"`
		}
		if st := call(t, a, "POST", "/_matrix/client/v3/createRoom", alice, map[string]any{"preset": "private_chat", "room_version": tc.version, "name": "Knock " + tc.rule,
			"initial_state": []any{map[string]any{"type": "m.room.join_rules", "state_key": "", "content": map[string]any{"join_rule": tc.rule}}}}, &room); st != 200 {
			t.Fatalf("createRoom: %d", st)
		}
		via := "?server_name=" + url.QueryEscape(a.name)
		var out struct {
			Errcode string `json:"errcode"`
		}
		if st := call(t, b, "POST", "/_matrix/client/v3/join/"+url.PathEscape(room.RoomID)+via, bob, map[string]any{}, &out); st != 403 || out.Errcode != "M_FORBIDDEN" {
			t.Fatalf("%s: join without invite: %d %+v", tc.rule, st, out)
		}
		var kout map[string]any
		if st := call(t, b, "POST", "/_matrix/client/v3/knock/"+url.PathEscape(room.RoomID)+via, bob, map[string]any{"reason": "let me in"}, &kout); st != 200 {
			t.Fatalf("%s: knock: %d %v\nB:\n%s", tc.rule, st, kout, b.Logs())
		}
		if m := membership(t, a, alice, room.RoomID, bobID); m != "knock" {
			t.Fatalf("%s: bob's membership on A: %q", tc.rule, m)
		}
		var sync struct {
			Rooms struct {
				Knock map[string]struct {
					KnockState struct {
						Events []struct {
							Type    string         `json:"type"`
							Content map[string]any `json:"content"`
						} `json:"events"`
					} `json:"knock_state"`
				} `json:"knock"`
			} `json:"rooms"`
		}
		var raw json.RawMessage
		call(t, b, "GET", "/_matrix/client/v3/sync?timeout=0", bob, nil, &raw)
		_ = json.Unmarshal(raw, &sync)
		k, ok := sync.Rooms.Knock[room.RoomID]
		if !ok {
			t.Fatalf("%s: the room is not under rooms.knock in bob's /sync: %s", tc.rule, raw)
		}
		name, knock := false, false
		for _, e := range k.KnockState.Events {
			name = name || (e.Type == "m.room.name" && e.Content["name"] == "Knock "+tc.rule)
			knock = knock || (e.Type == "m.room.member" && e.Content["membership"] == "knock")
		}
		if !name || !knock {
			t.Fatalf("%s: knock_state lacks the room name or the knock: %s", tc.rule, raw)
		}
	}
}
