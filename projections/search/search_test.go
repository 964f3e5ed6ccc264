package search_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/rs/zerolog"

	"github.com/engram-hs/engram/bench/generate"
	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/projections"
	"github.com/engram-hs/engram/projections/search"
	"github.com/engram-hs/engram/stateres"
)

// expected computes, from the log itself, which events a search for a
// word must find: message bodies, names and topics that contain the word,
// minus those a redaction in the same room took back.
func expected(t *testing.T, entries []englog.Entry, word string) (hits map[string]string, rooms []string) {
	t.Helper()
	hits = map[string]string{}
	roomOf := map[string]string{}
	redacted := map[string]string{}
	for _, e := range entries {
		if e.Kind != englog.KindPDU {
			continue
		}
		var f facts.PDU
		if err := facts.Decode(e, &f); err != nil {
			t.Fatal(err)
		}
		v, _ := stateres.Version(f.RoomVersion)
		ev, err := stateres.ParseEvent(v, f.Event)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Contains(rooms, ev.RoomID()) {
			rooms = append(rooms, ev.RoomID())
		}
		if ev.Type() == stateres.MRoomRedaction {
			redacted[ev.Redacts()] = ev.RoomID()
			continue
		}
		var c map[string]any
		_ = json.Unmarshal(ev.Content(), &c)
		var text string
		switch ev.Type() {
		case "m.room.message":
			text, _ = c["body"].(string)
		case "m.room.name":
			text, _ = c["name"].(string)
		case "m.room.topic":
			text, _ = c["topic"].(string)
		}
		if slices.Contains(strings.Fields(strings.ToLower(text)), word) {
			hits[ev.EventID()] = ev.RoomID()
			roomOf[ev.EventID()] = ev.RoomID()
		}
	}
	for id, room := range redacted {
		if roomOf[id] == room {
			delete(hits, id)
		}
	}
	return hits, rooms
}

func openEngine(t *testing.T, l englog.Log, db *pebble.DB) (*projections.Engine, *search.Searcher) {
	t.Helper()
	e := projections.NewEngine(l, db, zerolog.Nop(), nil)
	p := search.New()
	s := p.Searcher(e.Register(p))
	t.Cleanup(func() { e.Close() })
	return e, s
}

func searchAll(t *testing.T, s *search.Searcher, q search.Query) map[string]string {
	t.Helper()
	got := map[string]string{}
	for {
		res, err := s.Search(context.Background(), q)
		if err != nil {
			t.Fatal(err)
		}
		for _, h := range res.Hits {
			if _, dup := got[h.EventID]; dup {
				t.Fatalf("%s returned twice while paging", h.EventID)
			}
			got[h.EventID] = h.RoomID
		}
		if res.Next == "" {
			return got
		}
		q.Next = res.Next
	}
}

