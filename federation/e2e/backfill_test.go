package e2e

import (
	"fmt"
	"net/url"
	"os/exec"
	"slices"
	"testing"

	"github.com/engram-hs/engram/internal/testca"
	"github.com/engram-hs/engram/internal/testserver"
)

type pageEvent struct {
	Type     string         `json:"type"`
	EventID  string         `json:"event_id"`
	Sender   string         `json:"sender"`
	StateKey *string        `json:"state_key"`
	Content  map[string]any `json:"content"`
}

// pageBack reads a room's whole history on s as token's user sees it,
// newest first, limit events a page, starting from from ("": the end);
// it returns the events and the number of pages it took.
func pageBack(t *testing.T, s server, token, roomID, from string, limit int) ([]pageEvent, int) {
	t.Helper()
	var all []pageEvent
	pages := 0
	for {
		q := url.Values{"dir": {"b"}, "limit": {fmt.Sprint(limit)}}
		if from != "" {
			q.Set("from", from)
		}
		var out struct {
			Chunk []pageEvent `json:"chunk"`
			End   string      `json:"end"`
		}
		if st := call(t, s, "GET", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/messages?"+q.Encode(), token, nil, &out); st != 200 {
			t.Fatalf("messages from %q: %d", from, st)
		}
		pages++
		all = append(all, out.Chunk...)
		if out.End == "" {
			return all, pages
		}
		if pages > 500 {
			t.Fatalf("more than 500 pages of /messages: tokens do not advance (at %q)", out.End)
		}
		from = out.End
	}
}

func bodies(evs []pageEvent) []string {
	var out []string
	for _, e := range evs {
		if e.Type == "m.room.message" {
			out = append(out, fmt.Sprint(e.Content["body"]))
		}
	}
	return out
}

func sendText(t *testing.T, s server, token, roomID, body string) {
	t.Helper()
	if st := call(t, s, "PUT", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/send/m.room.message/"+url.PathEscape(body), token, map[string]any{"msgtype": "m.text", "body": body}, nil); st != 200 {
		t.Fatalf("send %q: %d", body, st)
	}
}

