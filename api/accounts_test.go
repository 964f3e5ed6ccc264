package api_test

import (
	"context"
	"crypto/hmac"
	"crypto/sha1"
	"encoding/hex"
	"net/http"
	"strings"
	"testing"

	"github.com/engram-hs/engram/api"
	"maunium.net/go/mautrix"
)

func TestRegisterLoginWhoamiLogout(t *testing.T) {
	ts := startServer(t)
	ctx := context.Background()
	alice := ts.register("alice")
	who, err := alice.Whoami(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if who.UserID != uid("alice") || who.DeviceID != alice.DeviceID {
		t.Fatalf("whoami = %+v", who)
	}

	// Password login with the m.id.user identifier, then with legacy "user".
	cli, _ := mautrix.NewClient(ts.URL, "", "")
	login, err := cli.Login(ctx, &mautrix.ReqLogin{Type: mautrix.AuthTypePassword, Identifier: mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: "alice"}, Password: "pw-alice"})
	if err != nil {
		t.Fatal(err)
	}
	if login.UserID != uid("alice") || login.AccessToken == "" || login.DeviceID == "" {
		t.Fatalf("login = %+v", login)
	}
	st, body := ts.do("POST", "/_matrix/client/v3/login", "", map[string]any{"type": "m.login.password", "user": "@alice:" + serverName, "password": "pw-alice"})
	if st != 200 || body["user_id"] != string(uid("alice")) {
		t.Fatalf("legacy login: %d %v", st, body)
	}
	legacyToken := body["access_token"].(string)
	st, body = ts.do("POST", "/_matrix/client/v3/login", "", map[string]any{"type": "m.login.password", "user": "alice", "password": "wrong"})
	if st != 403 || body["errcode"] != "M_FORBIDDEN" {
		t.Fatalf("wrong password: %d %v", st, body)
	}

	devs, err := alice.GetDevicesInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(devs.Devices) != 3 {
		t.Fatalf("devices = %d, want 3", len(devs.Devices))
	}

	// Logout kills the token and deletes the device.
	if _, err := alice.Logout(ctx); err != nil {
		t.Fatal(err)
	}
	_, err = alice.Whoami(ctx)
	if errcode(err) != "M_UNKNOWN_TOKEN" {
		t.Fatalf("whoami after logout: %v", err)
	}
	alice.AccessToken = login.AccessToken
	devs, err = alice.GetDevicesInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(devs.Devices) != 2 {
		t.Fatalf("devices after logout = %d, want 2", len(devs.Devices))
	}
	if _, err := alice.LogoutAll(ctx); err != nil {
		t.Fatal(err)
	}
	st, body = ts.do("GET", "/_matrix/client/v3/account/whoami", legacyToken, nil)
	if st != 401 || body["errcode"] != "M_UNKNOWN_TOKEN" || body["soft_logout"] != false {
		t.Fatalf("whoami after logout/all: %d %v", st, body)
	}
}

func TestRegistrationRules(t *testing.T) {
	ts := startServer(t)
	ts.register("bob")
	cases := []struct {
		name     string
		body     map[string]any
		status   int
		errcode  string
		hasFlows bool
	}{
		{"no auth gives the UIA flows", map[string]any{"username": "carol", "password": "x"}, 401, "", true},
		{"username taken", map[string]any{"username": "bob", "auth": map[string]any{"type": "m.login.dummy"}}, 400, "M_USER_IN_USE", false},
		{"invalid username", map[string]any{"username": "Bad Name!", "auth": map[string]any{"type": "m.login.dummy"}}, 400, "M_INVALID_USERNAME", false},
		{"dummy in one request", map[string]any{"username": "dave", "password": "x", "auth": map[string]any{"type": "m.login.dummy"}}, 200, "", false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			st, body := ts.do("POST", "/_matrix/client/v3/register", "", c.body)
			if st != c.status {
				t.Fatalf("status %d, want %d: %v", st, c.status, body)
			}
			if c.errcode != "" && body["errcode"] != c.errcode {
				t.Fatalf("errcode %v, want %s", body["errcode"], c.errcode)
			}
			if _, ok := body["flows"]; ok != c.hasFlows {
				t.Fatalf("flows present = %v, want %v: %v", ok, c.hasFlows, body)
			}
		})
	}
	st, body := ts.do("GET", "/_matrix/client/v3/register/available?username=bob", "", nil)
	if st != 400 || body["errcode"] != "M_USER_IN_USE" {
		t.Fatalf("available(bob): %d %v", st, body)
	}
	st, body = ts.do("GET", "/_matrix/client/v3/register/available?username=zed", "", nil)
	if st != 200 || body["available"] != true {
		t.Fatalf("available(zed): %d %v", st, body)
	}
	st, body = ts.do("POST", "/_matrix/client/v3/register", "", map[string]any{"username": "erin", "inhibit_login": true, "auth": map[string]any{"type": "m.login.dummy"}})
	if st != 200 || body["access_token"] != nil || body["user_id"] != "@erin:"+serverName {
		t.Fatalf("inhibit_login: %d %v", st, body)
	}

	closed := startServer(t, func(c *api.Config) { c.EnableRegistration = false })
	st, body = closed.do("POST", "/_matrix/client/v3/register", "", map[string]any{"username": "x", "auth": map[string]any{"type": "m.login.dummy"}})
	if st != 403 || body["errcode"] != "M_FORBIDDEN" {
		t.Fatalf("registration disabled: %d %v", st, body)
	}
}

