package api_test

import (
	"context"
	"crypto/hmac"
	"crypto/sha1"
	"encoding/base64"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/engram-hs/engram/api"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"
)

func TestPublicRoomsSearchAndPagination(t *testing.T) {
	ts := startServer(t)
	ctx := context.Background()
	alice := ts.register("alice")
	bob := ts.register("bob")
	space, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Visibility: "public", Name: "Garden space", CreationContent: map[string]any{"type": "m.space"}})
	if err != nil {
		t.Fatal(err)
	}
	big, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Visibility: "public", Name: "Big lobby", Topic: "All things cheese"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bob.JoinRoomByID(ctx, big.RoomID); err != nil {
		t.Fatal(err)
	}
	if _, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Visibility: "public", Name: "Quiet corner"}); err != nil {
		t.Fatal(err)
	}
	const path = "/_matrix/client/v3/publicRooms"

	// Pagination: largest room first, tokens walk the whole list once.
	st, body := ts.do("POST", path, alice.AccessToken, map[string]any{"limit": 2})
	chunk, _ := body["chunk"].([]any)
	if st != 200 || len(chunk) != 2 || body["next_batch"] == nil || body["prev_batch"] != nil || body["total_room_count_estimate"] != 3.0 {
		t.Fatalf("page 1: %d %v", st, body)
	}
	first := chunk[0].(map[string]any)
	if first["room_id"] != string(big.RoomID) || first["num_joined_members"] != 2.0 || first["topic"] != "All things cheese" ||
		first["join_rule"] != "public" || first["world_readable"] != false || first["guest_can_join"] != false {
		t.Fatalf("largest room first, with its fields: %v", first)
	}
	st, body = ts.do("POST", path, alice.AccessToken, map[string]any{"limit": 2, "since": body["next_batch"]})
	chunk, _ = body["chunk"].([]any)
	if st != 200 || len(chunk) != 1 || body["next_batch"] != nil || body["prev_batch"] == nil {
		t.Fatalf("page 2: %d %v", st, body)
	}

	// Filters: generic search term over name/topic, room types.
	st, body = ts.do("POST", path, alice.AccessToken, map[string]any{"filter": map[string]any{"generic_search_term": "CHEESE"}})
	if chunk, _ = body["chunk"].([]any); st != 200 || len(chunk) != 1 || chunk[0].(map[string]any)["room_id"] != string(big.RoomID) {
		t.Fatalf("search: %d %v", st, body)
	}
	st, body = ts.do("POST", path, alice.AccessToken, map[string]any{"filter": map[string]any{"room_types": []any{"m.space"}}})
	if chunk, _ = body["chunk"].([]any); st != 200 || len(chunk) != 1 || chunk[0].(map[string]any)["room_type"] != "m.space" || chunk[0].(map[string]any)["room_id"] != string(space.RoomID) {
		t.Fatalf("room_types m.space: %d %v", st, body)
	}
	st, body = ts.do("POST", path, alice.AccessToken, map[string]any{"filter": map[string]any{"room_types": []any{nil}}})
	if chunk, _ = body["chunk"].([]any); st != 200 || len(chunk) != 2 {
		t.Fatalf("room_types [null]: %d %v", st, body)
	}
	// mautrix's typed response reads the same answer.
	var resp *mautrix.RespPublicRooms
	_, err = alice.MakeRequest(ctx, "POST", alice.BuildClientURL("v3", "publicRooms"), map[string]any{"limit": 1}, &resp)
	if err != nil || len(resp.Chunk) != 1 || resp.Chunk[0].NumJoinedMembers != 2 || resp.NextBatch == "" {
		t.Fatalf("mautrix PublicRooms: %v %+v", err, resp)
	}

	// Errors.
	for _, c := range []struct {
		path, token string
		body        any
		status      int
		code        string
	}{
		{path, "", map[string]any{}, 401, "M_MISSING_TOKEN"},
		{path, alice.AccessToken, map[string]any{"since": "bogus"}, 400, "M_INVALID_PARAM"},
		{path + "?server=other.example", alice.AccessToken, map[string]any{}, 400, "M_INVALID_PARAM"},
		{path, alice.AccessToken, map[string]any{"limit": "ten"}, 400, "M_BAD_JSON"},
	} {
		st, body := ts.do("POST", c.path, c.token, c.body)
		if st != c.status || body["errcode"] != c.code {
			t.Errorf("POST %s %v: %d %v, want %d %s", c.path, c.body, st, body, c.status, c.code)
		}
	}
}

