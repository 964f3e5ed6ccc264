package e2e

import (
	"fmt"
	"maps"
	"net/url"
	"testing"

	"github.com/engram-hs/engram/internal/testca"
)

// Three servers in one room, driven through their client APIs, and a real
// fork: B goes down and A changes the topic and the power levels; then A
// goes down and B, back up on its stale view, changes them too (its
// events fork from before A's). C sees both branches as they happen, and
// once A is back each server's queue delivers what the other missed. All
// three end with the same resolved state (same event IDs), holding one
// of the two branches' topic and power levels.
func TestForkAcrossThreeServers(t *testing.T) {
	ca := testca.New(t)
	a, b, c := start(t, ca), start(t, ca), start(t, ca)
	alice, bob, roomID := joinedPair(t, a, b)
	carol := register(t, c, "carol")
	aliceID, bobID, carolID := "@alice:"+a.name, "@bob:"+b.name, "@carol:"+c.name
	if st := call(t, c, "POST", "/_matrix/client/v3/join/"+url.PathEscape("#edus:"+a.name), carol, map[string]any{}, nil); st != 200 {
		t.Fatalf("carol's join: %d", st)
	}
	for _, s := range []struct {
		s     server
		token string
	}{{a, alice}, {b, bob}, {c, carol}} {
		eventually(t, "all three joined on "+s.s.name, func() bool {
			return joined(t, s.s, s.token, roomID, aliceID) && joined(t, s.s, s.token, roomID, bobID) && joined(t, s.s, s.token, roomID, carolID)
		})
	}
	pl := func(extra string) map[string]any {
		users := map[string]any{aliceID: 100, bobID: 100}
		if extra != "" {
			users[extra] = 50
		}
		return map[string]any{"users": users, "users_default": 0, "events_default": 0, "state_default": 50, "ban": 50, "kick": 50, "redact": 50, "invite": 0}
	}
	put := func(s server, token, typ string, content any) {
		t.Helper()
		if st := call(t, s, "PUT", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/state/"+typ+"/", token, content, nil); st != 200 {
			t.Fatalf("%s on %s: %d", typ, s.name, st)
		}
	}
	say := func(s server, token, body string) {
		t.Helper()
		if st := call(t, s, "PUT", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/send/m.room.message/"+url.PathEscape(body), token, map[string]string{"msgtype": "m.text", "body": body}, nil); st != 200 {
			t.Fatalf("%q on %s: %d", body, s.name, st)
		}
	}
	put(a, alice, "m.room.power_levels", pl(""))
	say(a, alice, "bob is an admin")
	eventually(t, "B and C see bob made admin", func() bool {
		return hasMessage(t, b, bob, roomID, "bob is an admin") && hasMessage(t, c, carol, roomID, "bob is an admin")
	})

	// B down: A's branch.
	b.Stop()
	put(a, alice, "m.room.topic", map[string]string{"topic": "from A"})
	put(a, alice, "m.room.power_levels", pl("@ann:"+a.name))
	say(a, alice, "A's branch")
	eventually(t, "A's branch on C", func() bool { return hasMessage(t, c, carol, roomID, "A's branch") })

	// A down, B back: B's branch, on B's view from before A's.
	a.Stop()
	b = startAt(t, ca, b.name, b.DataDir)
	put(b, bob, "m.room.topic", map[string]string{"topic": "from B"})
	put(b, bob, "m.room.power_levels", pl("@ben:"+b.name))
	say(b, bob, "B's branch")
	eventually(t, "B's branch on C", func() bool { return hasMessage(t, c, carol, roomID, "B's branch") })

	// The heal.
	a = startAt(t, ca, a.name, a.DataDir)
	eventually(t, "B's branch on A", func() bool { return hasMessage(t, a, alice, roomID, "B's branch") })
	eventually(t, "A's branch on B", func() bool { return hasMessage(t, b, bob, roomID, "A's branch") })
	var sa, sb, sc map[string]string
	eventually(t, "the same resolved state on all three", func() bool {
		sa, sb, sc = roomState(t, a, alice, roomID), roomState(t, b, bob, roomID), roomState(t, c, carol, roomID)
		return len(sa) > 0 && maps.Equal(sa, sb) && maps.Equal(sa, sc)
	})
	var topic struct {
		Topic string `json:"topic"`
	}
	call(t, c, "GET", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/state/m.room.topic/", carol, nil, &topic)
	var levels struct {
		Users map[string]int `json:"users"`
	}
	call(t, c, "GET", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/state/m.room.power_levels/", carol, nil, &levels)
	_, ann := levels.Users["@ann:"+a.name]
	_, ben := levels.Users["@ben:"+b.name]
	if (topic.Topic != "from A" && topic.Topic != "from B") || ann == ben {
		t.Fatalf("resolved topic %q and power levels %v: want one branch's of each", topic.Topic, levels.Users)
	}
	t.Logf("resolved: topic %q, power levels %v", topic.Topic, levels.Users)

	// A message after the heal reaches everyone, on top of both branches.
	say(c, carol, "healed")
	for _, s := range []struct {
		s     server
		token string
	}{{a, alice}, {b, bob}} {
		eventually(t, fmt.Sprintf("the message after the heal on %s", s.s.name), func() bool { return hasMessage(t, s.s, s.token, roomID, "healed") })
	}
}
