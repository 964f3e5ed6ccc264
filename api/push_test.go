package api_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/engram-hs/engram/api"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
	"maunium.net/go/mautrix/pushrules"
)

// gatewayRecorder is a push gateway on 127.0.0.1 that records every
// notify body it is sent. fail makes it answer 500 to the next n
// requests; reject makes it report a pushkey as rejected.
type gatewayRecorder struct {
	srv *httptest.Server

	mu     sync.Mutex
	bodies []map[string]any
	fail   int
	reject map[string]bool
	got    chan struct{}
}

func newGateway(t *testing.T) *gatewayRecorder {
	g := &gatewayRecorder{reject: map[string]bool{}, got: make(chan struct{}, 100)}
	g.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/_matrix/push/v1/notify" || r.Method != "POST" {
			http.Error(w, "not here", 404)
			return
		}
		raw, _ := io.ReadAll(r.Body)
		var body map[string]any
		if err := json.Unmarshal(raw, &body); err != nil {
			http.Error(w, "bad json", 400)
			return
		}
		g.mu.Lock()
		if g.fail > 0 {
			g.fail--
			g.mu.Unlock()
			http.Error(w, "down", 500)
			return
		}
		g.bodies = append(g.bodies, body)
		rejected := []string{}
		for _, d := range body["notification"].(map[string]any)["devices"].([]any) {
			if k := d.(map[string]any)["pushkey"].(string); g.reject[k] {
				rejected = append(rejected, k)
			}
		}
		g.mu.Unlock()
		g.got <- struct{}{}
		_ = json.NewEncoder(w).Encode(map[string]any{"rejected": rejected})
	}))
	t.Cleanup(g.srv.Close)
	return g
}

func (g *gatewayRecorder) url() string { return g.srv.URL + "/_matrix/push/v1/notify" }

// waitFor returns the first recorded notification (since the start)
// about eventID for pushkey, failing the test after a timeout.
func (g *gatewayRecorder) waitFor(t *testing.T, eventID id.EventID, pushkey string) map[string]any {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		g.mu.Lock()
		for _, b := range g.bodies {
			n := b["notification"].(map[string]any)
			if n["event_id"] == eventID.String() && n["devices"].([]any)[0].(map[string]any)["pushkey"] == pushkey {
				g.mu.Unlock()
				return n
			}
		}
		g.mu.Unlock()
		select {
		case <-g.got:
		case <-deadline:
			t.Fatalf("the gateway was never sent %s", eventID)
		}
	}
}

func setPusher(t *testing.T, ts *testServer, c *mautrix.Client, body map[string]any) (int, map[string]any) {
	t.Helper()
	return ts.do("POST", "/_matrix/client/v3/pushers/set", c.AccessToken, body)
}

func httpPusher(appID, pushkey, url string, data map[string]any) map[string]any {
	if data == nil {
		data = map[string]any{}
	}
	data["url"] = url
	return map[string]any{"kind": "http", "app_id": appID, "pushkey": pushkey, "app_display_name": "App",
		"device_display_name": "Phone", "lang": "en", "data": data}
}

func pushkeys(t *testing.T, ts *testServer, c *mautrix.Client) []string {
	t.Helper()
	code, body := ts.do("GET", "/_matrix/client/v3/pushers", c.AccessToken, nil)
	if code != 200 {
		t.Fatalf("GET /pushers: %d %v", code, body)
	}
	var out []string
	for _, p := range body["pushers"].([]any) {
		out = append(out, p.(map[string]any)["pushkey"].(string))
	}
	return out
}