// TestIndexMatchesTheLog folds a generated log (messages, topic changes,
// redactions), checks that a search finds exactly the events whose text
// holds the word and that no redaction took back, in both orders and
// across pages, and that a rebuild from the log (other batch boundaries)
// gives the same keyspace, byte for byte.
func TestIndexMatchesTheLog(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	if _, err := generate.Run(ctx, dir, generate.Options{Seed: 3, Users: 30, Rooms: 5, Events: 1500, Logger: zerolog.Nop()}); err != nil {
		t.Fatal(err)
	}
	l, err := englog.Open(englog.Config{Dir: dir, Logger: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	entries, err := l.Read(1, int(l.LastOffset()))
	if err != nil {
		t.Fatal(err)
	}

	e, s := openEngine(t, l, l.DB())
	if err := e.Start(ctx); err != nil {
		t.Fatal(err)
	}
	for _, word := range []string{"coffee", "matrix", "the"} {
		want, rooms := expected(t, entries, word)
		if len(want) == 0 {
			t.Fatalf("the generated log has no %q: pick another word", word)
		}
		for _, recent := range []bool{true, false} {
			got := searchAll(t, s, search.Query{Term: word, Rooms: rooms, Recent: recent, Limit: 7})
			if len(got) != len(want) {
				t.Errorf("%q (recent=%v): %d hits, want %d", word, recent, len(got), len(want))
			}
			for id, room := range want {
				if got[id] != room {
					t.Errorf("%q: %s (room %s) not found", word, id, room)
					break
				}
			}
		}
		// One room only.
		got := searchAll(t, s, search.Query{Term: strings.ToUpper(word), Rooms: rooms[:1], Limit: 50})
		for id, room := range got {
			if room != rooms[0] || want[id] != room {
				t.Errorf("%q in %s: unexpected hit %s in %s", word, rooms[0], id, room)
			}
		}
	}
	live, err := e.Digest("search")
	if err != nil {
		t.Fatal(err)
	}
	liveR := e.Handles()[0].Reader()

	// A rebuild into a fresh store folds the same log in other batches.
	db2, err := pebble.Open(t.TempDir(), &pebble.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db2.Close()
	e2, s2 := openEngine(t, l, db2)
	if err := e2.Rebuild(ctx); err != nil {
		t.Fatal(err)
	}
	rebuilt, err := e2.Digest("search")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(live, rebuilt) {
		t.Log(dumpDiff(liveR, e2.Handles()[0].Reader()))
		t.Fatalf("rebuilt keyspace digest %x differs from the live one %x: the fold is not deterministic", rebuilt, live)
	}
	if err := e2.Start(ctx); err != nil {
		t.Fatal(err)
	}
	want, rooms := expected(t, entries, "coffee")
	if got := searchAll(t, s2, search.Query{Term: "coffee", Rooms: rooms}); len(got) != len(want) {
		t.Errorf("after a rebuild: %d hits, want %d", len(got), len(want))
	}
}

// oneByOne hands the engine one entry per read: every redaction is folded
// in a batch of its own, after the one that indexed its target.
type oneByOne struct{ englog.Log }

func (l oneByOne) Read(from uint64, max int) ([]englog.Entry, error) {
	return l.Log.Read(from, min(max, 1))
}

// appendUniqueThenRedact appends a message whose body holds a word no
// other event has, then its redaction.
func appendUniqueThenRedact(t *testing.T, l englog.Log, entries []englog.Entry, word string) {
	t.Helper()
	var f facts.PDU
	var ev map[string]any
	for i := len(entries) - 1; i >= 0 && ev == nil; i-- {
		if entries[i].Kind != englog.KindPDU || !bytes.Contains(entries[i].Payload, []byte(`"m.room.message"`)) {
			continue
		}
		if err := facts.Decode(entries[i], &f); err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(f.Event, &ev); err != nil {
			t.Fatal(err)
		}
		if ev["type"] != "m.room.message" {
			ev = nil
		}
	}
	if ev == nil {
		t.Fatal("the generated log has no message")
	}
	propose := func(id string, ev map[string]any) {
		raw, err := json.Marshal(ev)
		if err != nil {
			t.Fatal(err)
		}
		f.Event, f.EventID, f.Txn = raw, id, nil
		p, err := facts.Encode(englog.KindPDU, f)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := l.Append(context.Background(), p); err != nil {
			t.Fatal(err)
		}
	}
	// Event IDs of room versions 3 and later: "$" and 43 characters.
	id := func(s string) string {
		sum := sha256.Sum256([]byte(s))
		return "$" + base64.RawURLEncoding.EncodeToString(sum[:])
	}
	msgID, redactionID := id("message "+word), id("redaction "+word)
	ev["content"] = map[string]any{"msgtype": "m.text", "body": "only this message says " + word}
	propose(msgID, ev)
	ev["type"] = stateres.MRoomRedaction
	ev["redacts"] = msgID
	ev["content"] = map[string]any{"redacts": msgID}
	propose(redactionID, ev)
}

// TestBatchBoundariesDoNotChangeTheIndex folds a log with redactions of
// recent messages twice: one entry per batch (a message indexed, then
// redacted in a later batch) and by a rebuild (most targets indexed and
// redacted in one batch, which drops them before bleve sees them). The
// keyspaces must be equal byte for byte: the terms only a redacted message
// held leave no dictionary row either way.
func TestBatchBoundariesDoNotChangeTheIndex(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	if _, err := generate.Run(ctx, dir, generate.Options{Seed: 5, Users: 20, Rooms: 3, Events: 1200, Logger: zerolog.Nop()}); err != nil {
		t.Fatal(err)
	}
	l, err := englog.Open(englog.Config{Dir: dir, Logger: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	entries, err := l.Read(1, int(l.LastOffset()))
	if err != nil {
		t.Fatal(err)
	}
	redactions := 0
	for _, e := range entries {
		if e.Kind == englog.KindPDU && bytes.Contains(e.Payload, []byte(`"m.room.redaction"`)) {
			redactions++
		}
	}
	if redactions < 5 {
		t.Fatalf("the generated log holds %d redactions: pick another seed", redactions)
	}
	const word = "zyxwvutsrqponm"
	appendUniqueThenRedact(t, l, entries, word)

	db1, err := pebble.Open(t.TempDir(), &pebble.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db1.Close()
	e1, s1 := openEngine(t, oneByOne{l}, db1)
	if err := e1.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := e1.Handles()[0].WaitApplied(ctx, l.LastOffset()); err != nil {
		t.Fatal(err)
	}
	small, err := e1.Digest("search")
	if err != nil {
		t.Fatal(err)
	}
	if got := searchAll(t, s1, search.Query{Term: word, Rooms: []string{roomOf(t, entries)}}); len(got) != 0 {
		t.Errorf("a search for the redacted message's word found %v", got)
	}

	db2, err := pebble.Open(t.TempDir(), &pebble.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db2.Close()
	e2, _ := openEngine(t, l, db2)
	if err := e2.Rebuild(ctx); err != nil {
		t.Fatal(err)
	}
	rebuilt, err := e2.Digest("search")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(small, rebuilt) {
		t.Log(dumpDiff(e1.Handles()[0].Reader(), e2.Handles()[0].Reader()))
		t.Fatalf("folded in small batches the index digests %x, rebuilt %x: it depends on batch boundaries", small, rebuilt)
	}
}

// roomOf is the room of the last message in entries.
func roomOf(t *testing.T, entries []englog.Entry) string {
	t.Helper()
	for i := len(entries) - 1; i >= 0; i-- {
		if entries[i].Kind != englog.KindPDU || !bytes.Contains(entries[i].Payload, []byte(`"m.room.message"`)) {
			continue
		}
		var f facts.PDU
		if err := facts.Decode(entries[i], &f); err != nil {
			t.Fatal(err)
		}
		var ev struct {
			Type   string `json:"type"`
			RoomID string `json:"room_id"`
		}
		if err := json.Unmarshal(f.Event, &ev); err != nil {
			t.Fatal(err)
		}
		if ev.Type == "m.room.message" {
			return ev.RoomID
		}
	}
	t.Fatal("the generated log has no message")
	return ""
}

// TestSearchOverSomeRooms searches a subset of a log's rooms (every other
// one, so that the runs read are apart in the index) for one word and for
// two (each room's postings of both words intersected), in both orders and
// across pages, and checks the hits and the counts per room against the
// log.
func TestSearchOverSomeRooms(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	if _, err := generate.Run(ctx, dir, generate.Options{Seed: 7, Users: 40, Rooms: 9, Events: 2500, Logger: zerolog.Nop()}); err != nil {
		t.Fatal(err)
	}
	l, err := englog.Open(englog.Config{Dir: dir, Logger: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	entries, err := l.Read(1, int(l.LastOffset()))
	if err != nil {
		t.Fatal(err)
	}
	e, s := openEngine(t, l, l.DB())
	if err := e.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := e.Handles()[0].WaitApplied(ctx, l.LastOffset()); err != nil {
		t.Fatal(err)
	}
	for _, term := range []string{"coffee", "the", "the a", "matrix room"} {
		var want map[string]string
		var rooms []string
		for i, w := range strings.Fields(term) {
			hits, rs := expected(t, entries, w)
			if i == 0 {
				want, rooms = hits, rs
				continue
			}
			for id := range want {
				if _, ok := hits[id]; !ok {
					delete(want, id)
				}
			}
		}
		var some []string
		for i, r := range rooms {
			if i%2 == 1 {
				some = append(some, r)
			}
		}
		counts := map[string]int{}
		for id, r := range want {
			if !slices.Contains(some, r) {
				delete(want, id)
				continue
			}
			counts[r]++
		}
		if len(want) == 0 {
			t.Fatalf("%q: no hits in the chosen rooms: pick other words", term)
		}
		for _, recent := range []bool{true, false} {
			got := searchAll(t, s, search.Query{Term: term, Rooms: some, Recent: recent, Limit: 9})
			if len(got) != len(want) {
				t.Errorf("%q (recent=%v): %d hits, want %d", term, recent, len(got), len(want))
			}
			for id, room := range want {
				if got[id] != room {
					t.Errorf("%q (recent=%v): %s (room %s) not found", term, recent, id, room)
					break
				}
			}
			res, err := s.Search(ctx, search.Query{Term: term, Rooms: some, Recent: recent, Limit: 5, WithRoomCounts: true})
			if err != nil {
				t.Fatal(err)
			}
			if int(res.Total) != len(want) {
				t.Errorf("%q (recent=%v): total %d, want %d", term, recent, res.Total, len(want))
			}
			if !maps.Equal(res.RoomCounts, counts) {
				t.Errorf("%q (recent=%v): counts per room %v, want %v", term, recent, res.RoomCounts, counts)
			}
			for i := 1; recent && i < len(res.Hits); i++ {
				if res.Hits[i].Offset >= res.Hits[i-1].Offset {
					t.Errorf("%q: recent hits out of order: %d then %d", term, res.Hits[i-1].Offset, res.Hits[i].Offset)
				}
			}
		}
	}
}

// TestRanksSurviveARestart checks the document count that scores use: the
// fold keeps it as it writes (the index's own count covers only bleve's
// Batch), and an index opened afresh counts its documents from the
// keyspace. Ranks after folding (with redactions) and after a restart must
// be equal.
func TestRanksSurviveARestart(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	if _, err := generate.Run(ctx, dir, generate.Options{Seed: 5, Users: 30, Rooms: 5, Events: 1500, Logger: zerolog.Nop()}); err != nil {
		t.Fatal(err)
	}
	l, err := englog.Open(englog.Config{Dir: dir, Logger: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	entries, err := l.Read(1, int(l.LastOffset()))
	if err != nil {
		t.Fatal(err)
	}
	_, rooms := expected(t, entries, "the")
	ranks := func(s *search.Searcher) map[string]float64 {
		out := map[string]float64{}
		for _, term := range []string{"coffee", "the matrix", "sound water"} {
			res, err := s.Search(ctx, search.Query{Term: term, Rooms: rooms, Limit: 20})
			if err != nil {
				t.Fatal(err)
			}
			for _, h := range res.Hits {
				out[term+" "+h.EventID] = h.Rank
			}
		}
		if len(out) == 0 {
			t.Fatal("no hits: pick other words")
		}
		return out
	}
	db, err := pebble.Open(t.TempDir(), &pebble.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	e1 := projections.NewEngine(l, db, zerolog.Nop(), nil)
	p1 := search.New()
	s1 := p1.Searcher(e1.Register(p1))
	if err := e1.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := e1.Handles()[0].WaitApplied(ctx, l.LastOffset()); err != nil {
		t.Fatal(err)
	}
	folded := ranks(s1)
	e1.Close()

	_, s2 := openEngine(t, l, db)
	reopened := ranks(s2)
	if !maps.Equal(folded, reopened) {
		t.Fatalf("ranks after the fold differ from those after a restart:\n%v\n%v", folded, reopened)
	}
}

// TestTypeFilters checks filters on event types (patterns with '*'),
// which choose the text fields searched: each field holds the text of one
// type. The same searches by keys give the expected hits.
func TestTypeFilters(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	if _, err := generate.Run(ctx, dir, generate.Options{Seed: 3, Users: 30, Rooms: 5, Events: 3000, Logger: zerolog.Nop()}); err != nil {
		t.Fatal(err)
	}
	l, err := englog.Open(englog.Config{Dir: dir, Logger: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	entries, err := l.Read(1, int(l.LastOffset()))
	if err != nil {
		t.Fatal(err)
	}
	e, s := openEngine(t, l, l.DB())
	if err := e.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := e.Handles()[0].WaitApplied(ctx, l.LastOffset()); err != nil {
		t.Fatal(err)
	}
	const word = "the"
	all, rooms := expected(t, entries, word)
	q := search.Query{Term: word, Rooms: rooms, Limit: 50}
	byKeys := func(keys ...string) map[string]string {
		q := q
		q.Keys = keys
		return searchAll(t, s, q)
	}
	byTypes := func(types, notTypes []string) map[string]string {
		q := q
		q.Types, q.NotTypes = types, notTypes
		return searchAll(t, s, q)
	}
	body, topic := byKeys(search.FieldBody), byKeys(search.FieldTopic)
	if len(body) == 0 || len(topic) == 0 || len(body)+len(topic)+len(byKeys(search.FieldName)) != len(all) {
		t.Fatalf("%d hits in bodies, %d in topics, %d in all: pick another word or log", len(body), len(topic), len(all))
	}
	for _, c := range []struct {
		name            string
		types, notTypes []string
		want            map[string]string
	}{
		{"topic", []string{"m.room.topic"}, nil, topic},
		{"message by pattern", []string{"*.mess*ge"}, nil, body},
		{"all by pattern", []string{"m.room.*"}, nil, all},
		{"not the message", nil, []string{"m.room.message"}, byKeys(search.FieldName, search.FieldTopic)},
		{"topic, not names", []string{"m.room.topic", "m.room.name"}, []string{"*name"}, topic},
		{"none", []string{"m.reaction"}, nil, map[string]string{}},
		{"nothing left", []string{"m.room.message"}, []string{"*"}, map[string]string{}},
	} {
		if got := byTypes(c.types, c.notTypes); !maps.Equal(got, c.want) {
			t.Errorf("%s: %d hits, want %d", c.name, len(got), len(c.want))
		}
	}
}
