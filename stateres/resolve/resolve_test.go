package resolve

import (
	"strings"
	"testing"

	"github.com/engram-hs/engram/stateres"
)

// testAuthCheck is the authorisation check the tests resolve with: the real
// one (package auth). Set it to gmslAuthCheck to isolate this package from
// the auth rules when comparing with gomatrixserverlib.
var testAuthCheck AuthCheck = defaultAuthCheck

const (
	alice   = "@alice:example.org"
	bob     = "@bob:example.org"
	charlie = "@charlie:example.org"
	mod     = "@mod:example.org"
)

func resolveOrFail(t *testing.T, r *testRoom, sets ...map[stateres.StateKeyTuple]string) map[stateres.StateKeyTuple]string {
	t.Helper()
	got, err := ResolveWith(r.version, sets, r, testAuthCheck)
	if err != nil {
		t.Fatalf("v%s: %v", r.version.ID, err)
	}
	return got
}

func expectKey(t *testing.T, r *testRoom, state map[stateres.StateKeyTuple]string, key stateres.StateKeyTuple, wantName string) {
	t.Helper()
	got, ok := state[key]
	if wantName == "" {
		if ok {
			t.Errorf("v%s: %v resolved to %s, want absent; state %s", r.version.ID, key, r.events[got].name, r.describe(state))
		}
		return
	}
	if !ok || got != r.id(wantName) {
		name := "absent"
		if ok {
			name = r.events[got].name
		}
		t.Errorf("v%s: %v resolved to %s, want %s; state %s", r.version.ID, key, name, wantName, r.describe(state))
	}
}

func TestResolveFewerThanTwoStateSets(t *testing.T) {
	r, b := createRoom(t, "10", alice, nil, 1000)
	got := resolveOrFail(t, r)
	if len(got) != 0 {
		t.Errorf("no state sets resolved to %v, want empty", got)
	}
	got = resolveOrFail(t, r, b.stateSet())
	if len(got) != len(b.state) {
		t.Errorf("one state set resolved to %d keys, want %d", len(got), len(b.state))
	}
	for k, v := range b.state {
		if got[k] != v {
			t.Errorf("key %v: got %s want %s", k, got[k], v)
		}
	}
}

func TestResolveMissingEventIsAnError(t *testing.T) {
	r, b := createRoom(t, "10", alice, nil, 1000)
	broken := b.stateSet()
	broken[stateres.StateKeyTuple{Type: "m.room.topic"}] = "$missing"
	_, err := ResolveWith(r.version, []map[stateres.StateKeyTuple]string{b.stateSet(), broken}, r, testAuthCheck)
	if err == nil || !strings.Contains(err.Error(), "$missing") {
		t.Fatalf("got error %v, want one naming $missing", err)
	}
	if _, err := ResolveWith(r.version, []map[stateres.StateKeyTuple]string{b.stateSet(), b.stateSet()}, r, nil); err == nil {
		t.Fatal("resolving without an auth check succeeded")
	}
}

// TestBanBeatsJoin: one fork bans Bob, the other has Bob change the topic
// and rejoin after leaving. In every algorithm the ban stands.
func TestBanBeatsJoin(t *testing.T) {
	for _, v := range stateres.KnownVersions() {
		t.Run("v"+v, func(t *testing.T) {
			r, b := createRoom(t, v, alice, map[string]int{mod: 50}, 1000)
			b.must("mod-join", mod, stateres.MRoomMember, sk(mod), member("join"), 1010)
			b.must("bob-join", bob, stateres.MRoomMember, sk(bob), member("join"), 1020)
			x, y := b, b.fork()
			x.must("ban-bob", mod, stateres.MRoomMember, sk(bob), member("ban"), 1030)
			y.must("bob-topic", bob, "m.room.topic", sk(""), map[string]any{"topic": "bob was here"}, 1031)
			y.must("bob-leave", bob, stateres.MRoomMember, sk(bob), member("leave"), 1032)
			y.must("bob-rejoin", bob, stateres.MRoomMember, sk(bob), member("join"), 1033)
			got := resolveOrFail(t, r, x.stateSet(), y.stateSet())
			expectKey(t, r, got, memberKey(bob), "ban-bob")
			if r.version.StateRes == stateres.StateResV1 {
				// v1: the topic key exists in one state set only, which is
				// not a conflict, so the banned user's topic stays.
				expectKey(t, r, got, stateres.StateKeyTuple{Type: "m.room.topic"}, "bob-topic")
				return
			}
			// The topic was sent by Bob while joined; in v2 it is checked
			// after the ban is applied, so it is dropped.
			expectKey(t, r, got, stateres.StateKeyTuple{Type: "m.room.topic"}, "")
		})
	}
}

