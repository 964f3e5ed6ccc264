package api_test

import (
	"crypto/hmac"
	"crypto/sha1"
	"encoding/hex"
	"encoding/json"
	"net/url"
	"strings"
	"testing"
)

// registerAdmin creates a server admin through shared-secret registration
// and returns its access token.
func (ts *testServer) registerAdmin(name string) string {
	ts.t.Helper()
	_, n := ts.do("GET", "/_synapse/admin/v1/register", "", nil)
	nonce := n["nonce"].(string)
	mac := hmac.New(sha1.New, []byte("s3cret"))
	mac.Write([]byte(nonce + "\x00" + name + "\x00pw-" + name + "\x00admin"))
	st, body := ts.do("POST", "/_synapse/admin/v1/register", "", map[string]any{"nonce": nonce, "username": name, "password": "pw-" + name, "admin": true, "mac": hex.EncodeToString(mac.Sum(nil))})
	if st != 200 {
		ts.t.Fatalf("register admin %s: %d %v", name, st, body)
	}
	return body["access_token"].(string)
}

// TestAdminEndpointsAdminsOnly: every admin endpoint answers 401 without a
// token and 403 M_FORBIDDEN to a user who is not a server admin, before
// looking anything up; and an admin gets past the check.
func TestAdminEndpointsAdminsOnly(t *testing.T) {
	ts := startServer(t)
	bob := ts.register("bob")
	adminTok := ts.registerAdmin("root")
	eps := ts.api.AdminEndpoints()
	if len(eps) < 40 {
		t.Fatalf("only %d admin endpoints registered: %v", len(eps), eps)
	}
	ts.register("target")
	fill := strings.NewReplacer("{userId}", url.PathEscape("@target:"+serverName), "{roomId}", url.PathEscape("!nope:"+serverName),
		"{deviceId}", "DEV", "{token}", "tok", "{reportId}", "1", "{eventId}", url.PathEscape("$ev"), "{purgeId}", "p",
		"{what}", "delete_status", "{txnId}", "t1")
	for _, ep := range eps {
		method, path, _ := strings.Cut(ep, " ")
		path = fill.Replace(path)
		if strings.Contains(path, "{") {
			t.Fatalf("%s: a path parameter is not filled in by the test", ep)
		}
		t.Run(ep, func(t *testing.T) {
			if st, body := ts.do(method, path, "", map[string]any{}); st != 401 || body["errcode"] != "M_MISSING_TOKEN" {
				t.Errorf("without a token: %d %v, want 401 M_MISSING_TOKEN", st, body)
			}
			if st, body := ts.do(method, path, "not-a-token", map[string]any{}); st != 401 || body["errcode"] != "M_UNKNOWN_TOKEN" {
				t.Errorf("with an unknown token: %d %v, want 401 M_UNKNOWN_TOKEN", st, body)
			}
			if st, body := ts.do(method, path, bob.AccessToken, map[string]any{}); st != 403 || body["errcode"] != "M_FORBIDDEN" {
				t.Errorf("as a non-admin: %d %v, want 403 M_FORBIDDEN", st, body)
			}
			if st, body := ts.do(method, path, adminTok, map[string]any{}); st == 401 || st == 403 && body["errcode"] == "M_FORBIDDEN" && body["error"] == "You are not a server admin" {
				t.Errorf("as an admin: %d %v, refused by the admin check", st, body)
			}
		})
	}
}

