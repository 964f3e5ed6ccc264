package api_test

import (
	"context"
	"net/url"
	"slices"
	"strings"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

func newRoom(t *testing.T, c *mautrix.Client, req *mautrix.ReqCreateRoom) id.RoomID {
	t.Helper()
	r, err := c.CreateRoom(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	return r.RoomID
}

func spaceReq(name string) *mautrix.ReqCreateRoom {
	return &mautrix.ReqCreateRoom{Preset: "public_chat", Name: name, CreationContent: map[string]any{"type": "m.space"}}
}

func addChild(t *testing.T, c *mautrix.Client, parent, child id.RoomID, content map[string]any) {
	t.Helper()
	if content == nil {
		content = map[string]any{"via": []string{serverName}}
	}
	if _, err := c.SendStateEvent(context.Background(), parent, event.NewEventType("m.space.child"), child.String(), content); err != nil {
		t.Fatal(err)
	}
}

// hierarchy returns the room IDs of one page, the children_state keys of
// each space ("parent|child;..."), and next_batch.
func hierarchy(t *testing.T, ts *testServer, c *mautrix.Client, root id.RoomID, q url.Values) ([]string, map[string]string, string) {
	t.Helper()
	path := "/_matrix/client/v1/rooms/" + url.PathEscape(root.String()) + "/hierarchy"
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	code, body := ts.do("GET", path, c.AccessToken, nil)
	if code != 200 {
		t.Fatalf("hierarchy: %d %v", code, body)
	}
	var ids []string
	links := map[string]string{}
	for _, r := range body["rooms"].([]any) {
		m := r.(map[string]any)
		rid := m["room_id"].(string)
		ids = append(ids, rid)
		cs, ok := m["children_state"].([]any)
		if !ok {
			t.Fatalf("room %s has no children_state: %v", rid, m)
		}
		var ks []string
		for _, c := range cs {
			e := c.(map[string]any)
			if e["type"] != "m.space.child" || e["origin_server_ts"] == nil || e["sender"] == nil {
				t.Fatalf("children_state entry %v", e)
			}
			ks = append(ks, e["state_key"].(string))
		}
		if len(ks) > 0 {
			links[rid] = strings.Join(ks, ";")
		}
	}
	next, _ := body["next_batch"].(string)
	return ids, links, next
}

func sameSet(a []string, b ...id.RoomID) bool {
	if len(a) != len(b) {
		return false
	}
	for _, x := range b {
		if !slices.Contains(a, x.String()) {
			return false
		}
	}
	return true
}

// The space tree of Complement's TestClientSpacesSummary:
//
//	Root -> R1 (suggested), SS1, R2 (suggested)
//	SS1 -> SS2 -> R3, R4 (R4 world-readable, alice not in it)
//	R2 (not a space) -> R5: not followed
func TestSpaceHierarchy(t *testing.T) {
	ts := startServer(t)
	alice, bob := ts.register("alice"), ts.register("bob")
	root := newRoom(t, alice, spaceReq("Root"))
	r1 := newRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "R1"})
	ss1 := newRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "Sub-Space 1", Topic: "sub topic", CreationContent: map[string]any{"type": "m.space"}})
	r2 := newRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "R2"})
	ss2 := newRoom(t, alice, spaceReq("SS2"))
	r3 := newRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "R3"})
	r4 := newRoom(t, bob, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "R4",
		InitialState: []*event.Event{{Type: event.StateHistoryVisibility, Content: event.Content{Raw: map[string]any{"history_visibility": "world_readable"}}}}})
	r5 := newRoom(t, bob, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "R5"})
	addChild(t, alice, root, r1, map[string]any{"via": []string{serverName}, "suggested": true})
	addChild(t, alice, root, ss1, nil)
	addChild(t, alice, root, r2, map[string]any{"via": []string{serverName}, "suggested": true})
	addChild(t, alice, r2, r5, nil)
	addChild(t, alice, ss1, ss2, nil)
	addChild(t, alice, ss2, r3, nil)
	addChild(t, alice, ss2, r4, nil)
	// An invalid child (via is not a list of strings) is ignored.
	addChild(t, alice, ss2, r5, map[string]any{"via": "nope"})

	ids, links, next := hierarchy(t, ts, alice, root, nil)
	if !sameSet(ids, root, r1, ss1, r2, ss2, r3, r4) || next != "" {
		t.Fatalf("whole graph: %v (next %q)", ids, next)
	}
	if want := r1.String() + ";" + ss1.String() + ";" + r2.String(); links[root.String()] != want {
		t.Errorf("root's children_state %q, want %q", links[root.String()], want)
	}
	if links[ss2.String()] != r3.String()+";"+r4.String() || links[r2.String()] != "" {
		t.Errorf("children_state: %v", links)
	}
	// Depth first, in the spec's child order.
	if want := []string{root.String(), r1.String(), ss1.String(), ss2.String(), r3.String(), r4.String(), r2.String()}; !slices.Equal(ids, want) {
		t.Errorf("order %v, want %v", ids, want)
	}
	code, body := ts.do("GET", "/_matrix/client/v1/rooms/"+url.PathEscape(root.String())+"/hierarchy", alice.AccessToken, nil)
	if code != 200 {
		t.Fatal(code)
	}
	for _, r := range body["rooms"].([]any) {
		m := r.(map[string]any)
		switch m["room_id"] {
		case ss1.String():
			if m["room_type"] != "m.space" || m["name"] != "Sub-Space 1" || m["topic"] != "sub topic" || m["join_rule"] != "public" || m["num_joined_members"] != float64(1) || m["room_version"] == nil {
				t.Errorf("SS1 summary %v", m)
			}
		case r4.String():
			if m["world_readable"] != true || m["name"] != "R4" {
				t.Errorf("R4 summary %v", m)
			}
		}
	}

	ids, links, _ = hierarchy(t, ts, alice, root, url.Values{"max_depth": {"1"}})
	if !sameSet(ids, root, r1, ss1, r2) || links[ss1.String()] != ss2.String() {
		t.Fatalf("max_depth=1: %v %v", ids, links)
	}
	ids, links, _ = hierarchy(t, ts, alice, root, url.Values{"suggested_only": {"true"}})
	if !sameSet(ids, root, r1, r2) || links[root.String()] != r1.String()+";"+r2.String() {
		t.Fatalf("suggested_only: %v %v", ids, links)
	}

	ids, _, next = hierarchy(t, ts, alice, root, url.Values{"limit": {"4"}})
	if !slices.Equal(ids, []string{root.String(), r1.String(), ss1.String(), ss2.String()}) || next == "" {
		t.Fatalf("first page: %v next %q", ids, next)
	}
	ids, _, next2 := hierarchy(t, ts, alice, root, url.Values{"from": {next}})
	if !slices.Equal(ids, []string{r3.String(), r4.String(), r2.String()}) || next2 != "" {
		t.Fatalf("second page: %v next %q", ids, next2)
	}
	for _, q := range []url.Values{{"from": {next}, "max_depth": {"2"}}, {"from": {"garbage"}}, {"limit": {"0"}}, {"max_depth": {"-1"}}, {"suggested_only": {"maybe"}}} {
		if code, body := ts.do("GET", "/_matrix/client/v1/rooms/"+url.PathEscape(root.String())+"/hierarchy?"+q.Encode(), alice.AccessToken, nil); code != 400 || body["errcode"] != "M_INVALID_PARAM" {
			t.Errorf("%v: %d %v, want 400 M_INVALID_PARAM", q, code, body)
		}
	}

	// Removing a link (empty content) drops the child and its subtree.
	addChild(t, alice, root, ss1, map[string]any{})
	ids, links, _ = hierarchy(t, ts, alice, root, nil)
	if !sameSet(ids, root, r1, r2) || links[root.String()] != r1.String()+";"+r2.String() {
		t.Fatalf("after unlinking SS1: %v %v", ids, links)
	}

	// A room the user may not see is 403.
	private := newRoom(t, bob, &mautrix.ReqCreateRoom{Preset: "private_chat", CreationContent: map[string]any{"type": "m.space"}})
	if code, body := ts.do("GET", "/_matrix/client/v1/rooms/"+url.PathEscape(private.String())+"/hierarchy", alice.AccessToken, nil); code != 403 || body["errcode"] != "M_FORBIDDEN" {
		t.Fatalf("private space: %d %v", code, body)
	}
	if code, _ := ts.do("GET", "/_matrix/client/v1/rooms/"+url.PathEscape("!nope:"+serverName)+"/hierarchy", alice.AccessToken, nil); code != 403 {
		t.Fatalf("unknown room: %d", code)
	}
}