// A user of B joins a room of A that has history; paging /messages back
// past the join makes B fetch that history from A (/backfill), check it
// and record it, and the pages show it in order, down to the room's
// create event. A user who leaves and later rejoins pages through the gap
// their server missed in between, also filled from A. Afterwards B's log
// replays with A stopped (no network needed) to the same projections.
func TestMessagesBackfillFromAnotherServer(t *testing.T) {
	ca := testca.New(t)
	a, b := start(t, ca), start(t, ca)
	alice, bob := register(t, a, "alice"), register(t, b, "bob")
	bobID := "@bob:" + b.name
	var room struct {
		RoomID string `json:"room_id"`
	}
	if st := call(t, a, "POST", "/_matrix/client/v3/createRoom", alice, map[string]any{"room_alias_name": "history", "preset": "public_chat", "name": "History"}, &room); st != 200 {
		t.Fatalf("createRoom: %d", st)
	}
	roomID := room.RoomID
	var want []string
	for i := range 35 {
		body := fmt.Sprintf("before bob %02d", i)
		sendText(t, a, alice, roomID, body)
		want = append(want, body)
	}
	var out map[string]any
	if st := call(t, b, "POST", "/_matrix/client/v3/join/"+url.PathEscape("#history:"+a.name), bob, map[string]any{}, &out); st != 200 {
		t.Fatalf("join: %d %v", st, out)
	}
	eventually(t, "A sees bob joined", func() bool { return joined(t, a, alice, roomID, bobID) })

	evs, pages := pageBack(t, b, bob, roomID, "", 10)
	got := bodies(evs)
	slices.Reverse(got)
	if !slices.Equal(got, want) {
		t.Fatalf("bob's history on B after %d pages:\n got %q\nwant %q\n%s", pages, got, want, b.Logs())
	}
	if last := evs[len(evs)-1]; last.Type != "m.room.create" {
		t.Fatalf("the history does not end at the create event but at %s %s", last.Type, last.EventID)
	}
	seen := map[string]bool{}
	for _, e := range evs {
		if seen[e.EventID] {
			t.Fatalf("event %s (%s) twice in the pages", e.EventID, e.Type)
		}
		seen[e.EventID] = true
	}
	// The same again, from B's store only (and in bigger pages): the same
	// events in the same order.
	again, _ := pageBack(t, b, bob, roomID, "", 25)
	if len(again) != len(evs) {
		t.Fatalf("second read: %d events, first %d", len(again), len(evs))
	}
	for i := range again {
		if again[i].EventID != evs[i].EventID {
			t.Fatalf("second read differs at %d: %s, first %s", i, again[i].EventID, evs[i].EventID)
		}
	}
	// History comes to /messages, not to /sync's timeline as new events.
	var sync struct {
		Rooms struct {
			Join map[string]struct {
				Timeline struct {
					Events []pageEvent `json:"events"`
				} `json:"timeline"`
			} `json:"join"`
		} `json:"rooms"`
	}
	call(t, b, "GET", "/_matrix/client/v3/sync?timeout=0", bob, nil, &sync)
	if tl := sync.Rooms.Join[roomID].Timeline.Events; len(bodies(tl)) != 0 {
		t.Fatalf("/sync shows backfilled messages: %q", bodies(tl))
	}

	// The room goes on over the history B now holds: a state change on A
	// (its auth events were backfilled) reaches B.
	if st := call(t, a, "PUT", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/state/m.room.topic/", alice, map[string]any{"topic": "after the backfill"}, nil); st != 200 {
		t.Fatalf("topic: %d", st)
	}
	eventually(t, "the topic on B", func() bool {
		var got struct {
			Topic string `json:"topic"`
		}
		call(t, b, "GET", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/state/m.room.topic/", bob, nil, &got)
		return got.Topic == "after the backfill"
	})

	// Bob leaves; A's room goes on without B; bob rejoins.
	if st := call(t, b, "POST", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/leave", bob, map[string]any{}, nil); st != 200 {
		t.Fatalf("leave: %d", st)
	}
	eventually(t, "A sees bob leave", func() bool { return membership(t, a, alice, roomID, bobID) == "leave" })
	var missed []string
	for i := range 12 {
		body := fmt.Sprintf("while bob was away %02d", i)
		sendText(t, a, alice, roomID, body)
		missed = append(missed, body)
	}
	if st := call(t, b, "POST", "/_matrix/client/v3/join/"+url.PathEscape(roomID)+"?server_name="+url.QueryEscape(a.name), bob, map[string]any{}, &out); st != 200 {
		t.Fatalf("rejoin: %d %v", st, out)
	}
	sendText(t, a, alice, roomID, "after the rejoin")
	eventually(t, "the new message on B", func() bool { return hasMessage(t, b, bob, roomID, "after the rejoin") })
	evs, _ = pageBack(t, b, bob, roomID, "", 7)
	got = bodies(evs)
	slices.Reverse(got)
	want = append(append(want, missed...), "after the rejoin")
	if !slices.Equal(got, want) {
		t.Fatalf("bob's history after the rejoin:\n got %q\nwant %q\n%s", got, want, b.Logs())
	}

	// Bob's server is in the room again: what he sends reaches A.
	sendText(t, b, bob, roomID, "bob is back")
	eventually(t, "bob's message on A", func() bool { return hasMessage(t, a, alice, roomID, "bob is back") })

	// Replay without the network: A is gone.
	a.Stop()
	b.Stop()
	vout, err := exec.Command(testserver.Binary(t), "verify", "--config", b.Config).CombinedOutput()
	if err != nil {
		t.Fatalf("engram verify on B after backfill: %v\n%s", err, vout)
	}
}
