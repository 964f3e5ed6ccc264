package resolve

import (
	"slices"
	"testing"

	"github.com/engram-hs/engram/stateres"
)

func stateEvent(r *testRoom, name, sender, typ, stateKey string, ts int64, auth ...string) string {
	return r.add(eventSpec{Name: name, Sender: sender, Type: typ, StateKey: sk(stateKey), Content: map[string]any{"membership": "join", "join_rule": "public"}, Auth: auth, TS: ts})
}

func (r *testRoom) names(ids []string) []string {
	out := make([]string, len(ids))
	for i, id := range ids {
		out[i] = r.events[id].name
	}
	return out
}

func nodesToIDs(res *resolver, ns []nodeID) []string {
	out := make([]string, len(ns))
	for i, n := range ns {
		out[i] = res.g.nodes[n].id
	}
	return out
}

func sortedNames(r *testRoom, res *resolver, ns []nodeID) []string {
	names := r.names(nodesToIDs(res, ns))
	slices.Sort(names)
	return names
}

// subgraphRoom: C1 and C2 are conflicted topics, C2 reaches C1 through E3
// and E2; F, in both state sets, also reaches E3, so E2, E3 and C1 are in
// every full auth chain and only the conflicted state subgraph (v2.1) adds
// E2 and E3 to the full conflicted set. E5 is only in set 2's chain.
func subgraphRoom(t *testing.T, version string) (*testRoom, *resolver) {
	r := newTestRoom(t, version)
	c := stateEvent(r, "C", alice, stateres.MRoomCreate, "", 1)
	c1 := stateEvent(r, "C1", alice, "m.room.topic", "", 2, c)
	e2 := stateEvent(r, "E2", alice, "x.e", "2", 3, c, c1)
	e3 := stateEvent(r, "E3", alice, "x.e", "3", 4, c, e2)
	e5 := stateEvent(r, "E5", alice, "x.e", "5", 5, c)
	c2 := stateEvent(r, "C2", alice, "m.room.topic", "", 6, c, e3, e5)
	f := stateEvent(r, "F", alice, "x.f", "", 7, c, e3)
	s1 := map[stateres.StateKeyTuple]string{createKey: c, {Type: "m.room.topic"}: c1, {Type: "x.f"}: f}
	s2 := map[stateres.StateKeyTuple]string{createKey: c, {Type: "m.room.topic"}: c2, {Type: "x.f"}: f}
	res, err := newResolver(r.version, []map[stateres.StateKeyTuple]string{s1, s2}, r, testAuthCheck)
	if err != nil {
		t.Fatal(err)
	}
	return r, res
}

func TestUnconflictedStateMapAndConflictedStateSet(t *testing.T) {
	r, res := subgraphRoom(t, "12")
	// A key missing from one state set is conflicted too.
	res.sets[0][stateres.StateKeyTuple{Type: "x.only"}] = res.g.index[r.id("E5")]
	unconflicted, conflicted := res.unconflictedStateMapAndConflictedStateSet()
	if len(unconflicted) != 2 || unconflicted[createKey] != res.g.index[r.id("C")] {
		t.Errorf("unconflicted = %v, want create and x.f", unconflicted)
	}
	if got := sortedNames(r, res, conflicted); !slices.Equal(got, []string{"C1", "C2", "E5"}) {
		t.Errorf("conflicted = %v, want [C1 C2 E5]", got)
	}
}

func TestAuthDifference(t *testing.T) {
	r, res := subgraphRoom(t, "12")
	if got := sortedNames(r, res, res.authDifference()); !slices.Equal(got, []string{"E5"}) {
		t.Errorf("auth difference = %v, want [E5]", got)
	}
}