// Join rules decide what a user is shown (Complement's
// TestClientSpacesSummaryJoinRules and the restricted rooms of
// TestRestrictedRoomsSpacesSummaryLocal).
func TestSpaceHierarchyJoinRules(t *testing.T) {
	ts := startServer(t)
	ctx := context.Background()
	alice, bob := ts.register("alice"), ts.register("bob")
	root := newRoom(t, alice, spaceReq("Root"))
	r1 := newRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "private_chat", Name: "R1"})
	ss1 := newRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "private_chat", Name: "SS1", CreationContent: map[string]any{"type": "m.space"}})
	r2 := newRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "R2"})
	r3 := newRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "private_chat", Name: "R3"})
	restricted := newRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "private_chat", Name: "Restricted", RoomVersion: "10",
		InitialState: []*event.Event{{Type: event.StateJoinRules, Content: event.Content{Raw: map[string]any{"join_rule": "restricted",
			"allow": []any{map[string]any{"type": "m.room_membership", "room_id": root.String()}}}}}}})
	addChild(t, alice, root, r1, nil)
	addChild(t, alice, root, ss1, nil)
	addChild(t, alice, root, restricted, nil)
	addChild(t, alice, ss1, r2, nil)
	addChild(t, alice, ss1, r3, nil)

	// Not yet in Root: only Root itself (public), its links all listed.
	ids, links, _ := hierarchy(t, ts, bob, root, nil)
	if !sameSet(ids, root) || links[root.String()] != r1.String()+";"+ss1.String()+";"+restricted.String() {
		t.Fatalf("before joining: %v %v", ids, links)
	}
	if _, err := bob.JoinRoomByID(ctx, root); err != nil {
		t.Fatal(err)
	}
	// A member of Root may join the restricted room: it is shown.
	ids, _, _ = hierarchy(t, ts, bob, root, nil)
	if !sameSet(ids, root, restricted) {
		t.Fatalf("joined to Root: %v", ids)
	}
	for _, r := range []id.RoomID{r1, r3} {
		if _, err := alice.InviteUser(ctx, r, &mautrix.ReqInviteUser{UserID: bob.UserID}); err != nil {
			t.Fatal(err)
		}
	}
	ids, _, _ = hierarchy(t, ts, bob, root, nil)
	if !sameSet(ids, root, r1, restricted) {
		t.Fatalf("invited to R1 and R3 (SS1 hidden): %v", ids)
	}
	if _, err := alice.InviteUser(ctx, ss1, &mautrix.ReqInviteUser{UserID: bob.UserID}); err != nil {
		t.Fatal(err)
	}
	ids, _, _ = hierarchy(t, ts, bob, root, nil)
	if !sameSet(ids, root, r1, ss1, r2, r3, restricted) {
		t.Fatalf("invited to SS1: %v", ids)
	}
}

