package api_test

import (
	"net/http"
	"testing"

	"github.com/engram-hs/engram/api"
)

// A guest may use only the endpoints the guest access module lists; the
// rest answer 403 M_GUEST_ACCESS_FORBIDDEN. Full accounts are unaffected.
func TestGuestAccessIsLimitedToTheSpecList(t *testing.T) {
	ts := startServer(t, func(c *api.Config) { c.AllowGuestAccess = true })
	status, reg := ts.do("POST", "/_matrix/client/v3/register?kind=guest", "", map[string]any{})
	if status != http.StatusOK {
		t.Fatalf("guest registration: %d %v", status, reg)
	}
	guest, _ := reg["access_token"].(string)
	guestID, _ := reg["user_id"].(string)

	alice := ts.register("alice")
	status, room := ts.do("POST", "/_matrix/client/v3/createRoom", alice.AccessToken, map[string]any{
		"preset": "public_chat", "initial_state": []any{map[string]any{"type": "m.room.guest_access", "state_key": "", "content": map[string]any{"guest_access": "can_join"}}},
	})
	if status != http.StatusOK {
		t.Fatalf("createRoom: %d %v", status, room)
	}
	roomID := room["room_id"].(string)

	allowed := []struct{ method, path string }{
		{"GET", "/_matrix/client/v3/account/whoami"},
		{"GET", "/_matrix/client/v3/sync?timeout=0"},
		{"POST", "/_matrix/client/v3/rooms/" + roomID + "/join"},
		{"GET", "/_matrix/client/v3/rooms/" + roomID + "/state"},
		{"GET", "/_matrix/client/r0/rooms/" + roomID + "/messages?dir=b"},
		{"PUT", "/_matrix/client/v3/profile/" + guestID + "/displayname"},
	}
	for _, c := range allowed {
		var body any
		if c.method != "GET" {
			body = map[string]any{"displayname": "Visitor"}
		}
		if status, out := ts.do(c.method, c.path, guest, body); status != http.StatusOK {
			t.Errorf("guest %s %s: %d %v, want 200", c.method, c.path, status, out)
		}
	}
	forbidden := []struct{ method, path string }{
		{"POST", "/_matrix/client/v3/createRoom"},
		{"PUT", "/_matrix/client/v3/profile/" + guestID + "/avatar_url"},
		{"PUT", "/_matrix/client/v3/user/" + guestID + "/account_data/m.example"},
		{"POST", "/_matrix/client/v3/rooms/" + roomID + "/invite"},
	}
	for _, c := range forbidden {
		status, out := ts.do(c.method, c.path, guest, map[string]any{"avatar_url": "mxc://x/y", "user_id": "@alice:localhost"})
		if status != http.StatusForbidden || out["errcode"] != "M_GUEST_ACCESS_FORBIDDEN" {
			t.Errorf("guest %s %s: %d %v, want 403 M_GUEST_ACCESS_FORBIDDEN", c.method, c.path, status, out)
		}
	}
	if status, out := ts.do("POST", "/_matrix/client/v3/createRoom", alice.AccessToken, map[string]any{}); status != http.StatusOK {
		t.Errorf("full account createRoom: %d %v", status, out)
	}
}
