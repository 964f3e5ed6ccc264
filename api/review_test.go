package api_test

import (
	"context"
	"fmt"
	"net/url"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"
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

// timestamp_to_event answers only with events the caller may see: with
// history_visibility "joined", a user who joined later must not learn the
// ID (and time) of a message sent before they joined. Whatever it returns
// must be readable with /event.
func TestTimestampToEventHonoursHistoryVisibility(t *testing.T) {
	ts := startServer(t)
	ctx := context.Background()
	alice, bob := ts.register("alice"), ts.register("bob")
	room, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	if err != nil {
		t.Fatal(err)
	}
	setVisibility(t, alice, room.RoomID, "joined")
	secret := say(t, alice, room.RoomID, "before bob")
	ev, err := alice.GetEvent(ctx, room.RoomID, secret)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bob.JoinRoomByID(ctx, room.RoomID); err != nil {
		t.Fatal(err)
	}
	path := fmt.Sprintf("/_matrix/client/v1/rooms/%s/timestamp_to_event?dir=b&ts=%d", url.PathEscape(room.RoomID.String()), ev.Timestamp)
	st, body := ts.do("GET", path, bob.AccessToken, nil)
	if st == 200 && body["event_id"] == secret.String() {
		t.Fatalf("bob, who joined after it under history_visibility joined, was given %s", secret)
	}
	if st == 200 {
		got := id.EventID(body["event_id"].(string))
		if _, err := bob.GetEvent(ctx, room.RoomID, got); err != nil {
			t.Fatalf("timestamp_to_event returned %s, which /event refuses bob: %v", got, err)
		}
	}
	// Alice, joined throughout, still finds her message.
	st, body = ts.do("GET", path, alice.AccessToken, nil)
	if st != 200 || body["event_id"] != secret.String() {
		t.Fatalf("alice: %d %v, want %s", st, body, secret)
	}
}
