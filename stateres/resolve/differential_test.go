package resolve

import (
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"testing"

	"github.com/engram-hs/engram/stateres"
	"github.com/matrix-org/gomatrixserverlib"
)

// oracleResolve resolves with gomatrixserverlib, the test-only oracle.
func oracleResolve(t *testing.T, r *testRoom, sets []map[stateres.StateKeyTuple]string) (map[stateres.StateKeyTuple]string, error) {
	t.Helper()
	stateSets := make([][]gomatrixserverlib.PDU, len(sets))
	seen := map[string]bool{}
	var all []gomatrixserverlib.PDU
	var walk func(id string)
	walk = func(id string) {
		if seen[id] {
			return
		}
		seen[id] = true
		e := r.events[id]
		all = append(all, e.g)
		for _, a := range e.AuthEventIDs() {
			walk(a)
		}
	}
	distinct := map[stateres.StateKeyTuple]map[string]bool{}
	for i, set := range sets {
		for k, id := range set {
			stateSets[i] = append(stateSets[i], r.events[id].g)
			walk(id)
			if distinct[k] == nil {
				distinct[k] = map[string]bool{}
			}
			distinct[k][id] = true
		}
	}
	authEvents := all
	if r.version.StateRes == stateres.StateResV1 {
		// gomatrixserverlib's v1 starts R from the auth events it is
		// given; the spec starts it from the unconflicted state.
		authEvents = nil
		for _, ids := range distinct {
			if len(ids) == 1 {
				for id := range ids {
					authEvents = append(authEvents, r.events[id].g)
				}
			}
		}
	}
	// The oracle prints debugging lines for v2.1; keep test output clean.
	stdout := os.Stdout
	if devnull, err := os.Open(os.DevNull); err == nil {
		os.Stdout = devnull
		defer func() { os.Stdout = stdout; devnull.Close() }()
	}
	var out []gomatrixserverlib.PDU
	var err error
	func() {
		defer func() {
			if p := recover(); p != nil {
				err = fmt.Errorf("oracle panicked: %v", p)
			}
		}()
		out, err = gomatrixserverlib.ResolveConflictsNew(gomatrixserverlib.RoomVersion(r.version.ID), stateSets, authEvents, userIDForSender, r.Rejected)
	}()
	if err != nil {
		return nil, err
	}
	res := make(map[stateres.StateKeyTuple]string, len(out))
	for _, e := range out {
		res[stateres.StateKeyTuple{Type: e.Type(), StateKey: *e.StateKey()}] = e.EventID()
	}
	return res, nil
}

var randomUsers = []string{alice, bob, charlie, mod, "@dave:example.org", "@eve:example.org", "@frank:example.org", "@grace:example.org"}

// randomFork builds a room, lets it diverge into several branches that each
// do random membership, power, join rule and topic changes (including events
// the auth rules reject, some of which a misbehaving branch accepts anyway),
// and returns the room and the state sets of the branch tips.
func randomFork(t *testing.T, rng *rand.Rand, version string) (*testRoom, []map[stateres.StateKeyTuple]string) {
	r, b := createRoom(t, version, alice, map[string]int{mod: 50, bob: 100}, 1000)
	ts := int64(1100)
	for _, u := range randomUsers[1:] {
		if rng.IntN(4) > 0 {
			ts += 10
			b.send("", u, stateres.MRoomMember, sk(u), member("join"), ts)
		}
	}
	branches := []*branch{b}
	for round := 0; round < 3; round++ {
		// Fork some branches, then let every branch act.
		for _, br := range append([]*branch(nil), branches...) {
			if len(branches) < 4 && rng.IntN(2) == 0 {
				branches = append(branches, br.fork())
			}
		}
		for _, br := range branches {
			for n := rng.IntN(6); n >= 0; n-- {
				randomAction(rng, r, br, ts)
			}
		}
		ts += 1000
	}
	if len(branches) == 1 {
		branches = append(branches, b.fork())
		randomAction(rng, r, branches[1], ts)
	}
	// Resolve two or more of the branches.
	rng.Shuffle(len(branches), func(i, j int) { branches[i], branches[j] = branches[j], branches[i] })
	k := 2 + rng.IntN(len(branches)-1)
	sets := make([]map[stateres.StateKeyTuple]string, k)
	for i := range sets {
		sets[i] = branches[i].stateSet()
	}
	return r, sets
}

