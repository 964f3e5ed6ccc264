package resolve

import (
	"bytes"
	"cmp"
	"slices"

	"github.com/engram-hs/engram/stateres"
)

// resolveV1 is the state resolution of room version 1 (content/rooms/v1.md,
// "State resolution"). R starts as the union of the state sets without the
// conflicting keys; conflicts are then resolved in passes: power levels,
// join rules, members, then everything else.
//
// Two points the spec leaves open are settled the way the original
// implementations settle them: within one pass, each conflicted key is
// resolved against R as it stood before the pass and the winners are added
// to R together, so the result does not depend on the order of the keys;
// and when no event of an "other" conflict passes auth, the one with the
// lowest depth (then highest sha1) is kept so that the key is not dropped.
func (r *resolver) resolveV1() (stateMap, error) {
	R, conflicts := r.v1Conflicts()
	keys := make([]stateres.StateKeyTuple, 0, len(conflicts))
	for k := range conflicts {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b stateres.StateKeyTuple) int {
		if c := cmp.Compare(a.Type, b.Type); c != 0 {
			return c
		}
		return cmp.Compare(a.StateKey, b.StateKey)
	})
	done := make(map[stateres.StateKeyTuple]bool, len(keys))
	authPass := func(match func(stateres.StateKeyTuple) bool) {
		winners := stateMap{}
		for _, k := range keys {
			if done[k] || !match(k) {
				continue
			}
			done[k] = true
			winners[k] = r.v1ResolveAuthConflict(R, k, conflicts[k])
		}
		for k, n := range winners {
			R[k] = n
		}
	}
	authPass(func(k stateres.StateKeyTuple) bool { return k == powerLevelsKey })
	authPass(func(k stateres.StateKeyTuple) bool { return k == joinRulesKey })
	authPass(func(k stateres.StateKeyTuple) bool { return k.Type == stateres.MRoomMember })
	winners := stateMap{}
	for _, k := range keys {
		if !done[k] {
			winners[k] = r.v1ResolveOtherConflict(R, conflicts[k])
		}
	}
	for k, n := range winners {
		R[k] = n
	}
	return R, nil
}

// v1Conflicts returns the union of the state sets without the conflicting
// keys, and the events of each conflicting key. In room version 1 a key
// conflicts only when the state sets hold different events for it; a key
// missing from some state sets is not a conflict.
func (r *resolver) v1Conflicts() (stateMap, map[stateres.StateKeyTuple][]nodeID) {
	all := make(map[stateres.StateKeyTuple][]nodeID)
	for _, set := range r.sets {
		for k, n := range set {
			if !slices.Contains(all[k], n) {
				all[k] = append(all[k], n)
			}
		}
	}
	R := make(stateMap, len(all))
	conflicts := make(map[stateres.StateKeyTuple][]nodeID)
	for k, ns := range all {
		if len(ns) == 1 {
			R[k] = ns[0]
		} else {
			conflicts[k] = ns
		}
	}
	return R, conflicts
}

// v1Order sorts events by ascending depth, then descending sha1(event_id).
func (r *resolver) v1Order(events []nodeID) {
	type keyed struct {
		n     nodeID
		depth int64
		sha   [20]byte
	}
	ks := make([]keyed, len(events))
	for i, n := range events {
		ks[i] = keyed{n: n, depth: r.g.nodes[n].depth, sha: sha1Of(r.g.nodes[n].id)}
	}
	slices.SortFunc(ks, func(a, b keyed) int {
		if c := cmp.Compare(a.depth, b.depth); c != 0 {
			return c
		}
		return bytes.Compare(b.sha[:], a.sha[:])
	})
	for i, k := range ks {
		events[i] = k.n
	}
}

// v1ResolveAuthConflict: sort by ascending depth then descending
// sha1(event_id); take the first; replace it by each following event while
// that event is allowed in R with the current choice, stopping at the first
// that is not.
func (r *resolver) v1ResolveAuthConflict(R stateMap, key stateres.StateKeyTuple, events []nodeID) nodeID {
	events = slices.Clone(events)
	r.v1Order(events)
	// R itself holds the candidate while the key is decided and gets its
	// old value back afterwards: copying R per key would be quadratic.
	old, had := R[key]
	defer func() {
		if had {
			R[key] = old
		} else {
			delete(R, key)
		}
	}()
	chosen := events[0]
	R[key] = chosen
	for _, n := range events[1:] {
		if !r.allowed(n, R, false) {
			break
		}
		chosen = n
		R[key] = chosen
	}
	return chosen
}

// v1ResolveOtherConflict picks the event with the highest depth and lowest
// sha1(event_id) that is allowed in R.
func (r *resolver) v1ResolveOtherConflict(R stateMap, events []nodeID) nodeID {
	events = slices.Clone(events)
	r.v1Order(events)
	for i := len(events) - 1; i >= 0; i-- {
		if r.allowed(events[i], R, false) {
			return events[i]
		}
	}
	return events[0]
}
