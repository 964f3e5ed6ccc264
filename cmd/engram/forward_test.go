package main

import (
	"net/http"
	"net/url"
	"strings"
	"testing"
)

// TestFollowersForwardWrites: on a three-node cluster, every write works
// through a follower (shared-secret registration, login, createRoom,
// join, send, logout), and a read right after a write sees it, on the
// same follower and on the other one (read-your-writes).
func TestFollowersForwardWrites(t *testing.T) {
	c := newServeCluster(t, "")
	l := c.leader()
	f1, f2 := (l+1)%3, (l+2)%3

	// register-user asks a nonce and posts the registration: both reach
	// the leader through the follower.
	for _, u := range []string{"alice", "bob"} {
		if o, e, code := runTool(t, c.dirs[f1], nil, "register-user", "--config", c.cfgs[f1], "--user", u, "--password", "pw-"+u); code != 0 {
			t.Logf("%s", c.procs[f1].stderr)
			t.Fatalf("register-user %s through a follower: %d\n%s\n%s", u, code, o, e)
		}
	}
	alice := newRebuildClient(t, c.listen[f1], "alice")
	// A session made through one follower works at once on the other.
	bob := newRebuildClient(t, c.listen[f1], "bob")
	bob.base = strings.Replace(bob.base, c.listen[f1], c.listen[f2], 1)
	bob.ok("GET", "/account/whoami", nil, nil)

	room := alice.createRoom(map[string]any{"preset": "public_chat", "name": "forwarded"})
	bob.ok("POST", "/join/"+url.PathEscape(room), map[string]any{}, nil)
	for i := 0; i < 20; i++ {
		// Each event is readable at once where it was sent and on the
		// other follower.
		id := alice.send(room, "m.room.message", map[string]any{"msgtype": "m.text", "body": "hello"})
		if st, body := alice.raw("GET", "/rooms/"+url.PathEscape(room)+"/event/"+url.PathEscape(id), nil); st != http.StatusOK {
			t.Fatalf("send %d: GET of the event on the follower that took it: %d %s", i, st, body)
		}
		if st, body := bob.raw("GET", "/rooms/"+url.PathEscape(room)+"/event/"+url.PathEscape(id), nil); st != http.StatusOK {
			t.Fatalf("send %d: GET of the event on the other follower: %d %s", i, st, body)
		}
		id = bob.send(room, "m.room.message", map[string]any{"msgtype": "m.text", "body": "hi"})
		if st, body := alice.raw("GET", "/rooms/"+url.PathEscape(room)+"/event/"+url.PathEscape(id), nil); st != http.StatusOK {
			t.Fatalf("send %d by bob: GET on the other follower: %d %s", i, st, body)
		}
	}
	var msgs struct {
		Chunk []struct {
			Type string `json:"type"`
		} `json:"chunk"`
	}
	alice.ok("GET", "/rooms/"+url.PathEscape(room)+"/messages?dir=b&limit=100", nil, &msgs)
	n := 0
	for _, e := range msgs.Chunk {
		if e.Type == "m.room.message" {
			n++
		}
	}
	if n != 40 {
		t.Fatalf("/messages on a follower shows %d messages, want 40", n)
	}
	// A logout through a follower ends the session everywhere at once.
	bob.ok("POST", "/logout", map[string]any{}, nil)
	if st, _ := bob.raw("GET", "/account/whoami", nil); st != http.StatusUnauthorized {
		t.Fatalf("whoami after logout on the follower: %d", st)
	}
	bob.base = "http://" + c.listen[l] + "/_matrix/client/v3"
	if st, _ := bob.raw("GET", "/account/whoami", nil); st != http.StatusUnauthorized {
		t.Fatalf("whoami after logout on the leader: %d", st)
	}
	for i := range c.procs {
		if s := c.procs[i].stderr.String(); strings.Contains(s, "could not record presence") {
			t.Fatalf("n%d could not record presence (a follower's own appends are forwarded too):\n%s", i+1, s)
		}
	}
}
