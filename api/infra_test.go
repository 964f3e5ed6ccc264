package api_test

import (
	"github.com/engram-hs/engram/api/ratelimit"
	"github.com/engram-hs/engram/stateres"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/engram-hs/engram/api"
)

func TestErrorsAndProtocol(t *testing.T) {
	ts := startServer(t, func(c *api.Config) { c.MaxRequestBodySize = 1024 })
	alice := ts.register("alice")
	tok := alice.AccessToken
	cases := []struct {
		name, method, path, token string
		body                      any
		status                    int
		errcode                   string
	}{
		{"unknown endpoint", "GET", "/_matrix/client/v3/no/such/thing", "", nil, 404, "M_UNRECOGNIZED"},
		{"known path, wrong method", "DELETE", "/_matrix/client/v3/login", "", nil, 405, "M_UNRECOGNIZED"},
		{"missing token", "GET", "/_matrix/client/v3/account/whoami", "", nil, 401, "M_MISSING_TOKEN"},
		{"unknown token", "GET", "/_matrix/client/v3/account/whoami", "nope", nil, 401, "M_UNKNOWN_TOKEN"},
		{"not JSON", "POST", "/_matrix/client/v3/createRoom", tok, "{not json", 400, "M_NOT_JSON"},
		{"JSON but not an object", "POST", "/_matrix/client/v3/createRoom", tok, "[1,2]", 400, "M_BAD_JSON"},
		{"wrong field type", "POST", "/_matrix/client/v3/createRoom", tok, `{"name": 5}`, 400, "M_BAD_JSON"},
		{"body too large", "POST", "/_matrix/client/v3/createRoom", tok, `{"name":"` + strings.Repeat("x", 2000) + `"}`, 413, "M_TOO_LARGE"},
		{"unknown room", "PUT", "/_matrix/client/v3/rooms/!nope:test.local/send/m.room.message/1", tok, `{}`, 404, "M_NOT_FOUND"},
		{"messages of a room one is not in", "GET", "/_matrix/client/v3/rooms/!nope:test.local/messages?dir=x", tok, nil, 403, "M_FORBIDDEN"},
		{"unknown alias", "GET", "/_matrix/client/v3/directory/room/%23nope:test.local", "", nil, 404, "M_NOT_FOUND"},
		{"unknown filter", "GET", "/_matrix/client/v3/user/@alice:test.local/filter/12345", tok, nil, 404, "M_NOT_FOUND"},
		{"other user's account data", "GET", "/_matrix/client/v3/user/@bob:test.local/account_data/x", tok, nil, 403, "M_FORBIDDEN"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			st, body := ts.do(c.method, c.path, c.token, c.body)
			if st != c.status || body["errcode"] != c.errcode {
				t.Fatalf("%s %s: %d %v, want %d %s", c.method, c.path, st, body, c.status, c.errcode)
			}
		})
	}

	// CORS on every response, and OPTIONS preflight.
	req, _ := http.NewRequest("OPTIONS", ts.URL+"/_matrix/client/v3/createRoom", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Access-Control-Allow-Origin") != "*" || !strings.Contains(resp.Header.Get("Access-Control-Allow-Headers"), "Authorization") {
		t.Fatalf("OPTIONS: %d %v", resp.StatusCode, resp.Header)
	}
	resp, err = http.Get(ts.URL + "/_matrix/client/v3/nothing")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.Header.Get("Access-Control-Allow-Origin") != "*" {
		t.Fatal("no CORS header on an error response")
	}

	// The deprecated query-string token still works.
	resp, err = http.Get(ts.URL + "/_matrix/client/v3/account/whoami?access_token=" + tok)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(b), "@alice:") {
		t.Fatalf("query token: %d %s", resp.StatusCode, b)
	}
}

func TestDiscovery(t *testing.T) {
	ts := startServer(t, func(c *api.Config) { c.WellKnownServer = "matrix.test.local:443" })
	st, body := ts.do("GET", "/_matrix/client/versions", "", nil)
	if st != 200 || body["versions"] == nil {
		t.Fatalf("versions: %d %v", st, body)
	}
	st, body = ts.do("GET", "/.well-known/matrix/client", "", nil)
	if st != 200 || body["m.homeserver"].(map[string]any)["base_url"] != "https://matrix.test.local" {
		t.Fatalf("well-known client: %d %v", st, body)
	}
	st, body = ts.do("GET", "/.well-known/matrix/server", "", nil)
	if st != 200 || body["m.server"] != "matrix.test.local:443" {
		t.Fatalf("well-known server: %d %v", st, body)
	}
	alice := ts.register("alice")
	st, body = ts.do("GET", "/_matrix/client/v3/capabilities", alice.AccessToken, nil)
	caps, _ := body["capabilities"].(map[string]any)
	rv, _ := caps["m.room_versions"].(map[string]any)
	avail, _ := rv["available"].(map[string]any)
	if st != 200 || rv["default"] != stateres.DefaultRoomVersion || len(avail) != 12 || avail["1"] != "stable" {
		t.Fatalf("capabilities: %d %v", st, body)
	}
	noWK := startServer(t, func(c *api.Config) { c.PublicBaseURL = "" })
	if st, _ := noWK.do("GET", "/.well-known/matrix/server", "", nil); st != 404 {
		t.Fatalf("unconfigured server well-known: %d", st)
	}
}

func TestRateLimiting(t *testing.T) {
	ts := startServer(t, func(c *api.Config) {
		c.RateLimitingEnabled = true
		c.RateLimits = ratelimit.Defaults()
		c.RateLimits.Message = ratelimit.Rule{PerSecond: 0.5, BurstCount: 3}
	})
	alice := ts.register("alice") // spends one token of the IP bucket
	limited := false
	for i := 0; i < 10 && !limited; i++ {
		st, body := ts.do("POST", "/_matrix/client/v3/createRoom", alice.AccessToken, map[string]any{})
		if st == 429 {
			if body["errcode"] != "M_LIMIT_EXCEEDED" || body["retry_after_ms"] == nil || body["retry_after_ms"].(float64) <= 0 {
				t.Fatalf("429 body: %v", body)
			}
			limited = true
		}
	}
	if !limited {
		t.Fatal("never rate limited")
	}
	// Reads are never limited.
	for i := 0; i < 10; i++ {
		if st, _ := ts.do("GET", "/_matrix/client/v3/account/whoami", alice.AccessToken, nil); st != 200 {
			t.Fatalf("GET limited: %d", st)
		}
	}
	// With rate limiting off nothing is limited.
	off := startServer(t)
	bob := off.register("bob")
	for i := 0; i < 10; i++ {
		if st, _ := off.do("POST", "/_matrix/client/v3/createRoom", bob.AccessToken, map[string]any{}); st != 200 {
			t.Fatalf("limited with rate limiting off: %d", st)
		}
	}
}