func TestUserDirectorySearch(t *testing.T) {
	ts := startServer(t)
	ctx := context.Background()
	alice := ts.register("alice")
	bob := ts.register("bob")
	carol := ts.register("carol")
	dave := ts.register("dave")
	erin := ts.register("erin")
	if err := bob.SetDisplayName(ctx, "Bobby Tables"); err != nil {
		t.Fatal(err)
	}
	// alice shares a private room with bob; carol is in a published room;
	// dave shares nothing with alice.
	priv, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Invite: []id.UserID{bob.UserID}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bob.JoinRoomByID(ctx, priv.RoomID); err != nil {
		t.Fatal(err)
	}
	if _, err := carol.CreateRoom(ctx, &mautrix.ReqCreateRoom{Visibility: "public", Name: "Carol's"}); err != nil {
		t.Fatal(err)
	}
	if _, err := dave.CreateRoom(ctx, &mautrix.ReqCreateRoom{Name: "Dave's den"}); err != nil {
		t.Fatal(err)
	}
	// erin was in a shared room but left: no longer searchable through it.
	shared, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := erin.JoinRoomByID(ctx, shared.RoomID); err != nil {
		t.Fatal(err)
	}
	if _, err := erin.LeaveRoom(ctx, shared.RoomID); err != nil {
		t.Fatal(err)
	}

	search := func(term string, limit int) (int, map[string]any) {
		body := map[string]any{"search_term": term}
		if limit > 0 {
			body["limit"] = limit
		}
		return ts.do("POST", "/_matrix/client/v3/user_directory/search", alice.AccessToken, body)
	}
	ids := func(body map[string]any) []string {
		var out []string
		for _, r := range body["results"].([]any) {
			out = append(out, r.(map[string]any)["user_id"].(string))
		}
		return out
	}
	st, body := search("tables", 0)
	if st != 200 || strings.Join(ids(body), ",") != string(bob.UserID) || body["limited"] != false ||
		body["results"].([]any)[0].(map[string]any)["display_name"] != "Bobby Tables" {
		t.Fatalf("search by display name: %d %v", st, body)
	}
	if _, body = search("carol", 0); strings.Join(ids(body), ",") != string(carol.UserID) {
		t.Fatalf("user in a published room: %v", body)
	}
	if _, body = search("dave", 0); len(ids(body)) != 0 {
		t.Fatalf("user sharing no room found: %v", body)
	}
	if _, body = search("erin", 0); len(ids(body)) != 0 {
		t.Fatalf("user who left found: %v", body)
	}
	// Everyone matches the server name; the limit truncates.
	if _, body = search(serverName, 1); len(ids(body)) != 1 || body["limited"] != true {
		t.Fatalf("limited: %v", body)
	}
	// A search by the part of the ID everyone shares finds the others,
	// never the searcher.
	if _, body = search("@", 0); slices.Contains(ids(body), alice.UserID.String()) || len(ids(body)) != 2 {
		t.Fatalf("search by the sigil: %v, want bob and carol without alice herself", ids(body))
	}
	if _, body = search(bob.UserID.String(), 0); strings.Join(ids(body), ",") != string(bob.UserID) {
		t.Fatalf("search by bob's ID: %v, want bob once", ids(body))
	}
	res, err := alice.SearchUserDirectory(ctx, "bob", 10)
	if err != nil || len(res.Results) != 1 || res.Results[0].UserID != bob.UserID {
		t.Fatalf("mautrix SearchUserDirectory: %v %+v", err, res)
	}
	if st, body := ts.do("POST", "/_matrix/client/v3/user_directory/search", alice.AccessToken, map[string]any{}); st != 400 || body["errcode"] != "M_MISSING_PARAM" {
		t.Fatalf("missing search_term: %d %v", st, body)
	}
	if st, body := ts.do("POST", "/_matrix/client/v3/user_directory/search", "", map[string]any{"search_term": "x"}); st != 401 || body["errcode"] != "M_MISSING_TOKEN" {
		t.Fatalf("no token: %d %v", st, body)
	}
}

func TestTurnServer(t *testing.T) {
	const secret = "turn-secret"
	ts := startServer(t, func(c *api.Config) {
		c.TurnURIs = []string{"turn:turn.test.local:3478?transport=udp", "turns:turn.test.local:5349"}
		c.TurnSharedSecret = secret
		c.TurnUserLifetime = 2 * time.Hour
	})
	alice := ts.register("alice")
	before := time.Now()
	st, body := ts.do("GET", "/_matrix/client/v3/voip/turnServer", alice.AccessToken, nil)
	if st != 200 || body["ttl"] != 7200.0 || len(body["uris"].([]any)) != 2 {
		t.Fatalf("turnServer: %d %v", st, body)
	}
	user, _ := body["username"].(string)
	exp, uidPart, ok := strings.Cut(user, ":")
	expiry, err := strconv.ParseInt(exp, 10, 64)
	if !ok || err != nil || uidPart != string(alice.UserID) || expiry < before.Add(2*time.Hour).Unix()-1 || expiry > time.Now().Add(2*time.Hour).Unix()+1 {
		t.Fatalf("username %q", user)
	}
	mac := hmac.New(sha1.New, []byte(secret))
	mac.Write([]byte(user))
	if body["password"] != base64.StdEncoding.EncodeToString(mac.Sum(nil)) {
		t.Fatalf("password %v is not base64(HMAC-SHA1(secret, username))", body["password"])
	}
	if st, body := ts.do("GET", "/_matrix/client/v3/voip/turnServer", "", nil); st != 401 || body["errcode"] != "M_MISSING_TOKEN" {
		t.Fatalf("no token: %d %v", st, body)
	}

	// Without TURN configured the answer is an empty object.
	plain := startServer(t)
	bob := plain.register("bob")
	if st, body := plain.do("GET", "/_matrix/client/v3/voip/turnServer", bob.AccessToken, nil); st != 200 || len(body) != 0 {
		t.Fatalf("unconfigured: %d %v", st, body)
	}
}

