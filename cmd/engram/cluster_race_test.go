package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestClusterRacesThroughForwarding: on a three-node cluster, clients on
// every node at once (two of them writing through forwarding) claim the
// same alias, register with the last use of a registration token, claim
// the last one-time key of a device and send into one room. Exactly one
// alias claim, one registration and one key claim win; the losers get the
// spec's errors (409 M_UNKNOWN, 401 M_FORBIDDEN, an empty claim); every
// node answers with the same winners; the room's events form a single
// chain (each message's only prev_event is the event before it in the
// log); and after the cluster stops, every node's projections match a
// replay of its log and each other (engram verify digests).
func TestClusterRacesThroughForwarding(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a three-node cluster")
	}
	c := newServeCluster(t, "enable_registration: true\nregistration_requires_token: true\n")
	l := c.leader()
	for _, u := range []string{"alice", "bob"} {
		if o, e, code := runTool(t, c.dirs[l], nil, "register-user", "--config", c.cfgs[l], "--user", u, "--password", "pw-"+u, "--admin"); code != 0 {
			t.Fatalf("register-user %s: %d\n%s\n%s", u, code, o, e)
		}
	}
	// One client of alice per node, each with its own session.
	var clients []*rebuildClient
	for i := range c.listen {
		clients = append(clients, newRebuildClient(t, c.listen[i], "alice"))
	}
	room := clients[l].createRoom(map[string]any{"preset": "public_chat"})
	var claimRooms []string
	for _, cl := range clients {
		claimRooms = append(claimRooms, cl.createRoom(map[string]any{"preset": "public_chat"}))
	}

	// Every node claims #race for a room of its own, at once.
	alias := "#race:test.local"
	statuses := make([]int, 3)
	bodies := make([][]byte, 3)
	race(func(i int) {
		statuses[i], bodies[i] = clients[i].raw("PUT", "/directory/room/"+url.PathEscape(alias), map[string]any{"room_id": claimRooms[i]})
	})
	winner := -1
	for i, st := range statuses {
		switch {
		case st == http.StatusOK:
			if winner >= 0 {
				t.Fatalf("two alias claims won: n%d and n%d", winner+1, i+1)
			}
			winner = i
		case st != http.StatusConflict || errcode(bodies[i]) != "M_UNKNOWN":
			t.Fatalf("alias claim on n%d = %d %s, want 200 or 409 M_UNKNOWN", i+1, st, bodies[i])
		}
	}
	if winner < 0 {
		t.Fatalf("no alias claim won: %v", statuses)
	}
	for i, cl := range clients {
		var out struct {
			RoomID string `json:"room_id"`
		}
		cl.ok("GET", "/directory/room/"+url.PathEscape(alias), nil, &out)
		if out.RoomID != claimRooms[winner] {
			t.Fatalf("n%d resolves %s to %s, want the winner's %s", i+1, alias, out.RoomID, claimRooms[winner])
		}
	}

	// A registration token with one use left, used by three
	// registrations at once, one per node.
	admin := clients[l]
	var tok struct {
		Token string `json:"token"`
	}
	adminOK(t, admin, "POST", "/_synapse/admin/v1/registration_tokens/new", map[string]any{"uses_allowed": 1}, &tok)
	race(func(i int) {
		statuses[i], bodies[i] = registerWithToken(t, c.listen[i], fmt.Sprintf("racer%d", i), tok.Token)
	})
	registered := -1
	for i, st := range statuses {
		switch {
		case st == http.StatusOK:
			if registered >= 0 {
				t.Fatalf("the last use of a token registered two accounts: racer%d and racer%d", registered, i)
			}
			registered = i
		case st != http.StatusUnauthorized || errcode(bodies[i]) != "M_FORBIDDEN":
			t.Fatalf("registration on n%d = %d %s, want 200 or 401 M_FORBIDDEN", i+1, st, bodies[i])
		}
	}
	if registered < 0 {
		t.Fatalf("no registration won the last use of the token: %v %q", statuses, bodies)
	}
	for i := range c.listen {
		for j := 0; j < 3; j++ {
			want := http.StatusOK
			if j != registered {
				want = http.StatusForbidden
			}
			if st := login(t, c.listen[i], fmt.Sprintf("racer%d", j), "pw-racer"); st != want {
				t.Fatalf("login of racer%d on n%d = %d, want %d", j, i+1, st, want)
			}
		}
	}

	// bob's device has one one-time key, claimed by three nodes at once.
	bob := newRebuildClient(t, c.listen[(l+1)%3], "bob")
	var who struct {
		DeviceID string `json:"device_id"`
	}
	bob.ok("GET", "/account/whoami", nil, &who)
	bob.ok("POST", "/keys/upload", map[string]any{"one_time_keys": map[string]any{"curve25519:AAAAAQ": "bGFzdCBvbmUtdGltZSBrZXkgb2YgYm9i"}}, nil)
	claimed := make([]int, 3)
	race(func(i int) {
		var out struct {
			OneTimeKeys map[string]map[string]map[string]any `json:"one_time_keys"`
		}
		clients[i].ok("POST", "/keys/claim", map[string]any{"one_time_keys": map[string]any{bob.user: map[string]string{who.DeviceID: "curve25519"}}}, &out)
		claimed[i] = len(out.OneTimeKeys[bob.user][who.DeviceID])
	})
	if n := claimed[0] + claimed[1] + claimed[2]; n != 1 {
		t.Fatalf("the last one-time key was handed out %d times (per node %v), want once", n, claimed)
	}

	// Concurrent sends into one room from every node.
	const perNode = 15
	sent := make([][]string, 3)
	race(func(i int) {
		for j := 0; j < perNode; j++ {
			sent[i] = append(sent[i], clients[i].send(room, "m.room.message", map[string]any{"msgtype": "m.text", "body": fmt.Sprintf("n%d-%d", i+1, j)}))
		}
	})
	c.settle()
	race(c.stop)
	chain := roomChain(t, c.dirs[l], c.cfgs[l], room)
	want := map[string]bool{}
	for _, ids := range sent {
		for _, id := range ids {
			want[id] = true
		}
	}
	for i := 1; i < len(chain); i++ {
		if p := chain[i].prev; len(p) != 1 || p[0] != chain[i-1].id {
			t.Fatalf("event %d of the room (%s) has prev_events %v, want only %s: the room forked", i, chain[i].id, p, chain[i-1].id)
		}
		delete(want, chain[i].id)
	}
	if len(want) != 0 {
		t.Fatalf("%d acknowledged sends are not in the room's log: %v", len(want), want)
	}
	t.Logf("leader n%d; alias won by n%d, token by n%d, the key claimed per node %v; %d room events in one chain", l+1, winner+1, registered+1, claimed, len(chain))

	// Every node folded the same result, and it is what a replay gives.
	digests := regexp.MustCompile(`(?m)^(\S+)\s+ok\s+([0-9a-f]+)$`)
	var first string
	for i := range c.dirs {
		o, e, code := runTool(t, c.dirs[i], nil, "verify", "--config", c.cfgs[i])
		if code != 0 || !strings.Contains(o, "all projections match") {
			t.Fatalf("verify on n%d: %d\n%s\n%s", i+1, code, o, e)
		}
		var got strings.Builder
		if m := regexp.MustCompile(`replay of the log at offset (\d+)|at offset (\d+)`).FindString(o); m != "" {
			fmt.Fprintf(&got, "%s\n", m)
		}
		for _, m := range digests.FindAllStringSubmatch(o, -1) {
			fmt.Fprintf(&got, "%s %s\n", m[1], m[2])
		}
		if i == 0 {
			first = got.String()
		} else if got.String() != first {
			t.Fatalf("n%d folded other projections than n1:\n%s\nn1:\n%s", i+1, got.String(), first)
		}
	}
}