func TestSharedSecretRegistration(t *testing.T) {
	ts := startServer(t)
	mac := func(nonce, user, pw string, admin bool) string {
		m := hmac.New(sha1.New, []byte("s3cret"))
		kind := "notadmin"
		if admin {
			kind = "admin"
		}
		m.Write([]byte(nonce + "\x00" + user + "\x00" + pw + "\x00" + kind))
		return hex.EncodeToString(m.Sum(nil))
	}
	_, n := ts.do("GET", "/_synapse/admin/v1/register", "", nil)
	nonce := n["nonce"].(string)
	st, body := ts.do("POST", "/_synapse/admin/v1/register", "", map[string]any{"nonce": nonce, "username": "root", "password": "pw", "admin": true, "mac": mac(nonce, "root", "pw", false)})
	if st != 403 {
		t.Fatalf("wrong mac accepted: %d %v", st, body)
	}
	// A nonce is single-use, even after a failure.
	st, _ = ts.do("POST", "/_synapse/admin/v1/register", "", map[string]any{"nonce": nonce, "username": "root", "password": "pw", "admin": true, "mac": mac(nonce, "root", "pw", true)})
	if st != 400 {
		t.Fatalf("reused nonce: %d", st)
	}
	_, n = ts.do("GET", "/_synapse/admin/v1/register", "", nil)
	nonce = n["nonce"].(string)
	st, body = ts.do("POST", "/_synapse/admin/v1/register", "", map[string]any{"nonce": nonce, "username": "root", "password": "pw", "admin": true, "mac": mac(nonce, "root", "pw", true)})
	if st != 200 || body["user_id"] != "@root:"+serverName || body["access_token"] == nil {
		t.Fatalf("shared secret register: %d %v", st, body)
	}
	st, body = ts.do("POST", "/_matrix/client/v3/login", "", map[string]any{"type": "m.login.password", "identifier": map[string]any{"type": "m.id.user", "user": "root"}, "password": "pw"})
	if st != 200 {
		t.Fatalf("login as shared-secret user: %d %v", st, body)
	}
}