func TestConflictedStateSubgraph(t *testing.T) {
	r, res := subgraphRoom(t, "12")
	_, conflicted := res.unconflictedStateMapAndConflictedStateSet()
	if got := sortedNames(r, res, res.conflictedStateSubgraph(conflicted)); !slices.Equal(got, []string{"C1", "C2", "E2", "E3"}) {
		t.Errorf("conflicted state subgraph = %v, want [C1 C2 E2 E3]", got)
	}
	if got := sortedNames(r, res, res.fullConflictedSet(conflicted, true)); !slices.Equal(got, []string{"C1", "C2", "E2", "E3", "E5"}) {
		t.Errorf("v2.1 full conflicted set = %v, want [C1 C2 E2 E3 E5]", got)
	}
	if got := sortedNames(r, res, res.fullConflictedSet(conflicted, false)); !slices.Equal(got, []string{"C1", "C2", "E5"}) {
		t.Errorf("v2 full conflicted set = %v, want [C1 C2 E5]", got)
	}
}

// TestReverseTopologicalPowerOrdering: greater sender power first, then
// older, then smaller event ID; an event whose auth ancestor is emitted
// jumps ahead of weaker ready events (lexicographically smallest order).
func TestReverseTopologicalPowerOrdering(t *testing.T) {
	r := newTestRoom(t, "10")
	c := r.add(eventSpec{Name: "C", Sender: alice, Type: stateres.MRoomCreate, StateKey: sk(""), Content: map[string]any{"creator": alice}, TS: 1})
	p := r.add(eventSpec{Name: "P", Sender: alice, Type: stateres.MRoomPowerLevels, StateKey: sk(""), Content: powerContent(map[string]any{alice: 100, bob: 50}), Auth: []string{c}, TS: 2})
	ev := func(name, sender string, ts int64, auth ...string) string {
		return r.add(eventSpec{Name: name, Sender: sender, Type: stateres.MRoomJoinRules, StateKey: sk(""), Content: map[string]any{"join_rule": "public"}, Auth: append([]string{c, p}, auth...), TS: ts})
	}
	a1 := ev("A1", bob, 10)
	a2 := ev("A2", alice, 20)
	a3 := ev("A3", charlie, 10)
	a4 := ev("A4", charlie, 10)
	a5 := ev("A5", alice, 5, a3)
	res, err := newResolver(r.version, []map[stateres.StateKeyTuple]string{{createKey: c}, {createKey: c}}, r, testAuthCheck)
	if err != nil {
		t.Fatal(err)
	}
	var set []nodeID
	for _, id := range []string{a5, a4, a3, a2, a1} {
		n, _ := res.g.load(id)
		set = append(set, n)
	}
	got, err := res.reverseTopologicalPowerOrdering(set)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"A2", "A1", "A3", "A5", "A4"}
	if a4 < a3 {
		want = []string{"A2", "A1", "A4", "A3", "A5"}
	}
	if names := r.names(nodesToIDs(res, got)); !slices.Equal(names, want) {
		t.Errorf("order = %v, want %v", names, want)
	}
}

// TestMainlineOrdering: events whose closest power levels ancestor meets the
// mainline earlier sort first; no ancestor on the mainline (∞) sorts first
// of all; then origin_server_ts.
func TestMainlineOrdering(t *testing.T) {
	r := newTestRoom(t, "10")
	c := r.add(eventSpec{Name: "C", Sender: alice, Type: stateres.MRoomCreate, StateKey: sk(""), Content: map[string]any{"creator": alice}, TS: 1})
	pl := func(name string, auth ...string) string {
		return r.add(eventSpec{Name: name, Sender: alice, Type: stateres.MRoomPowerLevels, StateKey: sk(""), Content: powerContent(map[string]any{alice: 100}), Auth: append([]string{c}, auth...), TS: 2})
	}
	p0 := pl("P0")
	p1 := pl("P1", p0)
	p2 := pl("P2", p1)
	q := pl("Q", p0)
	ev := func(name string, ts int64, auth ...string) string {
		return r.add(eventSpec{Name: name, Sender: alice, Type: "m.room.topic", StateKey: sk(""), Content: map[string]any{"topic": name}, Auth: append([]string{c}, auth...), TS: ts})
	}
	ids := []string{ev("e1", 1, p2), ev("e2", 1, p1), ev("e3", 1, q), ev("e4", 5), ev("e5", 0, p0)}
	res, err := newResolver(r.version, []map[stateres.StateKeyTuple]string{{createKey: c}, {createKey: c}}, r, testAuthCheck)
	if err != nil {
		t.Fatal(err)
	}
	var events []nodeID
	for _, id := range ids {
		n, _ := res.g.load(id)
		events = append(events, n)
	}
	p2n, _ := res.g.load(p2)
	res.mainlineOrdering(events, p2n)
	if got, want := r.names(nodesToIDs(res, events)), []string{"e4", "e5", "e3", "e2", "e1"}; !slices.Equal(got, want) {
		t.Errorf("mainline order = %v, want %v", got, want)
	}
	// Without a power levels event in the partial state every position is
	// ∞ and only timestamps and IDs order.
	res.mainlineOrdering(events, -1)
	if got := r.names(nodesToIDs(res, events)); got[0] != "e5" || got[4] != "e4" {
		t.Errorf("order without mainline = %v, want e5 first and e4 last", got)
	}
}

