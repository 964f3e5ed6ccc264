package rooms_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"math/rand"
	"runtime"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/engram-hs/engram/bench/report"
	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/projections"
	"github.com/engram-hs/engram/projections/rooms"
	"github.com/engram-hs/engram/stateres"
)

// tsRoom is a room folded into a real projection, whose messages carry
// the origin_server_ts values the test chose.
type tsRoom struct {
	v      rooms.View
	roomID string
	ids    []string // the messages, in timeline order
	ts     []int64
	last   uint64
}

// foldTSRoom folds a room (create, join, then one message per entry of
// stamps, with that origin_server_ts) and returns its view.
func foldTSRoom(tb testing.TB, stamps []int64) *tsRoom {
	tb.Helper()
	t := tb
	d := newTestDAG(t, "10")
	alice := "@alice:a.test"
	state := rooms.StateMap{}
	var prev []stateres.PDU
	var props []englog.Proposal
	add := func(ts int64, typ string, stateKey *string, content string) stateres.PDU {
		d.ts = ts - 1
		ev, after := d.build(state, prev, typ, alice, stateKey, content)
		state, prev = after, []stateres.PDU{ev}
		props = append(props, pduProposal(t, ev, nil))
		return ev
	}
	add(1, stateres.MRoomCreate, sk(""), `{"creator":"`+alice+`","room_version":"10"}`)
	add(2, stateres.MRoomMember, sk(alice), `{"membership":"join"}`)
	r := &tsRoom{roomID: d.roomID, ts: stamps}
	for i, ts := range stamps {
		r.ids = append(r.ids, add(ts, "m.room.message", nil, fmt.Sprintf(`{"body":"m%d","msgtype":"m.text"}`, i)).EventID())
	}
	ctx := context.Background()
	node, err := englog.Open(englog.Config{Dir: tb.TempDir(), Logger: zerolog.Nop()})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { node.Close() })
	engine := projections.NewEngine(node, node.DB(), zerolog.Nop(), nil)
	tb.Cleanup(func() { engine.Close() })
	h := engine.Register(rooms.New(node, nil))
	if err := engine.Start(ctx); err != nil {
		tb.Fatal(err)
	}
	for len(props) > 0 {
		n := min(len(props), 256)
		offs, err := node.Append(ctx, props[:n]...)
		if err != nil {
			tb.Fatal(err)
		}
		props = props[n:]
		r.last = offs[len(offs)-1]
	}
	if err := h.WaitApplied(ctx, r.last); err != nil {
		tb.Fatal(err)
	}
	r.v = rooms.NewView(h.Reader(), node)
	return r
}

func (r *tsRoom) find(tb testing.TB, ts int64, forward bool, bound uint64, visible func(id string) bool) (string, int64, bool) {
	tb.Helper()
	te, at, ok, err := r.v.EventAtTimestamp(r.roomID, ts, forward, rooms.Pos{Offset: bound, Seq: rooms.PosEnd},
		func(_ rooms.TimelineEntry, e *rooms.Event) (bool, error) { return visible(e.EventID), nil })
	if err != nil {
		tb.Fatal(err)
	}
	return te.EventID, at, ok
}