func TestReports(t *testing.T) {
	ts := startServer(t)
	ctx := context.Background()
	alice := ts.register("alice")
	bob := ts.register("bob")
	room, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{})
	if err != nil {
		t.Fatal(err)
	}
	sent, err := alice.SendText(ctx, room.RoomID, "rude words")
	if err != nil {
		t.Fatal(err)
	}
	roomPath := "/_matrix/client/v3/rooms/" + url.PathEscape(string(room.RoomID))
	if st, body := ts.do("POST", roomPath+"/report/"+url.PathEscape(string(sent.EventID)), alice.AccessToken, map[string]any{"reason": "spam", "score": -100}); st != 200 {
		t.Fatalf("report event: %d %v", st, body)
	}
	if err := alice.ReportEvent(ctx, room.RoomID, sent.EventID, "again"); err != nil {
		t.Fatalf("mautrix ReportEvent: %v", err)
	}
	if st, body := ts.do("POST", roomPath+"/report", bob.AccessToken, map[string]any{"reason": ""}); st != 200 {
		t.Fatalf("report room (not joined is fine): %d %v", st, body)
	}
	if st, body := ts.do("POST", "/_matrix/client/v3/users/"+url.PathEscape(string(alice.UserID))+"/report", bob.AccessToken, map[string]any{"reason": "impersonation"}); st != 200 {
		t.Fatalf("report user: %d %v", st, body)
	}

	// The reports projection has all four, in order, for the admin API.
	rv := ts.api.Reports()
	n, err := rv.Count()
	if err != nil || n != 4 {
		t.Fatalf("count = %d, %v", n, err)
	}
	list, err := rv.List(0, 10, false)
	if err != nil || len(list) != 4 {
		t.Fatalf("list: %v %+v", err, list)
	}
	if r := list[0]; r.Reporter != string(alice.UserID) || r.EventID != string(sent.EventID) || r.RoomID != string(room.RoomID) || r.Reason != "spam" || r.Score == nil || *r.Score != -100 || r.ReceivedTS == 0 {
		t.Fatalf("event report: %+v", r)
	}
	if r := list[2]; r.Reporter != string(bob.UserID) || r.RoomID != string(room.RoomID) || r.EventID != "" {
		t.Fatalf("room report: %+v", r)
	}
	if r := list[3]; r.TargetUserID != string(alice.UserID) || r.Reason != "impersonation" {
		t.Fatalf("user report: %+v", r)
	}
	newest, err := rv.List(0, 1, true)
	if err != nil || len(newest) != 1 || newest[0].ID != list[3].ID {
		t.Fatalf("newest first: %v %+v", err, newest)
	}
	if page, _ := rv.List(list[1].ID, 10, false); len(page) != 2 || page[0].ID != list[2].ID {
		t.Fatalf("page after %d: %+v", list[1].ID, page)
	}
	if r, err := rv.Report(list[2].ID); err != nil || r == nil || r.Reporter != string(bob.UserID) {
		t.Fatalf("Report(%d): %v %+v", list[2].ID, err, r)
	}

	// Errors.
	for _, c := range []struct {
		path, token string
		body        any
		status      int
		code        string
	}{
		// bob is not joined: the event is "not found" for him.
		{roomPath + "/report/" + url.PathEscape(string(sent.EventID)), bob.AccessToken, map[string]any{"reason": "x"}, 404, "M_NOT_FOUND"},
		{roomPath + "/report/%24nope", alice.AccessToken, map[string]any{"reason": "x"}, 404, "M_NOT_FOUND"},
		{roomPath + "/report/" + url.PathEscape(string(sent.EventID)), alice.AccessToken, map[string]any{"score": 5}, 400, "M_INVALID_PARAM"},
		{"/_matrix/client/v3/rooms/!nope:" + serverName + "/report", alice.AccessToken, map[string]any{"reason": "x"}, 404, "M_NOT_FOUND"},
		{roomPath + "/report", alice.AccessToken, map[string]any{}, 400, "M_MISSING_PARAM"},
		{"/_matrix/client/v3/users/@ghost:" + serverName + "/report", alice.AccessToken, map[string]any{"reason": "x"}, 404, "M_NOT_FOUND"},
		{"/_matrix/client/v3/users/ghost/report", alice.AccessToken, map[string]any{"reason": "x"}, 400, "M_INVALID_PARAM"},
		{roomPath + "/report", "", map[string]any{"reason": "x"}, 401, "M_MISSING_TOKEN"},
	} {
		st, body := ts.do("POST", c.path, c.token, c.body)
		if st != c.status || body["errcode"] != c.code {
			t.Errorf("POST %s: %d %v, want %d %s", c.path, st, body, c.status, c.code)
		}
	}
	if n, _ := rv.Count(); n != 4 {
		t.Fatalf("refused reports were recorded: count %d", n)
	}
}
