package api_test

import (
	"context"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

func TestTimestampToEvent(t *testing.T) {
	ts := startServer(t)
	ctx := context.Background()
	alice := ts.register("alice")
	bob := ts.register("bob")
	room, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{})
	if err != nil {
		t.Fatal(err)
	}
	// Three messages with distinct timestamps (the server stamps them).
	var ids []id.EventID
	var stamps []int64
	for i := range 3 {
		time.Sleep(5 * time.Millisecond)
		resp, err := alice.SendText(ctx, room.RoomID, "m"+strconv.Itoa(i))
		if err != nil {
			t.Fatal(err)
		}
		ev, err := alice.GetEvent(ctx, room.RoomID, resp.EventID)
		if err != nil {
			t.Fatal(err)
		}
		ids, stamps = append(ids, resp.EventID), append(stamps, ev.Timestamp)
	}
	if !(stamps[0] < stamps[1] && stamps[1] < stamps[2]) {
		t.Fatalf("timestamps not increasing: %v", stamps)
	}
	path := "/_matrix/client/v1/rooms/" + url.PathEscape(string(room.RoomID)) + "/timestamp_to_event"
	q := func(ts int64, dir string) string { return path + "?ts=" + strconv.FormatInt(ts, 10) + "&dir=" + dir }
	for _, c := range []struct {
		ts   int64
		dir  string
		want id.EventID
	}{
		{stamps[1], "f", ids[1]},
		{stamps[1], "b", ids[1]},
		{stamps[1] + 1, "f", ids[2]},
		{stamps[1] - 1, "b", ids[0]},
		{stamps[2] + 60_000, "b", ids[2]},
	} {
		st, body := ts.do("GET", q(c.ts, c.dir), alice.AccessToken, nil)
		if st != 200 || body["event_id"] != string(c.want) {
			t.Errorf("ts=%d dir=%s: %d %v, want %s", c.ts, c.dir, st, body, c.want)
		}
	}
	st, body := ts.do("GET", q(stamps[0], "f"), alice.AccessToken, nil)
	if st != 200 || body["origin_server_ts"] != float64(stamps[0]) {
		t.Fatalf("origin_server_ts: %d %v", st, body)
	}
	// mautrix's typed call.
	resp, err := alice.TimestampToEvent(ctx, room.RoomID, time.UnixMilli(stamps[2]), mautrix.DirectionBackward)
	if err != nil || resp.EventID != ids[2] {
		t.Fatalf("mautrix TimestampToEvent: %v %+v", err, resp)
	}
	for _, c := range []struct {
		path, token string
		status      int
		code        string
	}{
		{q(stamps[2]+60_000, "f"), alice.AccessToken, 404, "M_NOT_FOUND"},
		{q(1, "b"), alice.AccessToken, 404, "M_NOT_FOUND"},
		{q(stamps[0], "x"), alice.AccessToken, 400, "M_INVALID_PARAM"},
		{path + "?dir=f", alice.AccessToken, 400, "M_MISSING_PARAM"},
		{path + "?ts=abc&dir=f", alice.AccessToken, 400, "M_INVALID_PARAM"},
		{path + "?ts=1", alice.AccessToken, 400, "M_MISSING_PARAM"},
		{q(stamps[0], "f"), bob.AccessToken, 403, "M_FORBIDDEN"},
		{q(stamps[0], "f"), "", 401, "M_MISSING_TOKEN"},
	} {
		st, body := ts.do("GET", c.path, c.token, nil)
		if st != c.status || body["errcode"] != c.code {
			t.Errorf("GET %s: %d %v, want %d %s", c.path, st, body, c.status, c.code)
		}
	}
}

