package api_test

import (
	"context"
	"encoding/json"
	"net/url"
	"slices"
	"strings"
	"testing"

	"maunium.net/go/mautrix"
)

// ruleIDs lists the rule IDs of one kind of a ruleset answer.
func ruleIDs(t *testing.T, ruleset map[string]any, kind string) []string {
	t.Helper()
	list, ok := ruleset[kind].([]any)
	if !ok {
		t.Fatalf("ruleset has no %s list: %v", kind, ruleset)
	}
	var ids []string
	for _, r := range list {
		ids = append(ids, r.(map[string]any)["rule_id"].(string))
	}
	return ids
}

func TestPushRules(t *testing.T) {
	ts := startServer(t)
	alice := ts.register("alice")
	tok := alice.AccessToken
	const base = "/_matrix/client/v3/pushrules/global/"

	// Defaults, in the spec's order, with the user's ID filled in.
	st, body := ts.do("GET", "/_matrix/client/v3/pushrules/", tok, nil)
	if st != 200 {
		t.Fatalf("GET /pushrules/: %d %v", st, body)
	}
	global := body["global"].(map[string]any)
	wantOverride := []string{".m.rule.master", ".m.rule.suppress_notices", ".m.rule.invite_for_me", ".m.rule.member_event",
		".m.rule.is_user_mention", ".m.rule.contains_display_name", ".m.rule.is_room_mention", ".m.rule.roomnotif", ".m.rule.tombstone", ".m.rule.reaction", ".m.rule.room.server_acl", ".m.rule.suppress_edits",
		".org.matrix.msc3930.rule.poll_response"}
	wantUnderride := []string{".m.rule.call", ".m.rule.encrypted_room_one_to_one", ".m.rule.room_one_to_one", ".m.rule.message", ".m.rule.encrypted",
		".org.matrix.msc3930.rule.poll_start_one_to_one", ".org.matrix.msc3930.rule.poll_start", ".org.matrix.msc3930.rule.poll_end_one_to_one", ".org.matrix.msc3930.rule.poll_end"}
	if got := ruleIDs(t, global, "override"); !slices.Equal(got, wantOverride) {
		t.Fatalf("override defaults = %v, want %v", got, wantOverride)
	}
	if got := ruleIDs(t, global, "underride"); !slices.Equal(got, wantUnderride) {
		t.Fatalf("underride defaults = %v, want %v", got, wantUnderride)
	}
	if got := ruleIDs(t, global, "content"); !slices.Equal(got, []string{".m.rule.contains_user_name"}) {
		t.Fatalf("content defaults = %v, want the legacy user-name rule", got)
	}
	for _, k := range []string{"room", "sender"} {
		if got := ruleIDs(t, global, k); len(got) != 0 {
			t.Fatalf("%s defaults = %v, want none", k, got)
		}
	}
	st, body = ts.do("GET", base+"override/.m.rule.invite_for_me", tok, nil)
	conds, _ := json.Marshal(body["conditions"])
	if st != 200 || body["default"] != true || body["enabled"] != true || !strings.Contains(string(conds), `"pattern":"@alice:test.local"`) {
		t.Fatalf("invite_for_me: %d %v", st, body)
	}
	st, body = ts.do("GET", base+"override/.m.rule.master", tok, nil)
	if st != 200 || body["enabled"] != false || body["conditions"] == nil {
		t.Fatalf("master: %d %v", st, body)
	}
	if st, _ := ts.do("GET", "/_matrix/client/v3/pushrules/global/", tok, nil); st != 200 {
		t.Fatalf("GET /pushrules/global/: %d", st)
	}

	// Create content rules; a new rule is the most important user rule,
	// before/after place it relative to another user rule.
	if st, body := ts.do("PUT", base+"content/cake", tok, map[string]any{"pattern": "cake", "actions": []any{"notify"}}); st != 200 {
		t.Fatalf("PUT cake: %d %v", st, body)
	}
	if st, body := ts.do("PUT", base+"content/pie", tok, map[string]any{"pattern": "pie", "actions": []any{"notify"}}); st != 200 {
		t.Fatalf("PUT pie: %d %v", st, body)
	}
	if st, body := ts.do("PUT", base+"content/tart?after=cake", tok, map[string]any{"pattern": "tart", "actions": []any{}}); st != 200 {
		t.Fatalf("PUT tart after cake: %d %v", st, body)
	}
	if st, body := ts.do("PUT", base+"content/bun?before=pie", tok, map[string]any{"pattern": "bun", "actions": []any{}}); st != 200 {
		t.Fatalf("PUT bun before pie: %d %v", st, body)
	}
	_, body = ts.do("GET", "/_matrix/client/v3/pushrules/global/", tok, nil)
	if got, want := ruleIDs(t, body, "content"), []string{"bun", "pie", "cake", "tart", ".m.rule.contains_user_name"}; !slices.Equal(got, want) {
		t.Fatalf("content order = %v, want %v", got, want)
	}
	// A user override sits after the master rule, before the other defaults.
	if st, body := ts.do("PUT", base+"override/beer", tok, map[string]any{"conditions": []any{map[string]any{"kind": "event_match", "key": "content.body", "pattern": "beer"}}, "actions": []any{"notify", map[string]any{"set_tweak": "sound", "value": "beer.wav"}}}); st != 200 {
		t.Fatalf("PUT override: %d %v", st, body)
	}
	_, body = ts.do("GET", "/_matrix/client/v3/pushrules/global/", tok, nil)
	if got := ruleIDs(t, body, "override"); len(got) < 2 || got[0] != ".m.rule.master" || got[1] != "beer" {
		t.Fatalf("override order = %v", got)
	}
	st, body = ts.do("GET", base+"content/cake", tok, nil)
	if st != 200 || body["pattern"] != "cake" || body["default"] != false || body["enabled"] != true {
		t.Fatalf("GET cake: %d %v", st, body)
	}

	// enabled and actions, on a user rule and on a server-default rule.
	if st, _ := ts.do("PUT", base+"content/cake/enabled", tok, map[string]any{"enabled": false}); st != 200 {
		t.Fatalf("disable cake: %d", st)
	}
	if st, body := ts.do("GET", base+"content/cake/enabled", tok, nil); st != 200 || body["enabled"] != false {
		t.Fatalf("cake enabled: %d %v", st, body)
	}
	if st, _ := ts.do("PUT", base+"override/.m.rule.master/enabled", tok, map[string]any{"enabled": true}); st != 200 {
		t.Fatalf("enable master: %d", st)
	}
	if st, _ := ts.do("PUT", base+"underride/.m.rule.message/actions", tok, map[string]any{"actions": []any{}}); st != 200 {
		t.Fatalf("set message actions: %d", st)
	}
	st, body = ts.do("GET", base+"underride/.m.rule.message/actions", tok, nil)
	if acts, _ := body["actions"].([]any); st != 200 || acts == nil || len(acts) != 0 {
		t.Fatalf("message actions: %d %v", st, body)
	}
	if st, body := ts.do("GET", base+"override/.m.rule.master/enabled", tok, nil); st != 200 || body["enabled"] != true {
		t.Fatalf("master enabled: %d %v", st, body)
	}
	// Updating a rule keeps it disabled and in place.
	if st, _ := ts.do("PUT", base+"content/cake", tok, map[string]any{"pattern": "cakes", "actions": []any{"notify"}}); st != 200 {
		t.Fatal("update cake")
	}
	_, body = ts.do("GET", base+"content/cake", tok, nil)
	if body["pattern"] != "cakes" || body["enabled"] != false {
		t.Fatalf("updated cake: %v", body)
	}

	// Deletion.
	if st, _ := ts.do("DELETE", base+"content/pie", tok, nil); st != 200 {
		t.Fatal("delete pie")
	}
	if st, body := ts.do("GET", base+"content/pie", tok, nil); st != 404 || body["errcode"] != "M_NOT_FOUND" {
		t.Fatalf("deleted pie: %d %v", st, body)
	}

	// Error paths.
	for _, c := range []struct {
		method, path string
		body         any
		status       int
		code         string
	}{
		{"GET", base + "content/nope", nil, 404, "M_NOT_FOUND"},
		{"GET", base + "content/nope/enabled", nil, 404, "M_NOT_FOUND"},
		{"GET", base + "content/nope/actions", nil, 404, "M_NOT_FOUND"},
		{"PUT", base + "content/nope/enabled", map[string]any{"enabled": true}, 404, "M_NOT_FOUND"},
		{"PUT", base + "content/nope/actions", map[string]any{"actions": []any{}}, 404, "M_NOT_FOUND"},
		{"DELETE", base + "content/nope", nil, 404, "M_NOT_FOUND"},
		{"DELETE", base + "override/.m.rule.master", nil, 400, "M_UNKNOWN"},
		{"GET", base + "bogus/x", nil, 404, "M_NOT_FOUND"}, // no rule under a kind this server lacks
		{"GET", base + "postcontent/.io.element.msc4306.rule.subscribed_thread", nil, 404, "M_NOT_FOUND"},
		{"PUT", base + "postcontent/x/enabled", map[string]any{"enabled": false}, 404, "M_NOT_FOUND"},
		{"PUT", base + "bogus/x", map[string]any{"actions": []any{}}, 400, "M_INVALID_PARAM"},
		{"PUT", base + "override/.mine", map[string]any{"actions": []any{}}, 400, "M_INVALID_PARAM"},
		{"PUT", base + "override/a%5Cb", map[string]any{"actions": []any{}}, 400, "M_INVALID_PARAM"},
		{"PUT", base + "content/x", map[string]any{"actions": []any{}}, 400, "M_MISSING_PARAM"},
		{"PUT", base + "content/x", map[string]any{"pattern": "x"}, 400, "M_MISSING_PARAM"},
		{"PUT", base + "content/x", map[string]any{"pattern": "x", "actions": []any{1}}, 400, "M_INVALID_PARAM"},
		{"PUT", base + "content/x?before=nope", map[string]any{"pattern": "x", "actions": []any{}}, 400, "M_UNKNOWN"},
		{"PUT", base + "override/x?after=.m.rule.master", map[string]any{"actions": []any{}}, 400, "M_UNKNOWN"},
		{"PUT", base + "content/cake/enabled", map[string]any{}, 400, "M_MISSING_PARAM"},
		{"GET", "/_matrix/client/v3/pushrules/", nil, 401, "M_MISSING_TOKEN"},
	} {
		token := tok
		if c.status == 401 {
			token = ""
		}
		st, body := ts.do(c.method, c.path, token, c.body)
		if st != c.status || body["errcode"] != c.code {
			t.Errorf("%s %s: %d %v, want %d %s", c.method, c.path, st, body, c.status, c.code)
		}
	}

	// /sync delivers the changed rules as the m.push_rules account data
	// event; mautrix parses it into its push rule types.
	resp, err := alice.SyncRequest(context.Background(), 0, "", "", true, "online")
	if err != nil {
		t.Fatal(err)
	}
	var found bool
	for _, ev := range resp.AccountData.Events {
		if ev.Type.Type == "m.push_rules" {
			found = true
			raw, _ := json.Marshal(ev.Content.Raw)
			if !strings.Contains(string(raw), `"rule_id":"cake"`) || strings.Contains(string(raw), `"rule_id":"pie"`) {
				t.Fatalf("m.push_rules in sync: %s", raw)
			}
		}
	}
	if !found {
		t.Fatal("m.push_rules missing from /sync account_data")
	}
	rules, err := alice.GetPushRules(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(rules.Content) != 4 || rules.Content[0].RuleID != "bun" || rules.Content[3].RuleID != ".m.rule.contains_user_name" {
		t.Fatalf("mautrix GetPushRules: %+v", rules.Content)
	}
	// Rules are per user.
	bob := ts.register("bob")
	if st, _ := ts.do("GET", base+"content/cake", bob.AccessToken, nil); st != 404 {
		t.Fatalf("bob sees alice's rule: %d", st)
	}
}

func TestRoomTags(t *testing.T) {
	ts := startServer(t)
	ctx := context.Background()
	alice := ts.register("alice")
	bob := ts.register("bob")
	room, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{})
	if err != nil {
		t.Fatal(err)
	}
	tags := "/_matrix/client/v3/user/" + url.PathEscape(string(alice.UserID)) + "/rooms/" + url.PathEscape(string(room.RoomID)) + "/tags"
	st, body := ts.do("GET", tags, alice.AccessToken, nil)
	if st != 200 || len(body["tags"].(map[string]any)) != 0 {
		t.Fatalf("empty tags: %d %v", st, body)
	}
	if st, _ := ts.do("PUT", tags+"/m.favourite", alice.AccessToken, map[string]any{"order": 0.25}); st != 200 {
		t.Fatal("put favourite")
	}
	if st, _ := ts.do("PUT", tags+"/u.work", alice.AccessToken, map[string]any{}); st != 200 {
		t.Fatal("put u.work")
	}
	st, body = ts.do("GET", tags, alice.AccessToken, nil)
	got := body["tags"].(map[string]any)
	if st != 200 || len(got) != 2 || got["m.favourite"].(map[string]any)["order"] != 0.25 {
		t.Fatalf("tags: %d %v", st, body)
	}
	if st, _ := ts.do("DELETE", tags+"/u.work", alice.AccessToken, nil); st != 200 {
		t.Fatal("delete u.work")
	}
	_, body = ts.do("GET", tags, alice.AccessToken, nil)
	if got := body["tags"].(map[string]any); len(got) != 1 || got["m.favourite"] == nil {
		t.Fatalf("after delete: %v", body)
	}
	// mautrix reads the same data.
	var tc struct {
		Tags map[string]struct {
			Order json.Number `json:"order"`
		} `json:"tags"`
	}
	if err := alice.GetTagsWithCustomData(ctx, room.RoomID, &tc); err != nil || tc.Tags["m.favourite"].Order.String() != "0.25" {
		t.Fatalf("mautrix tags: %v %+v", err, tc)
	}
	// /sync shows m.tag in the room's account data.
	resp, err := alice.SyncRequest(ctx, 0, "", "", true, "online")
	if err != nil {
		t.Fatal(err)
	}
	var seen bool
	for _, ev := range resp.Rooms.Join[room.RoomID].AccountData.Events {
		seen = seen || ev.Type.Type == "m.tag"
	}
	if !seen {
		t.Fatal("m.tag missing from the room's account data in /sync")
	}
	// Errors.
	long := make([]byte, 256)
	for i := range long {
		long[i] = 'a'
	}
	for _, c := range []struct {
		method, path, token string
		body                any
		status              int
		code                string
	}{
		{"PUT", tags + "/" + string(long), alice.AccessToken, map[string]any{}, 400, "M_INVALID_PARAM"},
		{"GET", tags, bob.AccessToken, nil, 403, "M_FORBIDDEN"},
		{"PUT", tags + "/x", bob.AccessToken, map[string]any{}, 403, "M_FORBIDDEN"},
		{"PUT", tags + "/x", alice.AccessToken, map[string]any{"order": "high"}, 400, "M_BAD_JSON"},
		{"GET", "/_matrix/client/v3/user/" + string(alice.UserID) + "/rooms/notaroom/tags", alice.AccessToken, nil, 400, "M_INVALID_PARAM"},
	} {
		st, body := ts.do(c.method, c.path, c.token, c.body)
		if st != c.status || body["errcode"] != c.code {
			t.Errorf("%s %s: %d %v, want %d %s", c.method, c.path, st, body, c.status, c.code)
		}
	}
}