// TestPowerLevelFight: two admins of equal power each promote a new admin
// concurrently. Whichever change is applied first makes the other one
// remove a user of the sender's own level, which the auth rules forbid; at
// equal sender power the earlier origin_server_ts goes first.
func TestPowerLevelFight(t *testing.T) {
	for _, v := range []string{"2", "6", "10", "11", "12"} {
		for _, bobFirst := range []bool{true, false} {
			r, b := createRoom(t, v, alice, map[string]int{bob: 100, charlie: 100}, 1000)
			b.must("bob-join", bob, stateres.MRoomMember, sk(bob), member("join"), 1010)
			b.must("charlie-join", charlie, stateres.MRoomMember, sk(charlie), member("join"), 1011)
			levels := func(extra string) map[string]any {
				l := map[string]any{bob: 100, charlie: 100, extra: 100}
				if !r.version.PrivilegedCreators {
					l[alice] = 100
				}
				return l
			}
			bobTS, charlieTS := int64(2000), int64(2001)
			want := "bob-promotes-dave"
			if !bobFirst {
				bobTS, charlieTS = 2001, 2000
				want = "charlie-promotes-eve"
			}
			x, y := b, b.fork()
			x.must("bob-promotes-dave", bob, stateres.MRoomPowerLevels, sk(""), powerContent(levels("@dave:example.org")), bobTS)
			y.must("charlie-promotes-eve", charlie, stateres.MRoomPowerLevels, sk(""), powerContent(levels("@eve:example.org")), charlieTS)
			got := resolveOrFail(t, r, x.stateSet(), y.stateSet())
			expectKey(t, r, got, powerLevelsKey, want)
		}
	}
}

// TestHigherPowerOrderedFirst: the admin's demotion of a moderator is
// ordered before the moderator's concurrent ban even though the ban is
// older, because the admin has more power; the ban then fails.
func TestHigherPowerOrderedFirst(t *testing.T) {
	for _, v := range []string{"2", "9", "11", "12"} {
		t.Run("v"+v, func(t *testing.T) {
			r, b := createRoom(t, v, alice, map[string]int{mod: 50}, 1000)
			b.must("mod-join", mod, stateres.MRoomMember, sk(mod), member("join"), 1010)
			b.must("bob-join", bob, stateres.MRoomMember, sk(bob), member("join"), 1011)
			x, y := b, b.fork()
			x.must("mod-bans-bob", mod, stateres.MRoomMember, sk(bob), member("ban"), 2000)
			levels := map[string]any{mod: 0}
			if !r.version.PrivilegedCreators {
				levels[alice] = 100
			}
			y.must("alice-demotes-mod", alice, stateres.MRoomPowerLevels, sk(""), powerContent(levels), 3000)
			got := resolveOrFail(t, r, x.stateSet(), y.stateSet())
			expectKey(t, r, got, powerLevelsKey, "alice-demotes-mod")
			expectKey(t, r, got, memberKey(bob), "bob-join")
		})
	}
}

// TestJoinRulesChange: one fork makes the room invite-only, the other has
// Charlie join as if it were public. The join is checked against the
// resolved join rules and dropped.
func TestJoinRulesChange(t *testing.T) {
	for _, v := range stateres.KnownVersions() {
		t.Run("v"+v, func(t *testing.T) {
			r, b := createRoom(t, v, alice, nil, 1000)
			x, y := b, b.fork()
			x.must("jr-invite", alice, stateres.MRoomJoinRules, sk(""), map[string]any{"join_rule": "invite"}, 2000)
			y.must("charlie-join", charlie, stateres.MRoomMember, sk(charlie), member("join"), 1990)
			got := resolveOrFail(t, r, x.stateSet(), y.stateSet())
			expectKey(t, r, got, joinRulesKey, "jr-invite")
			if r.version.StateRes == stateres.StateResV1 {
				// v1: a key present in only one state set is not a conflict,
				// so Charlie's join survives: one of the bugs v2 fixed.
				expectKey(t, r, got, memberKey(charlie), "charlie-join")
				return
			}
			expectKey(t, r, got, memberKey(charlie), "")
		})
	}
}

// TestMainlineBeatsTimestamps: two concurrent topics, where the one with
// the earlier timestamp was sent under the newer power levels. Worked from
// the v2 algorithm (the same in v2.1 here):
//
//   - Conflicted state set: power levels {pl0 (set Y), p1 (set X)} and
//     topic {topic-x, topic-y}.
//   - Step 1: the power events pl0 and p1, in auth order: pl0, p1. Step 2:
//     both are allowed; the partial state's power levels are p1.
//   - Step 3: mainline of p1 is [p1, pl0]. topic-x cites p1: position 0;
//     topic-y cites pl0: position 1. A greater position sorts first:
//     topic-y, then topic-x, whatever their timestamps (topic-x 2000 is
//     earlier than topic-y 2500).
//   - Step 4: both are allowed in that order, so topic-x is applied last.
//
// Resolved: topic = topic-x. Ordering by timestamp alone would give topic-y.
func TestMainlineBeatsTimestamps(t *testing.T) {
	for _, v := range []string{"2", "6", "10", "11", "12"} {
		t.Run("v"+v, func(t *testing.T) {
			r, b := createRoom(t, v, alice, map[string]int{bob: 50}, 1000)
			b.must("bob-join", bob, stateres.MRoomMember, sk(bob), member("join"), 1010)
			x, y := b, b.fork()
			levels := map[string]any{bob: 50, charlie: 10}
			if !r.version.PrivilegedCreators {
				levels[alice] = 100
			}
			x.must("p1", alice, stateres.MRoomPowerLevels, sk(""), powerContent(levels), 1500)
			x.must("topic-x", bob, "m.room.topic", sk(""), map[string]any{"topic": "x"}, 2000)
			y.must("topic-y", bob, "m.room.topic", sk(""), map[string]any{"topic": "y"}, 2500)
			got := resolveOrFail(t, r, x.stateSet(), y.stateSet())
			expectKey(t, r, got, powerLevelsKey, "p1")
			expectKey(t, r, got, stateres.StateKeyTuple{Type: "m.room.topic"}, "topic-x")
		})
	}
}