func TestPasswordChangeAndDeactivateNeedUIA(t *testing.T) {
	ts := startServer(t)
	ctx := context.Background()
	alice := ts.register("alice")
	other := ts.register("alice2")
	_ = other
	// A second session of alice, which a password change logs out.
	_, second := ts.do("POST", "/_matrix/client/v3/login", "", map[string]any{"type": "m.login.password", "user": "alice", "password": "pw-alice"})
	tok2 := second["access_token"].(string)

	st, body := ts.do("POST", "/_matrix/client/v3/account/password", alice.AccessToken, map[string]any{"new_password": "new"})
	if st != 401 || body["session"] == nil {
		t.Fatalf("password change without auth: %d %v", st, body)
	}
	session := body["session"].(string)
	st, body = ts.do("POST", "/_matrix/client/v3/account/password", alice.AccessToken, map[string]any{"new_password": "new",
		"auth": map[string]any{"type": "m.login.password", "session": session, "identifier": map[string]any{"type": "m.id.user", "user": "alice"}, "password": "wrong"}})
	if st != 401 || body["errcode"] != "M_FORBIDDEN" {
		t.Fatalf("wrong UIA password: %d %v", st, body)
	}
	st, body = ts.do("POST", "/_matrix/client/v3/account/password", alice.AccessToken, map[string]any{"new_password": "new",
		"auth": map[string]any{"type": "m.login.password", "session": session, "identifier": map[string]any{"type": "m.id.user", "user": "alice"}, "password": "pw-alice"}})
	if st != 200 {
		t.Fatalf("password change: %d %v", st, body)
	}
	if st, _ := ts.do("GET", "/_matrix/client/v3/account/whoami", tok2, nil); st != 401 {
		t.Fatalf("other session survived the password change: %d", st)
	}
	if _, err := alice.Whoami(ctx); err != nil {
		t.Fatalf("own session lost: %v", err)
	}
	if st, _ := ts.do("POST", "/_matrix/client/v3/login", "", map[string]any{"type": "m.login.password", "user": "alice", "password": "new"}); st != 200 {
		t.Fatalf("login with the new password: %d", st)
	}

	st, body = ts.do("POST", "/_matrix/client/v3/account/deactivate", alice.AccessToken, map[string]any{
		"auth": map[string]any{"type": "m.login.password", "user": "alice", "password": "new"}})
	if st != 200 {
		t.Fatalf("deactivate: %d %v", st, body)
	}
	st, body = ts.do("POST", "/_matrix/client/v3/login", "", map[string]any{"type": "m.login.password", "user": "alice", "password": "new"})
	if st != 403 || body["errcode"] != "M_USER_DEACTIVATED" {
		t.Fatalf("login after deactivation: %d %v", st, body)
	}
	if st, _ := ts.do("GET", "/_matrix/client/v3/account/whoami", alice.AccessToken, nil); st != 401 {
		t.Fatalf("token survived deactivation: %d", st)
	}
	st, body = ts.do("GET", "/_matrix/client/v3/register/available?username=alice", "", nil)
	if st != 400 || body["errcode"] != "M_USER_IN_USE" {
		t.Fatalf("deactivated name reusable: %d %v", st, body)
	}
}

func TestDevices(t *testing.T) {
	ts := startServer(t)
	ctx := context.Background()
	alice := ts.register("alice")
	if err := alice.SetDeviceInfo(ctx, alice.DeviceID, &mautrix.ReqDeviceInfo{DisplayName: "laptop"}); err != nil {
		t.Fatal(err)
	}
	d, err := alice.GetDeviceInfo(ctx, alice.DeviceID)
	if err != nil || d.DisplayName != "laptop" {
		t.Fatalf("device = %+v, %v", d, err)
	}
	if _, err := alice.GetDeviceInfo(ctx, "NOPE"); errcode(err) != "M_NOT_FOUND" {
		t.Fatalf("unknown device: %v", err)
	}
	_, second := ts.do("POST", "/_matrix/client/v3/login", "", map[string]any{"type": "m.login.password", "user": "alice", "password": "pw-alice"})
	dev2 := second["device_id"].(string)
	st, body := ts.do("DELETE", "/_matrix/client/v3/devices/"+dev2, alice.AccessToken, nil)
	if st != 401 || body["flows"] == nil {
		t.Fatalf("delete device without UIA: %d %v", st, body)
	}
	st, body = ts.do("DELETE", "/_matrix/client/v3/devices/"+dev2, alice.AccessToken, map[string]any{"auth": map[string]any{"type": "m.login.password", "session": body["session"], "user": "alice", "password": "pw-alice"}})
	if st != 200 {
		t.Fatalf("delete device: %d %v", st, body)
	}
	if st, _ := ts.do("GET", "/_matrix/client/v3/account/whoami", second["access_token"].(string), nil); st != 401 {
		t.Fatal("deleted device's token still works")
	}
	st, _ = ts.do("POST", "/_matrix/client/v3/delete_devices", alice.AccessToken, map[string]any{"devices": []string{alice.DeviceID.String()}, "auth": map[string]any{"type": "m.login.password", "user": "alice", "password": "pw-alice"}})
	if st != 200 {
		t.Fatalf("delete_devices: %d", st)
	}
	if _, err := alice.Whoami(ctx); errcode(err) != "M_UNKNOWN_TOKEN" {
		t.Fatalf("own device deleted but token works: %v", err)
	}
}