// TestEventAtTimestampTiesAndOrder: messages whose timestamps repeat and
// run against the timeline. Going forwards the earliest timestamp at or
// after ts wins, and of events sharing it the first in the timeline;
// backwards the latest at or before ts, the last in the timeline. Events
// the asker may not see and events past the bound are stepped over. Every
// answer is checked against a walk of the whole timeline.
func TestEventAtTimestampTiesAndOrder(t *testing.T) {
	//                 m0   m1   m2   m3   m4   m5   m6
	stamps := []int64{100, 200, 200, 200, 150, 300, 200}
	r := foldTSRoom(t, stamps)
	m := r.ids
	all := func(string) bool { return true }
	for _, c := range []struct {
		ts      int64
		forward bool
		want    string
		wantTS  int64
	}{
		{200, true, m[1], 200},  // first of the four at 200
		{200, false, m[6], 200}, // last of them, after m5 at 300 in the timeline
		{199, false, m[4], 150}, // m4 is later in the timeline than the 200s before it
		{101, true, m[4], 150},
		{151, true, m[1], 200},
		{201, true, m[5], 300},
		{math.MaxInt64, false, m[5], 300},
		{3, true, m[0], 100},
		{99, false, "", 0}, // only the create (1) and the join (2) are before
	} {
		id, at, ok := r.find(t, c.ts, c.forward, r.last, all)
		if c.ts == 99 {
			// The join (ts 2) is the latest event at or before 99.
			if !ok || at != 2 {
				t.Errorf("ts 99 backwards: %s at %d (%v), want the join at 2", id, at, ok)
			}
			continue
		}
		if !ok || id != c.want || at != c.wantTS {
			t.Errorf("ts %d forward=%v: %s at %d (%v), want m%d at %d", c.ts, c.forward, id, at, ok, index(m, c.want), c.wantTS)
		}
	}
	if id, _, ok := r.find(t, 301, true, r.last, all); ok {
		t.Errorf("forwards past the last timestamp: %s, want none", id)
	}
	if id, _, ok := r.find(t, math.MinInt64, true, r.last, all); !ok || id == "" {
		t.Errorf("forwards from the smallest timestamp: none")
	}
	// Invisible events are stepped over: without m1, m2 is the first 200.
	hide := func(ids ...string) func(string) bool {
		return func(id string) bool {
			for _, h := range ids {
				if h == id {
					return false
				}
			}
			return true
		}
	}
	if id, _, _ := r.find(t, 200, true, r.last, hide(m[1])); id != m[2] {
		t.Errorf("forwards at 200 without m1: m%d, want m2", index(m, id))
	}
	if id, at, _ := r.find(t, 200, false, r.last, hide(m[6], m[3], m[2], m[1])); id != m[4] || at != 150 {
		t.Errorf("backwards at 200 without the 200s: m%d at %d, want m4 at 150", index(m, id), at)
	}
	// Entries past the bound (m6, the last entry) are not answers.
	if id, _, _ := r.find(t, 200, false, r.last-1, all); id != m[3] {
		t.Errorf("backwards at 200 bounded before m6: m%d, want m3", index(m, id))
	}

	// Against the whole timeline, for random timestamps, visibility and
	// bounds.
	rng := rand.New(rand.NewSource(1))
	big := make([]int64, 300)
	for i := range big {
		big[i] = 1000 + rng.Int63n(100) // many ties, in no order
	}
	r = foldTSRoom(t, big)
	for range 400 {
		ts, forward := 990+rng.Int63n(120), rng.Intn(2) == 0
		hidden := map[string]bool{}
		for _, id := range r.ids {
			if rng.Intn(4) == 0 {
				hidden[id] = true
			}
		}
		bound := r.last - uint64(rng.Intn(50))
		boundIdx := len(r.ids) - int(r.last-bound) // messages at indexes < boundIdx are within it
		want, wantTS, wantOK := "", int64(0), false
		for i, id := range r.ids[:boundIdx] {
			s := r.ts[i]
			if hidden[id] || forward && s < ts || !forward && s > ts {
				continue
			}
			if !wantOK || forward && s < wantTS || !forward && s >= wantTS {
				want, wantTS, wantOK = id, s, true
			}
		}
		id, at, ok := r.find(t, ts, forward, bound, func(id string) bool { return !hidden[id] })
		if !wantOK && ok && at <= 2 {
			continue // the join or the create, older than every message
		}
		if ok != wantOK || id != want || at != wantTS {
			t.Fatalf("ts %d forward=%v bound %d: m%d at %d (%v), want m%d at %d (%v)", ts, forward, bound, index(r.ids, id), at, ok, index(r.ids, want), wantTS, wantOK)
		}
	}
}

func index(ids []string, id string) int {
	for i, x := range ids {
		if x == id {
			return i
		}
	}
	return -1
}

// BenchmarkEventAtTimestamp: timestamp_to_event in rooms of 1,000, 10,000
// and 50,000 messages (one a second, a tenth of them with a timestamp set
// back by up to a minute, as clock skew between servers makes), for
// random timestamps within the room's span, forwards and backwards, every
// event visible. It prints, per room size, the time per lookup and the
// events read per lookup; both stay flat as the room grows (the old fold
// read every event of the room; us_whole_timeline_read is that read,
// timed once in the same run).
func BenchmarkEventAtTimestamp(b *testing.B) {
	for _, n := range []int{1000, 10000, 50000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			rng := rand.New(rand.NewSource(int64(n)))
			stamps := make([]int64, n)
			for i := range stamps {
				stamps[i] = 1_000_000 + int64(i)*1000
				if rng.Intn(10) == 0 {
					stamps[i] -= rng.Int63n(60_000)
				}
			}
			r := foldTSRoom(b, stamps)
			reads, lookups := 0, 0
			visible := func(rooms.TimelineEntry, *rooms.Event) (bool, error) { reads++; return true, nil }
			b.ResetTimer()
			t0 := time.Now()
			for b.Loop() {
				ts := 1_000_000 + rng.Int63n(int64(n-1)*1000) // up to the last message's
				if _, _, ok, err := r.v.EventAtTimestamp(r.roomID, ts, lookups%2 == 0, rooms.Pos{Offset: r.last, Seq: rooms.PosEnd}, visible); err != nil || !ok {
					b.Fatalf("ts %d: %v %v", ts, ok, err)
				}
				lookups++
			}
			el := time.Since(t0)
			b.StopTimer()
			// For comparison, in the same run: what the search cost before
			// the index, a read of every timeline entry and its event.
			t1 := time.Now()
			for from := (rooms.Pos{}); ; {
				page, err := r.v.Page(r.roomID, from, true, 500, rooms.Pos{Offset: r.last, Seq: rooms.PosEnd})
				if err != nil {
					b.Fatal(err)
				}
				for _, te := range page {
					from = te.At()
					if _, err := r.v.Event(te.EventID); err != nil {
						b.Fatal(err)
					}
				}
				if len(page) < 500 {
					break
				}
			}
			scan := time.Since(t1)
			env := report.CurrentEnv()
			kv := map[string]any{"bench": "timestamp_to_event", "room_events": n, "lookups": lookups,
				"us_per_lookup": float64(el.Microseconds()) / float64(lookups), "events_read_per_lookup": float64(reads) / float64(lookups),
				"us_whole_timeline_read": scan.Microseconds(),
				"workload":               "one room, messages 1 s apart, 10% skewed back up to 60 s; random ts in the room's span; f and b alternating; all visible",
				"cores":                  runtime.NumCPU(), "go": runtime.Version(), "commit": env.Commit}
			if la := report.LoadAverage(); la != nil {
				kv["loadavg"] = la
			}
			line, _ := json.Marshal(kv)
			fmt.Println(string(line))
		})
	}
}
