package api_test

import (
	"context"
	"slices"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

func searchBodies(t *testing.T, c *mautrix.Client, req *mautrix.ReqSearch) ([]string, *mautrix.RespSearch) {
	t.Helper()
	resp, err := c.Search(context.Background(), req)
	if err != nil {
		t.Fatalf("search %q: %v", req.SearchTerm, err)
	}
	var out []string
	for _, r := range resp.Results {
		b, _ := r.Event.Content.Raw["body"].(string)
		out = append(out, b)
	}
	return out, resp
}

func createRoom(t *testing.T, c *mautrix.Client, req *mautrix.ReqCreateRoom) id.RoomID {
	t.Helper()
	r, err := c.CreateRoom(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	return r.RoomID
}

// TestSearchCJKRedactionVisibility: words of Chinese, Japanese and Korean
// are found inside sentences written without spaces; a redacted message
// is no longer found; in a room with joined history visibility, a user
// does not find what was said before they joined; a user finds nothing
// in rooms they are not in.
func TestSearchCJKRedactionVisibility(t *testing.T) {
	ts := startServer(t)
	ctx := context.Background()
	alice, bob, eve := ts.register("alice"), ts.register("bob"), ts.register("eve")
	room := createRoom(t, alice, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	setVisibility(t, alice, room, "joined")

	say(t, alice, room, "before bob joined: the secret plan")
	if _, err := bob.JoinRoom(ctx, room.String(), nil); err != nil {
		t.Fatal(err)
	}
	say(t, alice, room, "我们明天去北京吃烤鸭")
	say(t, alice, room, "今日は東京で会議があります")
	say(t, alice, room, "내일서울에서만나요")
	gone := say(t, alice, room, "this plan will be redacted")
	say(t, alice, room, "The PLAN, after bob joined")

	for term, want := range map[string]string{
		"北京":  "我们明天去北京吃烤鸭",
		"烤鸭":  "我们明天去北京吃烤鸭",
		"東京":  "今日は東京で会議があります",
		"会議":  "今日は東京で会議があります",
		"서울":  "내일서울에서만나요",
		"만나요": "내일서울에서만나요",
	} {
		got, _ := searchBodies(t, bob, &mautrix.ReqSearch{SearchTerm: term})
		if !slices.Equal(got, []string{want}) {
			t.Errorf("search %q: got %q, want [%q]", term, got, want)
		}
	}
	if got, _ := searchBodies(t, bob, &mautrix.ReqSearch{SearchTerm: "上海"}); len(got) != 0 {
		t.Errorf("search 上海 found %q", got)
	}

	if _, err := alice.RedactEvent(ctx, room, gone); err != nil {
		t.Fatal(err)
	}
	got, resp := searchBodies(t, alice, &mautrix.ReqSearch{SearchTerm: "plan", OrderBy: "recent"})
	if want := []string{"The PLAN, after bob joined", "before bob joined: the secret plan"}; !slices.Equal(got, want) {
		t.Errorf("alice, plan (recent): got %q, want %q", got, want)
	}
	if resp.Count != 2 {
		t.Errorf("count = %d, want 2", resp.Count)
	}
	// Bob joined after the first message; history is visible to joined
	// members only.
	if got, _ := searchBodies(t, bob, &mautrix.ReqSearch{SearchTerm: "plan"}); !slices.Equal(got, []string{"The PLAN, after bob joined"}) {
		t.Errorf("bob, plan: got %q, want only what was said after he joined", got)
	}
	if got, _ := searchBodies(t, eve, &mautrix.ReqSearch{SearchTerm: "plan"}); len(got) != 0 {
		t.Errorf("eve, not in the room, found %q", got)
	}
}

// TestSearchPagingAndOptions: next_batch pages through results in both
// orders without repeats; a filter narrows to rooms; event_context and
// include_state come back; groupings by room name each hit's room.
func TestSearchPagingAndOptions(t *testing.T) {
	ts := startServer(t)
	ctx := context.Background()
	alice := ts.register("alice")
	r1 := createRoom(t, alice, &mautrix.ReqCreateRoom{Name: "lunch planning"})
	r2 := createRoom(t, alice, &mautrix.ReqCreateRoom{Topic: "where to have lunch"})
	var sent []string
	for i := range 12 {
		b := "lunch number " + string(rune('a'+i))
		say(t, alice, []id.RoomID{r1, r2}[i%2], b)
		sent = append(sent, b)
	}
	for _, order := range []string{"recent", "rank"} {
		var all []string
		req := &mautrix.ReqSearch{SearchTerm: "lunch", OrderBy: order, Filter: &mautrix.FilterPart{Limit: 5}}
		pages := 0
		for {
			resp, err := alice.Search(ctx, req)
			if err != nil {
				t.Fatal(err)
			}
			pages++
			for _, r := range resp.Results {
				all = append(all, r.Event.ID.String())
			}
			if resp.NextBatch == "" || pages > 10 {
				break
			}
			req.NextBatch = resp.NextBatch
		}
		// 12 messages, the room name and the topic.
		if len(all) != 14 || pages != 3 {
			t.Errorf("%s: %d results in %d pages, want 14 in 3", order, len(all), pages)
		}
		sorted := slices.Clone(all)
		slices.Sort(sorted)
		if len(slices.Compact(sorted)) != len(all) {
			t.Errorf("%s: a result came twice across pages", order)
		}
	}

	resp, err := alice.Search(ctx, &mautrix.ReqSearch{
		SearchTerm: "number", OrderBy: "recent", IncludeState: true,
		Filter:       &mautrix.FilterPart{Rooms: []id.RoomID{r2}},
		EventContext: mautrix.SearchEventContext{BeforeLimit: 1, AfterLimit: 1, IncludeProfile: true},
		Groupings:    mautrix.SearchGroupings{GroupBy: []mautrix.SearchGroup{{Key: "room_id"}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Results) != 6 {
		t.Fatalf("room filter: %d results, want 6", len(resp.Results))
	}
	for _, r := range resp.Results {
		if r.Event.RoomID != r2 {
			t.Errorf("result from %s, filter asked for %s", r.Event.RoomID, r2)
		}
	}
	first := resp.Results[0]
	if b, _ := first.Event.Content.Raw["body"].(string); b != sent[11] {
		t.Errorf("most recent result %q, want %q", b, sent[11])
	}
	if first.Context == nil || len(first.Context.EventsBefore) != 1 || len(first.Context.EventsAfter) != 0 {
		t.Errorf("context of the newest event: %+v", first.Context)
	}
	if st := resp.State[r2]; !slices.ContainsFunc(st, func(e *event.Event) bool { return e.Type == event.StateTopic }) {
		t.Errorf("include_state: no m.room.topic in %d state events", len(st))
	}
	g := resp.Groups["room_id"][r2.String()]
	if len(g.Results) != 6 {
		t.Errorf("groups.room_id: %+v", resp.Groups)
	}
}