// shallowFork builds a room that every user has joined, forks it into two
// to four branches, and lets each branch change a few distinct state keys
// once each (membership, power levels, join rules, topic; some by senders
// the rules reject, some forced through). No branch supersedes its own
// changes, so the events the branches disagree on are the conflicted
// state set itself, and the senders' memberships, though in the auth
// difference, are in the unconflicted state too: where gomatrixserverlib
// departs from the spec (see TestDifferentialAgainstGomatrixserverlib),
// the results rarely differ, and almost every case agrees with it.
// randomFork's deeper forks reach more of the algorithm, and about one
// of its cases in six differs where a departure applies.
func shallowFork(t *testing.T, rng *rand.Rand, version string) (*testRoom, []map[stateres.StateKeyTuple]string) {
	r, b := createRoom(t, version, alice, map[string]int{mod: 50, bob: 100}, 1000)
	ts := int64(1100)
	for _, u := range randomUsers[1:] {
		ts += 10
		b.send("", u, stateres.MRoomMember, sk(u), member("join"), ts)
	}
	ts += 1000
	branches := []*branch{b, b.fork()}
	for len(branches) < 4 && rng.IntN(2) == 0 {
		branches = append(branches, b.fork())
	}
	for _, br := range branches {
		touched := map[int]bool{}
		for n := 1 + rng.IntN(3); n > 0; n-- {
			kind := rng.IntN(5)
			if touched[kind] {
				continue
			}
			touched[kind] = true
			at := ts + int64(rng.IntN(20))*10
			user := randomUsers[rng.IntN(len(randomUsers))]
			target := randomUsers[1+rng.IntN(len(randomUsers)-1)]
			force := rng.IntN(8) == 0
			switch kind {
			case 0:
				membership := []string{"leave", "ban", "invite"}[rng.IntN(3)]
				br.sendForce("", user, stateres.MRoomMember, sk(target), member(membership), at, force)
			case 1:
				levels := map[string]any{}
				if !r.version.PrivilegedCreators {
					levels[alice] = 100
				}
				for _, u := range randomUsers[1:] {
					if rng.IntN(2) == 0 {
						levels[u] = []int{0, 50, 75, 100}[rng.IntN(4)]
					}
				}
				br.sendForce("", user, stateres.MRoomPowerLevels, sk(""), powerContent(levels), at, force)
			case 2:
				rule := []string{"public", "invite"}[rng.IntN(2)]
				br.sendForce("", user, stateres.MRoomJoinRules, sk(""), map[string]any{"join_rule": rule}, at, force)
			case 3:
				br.sendForce("", user, "m.room.topic", sk(""), map[string]any{"topic": fmt.Sprint(at)}, at, force)
			case 4:
				br.sendForce("", user, "m.room.name", sk(""), map[string]any{"name": fmt.Sprint(at)}, at, force)
			}
		}
	}
	sets := make([]map[stateres.StateKeyTuple]string, len(branches))
	for i, br := range branches {
		sets[i] = br.stateSet()
	}
	return r, sets
}

func randomAction(rng *rand.Rand, r *testRoom, b *branch, base int64) {
	// Coarse timestamps make ties, so that event IDs break them.
	ts := base + int64(rng.IntN(20))*10
	user := randomUsers[rng.IntN(len(randomUsers))]
	target := randomUsers[rng.IntN(len(randomUsers))]
	force := rng.IntN(12) == 0
	switch rng.IntN(10) {
	case 0:
		b.sendForce("", user, stateres.MRoomMember, sk(user), member("join"), ts, force)
	case 1:
		b.sendForce("", user, stateres.MRoomMember, sk(user), member("leave"), ts, force)
	case 2:
		b.sendForce("", user, stateres.MRoomMember, sk(target), member("leave"), ts, force)
	case 3:
		b.sendForce("", user, stateres.MRoomMember, sk(target), member("ban"), ts, force)
	case 4:
		b.sendForce("", user, stateres.MRoomMember, sk(target), member("invite"), ts, force)
	case 5, 6:
		levels := map[string]any{}
		if !r.version.PrivilegedCreators {
			levels[alice] = 100
		}
		for _, u := range randomUsers[1:] {
			if rng.IntN(2) == 0 {
				levels[u] = []int{0, 50, 75, 100}[rng.IntN(4)]
			}
		}
		b.sendForce("", user, stateres.MRoomPowerLevels, sk(""), powerContent(levels), ts, force)
	case 7:
		rule := []string{"public", "invite"}[rng.IntN(2)]
		b.sendForce("", user, stateres.MRoomJoinRules, sk(""), map[string]any{"join_rule": rule}, ts, force)
	case 8:
		b.sendForce("", user, "m.room.topic", sk(""), map[string]any{"topic": fmt.Sprint(ts)}, ts, force)
	case 9:
		b.sendForce("", user, "m.room.message", nil, map[string]any{"body": "hi"}, ts, force)
	}
}