// settle waits until every node's log holds the same last offset (what
// `engram cluster status` says), so that the nodes stopped at once hold
// the same log and their digests can be compared.
func (c *serveCluster) settle() {
	c.t.Helper()
	offset := regexp.MustCompile(`log offset (\d+)`)
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		seen := map[string]bool{}
		for i := range c.dirs {
			o, _, _ := runTool(c.t, c.dirs[i], nil, "cluster", "status", "--config", c.cfgs[i])
			m := offset.FindStringSubmatch(o)
			if m == nil {
				c.t.Fatalf("cluster status on n%d: %s", i+1, o)
			}
			seen[m[1]] = true
		}
		if len(seen) == 1 {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("the nodes' logs still end at different offsets after 20 s: %v", seen)
		}
	}
}

// race runs f(0), f(1) and f(2) at once.
func race(f func(i int)) {
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := 0; i < 3; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			f(i)
		}()
	}
	close(start)
	wg.Wait()
}

func errcode(body []byte) string {
	var e struct {
		Errcode string `json:"errcode"`
	}
	_ = json.Unmarshal(body, &e)
	return e.Errcode
}

// adminOK calls an admin API path (outside /_matrix/client/v3) as c.
func adminOK(t *testing.T, c *rebuildClient, method, path string, body, out any) {
	t.Helper()
	b, _ := json.Marshal(body)
	req, _ := http.NewRequest(method, strings.TrimSuffix(c.base, "/_matrix/client/v3")+path, bytes.NewReader(b))
	req.Header.Set("Authorization", "Bearer "+c.token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("%s %s: %d %s", method, path, resp.StatusCode, raw)
	}
	if err := json.Unmarshal(raw, out); err != nil {
		t.Fatalf("%s %s: %v in %s", method, path, err, raw)
	}
}

