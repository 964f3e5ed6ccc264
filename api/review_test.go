package api_test

import (
	"testing"
)

// Spec (client-server API, "Relationship between access tokens and
// devices"): when the client sets device_id at login, the server
// invalidates the access and refresh tokens previously assigned to that
// device. A token stolen from a device must not outlive a fresh login on
// it.
func TestLoginWithExistingDeviceRevokesItsTokens(t *testing.T) {
	ts := startServer(t)
	ts.register("dora")
	login := func(refresh bool) map[string]any {
		t.Helper()
		st, body := ts.do("POST", "/_matrix/client/v3/login", "", map[string]any{
			"type": "m.login.password", "user": "dora", "password": "pw-dora",
			"device_id": "PHONE", "refresh_token": refresh,
		})
		if st != 200 || body["device_id"] != "PHONE" {
			t.Fatalf("login: %d %v", st, body)
		}
		return body
	}
	first := login(true)
	second := login(false)

	st, body := ts.do("GET", "/_matrix/client/v3/account/whoami", first["access_token"].(string), nil)
	if st != 401 || body["errcode"] != "M_UNKNOWN_TOKEN" {
		t.Fatalf("first token after a new login on its device: %d %v", st, body)
	}
	st, body = ts.do("POST", "/_matrix/client/v3/refresh", "", map[string]any{"refresh_token": first["refresh_token"]})
	if st != 401 || body["errcode"] != "M_UNKNOWN_TOKEN" {
		t.Fatalf("first refresh token after a new login on its device: %d %v", st, body)
	}
	st, body = ts.do("GET", "/_matrix/client/v3/account/whoami", second["access_token"].(string), nil)
	if st != 200 || body["device_id"] != "PHONE" {
		t.Fatalf("second token: %d %v", st, body)
	}
	// The device itself stays (one device, not two).
	st, body = ts.do("GET", "/_matrix/client/v3/devices", second["access_token"].(string), nil)
	if devs, _ := body["devices"].([]any); st != 200 || len(devs) != 2 {
		t.Fatalf("devices: %d %v (want the registration's device and PHONE)", st, body)
	}
}