func TestPushersSetAndGet(t *testing.T) {
	ts := startServer(t)
	alice, bob := ts.register("alice"), ts.register("bob")
	const url = "http://127.0.0.1:1/_matrix/push/v1/notify"
	for _, c := range []struct {
		name string
		body map[string]any
		code string
	}{
		{"no kind", map[string]any{"app_id": "a", "pushkey": "k"}, "M_MISSING_PARAM"},
		{"no lang", func() map[string]any { b := httpPusher("a", "k", url, nil); delete(b, "lang"); return b }(), "M_MISSING_PARAM"},
		{"no data", func() map[string]any { b := httpPusher("a", "k", url, nil); delete(b, "data"); return b }(), "M_MISSING_PARAM"},
		{"no url", func() map[string]any { b := httpPusher("a", "k", url, nil); b["data"] = map[string]any{}; return b }(), "M_MISSING_PARAM"},
		{"wrong path", httpPusher("a", "k", "http://127.0.0.1:1/notify", nil), "M_INVALID_PARAM"},
		{"not a URL", httpPusher("a", "k", "push-gateway", nil), "M_INVALID_PARAM"},
		{"unknown kind", func() map[string]any { b := httpPusher("a", "k", url, nil); b["kind"] = "carrier-pigeon"; return b }(), "M_INVALID_PARAM"},
		{"long app_id", httpPusher(string(make([]byte, 65)), "k", url, nil), "M_INVALID_PARAM"},
	} {
		if code, body := setPusher(t, ts, alice, c.body); code != 400 || body["errcode"] != c.code {
			t.Errorf("%s: %d %v, want 400 %s", c.name, code, body, c.code)
		}
	}
	if ks := pushkeys(t, ts, alice); len(ks) != 0 {
		t.Fatalf("refused pushers were stored: %v", ks)
	}

	p := httpPusher("com.example.app", "key1", url, map[string]any{"format": "event_id_only", "custom": 1})
	p["profile_tag"] = "tag"
	if code, body := setPusher(t, ts, alice, p); code != 200 {
		t.Fatalf("set: %d %v", code, body)
	}
	code, body := ts.do("GET", "/_matrix/client/v3/pushers", alice.AccessToken, nil)
	if code != 200 {
		t.Fatal(code, body)
	}
	got := body["pushers"].([]any)[0].(map[string]any)
	for k, want := range map[string]any{"pushkey": "key1", "kind": "http", "app_id": "com.example.app", "app_display_name": "App",
		"device_display_name": "Phone", "lang": "en", "profile_tag": "tag"} {
		if got[k] != want {
			t.Errorf("pusher %s = %v, want %v", k, got[k], want)
		}
	}
	if d := got["data"].(map[string]any); d["url"] != url || d["format"] != "event_id_only" || d["custom"] != float64(1) {
		t.Errorf("pusher data %v", d)
	}

	// The same app ID and pushkey for bob, without append, takes it
	// from alice; with append, both keep it.
	if code, body := setPusher(t, ts, bob, httpPusher("com.example.app", "key1", url, nil)); code != 200 {
		t.Fatal(code, body)
	}
	if ks := pushkeys(t, ts, alice); len(ks) != 0 {
		t.Fatalf("alice kept a pushkey bob set without append: %v", ks)
	}
	withAppend := httpPusher("com.example.app", "key1", url, nil)
	withAppend["append"] = true
	if code, body := setPusher(t, ts, alice, withAppend); code != 200 {
		t.Fatal(code, body)
	}
	if a, b := pushkeys(t, ts, alice), pushkeys(t, ts, bob); len(a) != 1 || len(b) != 1 {
		t.Fatalf("with append: alice %v, bob %v", a, b)
	}

	// kind: null deletes.
	if code, body := setPusher(t, ts, bob, map[string]any{"kind": nil, "app_id": "com.example.app", "pushkey": "key1"}); code != 200 {
		t.Fatal(code, body)
	}
	if ks := pushkeys(t, ts, bob); len(ks) != 0 {
		t.Fatalf("kind null did not delete: %v", ks)
	}
	if ks := pushkeys(t, ts, alice); len(ks) != 1 {
		t.Fatalf("deleting bob's pusher touched alice's: %v", ks)
	}

	// Removing the device that set a pusher removes the pusher.
	ctx := context.Background()
	if _, err := alice.Logout(ctx); err != nil {
		t.Fatal(err)
	}
	alice2, err := mautrix.NewClient(ts.URL, "", "")
	if err != nil {
		t.Fatal(err)
	}
	resp, err := alice2.Login(ctx, &mautrix.ReqLogin{Type: mautrix.AuthTypePassword, Identifier: mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: "alice"}, Password: "pw-alice", StoreCredentials: true})
	if err != nil {
		t.Fatal(err)
	}
	_ = resp
	if ks := pushkeys(t, ts, alice2); len(ks) != 0 {
		t.Fatalf("a logged-out device's pusher is still there: %v", ks)
	}
}