// TestAdminUsers: list, details, create, modify (admin, displayname,
// locked), reset password, shadow ban and deactivate, each effect checked
// through the client API.
func TestAdminUsers(t *testing.T) {
	ts := startServer(t)
	adm := ts.registerAdmin("root")
	bob := ts.register("bob")
	bobID := "@bob:" + serverName
	ub := "/_synapse/admin/v2/users/" + url.PathEscape(bobID)

	st, body := ts.do("GET", "/_synapse/admin/v2/users?limit=1", adm, nil)
	if st != 200 || body["total"] != float64(2) || len(body["users"].([]any)) != 1 || body["next_token"] != "1" {
		t.Fatalf("list: %d %v", st, body)
	}
	if st, body = ts.do("GET", "/_synapse/admin/v2/users?admins=true", adm, nil); st != 200 || body["total"] != float64(1) {
		t.Fatalf("list admins: %d %v", st, body)
	}
	if st, body = ts.do("GET", ub, adm, nil); st != 200 || body["name"] != bobID || body["admin"] != false || body["displayname"] != "bob" {
		t.Fatalf("details: %d %v", st, body)
	}
	if st, body = ts.do("GET", "/_synapse/admin/v2/users/"+url.PathEscape("@ghost:"+serverName), adm, nil); st != 404 || body["errcode"] != "M_NOT_FOUND" {
		t.Fatalf("details of a missing user: %d %v", st, body)
	}
	// Modify: display name and admin flag.
	if st, body = ts.do("PUT", ub, adm, map[string]any{"displayname": "Bobby", "admin": true}); st != 200 || body["admin"] != true || body["displayname"] != "Bobby" {
		t.Fatalf("modify: %d %v", st, body)
	}
	if st, body = ts.do("GET", "/_matrix/client/v3/profile/"+url.PathEscape(bobID)+"/displayname", "", nil); st != 200 || body["displayname"] != "Bobby" {
		t.Fatalf("profile after modify: %d %v", st, body)
	}
	if st, _ = ts.do("GET", "/_synapse/admin/v1/server_version", bob.AccessToken, nil); st != 200 {
		t.Fatalf("bob is admin now but server_version answers %d", st)
	}
	if st, _ = ts.do("PUT", ub, adm, map[string]any{"admin": false}); st != 200 {
		t.Fatal("revoke admin")
	}
	if st, _ = ts.do("GET", "/_synapse/admin/v1/server_version", bob.AccessToken, nil); st != 403 {
		t.Fatalf("bob's admin was revoked but server_version answers %d", st)
	}
	// Create a user with a password: the user can log in.
	carolURL := "/_synapse/admin/v2/users/" + url.PathEscape("@carol:"+serverName)
	if st, body = ts.do("PUT", carolURL, adm, map[string]any{"password": "carol-pw", "displayname": "Carol"}); st != 201 || body["displayname"] != "Carol" {
		t.Fatalf("create: %d %v", st, body)
	}
	login := func(user, pw string) (int, map[string]any) {
		return ts.do("POST", "/_matrix/client/v3/login", "", map[string]any{"type": "m.login.password", "identifier": map[string]any{"type": "m.id.user", "user": user}, "password": pw})
	}
	if st, body = login("carol", "carol-pw"); st != 200 {
		t.Fatalf("created user cannot log in: %d %v", st, body)
	}
	// Reset password: the old one fails, the new one works, bob's token is gone.
	if st, body = ts.do("POST", "/_synapse/admin/v1/reset_password/"+url.PathEscape(bobID), adm, map[string]any{"new_password": "new-pw"}); st != 200 {
		t.Fatalf("reset password: %d %v", st, body)
	}
	if st, _ = login("bob", "pw-bob"); st != 403 {
		t.Fatalf("old password still works: %d", st)
	}
	if st, _ = ts.do("GET", "/_matrix/client/v3/account/whoami", bob.AccessToken, nil); st != 401 {
		t.Fatalf("bob's old session survived the reset: %d", st)
	}
	st, body = login("bob", "new-pw")
	if st != 200 {
		t.Fatalf("new password: %d %v", st, body)
	}
	bobTok := body["access_token"].(string)
	// Lock: 401 M_USER_LOCKED with soft_logout; unlock restores the session.
	if st, body = ts.do("PUT", "/_matrix/client/v1/admin/lock/"+url.PathEscape(bobID), adm, map[string]any{"locked": true}); st != 200 || body["locked"] != true {
		t.Fatalf("lock: %d %v", st, body)
	}
	if st, body = ts.do("GET", "/_matrix/client/v3/account/whoami", bobTok, nil); st != 401 || body["errcode"] != "M_USER_LOCKED" || body["soft_logout"] != true {
		t.Fatalf("locked user: %d %v", st, body)
	}
	if st, _ = ts.do("PUT", ub, adm, map[string]any{"locked": false}); st != 200 {
		t.Fatal("unlock")
	}
	if st, _ = ts.do("GET", "/_matrix/client/v3/account/whoami", bobTok, nil); st != 200 {
		t.Fatalf("unlocked user: %d", st)
	}
	// Suspend: sends refused with M_USER_SUSPENDED, reading allowed.
	st, body = ts.do("POST", "/_matrix/client/v3/createRoom", bobTok, map[string]any{})
	roomID := body["room_id"].(string)
	if st, body = ts.do("PUT", "/_matrix/client/v1/admin/suspend/"+url.PathEscape(bobID), adm, map[string]any{"suspended": true}); st != 200 {
		t.Fatalf("suspend: %d %v", st, body)
	}
	if st, body = ts.do("PUT", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/send/m.room.message/t1", bobTok, map[string]any{"msgtype": "m.text", "body": "hi"}); st != 403 || body["errcode"] != "M_USER_SUSPENDED" {
		t.Fatalf("suspended send: %d %v", st, body)
	}
	if st, _ = ts.do("GET", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/messages?dir=b", bobTok, nil); st != 200 {
		t.Fatalf("suspended read: %d", st)
	}
	if st, body = ts.do("GET", "/_matrix/client/v1/admin/suspend/"+url.PathEscape(bobID), adm, nil); st != 200 || body["suspended"] != true {
		t.Fatalf("suspend status: %d %v", st, body)
	}
	ts.do("PUT", "/_matrix/client/v1/admin/suspend/"+url.PathEscape(bobID), adm, map[string]any{"suspended": false})
	// Shadow ban: the send answers with an event ID, but nothing is in the room.
	if st, _ = ts.do("POST", "/_synapse/admin/v1/users/"+url.PathEscape(bobID)+"/shadow_ban", adm, nil); st != 200 {
		t.Fatal("shadow ban")
	}
	st, body = ts.do("PUT", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/send/m.room.message/t2", bobTok, map[string]any{"msgtype": "m.text", "body": "unseen"})
	if st != 200 || body["event_id"] == nil {
		t.Fatalf("shadow-banned send: %d %v", st, body)
	}
	if st, body = ts.do("GET", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/event/"+url.PathEscape(body["event_id"].(string)), bobTok, nil); st != 404 {
		t.Fatalf("the shadow-banned event exists: %d %v", st, body)
	}
	// Deactivate: login refused.
	if st, body = ts.do("POST", "/_synapse/admin/v1/deactivate/"+url.PathEscape(bobID), adm, map[string]any{"erase": false}); st != 200 {
		t.Fatalf("deactivate: %d %v", st, body)
	}
	if st, body = login("bob", "new-pw"); st != 403 || body["errcode"] != "M_USER_DEACTIVATED" {
		t.Fatalf("deactivated login: %d %v", st, body)
	}
	if st, body = ts.do("GET", ub, adm, nil); body["deactivated"] != true {
		t.Fatalf("details after deactivate: %d %v", st, body)
	}
	// The audit trail names the admin.
	entries, err := ts.node.Read(1, 100000)
	if err != nil {
		t.Fatal(err)
	}
	actions := map[string]bool{}
	for _, e := range entries {
		if e.Kind.String() == "admin_action" && strings.Contains(string(e.Payload), `"admin":"@root:`+serverName+`"`) {
			var s struct{ Action string }
			_ = json.Unmarshal(e.Payload, &s)
			actions[s.Action] = true
		}
	}
	for _, a := range []string{"modify_user", "create_user", "reset_password", "lock", "suspend", "shadow_ban", "deactivate"} {
		if !actions[a] {
			t.Errorf("no audit record of %s naming the admin (have %v)", a, actions)
		}
	}
}
