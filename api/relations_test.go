package api_test

import (
	"context"
	"fmt"
	"net/url"
	"slices"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

func sendRaw(t *testing.T, c *mautrix.Client, room id.RoomID, typ string, content map[string]any) id.EventID {
	t.Helper()
	r, err := c.SendMessageEvent(context.Background(), room, event.NewEventType(typ), content)
	if err != nil {
		t.Fatal(err)
	}
	return r.EventID
}

func relatesTo(relType string, target id.EventID) map[string]any {
	return map[string]any{"rel_type": relType, "event_id": target.String()}
}

// unsignedRelations fetches an event with GET /event and returns its
// unsigned["m.relations"].
func unsignedRelations(t *testing.T, ts *testServer, c *mautrix.Client, room id.RoomID, ev id.EventID) map[string]any {
	t.Helper()
	code, body := ts.do("GET", fmt.Sprintf("/_matrix/client/v3/rooms/%s/event/%s", url.PathEscape(room.String()), url.PathEscape(ev.String())), c.AccessToken, nil)
	if code != 200 {
		t.Fatalf("GET event: %d %v", code, body)
	}
	u, _ := body["unsigned"].(map[string]any)
	rel, _ := u["m.relations"].(map[string]any)
	return rel
}

// TestEditsThreadsReactions drives mautrix-go through edits (the newest
// valid edit is bundled; an edit by someone else is not valid), reactions
// (listed by /relations, counted per key by the client), a thread (the
// bundled summary and /threads ordered by latest activity, participated
// filter), pagination of /relations and the removal of a redacted
// relation.
func TestEditsThreadsReactions(t *testing.T) {
	ts := startServer(t)
	ctx := context.Background()
	alice, bob := ts.register("alice"), ts.register("bob")
	room := createRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	if _, err := bob.JoinRoom(ctx, room.String(), nil); err != nil {
		t.Fatal(err)
	}

	// Edits.
	orig := say(t, alice, room, "helo")
	edit := func(c *mautrix.Client, body string) id.EventID {
		return sendRaw(t, c, room, "m.room.message", map[string]any{
			"msgtype": "m.text", "body": "* " + body,
			"m.new_content": map[string]any{"msgtype": "m.text", "body": body},
			"m.relates_to":  relatesTo("m.replace", orig),
		})
	}
	edit(alice, "hello")
	second := edit(alice, "hello!")
	edit(bob, "hijacked") // not the sender: not a valid edit
	rel := unsignedRelations(t, ts, alice, room, orig)
	rep, _ := rel["m.replace"].(map[string]any)
	if rep["event_id"] != second.String() {
		t.Errorf("bundled m.replace = %v, want the newest valid edit %s", rep["event_id"], second)
	}

	// Reactions.
	for _, c := range []*mautrix.Client{alice, bob} {
		if _, err := c.SendReaction(ctx, room, orig, "👍"); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := bob.SendReaction(ctx, room, orig, "🎉"); err != nil {
		t.Fatal(err)
	}
	reactions, err := alice.GetRelations(ctx, room, orig, &mautrix.ReqGetRelations{RelationType: event.RelAnnotation, EventType: event.EventReaction, Limit: 50})
	if err != nil {
		t.Fatal(err)
	}
	counts := map[string]int{}
	for _, e := range reactions.Chunk {
		_ = e.Content.ParseRaw(e.Type)
		counts[e.Content.AsReaction().RelatesTo.Key]++
	}
	if counts["👍"] != 2 || counts["🎉"] != 1 || len(counts) != 2 {
		t.Errorf("reactions per key = %v, want 👍:2 🎉:1", counts)
	}

	// All relations, paged backwards three at a time, then forwards.
	var all []id.EventID
	req := &mautrix.ReqGetRelations{Limit: 3}
	for page := 0; page < 5; page++ {
		r, err := alice.GetRelations(ctx, room, orig, req)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range r.Chunk {
			all = append(all, e.ID)
		}
		if r.NextBatch == "" {
			break
		}
		req.From = r.NextBatch
	}
	if len(all) != 6 {
		t.Fatalf("/relations paged backwards: %d events, want 6 (3 edits, 3 reactions)", len(all))
	}
	var fwd []id.EventID
	req = &mautrix.ReqGetRelations{Limit: 4, Dir: mautrix.DirectionForward}
	for page := 0; page < 5; page++ {
		r, err := alice.GetRelations(ctx, room, orig, req)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range r.Chunk {
			fwd = append(fwd, e.ID)
		}
		if r.NextBatch == "" {
			break
		}
		req.From = r.NextBatch
	}
	slices.Reverse(fwd)
	if !slices.Equal(all, fwd) {
		t.Errorf("forwards %v is not backwards %v reversed", fwd, all)
	}

	// Threads: two roots; the one replied to last comes first.
	root1 := say(t, alice, room, "thread one")
	root2 := say(t, bob, room, "thread two")
	reply := func(c *mautrix.Client, root id.EventID, body string) id.EventID {
		return sendRaw(t, c, room, "m.room.message", map[string]any{"msgtype": "m.text", "body": body, "m.relates_to": relatesTo("m.thread", root)})
	}
	reply(bob, root1, "r1")
	reply(bob, root2, "r2")
	last := reply(bob, root1, "r3")
	threads := func(c *mautrix.Client, include string) []string {
		code, body := ts.do("GET", fmt.Sprintf("/_matrix/client/v1/rooms/%s/threads?include=%s", url.PathEscape(room.String()), include), c.AccessToken, nil)
		if code != 200 {
			t.Fatalf("/threads: %d %v", code, body)
		}
		var ids []string
		for _, e := range body["chunk"].([]any) {
			ids = append(ids, e.(map[string]any)["event_id"].(string))
		}
		return ids
	}
	if got := threads(alice, "all"); !slices.Equal(got, []string{root1.String(), root2.String()}) {
		t.Errorf("/threads = %v, want [%s %s]", got, root1, root2)
	}
	if got := threads(alice, "participated"); !slices.Equal(got, []string{root1.String()}) {
		t.Errorf("/threads?include=participated for alice = %v, want only her root %s", got, root1)
	}
	th, _ := unsignedRelations(t, ts, alice, room, root1)["m.thread"].(map[string]any)
	latest, _ := th["latest_event"].(map[string]any)
	if th["count"] != float64(2) || latest["event_id"] != last.String() || th["current_user_participated"] != true {
		t.Errorf("bundled m.thread = %v", th)
	}

	// Redacting a relation removes it.
	if _, err := bob.RedactEvent(ctx, room, last); err != nil {
		t.Fatal(err)
	}
	th, _ = unsignedRelations(t, ts, alice, room, root1)["m.thread"].(map[string]any)
	if th["count"] != float64(1) {
		t.Errorf("after redacting the latest reply, m.thread = %v", th)
	}
	if got := threads(alice, "all"); !slices.Equal(got, []string{root2.String(), root1.String()}) {
		t.Errorf("/threads after the redaction = %v, want [%s %s]", got, root2, root1)
	}
	red, err := alice.RedactEvent(ctx, room, second)
	if err != nil {
		t.Fatal(err)
	}
	// Room versions 11 and later carry redacts in the content; clients are
	// served the top-level key too.
	code, redEv := ts.do("GET", fmt.Sprintf("/_matrix/client/v3/rooms/%s/event/%s", url.PathEscape(room.String()), url.PathEscape(red.EventID.String())), alice.AccessToken, nil)
	if code != 200 || redEv["redacts"] != second.String() {
		t.Errorf("redaction event (%d) top-level redacts = %v, want %s", code, redEv["redacts"], second)
	}
	rep, _ = unsignedRelations(t, ts, alice, room, orig)["m.replace"].(map[string]any)
	if rep["event_id"] == second.String() || rep["event_id"] == nil {
		t.Errorf("after redacting the newest edit, m.replace = %v, want the first edit", rep["event_id"])
	}
}

// TestRelationsFromAnotherRoomDoNotCount: a user who sees an event ID of
// room A sends, in room B, a reference, a reaction and a thread reply to
// it. None of them may show in A: not in the bundled aggregations, not
// in /relations, not as a thread of A.
func TestRelationsFromAnotherRoomDoNotCount(t *testing.T) {
	ts := startServer(t)
	ctx := context.Background()
	alice, mallory := ts.register("alice"), ts.register("mallory")
	roomA := createRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	if _, err := mallory.JoinRoom(ctx, roomA.String(), nil); err != nil {
		t.Fatal(err)
	}
	roomB := createRoom(t, mallory, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	target := say(t, alice, roomA, "in room A")
	sendRaw(t, mallory, roomB, "m.room.message", map[string]any{"msgtype": "m.text", "body": "ref", "m.relates_to": relatesTo("m.reference", target)})
	sendRaw(t, mallory, roomB, "m.room.message", map[string]any{"msgtype": "m.text", "body": "spam", "m.relates_to": relatesTo("m.thread", target)})
	if _, err := mallory.SendReaction(ctx, roomB, target, "👎"); err != nil {
		t.Fatal(err)
	}
	// One relation in A itself, so that the aggregations are not empty
	// merely because nothing was folded yet.
	sendRaw(t, alice, roomA, "m.room.message", map[string]any{"msgtype": "m.text", "body": "own ref", "m.relates_to": relatesTo("m.reference", target)})

	rel := unsignedRelations(t, ts, alice, roomA, target)
	if _, ok := rel["m.thread"]; ok {
		t.Errorf("a thread reply sent in another room is bundled: %v", rel["m.thread"])
	}
	refs, _ := rel["m.reference"].(map[string]any)
	if chunk, _ := refs["chunk"].([]any); len(chunk) != 1 {
		t.Errorf("bundled references = %v, want only room A's own", refs)
	}
	all, err := alice.GetRelations(ctx, roomA, target, &mautrix.ReqGetRelations{Limit: 50})
	if err != nil {
		t.Fatal(err)
	}
	if len(all.Chunk) != 1 {
		t.Errorf("/relations in room A lists %d events, want 1 (room A's own reference)", len(all.Chunk))
	}
	code, body := ts.do("GET", fmt.Sprintf("/_matrix/client/v1/rooms/%s/threads", url.PathEscape(roomA.String())), alice.AccessToken, nil)
	if chunk, _ := body["chunk"].([]any); code != 200 || len(chunk) != 0 {
		t.Errorf("/threads of room A = %d %v, want no thread", code, body)
	}
}

// TestAggregationsLeaveOutIgnoredUsers: once alice ignores bob, the
// bundled thread summary of her root counts only carol's reply and shows
// it as the latest, and bob's reference is not bundled (spec: servers must
// not consider child events from ignored users).
func TestAggregationsLeaveOutIgnoredUsers(t *testing.T) {
	ts := startServer(t)
	ctx := context.Background()
	alice, bob, carol := ts.register("alice"), ts.register("bob"), ts.register("carol")
	room := createRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	for _, c := range []*mautrix.Client{bob, carol} {
		if _, err := c.JoinRoom(ctx, room.String(), nil); err != nil {
			t.Fatal(err)
		}
	}
	root := say(t, alice, room, "root")
	carolReply := sendRaw(t, carol, room, "m.room.message", map[string]any{"msgtype": "m.text", "body": "carol", "m.relates_to": relatesTo("m.thread", root)})
	bobReply := sendRaw(t, bob, room, "m.room.message", map[string]any{"msgtype": "m.text", "body": "bob", "m.relates_to": relatesTo("m.thread", root)})
	sendRaw(t, bob, room, "m.room.message", map[string]any{"msgtype": "m.text", "body": "ref", "m.relates_to": relatesTo("m.reference", root)})

	thread := func() (float64, any, bool) {
		rel := unsignedRelations(t, ts, alice, room, root)
		th, _ := rel["m.thread"].(map[string]any)
		latest, _ := th["latest_event"].(map[string]any)
		_, hasRef := rel["m.reference"]
		count, _ := th["count"].(float64)
		return count, latest["event_id"], hasRef
	}
	if n, latest, ref := thread(); n != 2 || latest != bobReply.String() || !ref {
		t.Fatalf("before ignoring bob: count %v, latest %v, reference bundled %v; want 2, %s, true", n, latest, ref, bobReply)
	}
	if err := alice.SetAccountData(ctx, "m.ignored_user_list", map[string]any{"ignored_users": map[string]any{bob.UserID.String(): map[string]any{}}}); err != nil {
		t.Fatal(err)
	}
	if n, latest, ref := thread(); n != 1 || latest != carolReply.String() || ref {
		t.Errorf("after ignoring bob: count %v, latest %v, reference bundled %v; want 1, %s, false", n, latest, ref, carolReply)
	}
}

// TestAggregationsStopAtTheReadersLeave: bob, who left, reads a root he
// saw before leaving: its bundled thread summary and edit are as of his
// leave, not the reply and the edit sent after it.
func TestAggregationsStopAtTheReadersLeave(t *testing.T) {
	ts := startServer(t)
	ctx := context.Background()
	alice, bob, carol := ts.register("alice"), ts.register("bob"), ts.register("carol")
	room := createRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "private_chat", Invite: []id.UserID{bob.UserID, carol.UserID}})
	for _, c := range []*mautrix.Client{bob, carol} {
		if _, err := c.JoinRoom(ctx, room.String(), nil); err != nil {
			t.Fatal(err)
		}
	}
	root := say(t, alice, room, "root")
	before := sendRaw(t, carol, room, "m.room.message", map[string]any{"msgtype": "m.text", "body": "before", "m.relates_to": relatesTo("m.thread", root)})
	if _, err := bob.LeaveRoom(ctx, room); err != nil {
		t.Fatal(err)
	}
	after := sendRaw(t, carol, room, "m.room.message", map[string]any{"msgtype": "m.text", "body": "after bob left", "m.relates_to": relatesTo("m.thread", root)})
	sendRaw(t, alice, room, "m.room.message", map[string]any{"msgtype": "m.text", "body": "* edited",
		"m.new_content": map[string]any{"msgtype": "m.text", "body": "edited"}, "m.relates_to": relatesTo("m.replace", root)})

	summary := func(c *mautrix.Client) (float64, any, bool) {
		rel := unsignedRelations(t, ts, c, room, root)
		th, _ := rel["m.thread"].(map[string]any)
		latest, _ := th["latest_event"].(map[string]any)
		_, edited := rel["m.replace"]
		count, _ := th["count"].(float64)
		return count, latest["event_id"], edited
	}
	if n, latest, edited := summary(alice); n != 2 || latest != after.String() || !edited {
		t.Fatalf("alice: count %v, latest %v, edit bundled %v; want 2, %s, true", n, latest, edited, after)
	}
	if n, latest, edited := summary(bob); n != 1 || latest != before.String() || edited {
		t.Errorf("bob, who left: count %v, latest %v, edit bundled %v; want 1, %s, false", n, latest, edited, before)
	}
}