// stateOf reads one state event's content through the API; typ may end
// in /<state key>.
func stateOf(t *testing.T, ts *testServer, token string, roomID, typ string) map[string]any {
	t.Helper()
	if !strings.Contains(typ, "/") {
		typ += "/" // the empty state key
	}
	st, body := ts.do("GET", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/state/"+typ, token, nil)
	if st != 200 {
		t.Fatalf("state %s of %s: %d %v", typ, roomID, st, body)
	}
	return body
}

func TestRoomUpgrade(t *testing.T) {
	ts := startServer(t)
	ctx := context.Background()
	alice := ts.register("alice")
	bob := ts.register("bob")
	carol := ts.register("carol")
	old, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Visibility: "public", RoomVersion: "10", Name: "Lobby", Topic: "Old topic", RoomAliasName: "lobby"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bob.JoinRoomByID(ctx, old.RoomID); err != nil {
		t.Fatal(err)
	}
	upgrade := "/_matrix/client/v3/rooms/" + url.PathEscape(string(old.RoomID)) + "/upgrade"
	for _, c := range []struct {
		token  string
		body   any
		status int
		code   string
	}{
		{bob.AccessToken, map[string]any{"new_version": "11"}, 403, "M_FORBIDDEN"},   // no tombstone power
		{carol.AccessToken, map[string]any{"new_version": "11"}, 403, "M_FORBIDDEN"}, // not a member
		{alice.AccessToken, map[string]any{"new_version": "999"}, 400, "M_UNSUPPORTED_ROOM_VERSION"},
		{alice.AccessToken, map[string]any{}, 400, "M_MISSING_PARAM"},
		{"", map[string]any{"new_version": "11"}, 401, "M_MISSING_TOKEN"},
	} {
		st, body := ts.do("POST", upgrade, c.token, c.body)
		if st != c.status || body["errcode"] != c.code {
			t.Errorf("upgrade %v: %d %v, want %d %s", c.body, st, body, c.status, c.code)
		}
	}

	st, body := ts.do("POST", upgrade, alice.AccessToken, map[string]any{"new_version": "11"})
	newRoom, _ := body["replacement_room"].(string)
	if st != 200 || !strings.HasPrefix(newRoom, "!") || newRoom == string(old.RoomID) {
		t.Fatalf("upgrade: %d %v", st, body)
	}
	// The old room: tombstone, restricted power levels.
	tomb, err := alice.FullStateEvent(ctx, old.RoomID, event.StateTombstone, "")
	if err != nil || tomb.Content.Raw["replacement_room"] != newRoom {
		t.Fatalf("tombstone: %v %+v", err, tomb)
	}
	oldPL := stateOf(t, ts, alice.AccessToken, string(old.RoomID), "m.room.power_levels")
	if oldPL["events_default"].(float64) < 50 || oldPL["invite"].(float64) < 50 {
		t.Fatalf("old room power levels not restricted: %v", oldPL)
	}
	if _, err := bob.SendText(ctx, old.RoomID, "still here?"); errcode(err) != "M_FORBIDDEN" {
		t.Fatalf("bob sends in the old room: %v", err)
	}
	// The new room: predecessor naming the tombstone, copied state,
	// creator joined, alias and directory listing moved.
	create := stateOf(t, ts, alice.AccessToken, newRoom, "m.room.create")
	pred, _ := create["predecessor"].(map[string]any)
	if create["room_version"] != "11" || pred["room_id"] != string(old.RoomID) || pred["event_id"] != string(tomb.ID) {
		t.Fatalf("create content: %v", create)
	}
	if c := stateOf(t, ts, alice.AccessToken, newRoom, "m.room.name"); c["name"] != "Lobby" {
		t.Fatalf("name: %v", c)
	}
	if c := stateOf(t, ts, alice.AccessToken, newRoom, "m.room.topic"); c["topic"] != "Old topic" {
		t.Fatalf("topic: %v", c)
	}
	if c := stateOf(t, ts, alice.AccessToken, newRoom, "m.room.join_rules"); c["join_rule"] != "public" {
		t.Fatalf("join rules: %v", c)
	}
	pl := stateOf(t, ts, alice.AccessToken, newRoom, "m.room.power_levels")
	if users, _ := pl["users"].(map[string]any); users[string(alice.UserID)] != 100.0 || pl["events_default"] != 0.0 {
		t.Fatalf("new room power levels are not the old room's: %v", pl)
	}
	if c := stateOf(t, ts, alice.AccessToken, newRoom, "m.room.member/"+url.PathEscape(string(alice.UserID))); c["membership"] != "join" {
		t.Fatalf("upgrader's membership: %v", c)
	}
	if st, body := ts.do("GET", "/_matrix/client/v3/directory/room/"+url.PathEscape("#lobby:"+serverName), "", nil); st != 200 || body["room_id"] != newRoom {
		t.Fatalf("alias not moved: %d %v", st, body)
	}
	if _, body := ts.do("GET", "/_matrix/client/v3/directory/list/room/"+url.PathEscape(string(old.RoomID)), "", nil); body["visibility"] != "private" {
		t.Fatalf("old room still published: %v", body)
	}
	if _, body := ts.do("GET", "/_matrix/client/v3/directory/list/room/"+url.PathEscape(newRoom), "", nil); body["visibility"] != "public" {
		t.Fatalf("new room not published: %v", body)
	}
	// bob follows the tombstone and can talk in the new room.
	if _, err := bob.JoinRoomByID(ctx, id.RoomID(newRoom)); err != nil {
		t.Fatal(err)
	}
	if _, err := bob.SendText(ctx, id.RoomID(newRoom), "hello again"); err != nil {
		t.Fatal(err)
	}

	// Upgrading to v12: the room ID comes from the create event, the
	// predecessor has no event_id, creators are not in the power levels.
	st, body = ts.do("POST", "/_matrix/client/v3/rooms/"+url.PathEscape(newRoom)+"/upgrade", alice.AccessToken,
		map[string]any{"new_version": "12", "additional_creators": []string{string(bob.UserID)}})
	v12, _ := body["replacement_room"].(string)
	if st != 200 || strings.Contains(v12, ":") {
		t.Fatalf("upgrade to v12: %d %v", st, body)
	}
	create = stateOf(t, ts, alice.AccessToken, v12, "m.room.create")
	pred, _ = create["predecessor"].(map[string]any)
	if create["room_version"] != "12" || pred["room_id"] != newRoom || pred["event_id"] != nil {
		t.Fatalf("v12 create content: %v", create)
	}
	if ac, _ := create["additional_creators"].([]any); len(ac) != 1 || ac[0] != string(bob.UserID) {
		t.Fatalf("additional_creators: %v", create)
	}
	pl = stateOf(t, ts, alice.AccessToken, v12, "m.room.power_levels")
	if users, _ := pl["users"].(map[string]any); users[string(alice.UserID)] != nil || users[string(bob.UserID)] != nil {
		t.Fatalf("v12 power levels list creators: %v", pl)
	}
	tomb, err = alice.FullStateEvent(ctx, id.RoomID(newRoom), event.StateTombstone, "")
	if err != nil || tomb.Content.Raw["replacement_room"] != v12 {
		t.Fatalf("tombstone of the v11 room: %v %+v", err, tomb)
	}
	if st, body := ts.do("GET", "/_matrix/client/v3/directory/room/"+url.PathEscape("#lobby:"+serverName), "", nil); st != 200 || body["room_id"] != v12 {
		t.Fatalf("alias not moved again: %d %v", st, body)
	}
}

// Before v10 power levels may be strings; from v10 they must be integers,
// so an upgrade converts them, and the upgrader, who has only the
// tombstone level here, gets enough power to copy the state.
func TestRoomUpgradeStringPowerLevels(t *testing.T) {
	ts := startServer(t)
	alice := ts.register("alice")
	st, body := ts.do("POST", "/_matrix/client/v3/createRoom", alice.AccessToken, map[string]any{"room_version": "9", "name": "Old"})
	old, _ := body["room_id"].(string)
	if st != 200 {
		t.Fatalf("createRoom v9: %d %v", st, body)
	}
	// alice lowers herself to the tombstone level, with string levels.
	st, body = ts.do("PUT", "/_matrix/client/v3/rooms/"+url.PathEscape(old)+"/state/m.room.power_levels/", alice.AccessToken, map[string]any{
		"users":         map[string]any{string(alice.UserID): "60"},
		"events":        map[string]any{"m.room.tombstone": "60", "m.room.name": "75", "m.room.power_levels": "60"},
		"state_default": "70", "events_default": "0",
	})
	if st != 200 {
		t.Fatalf("string power levels: %d %v", st, body)
	}
	st, body = ts.do("POST", "/_matrix/client/v3/rooms/"+url.PathEscape(old)+"/upgrade", alice.AccessToken, map[string]any{"new_version": "11"})
	newRoom, _ := body["replacement_room"].(string)
	if st != 200 {
		t.Fatalf("upgrade: %d %v", st, body)
	}
	pl := stateOf(t, ts, alice.AccessToken, newRoom, "m.room.power_levels")
	users, _ := pl["users"].(map[string]any)
	events, _ := pl["events"].(map[string]any)
	if users[string(alice.UserID)] != 60.0 || events["m.room.name"] != 75.0 || pl["state_default"] != 70.0 {
		t.Fatalf("power levels not copied as integers (final copy must equal the old levels): %v", pl)
	}
	if c := stateOf(t, ts, alice.AccessToken, newRoom, "m.room.name"); c["name"] != "Old" {
		t.Fatalf("name not copied (needs a temporary raise): %v", c)
	}
}