func TestRefreshTokens(t *testing.T) {
	ts := startServer(t)
	st, body := ts.do("POST", "/_matrix/client/v3/register", "", map[string]any{"username": "r", "password": "p", "refresh_token": true, "auth": map[string]any{"type": "m.login.dummy"}})
	if st != 200 || body["refresh_token"] == nil || body["expires_in_ms"] == nil {
		t.Fatalf("register with refresh: %d %v", st, body)
	}
	old, refresh := body["access_token"].(string), body["refresh_token"].(string)
	st, body = ts.do("POST", "/_matrix/client/v3/refresh", "", map[string]any{"refresh_token": refresh})
	if st != 200 || body["access_token"] == nil {
		t.Fatalf("refresh: %d %v", st, body)
	}
	if st, _ := ts.do("GET", "/_matrix/client/v3/account/whoami", old, nil); st != 401 {
		t.Fatal("old access token still valid after refresh")
	}
	if st, _ := ts.do("GET", "/_matrix/client/v3/account/whoami", body["access_token"].(string), nil); st != 200 {
		t.Fatal("new access token invalid")
	}
	if st, body := ts.do("POST", "/_matrix/client/v3/refresh", "", map[string]any{"refresh_token": refresh}); st != 401 || body["errcode"] != "M_UNKNOWN_TOKEN" {
		t.Fatalf("refresh token reused: %d %v", st, body)
	}
}

func TestProfile(t *testing.T) {
	ts := startServer(t)
	ctx := context.Background()
	alice := ts.register("alice")
	if err := alice.SetDisplayName(ctx, "Alice A."); err != nil {
		t.Fatal(err)
	}
	p, err := alice.GetProfile(ctx, uid("alice"))
	if err != nil || p.DisplayName != "Alice A." {
		t.Fatalf("profile = %+v, %v", p, err)
	}
	if st, body := ts.do("GET", "/_matrix/client/v3/profile/@nobody:"+serverName, "", nil); st != 404 || body["errcode"] != "M_NOT_FOUND" {
		t.Fatalf("unknown profile: %d %v", st, body)
	}
	bob := ts.register("bob")
	if st, _ := ts.do("PUT", "/_matrix/client/v3/profile/"+string(uid("alice"))+"/displayname", bob.AccessToken, map[string]any{"displayname": "x"}); st != 403 {
		t.Fatalf("bob changed alice's profile: %d", st)
	}
	_ = strings.ToLower
	_ = http.StatusOK
}

func TestRegistrationTokenFlow(t *testing.T) {
	ts := startServer(t, func(c *api.Config) { c.RegistrationRequiresToken = true })
	// An admin made by shared-secret registration creates a one-use token.
	mac := hmac.New(sha1.New, []byte("s3cret"))
	_, n := ts.do("GET", "/_synapse/admin/v1/register", "", nil)
	nonce := n["nonce"].(string)
	mac.Write([]byte(nonce + "\x00admin\x00pw\x00admin"))
	_, adm := ts.do("POST", "/_synapse/admin/v1/register", "", map[string]any{"nonce": nonce, "username": "admin", "password": "pw", "admin": true, "mac": hex.EncodeToString(mac.Sum(nil))})
	st, body := ts.do("POST", "/_synapse/admin/v1/registration_tokens/new", adm["access_token"].(string), map[string]any{"token": "letmein", "uses_allowed": 1})
	if st != 200 || body["token"] != "letmein" {
		t.Fatalf("create token: %d %v", st, body)
	}
	st, body = ts.do("POST", "/_matrix/client/v3/register", "", map[string]any{"username": "u1", "password": "p", "auth": map[string]any{"type": "m.login.dummy"}})
	if st != 400 && st != 401 {
		t.Fatalf("dummy accepted although a token is required: %d %v", st, body)
	}
	st, body = ts.do("GET", "/_matrix/client/v1/register/m.login.registration_token/validity?token=letmein", "", nil)
	if st != 200 || body["valid"] != true {
		t.Fatalf("validity: %d %v", st, body)
	}
	st, body = ts.do("POST", "/_matrix/client/v3/register", "", map[string]any{"username": "u1", "password": "p", "auth": map[string]any{"type": "m.login.registration_token", "token": "letmein"}})
	if st != 200 {
		t.Fatalf("register with token: %d %v", st, body)
	}
	st, body = ts.do("POST", "/_matrix/client/v3/register", "", map[string]any{"username": "u2", "password": "p", "auth": map[string]any{"type": "m.login.registration_token", "token": "letmein"}})
	if st != 401 || body["errcode"] != "M_FORBIDDEN" {
		t.Fatalf("used-up token accepted: %d %v", st, body)
	}
	if st, body := ts.do("GET", "/_matrix/client/v1/register/m.login.registration_token/validity?token=letmein", "", nil); body["valid"] != false {
		t.Fatalf("used-up token still valid: %d %v", st, body)
	}
}