// TestDifferentialAgainstGomatrixserverlib resolves random forked rooms in
// every room version with this package and with gomatrixserverlib, and
// requires the same resolved state.
//
// Both sides use gomatrixserverlib's authorisation rules (gmslAuthCheck), so
// that the comparison isolates the resolution algorithm: the auth rules have
// their own differential tests in package auth, and where they disagree
// with gomatrixserverlib (for example it lets a user with no membership
// "leave", which the spec's rule 4.5.1 forbids) a resolution comparison
// would only repeat that finding. The scenario and step tests use the real
// rules.
//
// gomatrixserverlib departs from the spec in ways that change results, and
// this package follows the spec. Every case is compared; a disagreement is
// excused (and counted, and the count bounded) only when this package's
// trace shows that one of these departures applies to the case:
//
//   - Iterative auth checks, fallback to auth_events: when a key the rules
//     need is missing from the partial state, the spec takes the event from
//     the checked event's own auth_events; gomatrixserverlib's
//     addFromAuthEventsIfNotRejected adds the checked event itself instead,
//     so the needed state stays missing. Cases where this package used the
//     fallback are skipped.
//   - Full conflicted set: gomatrixserverlib drops events of the unconflicted
//     state map from it and enlarges step 1 only with auth-chain events from
//     the conflicted state set, not from the auth difference. Cases whose
//     full conflicted set is larger than the conflicted state set are skipped.
//   - Room version 12 (v2.1): gomatrixserverlib panics ("missing resolved
//     create event") whenever step 1 has events, because it looks the
//     creators up in the partial state, which v2.1 starts empty. In practice
//     no random v12 case with a conflict survives the oracle, so v2.1 is
//     covered by the hand-built tests (TestV21*) and by the v12 runs of the
//     scenario tests; the differential run only checks that resolution
//     succeeds and agrees on conflict-free cases.
//
// Its other departures (reverse topological ordering built from the latest
// events backwards, following only auth events inside the set; mainline
// position 0 instead of ∞ for events without a power levels ancestor on the
// mainline, plus a step-count tie-break) are not recognised from the trace,
// so a disagreement they cause fails the test. They cause none with these
// seeds; with other seeds (each room version seeded apart, tried once)
// six cases of about 2,000 differed, and the two traced by hand were the
// ordering departure. Recognising it (or emulating the departures to check
// each excuse) would let the seeds vary.
func TestDifferentialAgainstGomatrixserverlib(t *testing.T) {
	rounds := 100
	if testing.Short() {
		rounds = 25
	}
	generators := []struct {
		name string
		fork func(*testing.T, *rand.Rand, string) (*testRoom, []map[stateres.StateKeyTuple]string)
	}{
		{"deep", randomFork},
		{"shallow", shallowFork},
	}
	for _, v := range stateres.KnownVersions() {
		for _, g := range generators {
			t.Run("v"+v+"/"+g.name, func(t *testing.T) {
				var compared, excused, conflictFree, oraclePanics int
				for seed := 0; seed < rounds; seed++ {
					rng := rand.New(rand.NewPCG(uint64(seed), 42))
					r, sets := g.fork(t, rng, v)
					var usedFallback, beyondConflicted bool
					conflicts := 0
					got, err := resolveTraced(r.version, sets, r, gmslAuthCheck, func(format string, args ...any) {
						switch {
						case strings.HasPrefix(format, "fallback"):
							usedFallback = true
						case strings.HasPrefix(format, "sets:"):
							beyondConflicted = args[0] != args[1]
							conflicts = args[0].(int)
						}
					})
					if err != nil {
						t.Fatalf("seed %d: %v", seed, err)
					}
					want, err := oracleResolve(t, r, sets)
					if err != nil {
						if r.version.StateRes == stateres.StateResV21 && strings.Contains(err.Error(), "missing resolved create event") {
							oraclePanics++
							continue
						}
						t.Fatalf("seed %d: oracle failed: %v", seed, err)
					}
					diff := diffStates(r, got, want)
					switch {
					case diff == "" && conflicts == 0 && r.version.StateRes != stateres.StateResV1:
						conflictFree++
					case diff == "":
						compared++
					case usedFallback || beyondConflicted:
						// A case where a documented departure applies, and
						// the results differ: excused, and counted.
						excused++
					default:
						t.Errorf("seed %d: differs from gomatrixserverlib (trace it with RESOLVE_TRACE='%s %s %d'):\n%s", seed, v, g.name, seed, diff)
					}
				}
				t.Logf("agreed on %d with conflicts and %d without; excused %d for known oracle departures; oracle panics %d", compared, conflictFree, excused, oraclePanics)
				// Guards against the comparison silently becoming vacuous,
				// or the excuses covering for a bug. v1 has no oracle
				// departure, so every case must agree. In v2 most cases
				// with a conflict agree even where a departure applies; a
				// case is excused only when it differs and a departure
				// applies, which about one deep case in six does. v2.1
				// compares no conflict at all (the oracle panics), so its
				// conflicts rest on the hand-built TestV12* and TestV21*
				// cases, worked from the spec's algorithm.
				switch version, _ := stateres.Version(v); version.StateRes {
				case stateres.StateResV1:
					if compared != rounds {
						t.Errorf("v1: %d of %d random cases agreed, want all", compared, rounds)
					}
				case stateres.StateResV2:
					if compared < rounds*6/10 {
						t.Errorf("only %d of %d random cases with conflicts agreed (want at least %d); adjust the generator", compared, rounds, rounds*6/10)
					}
					if excused > rounds/4 {
						t.Errorf("%d of %d disagreements excused as oracle departures (at most %d expected): check that the departures still explain them", excused, rounds, rounds/4)
					}
				}
			})
		}
	}
}