func TestPushGatewayDelivery(t *testing.T) {
	ts := startServer(t, func(c *api.Config) { c.PushRetryMin = 20 * time.Millisecond })
	ts.api.StartPushDelivery()
	ctx := context.Background()
	g := newGateway(t)
	alice, bob, carol := ts.register("alice"), ts.register("bob"), ts.register("carol")
	room, err := bob.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "Mission Control"})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []*mautrix.Client{alice, carol} {
		if _, err := c.JoinRoomByID(ctx, room.RoomID); err != nil {
			t.Fatal(err)
		}
	}
	if code, body := setPusher(t, ts, alice, httpPusher("com.example.app", "alice-key", g.url(), map[string]any{"custom": "x"})); code != 200 {
		t.Fatal(code, body)
	}
	if code, body := setPusher(t, ts, carol, httpPusher("com.example.app", "carol-key", g.url(), map[string]any{"format": "event_id_only"})); code != 200 {
		t.Fatal(code, body)
	}

	// A plain message in a three-member room: notify, no highlight, low
	// priority, the full format with the event's content.
	plain := say(t, bob, room.RoomID, "I'm floating")
	n := g.waitFor(t, plain, "alice-key")
	if n["room_id"] != room.RoomID.String() || n["type"] != "m.room.message" || n["sender"] != bob.UserID.String() || n["prio"] != "low" {
		t.Errorf("full-format notification: %v", n)
	}
	if n["room_name"] != "Mission Control" || n["content"].(map[string]any)["body"] != "I'm floating" {
		t.Errorf("full format lacks room name or content: %v", n)
	}
	dev := n["devices"].([]any)[0].(map[string]any)
	if dev["app_id"] != "com.example.app" || dev["pushkey"] != "alice-key" || dev["pushkey_ts"] == nil {
		t.Errorf("device: %v", dev)
	}
	if d := dev["data"].(map[string]any); d["custom"] != "x" || d["url"] != nil {
		t.Errorf("data sent to the gateway must be the pusher's minus url: %v", d)
	}
	if tw, _ := dev["tweaks"].(map[string]any); tw["highlight"] == true {
		t.Errorf("a plain message highlights: %v", tw)
	}
	if c, _ := n["counts"].(map[string]any); c["unread"] != float64(1) {
		t.Errorf("counts: %v", n["counts"])
	}
	// carol's pusher asked for event_id_only: IDs, counts, prio, devices.
	cn := g.waitFor(t, plain, "carol-key")
	for k := range cn {
		switch k {
		case "event_id", "room_id", "counts", "prio", "devices":
		default:
			t.Errorf("event_id_only notification has %q: %v", k, cn)
		}
	}

	// A mention is a highlight, sent with high priority.
	mention, err := bob.SendMessageEvent(ctx, room.RoomID, event.EventMessage, map[string]any{"msgtype": "m.text", "body": "alice, look",
		"m.mentions": map[string]any{"user_ids": []string{alice.UserID.String()}}})
	if err != nil {
		t.Fatal(err)
	}
	n = g.waitFor(t, mention.EventID, "alice-key")
	if n["prio"] != "high" {
		t.Errorf("mention prio %v", n["prio"])
	}
	if tw := n["devices"].([]any)[0].(map[string]any)["tweaks"].(map[string]any); tw["highlight"] != true {
		t.Errorf("a mention is not a highlight: %v", tw)
	}

	// A muted room (a room rule without actions) sends nothing.
	if err := alice.PutPushRule(ctx, "global", "room", room.RoomID.String(), &mautrix.ReqPutPushRule{Actions: []*pushrules.PushAction{}}); err != nil {
		t.Fatal(err)
	}
	muted := say(t, bob, room.RoomID, "you will not hear this")
	other, err := bob.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat", Invite: []id.UserID{alice.UserID}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := alice.JoinRoomByID(ctx, other.RoomID); err != nil {
		t.Fatal(err)
	}
	after := say(t, bob, other.RoomID, "but this")
	g.waitFor(t, after, "alice-key") // later than muted in alice's queue: muted was skipped, not pending
	for _, b := range g.all() {
		x := b["notification"].(map[string]any)
		if x["event_id"] == muted.String() && x["devices"].([]any)[0].(map[string]any)["pushkey"] == "alice-key" {
			t.Fatal("a muted room's message was pushed")
		}
	}

	// A failing gateway is retried with backoff; nothing is lost.
	g.mu.Lock()
	g.fail = 2
	g.mu.Unlock()
	retried := say(t, bob, other.RoomID, "after the outage")
	g.waitFor(t, retried, "alice-key")

	// A pushkey the gateway rejects is removed.
	g.mu.Lock()
	g.reject["alice-key"] = true
	g.mu.Unlock()
	rejected := say(t, bob, other.RoomID, "rejected")
	g.waitFor(t, rejected, "alice-key")
	deadline := time.Now().Add(10 * time.Second)
	for len(pushkeys(t, ts, alice)) != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("a rejected pushkey was kept: %v", pushkeys(t, ts, alice))
		}
		time.Sleep(20 * time.Millisecond)
	}
	if ks := pushkeys(t, ts, carol); len(ks) != 1 {
		t.Fatalf("carol's pusher went with alice's: %v", ks)
	}
}

