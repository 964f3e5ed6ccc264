package resolve

import (
	"fmt"
	"strings"
	"testing"

	"github.com/engram-hs/engram/stateres"
)

// Hand-built room version 12 (state resolution v2.1) conflicts. The
// differential test cannot compare v12 conflicts (gomatrixserverlib panics
// on them), so each expected state here is worked by hand from the spec's
// algorithm (rooms/v12.md, "State resolution"), step by step in the
// comments.

// TestV12CreatorSortsFirst: Bob (level 100) demotes Charlie at ts 2000
// while Alice, the creator, demotes Bob at ts 2001 on a concurrent branch.
//
// Events: create, creator-join, pl0 {bob:100, charlie:50}, jr-public,
// bob-join, charlie-join; then A = alice-demotes-bob (auth: pl0,
// creator-join) on one branch and B = bob-demotes-charlie (auth: pl0,
// bob-join) on the other. In v12 no event cites the create event.
//
//   - Conflicted state set: the power levels key, {A, B}; every other key
//     is the same in both sets (unconflicted state map).
//   - Auth difference: bob-join is in B's auth chain, and no event of A's
//     set cites it, so it is in one full auth chain only: {bob-join}.
//   - Conflicted state subgraph: neither A nor B reaches the other through
//     auth_events: nothing beyond the endpoints.
//   - Full conflicted set: {A, B, bob-join}.
//   - Step 1: power events A and B, plus bob-join (in B's auth chain and in
//     the full conflicted set). Reverse topological power ordering: the
//     candidates are A and bob-join (B waits for bob-join); A's sender is
//     a creator, whose level is infinite in v12, above Bob's 100, so A goes
//     first, whatever the timestamps: A, bob-join, B.
//   - Step 2, from an EMPTY state: A is allowed (the creator may change
//     power levels; missing keys come from A's auth events); bob-join is
//     allowed (join rules public, from its auth events); B is checked
//     against A, where Bob is at 0 and power levels need 100: rejected.
//   - Steps 3-4: no events remain.
//   - Step 5: the unconflicted map fills the other keys.
//
// Resolved: power levels = A, although B is earlier.
func TestV12CreatorSortsFirst(t *testing.T) {
	r, b := createRoom(t, "12", alice, map[string]int{bob: 100, charlie: 50}, 1000)
	b.must("bob-join", bob, stateres.MRoomMember, sk(bob), member("join"), 1010)
	b.must("charlie-join", charlie, stateres.MRoomMember, sk(charlie), member("join"), 1011)
	x, y := b, b.fork()
	x.must("alice-demotes-bob", alice, stateres.MRoomPowerLevels, sk(""), powerContent(map[string]any{bob: 0, charlie: 50}), 2001)
	y.must("bob-demotes-charlie", bob, stateres.MRoomPowerLevels, sk(""), powerContent(map[string]any{bob: 100, charlie: 0}), 2000)
	var steps []string
	got, err := resolveTraced(r.version, []map[stateres.StateKeyTuple]string{x.stateSet(), y.stateSet()}, r, testAuthCheck, func(format string, args ...any) {
		if strings.HasPrefix(format, "step 1") || strings.HasPrefix(format, "sets:") {
			steps = append(steps, r.traceLine(format, args...))
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"sets: 2 conflicted, 3 in the full conflicted set",
		"step 1: [alice-demotes-bob bob-join bob-demotes-charlie]",
	}
	if strings.Join(steps, "\n") != strings.Join(want, "\n") {
		t.Errorf("steps:\n%s\nwant:\n%s", strings.Join(steps, "\n"), strings.Join(want, "\n"))
	}
	expectKey(t, r, got, powerLevelsKey, "alice-demotes-bob")
	expectKey(t, r, got, memberKey(bob), "bob-join")
	expectKey(t, r, got, memberKey(charlie), "charlie-join")
}

// TestV12ConflictedStateSubgraph: the power levels went p1 -> p2 -> p3
// (each citing the one before), Bob's topic cites p2, and one state set
// claims the power levels are still p1 (the state a faulty server might
// send). Only v12 puts p2, which lies on the auth path between the two
// conflicted events, into the full conflicted set.
//
//   - Conflicted state set: the power levels key, {p1, p3}. The topic,
//     members, join rules and create are unconflicted.
//   - Auth difference: p1 and p2 are in the auth chain of bob-topic, which
//     both sets hold, and p3 is cited by nothing: empty.
//   - Conflicted state subgraph (v12 only): the path p3 -> p2 -> p1 through
//     auth_events joins two conflicted events: {p1, p2, p3}.
//   - Full conflicted set: v12 {p1, p2, p3}; v11 {p1, p3}.
//   - Step 1: all are power events; auth order p1, p2, p3 (v12) or p1, p3.
//   - Step 2: v12 starts from an empty state: p1, p2, p3 are each allowed
//     (Alice is the creator). v11 starts from the unconflicted map: p1 then
//     p3 (Alice at 100 raises Charlie to 30) are allowed.
//   - Step 5: the unconflicted topic, members and join rules are kept.
//
// Resolved in both: power levels = p3, topic = bob-topic.
func TestV12ConflictedStateSubgraph(t *testing.T) {
	for _, tc := range []struct {
		version string
		sets    string
		step1   string
	}{
		{"11", "sets: 2 conflicted, 2 in the full conflicted set", "step 1: [p1 p3]"},
		{"12", "sets: 2 conflicted, 3 in the full conflicted set", "step 1: [p1 p2 p3]"},
	} {
		t.Run("v"+tc.version, func(t *testing.T) {
			r, b := createRoom(t, tc.version, alice, map[string]int{bob: 100}, 1000)
			levels := func(charlieLevel int) map[string]any {
				l := map[string]any{bob: 100, charlie: charlieLevel}
				if !r.version.PrivilegedCreators {
					l[alice] = 100
				}
				return powerContent(l)
			}
			b.must("bob-join", bob, stateres.MRoomMember, sk(bob), member("join"), 1010)
			p1 := b.must("p1", alice, stateres.MRoomPowerLevels, sk(""), levels(10), 1100)
			b.must("p2", alice, stateres.MRoomPowerLevels, sk(""), levels(20), 1200)
			b.must("bob-topic", bob, "m.room.topic", sk(""), map[string]any{"topic": "t"}, 1300)
			b.must("p3", alice, stateres.MRoomPowerLevels, sk(""), levels(30), 1400)
			reset := b.stateSet()
			reset[powerLevelsKey] = p1
			var steps []string
			got, err := resolveTraced(r.version, []map[stateres.StateKeyTuple]string{reset, b.stateSet()}, r, testAuthCheck, func(format string, args ...any) {
				if strings.HasPrefix(format, "step 1") || strings.HasPrefix(format, "sets:") {
					steps = append(steps, r.traceLine(format, args...))
				}
			})
			if err != nil {
				t.Fatal(err)
			}
			if want := tc.sets + "\n" + tc.step1; strings.Join(steps, "\n") != want {
				t.Errorf("steps:\n%s\nwant:\n%s", strings.Join(steps, "\n"), want)
			}
			expectKey(t, r, got, powerLevelsKey, "p3")
			expectKey(t, r, got, stateres.StateKeyTuple{Type: "m.room.topic"}, "bob-topic")
		})
	}
}

// traceLine formats a trace line with event IDs replaced by the
// scenario's event names.
func (r *testRoom) traceLine(format string, args ...any) string {
	for i, a := range args {
		if ids, ok := a.([]string); ok {
			args[i] = r.names(ids)
		}
	}
	return fmt.Sprintf(format, args...)
}
