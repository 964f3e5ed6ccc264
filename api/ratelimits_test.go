package api_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"net/url"
	"testing"

	"github.com/engram-hs/engram/api"
	"github.com/engram-hs/engram/api/ratelimit"
)

// doFrom is do with an X-Forwarded-For header.
func (ts *testServer) doFrom(xff, method, path, token string, body any) (int, http.Header, map[string]any) {
	ts.t.Helper()
	raw, _ := json.Marshal(body)
	req, _ := http.NewRequest(method, ts.URL+path, bytes.NewReader(raw))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if xff != "" {
		req.Header.Set("X-Forwarded-For", xff)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		ts.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var out map[string]any
	_ = json.Unmarshal(b, &out)
	return resp.StatusCode, resp.Header, out
}

func withSynapseLimits(mut func(*api.Config)) func(*api.Config) {
	return func(c *api.Config) {
		c.RateLimitingEnabled = true
		c.RateLimits = ratelimit.Defaults()
		if mut != nil {
			mut(c)
		}
	}
}

// TestRateLimitsHumanPaceAndSender: under Synapse's defaults, typing,
// receipts, read markers and presence never spend rc_message, so a
// client doing lots of them and a few sends is never limited; a sender
// over rc_message gets 429 with retry_after_ms and Retry-After.
func TestRateLimitsHumanPaceAndSender(t *testing.T) {
	ts := startServer(t, withSynapseLimits(nil))
	alice := ts.register("alice")
	tok := alice.AccessToken
	_, body := ts.do("POST", "/_matrix/client/v3/createRoom", tok, map[string]any{})
	room := url.PathEscape(body["room_id"].(string))
	me := url.PathEscape(alice.UserID.String())
	var last string
	for i := 0; i < 8; i++ { // createRoom spent one of the burst of 10
		for j := 0; j < 5; j++ {
			if st, _ := ts.do("PUT", "/_matrix/client/v3/rooms/"+room+"/typing/"+me, tok, map[string]any{"typing": true, "timeout": 3000}); st != 200 {
				t.Fatalf("typing %d/%d: %d", i, j, st)
			}
		}
		st, b := ts.do("PUT", fmt.Sprintf("/_matrix/client/v3/rooms/%s/send/m.room.message/h%d", room, i), tok, map[string]any{"msgtype": "m.text", "body": "hello"})
		if st != 200 {
			t.Fatalf("human message %d limited: %d %v", i, st, b)
		}
		last = b["event_id"].(string)
		for _, req := range []struct{ method, path string }{
			{"POST", "/_matrix/client/v3/rooms/" + room + "/receipt/m.read/" + url.PathEscape(last)},
			{"POST", "/_matrix/client/v3/rooms/" + room + "/read_markers"},
			{"PUT", "/_matrix/client/v3/presence/" + me + "/status"},
		} {
			var body any = map[string]any{}
			if req.path[len(req.path)-12:] == "read_markers" {
				body = map[string]any{"m.fully_read": last}
			}
			if req.method == "PUT" {
				body = map[string]any{"presence": "online"}
			}
			if st, b := ts.do(req.method, req.path, tok, body); st != 200 {
				t.Fatalf("%s %s: %d %v", req.method, req.path, st, b)
			}
		}
	}
	// Now a burst over rc_message: 429 with both the body field and the header.
	limited := false
	for i := 0; i < 5 && !limited; i++ {
		st, h, b := ts.doFrom("", "PUT", fmt.Sprintf("/_matrix/client/v3/rooms/%s/send/m.room.message/b%d", room, i), tok, map[string]any{"msgtype": "m.text", "body": "spam"})
		if st == 429 {
			limited = true
			if b["errcode"] != "M_LIMIT_EXCEEDED" || b["retry_after_ms"] == nil || h.Get("Retry-After") == "" {
				t.Fatalf("429 without retry_after_ms / Retry-After: %v %v", h, b)
			}
		}
	}
	if !limited {
		t.Fatal("a sender over rc_message was never limited")
	}
	// Logout is never limited either.
	if st, _ := ts.do("POST", "/_matrix/client/v3/logout", tok, map[string]any{}); st != 200 {
		t.Fatalf("logout limited: %d", st)
	}
}

// TestRateLimitsBehindProxy: behind a trusted proxy, failed logins lock
// the account they name and nobody else behind the proxy; two clients
// with different X-Forwarded-For addresses have separate buckets; an
// untrusted peer's X-Forwarded-For is ignored.
func TestRateLimitsBehindProxy(t *testing.T) {
	ts := startServer(t, withSynapseLimits(func(c *api.Config) {
		c.TrustedProxies = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
		c.RateLimits.LoginAddress = ratelimit.Rule{PerSecond: 0.003, BurstCount: 25}
		c.RateLimits.Registration = ratelimit.Rule{PerSecond: 0.001, BurstCount: 100}
	}))
	ts.register("victim")
	ts.register("carol")
	login := func(xff, user, pw string) (int, map[string]any) {
		st, _, b := ts.doFrom(xff, "POST", "/_matrix/client/v3/login", "", map[string]any{"type": "m.login.password", "identifier": map[string]any{"type": "m.id.user", "user": user}, "password": pw})
		return st, b
	}
	sawLimit := false
	for i := 0; i < 20; i++ {
		st, b := login("203.0.113.7", "victim", "wrong")
		if st == 429 {
			sawLimit = true
		} else if st != 403 {
			t.Fatalf("failed login %d: %d %v", i, st, b)
		}
	}
	if !sawLimit {
		t.Fatal("20 failed logins were never limited")
	}
	if st, b := login("203.0.113.7", "victim", "pw-victim"); st != 429 {
		t.Fatalf("the attacked account logs in with its password right after 20 failures: %d %v", st, b)
	}
	// Carol, behind the same proxy (and even at the same address), is not locked out.
	if st, b := login("203.0.113.7", "carol", "pw-carol"); st != 200 {
		t.Fatalf("another user behind the proxy: %d %v", st, b)
	}
	if st, b := login("198.51.100.2", "carol", "pw-carol"); st != 200 {
		t.Fatalf("another user from another address: %d %v", st, b)
	}

	// Separate buckets per forwarded address: rc_login.address of 2.
	ts2 := startServer(t, withSynapseLimits(func(c *api.Config) {
		c.TrustedProxies = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}
		c.RateLimits.LoginAddress = ratelimit.Rule{PerSecond: 0.001, BurstCount: 2}
	}))
	ts2.register("u1")
	ts2.register("u2")
	login2 := func(xff, user string) int {
		st, _, _ := ts2.doFrom(xff, "POST", "/_matrix/client/v3/login", "", map[string]any{"type": "m.login.password", "user": user, "password": "pw-" + user})
		return st
	}
	for i := 0; i < 2; i++ {
		if st := login2("192.0.2.1", "u1"); st != 200 {
			t.Fatalf("u1 login %d: %d", i, st)
		}
	}
	if st := login2("192.0.2.1", "u1"); st != 429 {
		t.Fatalf("u1 over rc_login.address: %d", st)
	}
	if st := login2("192.0.2.2", "u2"); st != 200 {
		t.Fatalf("u2 at another forwarded address shares u1's bucket: %d", st)
	}
	// Without a trusted proxy, X-Forwarded-For is ignored: one bucket.
	ts3 := startServer(t, withSynapseLimits(func(c *api.Config) {
		c.RateLimits.LoginAddress = ratelimit.Rule{PerSecond: 0.001, BurstCount: 2}
	}))
	ts3.register("v1")
	for i, xff := range []string{"192.0.2.1", "192.0.2.2"} {
		st, _, _ := ts3.doFrom(xff, "POST", "/_matrix/client/v3/login", "", map[string]any{"type": "m.login.password", "user": "v1", "password": "pw-v1"})
		if st != 200 {
			t.Fatalf("login %d: %d", i, st)
		}
	}
	if st, _, _ := ts3.doFrom("192.0.2.3", "POST", "/_matrix/client/v3/login", "", map[string]any{"type": "m.login.password", "user": "v1", "password": "pw-v1"}); st != 429 {
		t.Fatalf("an untrusted X-Forwarded-For escaped the address limit: %d", st)
	}
}
