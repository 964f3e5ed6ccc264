package api_test

import (
	"crypto/hmac"
	"crypto/sha1"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/url"
	"strings"
	"testing"

	"github.com/engram-hs/engram/api"
	"github.com/engram-hs/engram/api/admin"
	"github.com/engram-hs/engram/api/ratelimit"
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
		"{what}", "delete_status", "{txnId}", "t1", "{profile}", "goroutine")
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
	if _, caps := ts.do("GET", "/_matrix/client/v3/capabilities", adm, nil); fmt.Sprint(caps["capabilities"].(map[string]any)["m.account_moderation"]) != "map[lock:true suspend:true]" {
		t.Fatalf("an admin's capabilities lack m.account_moderation: %v", caps)
	}
	if _, caps := ts.do("GET", "/_matrix/client/v3/capabilities", bobTok, nil); caps["capabilities"].(map[string]any)["m.account_moderation"] != nil {
		t.Fatalf("a user's capabilities offer account moderation: %v", caps)
	}
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

// TestAdminRoomsNoticesLimits: make_room_admin through the room write
// path, v2 delete with its status endpoints, block, server notices in a
// room of their own, override_ratelimit taking effect, statistics.
func TestAdminRoomsNoticesLimits(t *testing.T) {
	ts := startServer(t, func(c *api.Config) {
		c.ServerNotices = admin.ServerNotices{SystemMXIDLocalpart: "notices", RoomName: "Notices"}
		c.RateLimitingEnabled = true
		c.RateLimits = ratelimit.Defaults()
		c.RateLimits.Message = ratelimit.Rule{PerSecond: 0.001, BurstCount: 2}
	})
	adm := ts.registerAdmin("root")
	alice := ts.register("alice")
	bob := ts.register("bob")
	_, body := ts.do("POST", "/_matrix/client/v3/createRoom", alice.AccessToken, map[string]any{"name": "R"})
	roomID := body["room_id"].(string)
	room := url.PathEscape(roomID)

	// make_room_admin: bob is invited (private room) and given alice's power.
	if st, b := ts.do("POST", "/_synapse/admin/v1/rooms/"+room+"/make_room_admin", adm, map[string]any{"user_id": "@bob:" + serverName}); st != 200 {
		t.Fatalf("make_room_admin: %d %v", st, b)
	}
	if st, b := ts.do("POST", "/_matrix/client/v3/rooms/"+room+"/join", bob.AccessToken, map[string]any{}); st != 200 {
		t.Fatalf("bob joins after make_room_admin: %d %v", st, b)
	}
	if st, b := ts.do("PUT", "/_matrix/client/v3/rooms/"+room+"/state/m.room.topic", bob.AccessToken, map[string]any{"topic": "bob rules"}); st != 200 {
		t.Fatalf("bob sets the topic as room admin: %d %v", st, b)
	}

	// forward_extremities: a room written by one server has one; DELETE
	// drops none of it and the room goes on.
	if st, b := ts.do("GET", "/_synapse/admin/v1/rooms/"+room+"/forward_extremities", adm, nil); st != 200 || b["count"] != float64(1) {
		t.Fatalf("forward_extremities: %d %v, want one", st, b)
	}
	if st, b := ts.do("DELETE", "/_synapse/admin/v1/rooms/"+room+"/forward_extremities", adm, nil); st != 200 || b["deleted"] != float64(0) {
		t.Fatalf("DELETE forward_extremities of a linear room: %d %v, want deleted 0", st, b)
	}
	if st, b := ts.do("PUT", "/_matrix/client/v3/rooms/"+room+"/state/m.room.topic", bob.AccessToken, map[string]any{"topic": "still linear"}); st != 200 {
		t.Fatalf("a state change after DELETE forward_extremities: %d %v", st, b)
	}

	// override_ratelimit: alice has spent her burst of 2 (createRoom was one);
	// with 0/0 she is not limited.
	ts.do("PUT", "/_matrix/client/v3/rooms/"+room+"/send/m.room.message/a1", alice.AccessToken, map[string]any{"msgtype": "m.text", "body": "1"})
	if st, _ := ts.do("PUT", "/_matrix/client/v3/rooms/"+room+"/send/m.room.message/a2", alice.AccessToken, map[string]any{"msgtype": "m.text", "body": "2"}); st != 429 {
		t.Fatalf("alice over her burst: %d", st)
	}
	if st, b := ts.do("POST", "/_synapse/admin/v1/users/"+url.PathEscape("@alice:"+serverName)+"/override_ratelimit", adm, map[string]any{"messages_per_second": 0, "burst_count": 0}); st != 200 {
		t.Fatalf("override_ratelimit: %d %v", st, b)
	}
	for i := 0; i < 5; i++ {
		if st, _ := ts.do("PUT", fmt.Sprintf("/_matrix/client/v3/rooms/%s/send/m.room.message/o%d", room, i), alice.AccessToken, map[string]any{"msgtype": "m.text", "body": "x"}); st != 200 {
			t.Fatalf("alice with an override limited: %d", st)
		}
	}

	// Server notices: a room of the user's own, from the system user.
	st, b := ts.do("POST", "/_synapse/admin/v1/send_server_notice", adm, map[string]any{"user_id": "@bob:" + serverName, "content": map[string]any{"msgtype": "m.text", "body": "maintenance at noon"}})
	if st != 200 || b["event_id"] == nil {
		t.Fatalf("send_server_notice: %d %v", st, b)
	}
	_, sync := ts.do("GET", "/_matrix/client/v3/sync", bob.AccessToken, nil)
	invites, _ := sync["rooms"].(map[string]any)["invite"].(map[string]any)
	if len(invites) != 1 {
		t.Fatalf("bob has no server notices invite: %v", sync["rooms"])
	}
	var noticeRoom string
	for id := range invites {
		noticeRoom = id
	}
	// The invite cannot be rejected.
	if st, b := ts.do("POST", "/_matrix/client/v3/rooms/"+url.PathEscape(noticeRoom)+"/leave", bob.AccessToken, map[string]any{}); st != 403 || b["errcode"] != "M_CANNOT_LEAVE_SERVER_NOTICE_ROOM" {
		t.Fatalf("bob rejects the notices invite: %d %v", st, b)
	}
	if st, b := ts.do("POST", "/_matrix/client/v3/rooms/"+url.PathEscape(noticeRoom)+"/join", bob.AccessToken, map[string]any{}); st != 200 {
		t.Fatalf("bob joins the notices room: %d %v", st, b)
	}
	_, msgs := ts.do("GET", "/_matrix/client/v3/rooms/"+url.PathEscape(noticeRoom)+"/messages?dir=b", bob.AccessToken, nil)
	if !strings.Contains(fmt.Sprint(msgs["chunk"]), "maintenance at noon") || !strings.Contains(fmt.Sprint(msgs["chunk"]), "@notices:"+serverName) {
		t.Fatalf("the notice is not in the notices room: %v", msgs["chunk"])
	}
	// A second notice goes to the same room.
	ts.do("POST", "/_synapse/admin/v1/send_server_notice", adm, map[string]any{"user_id": "@bob:" + serverName, "content": map[string]any{"msgtype": "m.text", "body": "done"}})
	_, jr := ts.do("GET", "/_matrix/client/v3/joined_rooms", bob.AccessToken, nil)
	if n := len(jr["joined_rooms"].([]any)); n != 2 {
		t.Fatalf("bob is in %d rooms, want his room and one notices room", n)
	}
	// Having left it, bob is invited back to the same room by the next
	// notice; a PUT with a transaction ID sends it once.
	if st, b := ts.do("POST", "/_matrix/client/v3/rooms/"+url.PathEscape(noticeRoom)+"/leave", bob.AccessToken, map[string]any{}); st != 200 {
		t.Fatalf("bob leaves the joined notices room: %d %v", st, b)
	}
	notice := map[string]any{"user_id": "@bob:" + serverName, "content": map[string]any{"msgtype": "m.text", "body": "again"}}
	st1, b1 := ts.do("PUT", "/_synapse/admin/v1/send_server_notice/t1", adm, notice)
	st2, b2 := ts.do("PUT", "/_synapse/admin/v1/send_server_notice/t1", adm, notice)
	if st1 != 200 || st2 != 200 || b1["event_id"] == nil || b1["event_id"] != b2["event_id"] {
		t.Fatalf("send_server_notice with a txn twice: %d %v, %d %v", st1, b1, st2, b2)
	}
	if st3, b3 := ts.do("PUT", "/_synapse/admin/v1/send_server_notice/t2", adm, notice); st3 != 200 || b3["event_id"] == b1["event_id"] {
		t.Fatalf("another txn: %d %v", st3, b3)
	}
	_, sync = ts.do("GET", "/_matrix/client/v3/sync", bob.AccessToken, nil)
	invites, _ = sync["rooms"].(map[string]any)["invite"].(map[string]any)
	if _, ok := invites[noticeRoom]; !ok || len(invites) != 1 {
		t.Fatalf("after leaving and a notice, bob's invites are %v, want the same notices room", invites)
	}

	// v2 delete with status; the room is blocked for joins.
	st, b = ts.do("DELETE", "/_synapse/admin/v2/rooms/"+room, adm, map[string]any{"block": true})
	if st != 200 || b["delete_id"] == nil {
		t.Fatalf("v2 delete: %d %v", st, b)
	}
	id := b["delete_id"].(string)
	if st, b := ts.do("GET", "/_synapse/admin/v2/rooms/delete_status/"+id, adm, nil); st != 200 || b["status"] != "complete" || !strings.Contains(fmt.Sprint(b["shutdown_room"]), "@alice:"+serverName) {
		t.Fatalf("delete status: %d %v", st, b)
	}
	if st, b := ts.do("GET", "/_synapse/admin/v2/rooms/"+room+"/delete_status", adm, nil); st != 200 || len(b["results"].([]any)) != 1 {
		t.Fatalf("room delete status: %d %v", st, b)
	}
	if st, b := ts.do("GET", "/_synapse/admin/v1/rooms/"+room+"/block", adm, nil); st != 200 || b["block"] != true {
		t.Fatalf("block status: %d %v", st, b)
	}
	if st, _ := ts.do("POST", "/_matrix/client/v3/rooms/"+room+"/join", alice.AccessToken, map[string]any{}); st != 403 {
		t.Fatalf("alice rejoins the blocked room: %d", st)
	}
	// The delete purged (the default): the room's events are erased and
	// it has no size left; the notices room has one.
	if st, b := ts.do("GET", "/_synapse/admin/v1/statistics/database/rooms", adm, nil); st != 200 || len(b["rooms"].([]any)) != 1 ||
		strings.Contains(fmt.Sprint(b["rooms"]), roomID) || !strings.Contains(fmt.Sprint(b["rooms"]), noticeRoom) {
		t.Fatalf("room sizes: %d %v, want the notices room only", st, b)
	}
	if st, b := ts.do("GET", "/_synapse/admin/v1/statistics/users/media", adm, nil); st != 200 || b["total"] != float64(0) {
		t.Fatalf("media statistics without a media store: %d %v", st, b)
	}
}