func TestRoomSummary(t *testing.T) {
	ts := startServer(t)
	alice, bob := ts.register("alice"), ts.register("bob")
	space := newRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: "Space", RoomAliasName: "space", CreationContent: map[string]any{"type": "m.space"}})
	restricted := newRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat", RoomVersion: "8",
		InitialState: []*event.Event{{Type: event.StateJoinRules, Content: event.Content{Raw: map[string]any{"join_rule": "restricted",
			"allow": []any{map[string]any{"type": "m.room_membership", "room_id": space.String()}}}}}}})
	private := newRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "private_chat", Name: "Secret"})
	get := func(c *mautrix.Client, idOrAlias string) (int, map[string]any) {
		token := ""
		if c != nil {
			token = c.AccessToken
		}
		return ts.do("GET", "/_matrix/client/v1/room_summary/"+url.PathEscape(idOrAlias), token, nil)
	}
	code, s := get(alice, restricted.String())
	if code != 200 || s["room_id"] != restricted.String() || s["join_rule"] != "restricted" || s["membership"] != "join" || s["room_version"] != "8" {
		t.Fatalf("restricted: %d %v", code, s)
	}
	if a, _ := s["allowed_room_ids"].([]any); len(a) != 1 || a[0] != space.String() {
		t.Fatalf("allowed_room_ids %v", s["allowed_room_ids"])
	}
	code, s = get(alice, private.String())
	if _, ok := s["allowed_room_ids"]; code != 200 || ok || s["name"] != "Secret" {
		t.Fatalf("private, as its member: %d %v", code, s)
	}
	// By alias, unauthenticated: a public space is shown, without a
	// membership.
	code, s = get(nil, "#space:"+serverName)
	if _, ok := s["membership"]; code != 200 || s["room_id"] != space.String() || s["room_type"] != "m.space" || ok || s["num_joined_members"] != float64(1) {
		t.Fatalf("by alias without a token: %d %v", code, s)
	}
	// A private room is not shown to a non-member, nor without a token.
	if code, s := get(bob, private.String()); code != 404 || s["errcode"] != "M_NOT_FOUND" {
		t.Fatalf("private, as a stranger: %d %v", code, s)
	}
	if code, _ := get(nil, private.String()); code != 404 {
		t.Fatalf("private, unauthenticated: %d", code)
	}
	if code, _ := get(bob, "!unknown:"+serverName); code != 404 {
		t.Fatalf("unknown room: %d", code)
	}
	if code, _ := get(bob, "#unknown:"+serverName); code != 404 {
		t.Fatalf("unknown alias: %d", code)
	}
	// The unstable path (MSC3266) answers the same.
	if code, s := ts.do("GET", "/_matrix/client/unstable/im.nheko.summary/summary/"+url.PathEscape(space.String()), bob.AccessToken, nil); code != 200 || s["room_id"] != space.String() {
		t.Fatalf("unstable path: %d %v", code, s)
	}
}