// registerWithToken registers localpart (password "pw-racer") through
// the m.login.registration_token stage and returns the final answer.
func registerWithToken(t *testing.T, listen, localpart, token string) (int, []byte) {
	t.Helper()
	post := func(body map[string]any) (int, []byte) {
		b, _ := json.Marshal(body)
		resp, err := http.Post("http://"+listen+"/_matrix/client/v3/register", "application/json", bytes.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		raw, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, raw
	}
	req := map[string]any{"username": localpart, "password": "pw-racer"}
	st, raw := post(req)
	var uia struct {
		Session string `json:"session"`
	}
	if st != http.StatusUnauthorized || json.Unmarshal(raw, &uia) != nil || uia.Session == "" {
		t.Fatalf("register %s without auth = %d %s, want 401 with a session", localpart, st, raw)
	}
	req["auth"] = map[string]any{"type": "m.login.registration_token", "token": token, "session": uia.Session}
	return post(req)
}

type chainEvent struct {
	id   string
	prev []string
}

// roomChain reads the room's events from the node's log (engram log
// tail, the node stopped), in log order.
func roomChain(t *testing.T, dir, cfg, room string) []chainEvent {
	t.Helper()
	o, e, code := runTool(t, dir, nil, "log", "--config", cfg, "tail", "-n", "100000")
	if code != 0 {
		t.Fatalf("engram log tail: %d\n%s", code, e)
	}
	var chain []chainEvent
	sc := bufio.NewScanner(strings.NewReader(o))
	sc.Buffer(nil, 1<<24)
	for sc.Scan() {
		var entry struct {
			Kind    string `json:"kind"`
			Payload struct {
				EventID string `json:"event_id"`
				Event   struct {
					RoomID     string   `json:"room_id"`
					PrevEvents []string `json:"prev_events"`
				} `json:"event"`
			} `json:"payload"`
		}
		if err := json.Unmarshal(sc.Bytes(), &entry); err != nil {
			t.Fatalf("engram log tail printed %q: %v", sc.Text(), err)
		}
		if entry.Kind == "pdu" && entry.Payload.Event.RoomID == room {
			chain = append(chain, chainEvent{id: entry.Payload.EventID, prev: entry.Payload.Event.PrevEvents})
		}
	}
	if len(chain) == 0 {
		t.Fatalf("no event of %s in the log:\n%.2000s", room, o)
	}
	return chain
}
