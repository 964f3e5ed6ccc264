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
	switch {
	case st == 200:
		got := id.EventID(body["event_id"].(string))
		if _, err := bob.GetEvent(ctx, room.RoomID, got); err != nil {
			t.Fatalf("timestamp_to_event returned %s, which /event refuses bob: %v", got, err)
		}
	case st == 404 && body["errcode"] == "M_NOT_FOUND":
		// Nothing bob may see at or before that time: the spec's answer.
	default:
		t.Fatalf("bob: %d %v, want 200 with an event he may see or 404 M_NOT_FOUND", st, body)
	}
	// Alice, joined throughout, still finds her message.
	st, body = ts.do("GET", path, alice.AccessToken, nil)
	if st != 200 || body["event_id"] != secret.String() {
		t.Fatalf("alice: %d %v, want %s", st, body, secret)
	}
}

// GET /publicRooms pages like POST (spec: limit and since), with the same
// entries; it used to be a separate, unpaginated twin.
func TestGetPublicRoomsPaginates(t *testing.T) {
	ts := startServer(t)
	ctx := context.Background()
	alice := ts.register("alice")
	for _, name := range []string{"One", "Two", "Three"} {
		if _, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Visibility: "public", Name: name}); err != nil {
			t.Fatal(err)
		}
	}
	const path = "/_matrix/client/v3/publicRooms"
	st, body := ts.do("GET", path+"?limit=2", alice.AccessToken, nil)
	chunk, _ := body["chunk"].([]any)
	if st != 200 || len(chunk) != 2 || body["next_batch"] == nil || body["total_room_count_estimate"] != 3.0 {
		t.Fatalf("page 1: %d %v", st, body)
	}
	_, post := ts.do("POST", path, alice.AccessToken, map[string]any{"limit": 2})
	if fmt.Sprint(post["chunk"]) != fmt.Sprint(body["chunk"]) {
		t.Fatalf("GET and POST disagree:\nGET  %v\nPOST %v", body["chunk"], post["chunk"])
	}
	st, body = ts.do("GET", path+"?limit=2&since="+url.QueryEscape(body["next_batch"].(string)), alice.AccessToken, nil)
	if chunk, _ = body["chunk"].([]any); st != 200 || len(chunk) != 1 || body["next_batch"] != nil || body["prev_batch"] == nil {
		t.Fatalf("page 2: %d %v", st, body)
	}
	if st, body = ts.do("GET", path+"?limit=x", alice.AccessToken, nil); st != 400 || body["errcode"] != "M_INVALID_PARAM" {
		t.Fatalf("bad limit: %d %v", st, body)
	}
}

// Presence is published to the users who share a room with its user
// (spec: presence, security considerations); GET /presence answers 403 to
// the others.
func TestPresenceOnlyForUsersSharingARoom(t *testing.T) {
	ts := startServer(t)
	ctx := context.Background()
	alice, bob, carol := ts.register("alice"), ts.register("bob"), ts.register("carol")
	room, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bob.JoinRoomByID(ctx, room.RoomID); err != nil {
		t.Fatal(err)
	}
	if st, body := ts.do("PUT", "/_matrix/client/v3/presence/"+url.PathEscape(bob.UserID.String())+"/status", bob.AccessToken, map[string]any{"presence": "unavailable", "status_msg": "at the dentist"}); st != 200 {
		t.Fatalf("set presence: %d %v", st, body)
	}
	path := "/_matrix/client/v3/presence/" + url.PathEscape(bob.UserID.String()) + "/status"
	for _, c := range []struct {
		who    string
		token  string
		status int
	}{
		{"bob himself", bob.AccessToken, 200},
		{"alice, in a room with bob", alice.AccessToken, 200},
		{"carol, in no room with bob", carol.AccessToken, 403},
	} {
		st, body := ts.do("GET", path, c.token, nil)
		if st != c.status {
			t.Errorf("%s: %d %v, want %d", c.who, st, body, c.status)
		}
		if st == 200 && body["status_msg"] != "at the dentist" {
			t.Errorf("%s: %v", c.who, body)
		}
		if st == 403 && body["errcode"] != "M_FORBIDDEN" {
			t.Errorf("%s: %v", c.who, body)
		}
	}
}