func diffStates(r *testRoom, got, want map[stateres.StateKeyTuple]string) string {
	out := ""
	for k, w := range want {
		if g, ok := got[k]; !ok || g != w {
			out += fmt.Sprintf("  %s/%s: got %s want %s\n", k.Type, k.StateKey, g, w)
		}
	}
	for k, g := range got {
		if _, ok := want[k]; !ok {
			out += fmt.Sprintf("  %s/%s: got %s want absent\n", k.Type, k.StateKey, g)
		}
	}
	return out
}

// TestDifferentialTrace prints one random case in detail:
// RESOLVE_TRACE='version deep|shallow seed' go test -run DifferentialTrace -v
func TestDifferentialTrace(t *testing.T) {
	spec := os.Getenv("RESOLVE_TRACE")
	if spec == "" {
		t.Skip("set RESOLVE_TRACE='version deep|shallow seed' to trace one random case")
	}
	var v, generator string
	var seed uint64
	if _, err := fmt.Sscanf(spec, "%s %s %d", &v, &generator, &seed); err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(seed, 42))
	fork := randomFork
	if generator == "shallow" {
		fork = shallowFork
	}
	r, sets := fork(t, rng, v)
	short := func(id string) string {
		if len(id) > 6 {
			return id[:6]
		}
		return id
	}
	for id, e := range r.events {
		sk := "-"
		if e.StateKey() != nil {
			sk = *e.StateKey()
		}
		auth := []string{}
		for _, a := range e.AuthEventIDs() {
			auth = append(auth, short(a))
		}
		t.Logf("event %s %s/%s sender=%s ts=%d rejected=%v auth=%v content=%s", short(id), e.Type(), sk, e.Sender(), e.OriginServerTS(), r.rejected[id], auth, e.Content())
	}
	for i, s := range sets {
		for k, id := range s {
			t.Logf("set %d: %s/%s = %s", i, k.Type, k.StateKey, short(id))
		}
	}
	got, err := resolveTraced(r.version, sets, r, gmslAuthCheck, func(f string, a ...any) { t.Logf(f, a...) })
	if err != nil {
		t.Fatal(err)
	}
	want, err := oracleResolve(t, r, sets)
	if err != nil {
		t.Fatalf("oracle error: %v", err)
	}
	if diff := diffStates(r, got, want); diff != "" {
		t.Errorf("differs from gomatrixserverlib:\n%s", diff)
	}
}