func (g *gatewayRecorder) all() []map[string]any {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]map[string]any(nil), g.bodies...)
}

func TestNotificationsEndpoint(t *testing.T) {
	ts := startServer(t)
	ctx := context.Background()
	alice, bob, carol := ts.register("alice"), ts.register("bob"), ts.register("carol")
	room, err := bob.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []*mautrix.Client{alice, carol} {
		if _, err := c.JoinRoomByID(ctx, room.RoomID); err != nil {
			t.Fatal(err)
		}
	}
	first := say(t, bob, room.RoomID, "one")
	mention, err := bob.SendMessageEvent(ctx, room.RoomID, event.EventMessage, map[string]any{"msgtype": "m.text", "body": "hi",
		"m.mentions": map[string]any{"user_ids": []string{alice.UserID.String()}}})
	if err != nil {
		t.Fatal(err)
	}
	third := say(t, bob, room.RoomID, "three")
	listFor := func(c *mautrix.Client, q string) ([]map[string]any, string) {
		t.Helper()
		code, body := ts.do("GET", "/_matrix/client/v3/notifications"+q, c.AccessToken, nil)
		if code != 200 {
			t.Fatalf("GET /notifications%s: %d %v", q, code, body)
		}
		var out []map[string]any
		for _, n := range body["notifications"].([]any) {
			out = append(out, n.(map[string]any))
		}
		next, _ := body["next_token"].(string)
		return out, next
	}
	list := func(q string) ([]map[string]any, string) { t.Helper(); return listFor(alice, q) }
	evID := func(n map[string]any) string { return n["event"].(map[string]any)["event_id"].(string) }
	all, _ := list("")
	if len(all) != 3 || evID(all[0]) != third.String() || evID(all[1]) != mention.EventID.String() || evID(all[2]) != first.String() {
		t.Fatalf("notifications, newest first: %v", all)
	}
	for _, n := range all {
		if n["room_id"] != room.RoomID.String() || n["read"] != false || n["ts"] == nil || len(n["actions"].([]any)) == 0 {
			t.Errorf("notification %v", n)
		}
	}
	page, next := list("?limit=2")
	if len(page) != 2 || next == "" {
		t.Fatalf("first page: %d, next %q", len(page), next)
	}
	rest, _ := list("?limit=2&from=" + next)
	if len(rest) != 1 || evID(rest[0]) != first.String() {
		t.Fatalf("second page: %v", rest)
	}
	hl, _ := list("?only=highlight")
	if len(hl) != 1 || evID(hl[0]) != mention.EventID.String() {
		t.Fatalf("only=highlight: %v", hl)
	}
	// The mention notified alice and carol differently (the fold stores
	// one record per way an event notified, which each member's names).
	highlights := func(n map[string]any) bool {
		for _, a := range n["actions"].([]any) {
			if tw, ok := a.(map[string]any); ok && tw["set_tweak"] == "highlight" && tw["value"] != false {
				return true
			}
		}
		return false
	}
	theirs, _ := listFor(carol, "")
	if len(theirs) != 3 || evID(theirs[1]) != mention.EventID.String() || highlights(theirs[1]) || !highlights(all[1]) {
		t.Fatalf("the mention of alice: alice's notification %v, carol's %v", all[1], theirs)
	}
	if hl, _ := listFor(carol, "?only=highlight"); len(hl) != 0 {
		t.Fatalf("carol, not mentioned, has highlights: %v", hl)
	}
	if err := alice.SendReceipt(ctx, room.RoomID, mention.EventID, event.ReceiptTypeRead, nil); err != nil {
		t.Fatal(err)
	}
	all, _ = list("")
	if all[0]["read"] != false || all[1]["read"] != true || all[2]["read"] != true {
		t.Fatalf("read flags after a receipt on the mention: %v %v %v", all[0]["read"], all[1]["read"], all[2]["read"])
	}
	if code, body := ts.do("GET", "/_matrix/client/v3/notifications?from=nonsense", alice.AccessToken, nil); code != 400 {
		t.Fatalf("bad from: %d %v", code, body)
	}
}
