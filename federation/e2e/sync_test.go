package e2e

import (
	"encoding/json"
	"net/url"
	"testing"

	"github.com/engram-hs/engram/internal/testca"
)

// A first /sync picks a room's latest events by depth, as Synapse does
// (Complement TestSyncOmitsStateChangeOnFilteredEvents): B, cut off from
// A, changes bob's display name on its view from before A's messages E3
// and E4, and A receives that state event after them. Arrival order puts
// it last, but it sits lower in the DAG than E4. alice's first /sync on
// A, with a timeline of one event that leaves out the event merging the
// fork, shows E4 in the timeline and carries bob's new name in the state
// section, where a client that sees only this sync finds it.
func TestFirstSyncOrdersForkByDepth(t *testing.T) {
	ca := testca.New(t)
	a, b := start(t, ca), start(t, ca)
	alice, bob, roomID := joinedPair(t, a, b)
	bobID := "@bob:" + b.name
	send := func(s server, token, typ, body string) string {
		t.Helper()
		var out struct {
			EventID string `json:"event_id"`
		}
		if st := call(t, s, "PUT", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/send/"+typ+"/"+url.PathEscape(body), token, map[string]string{"msgtype": "m.text", "body": body}, &out); st != 200 {
			t.Fatalf("%q on %s: %d", body, s.name, st)
		}
		return out.EventID
	}
	send(a, alice, "m.room.message", "E1")
	eventually(t, "E1 on B", func() bool { return hasMessage(t, b, bob, roomID, "E1") })

	b.Stop()
	send(a, alice, "m.room.message", "E3")
	e4 := send(a, alice, "m.room.message", "E4")
	a.Stop()
	b = startAt(t, ca, b.name, b.DataDir)
	var s2 struct {
		EventID string `json:"event_id"`
	}
	if st := call(t, b, "PUT", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/state/m.room.member/"+url.PathEscape(bobID), bob, map[string]string{"membership": "join", "displayname": "S2"}, &s2); st != 200 {
		t.Fatalf("bob's display name on B: %d", st)
	}
	a = startAt(t, ca, a.name, a.DataDir)
	eventually(t, "bob's new name on A", func() bool {
		var m struct {
			DisplayName string `json:"displayname"`
		}
		st := call(t, a, "GET", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/state/m.room.member/"+url.PathEscape(bobID), alice, nil, &m)
		return st == 200 && m.DisplayName == "S2"
	})
	send(a, alice, "please_filter_me", "E5")

	filter := `{"room":{"timeline":{"not_types":["please_filter_me"],"limit":1}}}`
	var res struct {
		Rooms struct {
			Join map[string]struct {
				Timeline struct {
					Events []struct {
						EventID string `json:"event_id"`
					} `json:"events"`
					Limited bool `json:"limited"`
				} `json:"timeline"`
				State struct {
					Events []struct {
						EventID string `json:"event_id"`
					} `json:"events"`
				} `json:"state"`
			} `json:"join"`
		} `json:"rooms"`
	}
	var raw json.RawMessage
	if st := call(t, a, "GET", "/_matrix/client/v3/sync?timeout=0&filter="+url.QueryEscape(filter), alice, nil, &raw); st != 200 {
		t.Fatalf("sync: %d %s", st, raw)
	}
	if err := json.Unmarshal(raw, &res); err != nil {
		t.Fatal(err)
	}
	room := res.Rooms.Join[roomID]
	if len(room.Timeline.Events) != 1 || room.Timeline.Events[0].EventID != e4 || !room.Timeline.Limited {
		t.Fatalf("timeline: want E4 (%s) alone, limited; sync: %s", e4, raw)
	}
	found := false
	for _, e := range room.State.Events {
		found = found || e.EventID == s2.EventID
	}
	if !found {
		t.Fatalf("state section lacks bob's new name (%s); sync: %s", s2.EventID, raw)
	}
}