// TestV21StartsFromEmptyState: Charlie joined while the room was public;
// concurrently Alice made it invite-only, and one server merged both. The
// unconflicted state holds the invite-only rule, and Dave's earlier join
// puts the public rule in every auth chain, so it is not re-applied. v2 checks Charlie's join
// against it and drops Charlie; v2.1 starts from an empty state, so the join
// is checked against its own auth events and Charlie stays (MSC4297).
func TestV21StartsFromEmptyState(t *testing.T) {
	for _, tc := range []struct {
		version     string
		wantCharlie string
	}{{"11", ""}, {"12", "charlie-join"}} {
		r, b := createRoom(t, tc.version, alice, nil, 1000)
		b.must("dave-join", "@dave:example.org", stateres.MRoomMember, sk("@dave:example.org"), member("join"), 1500)
		x, y := b, b.fork()
		x.must("charlie-join", charlie, stateres.MRoomMember, sk(charlie), member("join"), 2000)
		jr := y.must("jr-invite", alice, stateres.MRoomJoinRules, sk(""), map[string]any{"join_rule": "invite"}, 2001)
		merged := x.stateSet()
		merged[joinRulesKey] = jr
		got := resolveOrFail(t, r, merged, y.stateSet())
		expectKey(t, r, got, joinRulesKey, "jr-invite")
		expectKey(t, r, got, memberKey(charlie), tc.wantCharlie)
	}
}

// TestIterativeAuthChecksSkipRejectedAuthEvents: an event whose needed key
// is missing from the partial state falls back on its auth events, but not
// on a rejected one.
func TestIterativeAuthChecksSkipRejectedAuthEvents(t *testing.T) {
	for _, rejected := range []bool{false, true} {
		r, b := createRoom(t, "10", alice, nil, 1000)
		bobJoin := b.must("bob-join", bob, stateres.MRoomMember, sk(bob), member("join"), 1100)
		topic := b.must("bob-topic", bob, "m.room.topic", sk(""), map[string]any{"topic": "t"}, 1200)
		res, err := newResolver(r.version, []map[stateres.StateKeyTuple]string{b.stateSet(), b.stateSet()}, r, testAuthCheck)
		if err != nil {
			t.Fatal(err)
		}
		if rejected {
			r.rejected[bobJoin] = true
		}
		state := stateMap{}
		for k, n := range res.sets[0] {
			state[k] = n
		}
		delete(state, memberKey(bob))
		delete(state, stateres.StateKeyTuple{Type: "m.room.topic"})
		res.iterativeAuthChecks(state, []nodeID{res.g.index[topic]})
		_, applied := state[stateres.StateKeyTuple{Type: "m.room.topic"}]
		if applied == rejected {
			t.Errorf("bob's membership rejected=%v: topic applied=%v", rejected, applied)
		}
	}
}
