package resolve

import (
	"cmp"
	"container/heap"
	"fmt"
	"math"
	"slices"
)

// resolveV2 is "The resolution of a set of states" of room versions 2 to 11
// (content/rooms/fragments/v2-state-res.md, Algorithm) and, with v21 set,
// of room version 12 (content/rooms/v12.md, State resolution), which starts
// the iterative auth checks from an empty state and adds the conflicted
// state subgraph to the full conflicted set.
func (r *resolver) resolveV2(v21 bool) (stateMap, error) {
	unconflicted, conflicted := r.unconflictedStateMapAndConflictedStateSet()
	full := r.fullConflictedSet(conflicted, v21)

	// Step 1.
	powerSet := r.powerEventsAndTheirAuthChains(full)
	sortedPower, err := r.reverseTopologicalPowerOrdering(powerSet)
	if err != nil {
		return nil, err
	}
	// Step 2.
	partial := stateMap{}
	if !v21 {
		partial = unconflicted.clone()
	}
	r.tracef("sets: %d conflicted, %d in the full conflicted set", len(conflicted), len(full))
	r.tracef("conflicted %v, full conflicted set %v", r.ids(conflicted), r.ids(full))
	r.tracef("step 1: %v", r.ids(sortedPower))
	r.iterativeAuthChecks(partial, sortedPower)
	// Step 3.
	inPowerSet := make(map[nodeID]bool, len(powerSet))
	for _, n := range powerSet {
		inPowerSet[n] = true
	}
	rest := make([]nodeID, 0, len(full)-len(powerSet))
	for _, n := range full {
		if !inPowerSet[n] {
			rest = append(rest, n)
		}
	}
	pl, hasPL := partial[powerLevelsKey]
	if !hasPL {
		pl = -1
	}
	r.mainlineOrdering(rest, pl)
	r.tracef("step 3: %v", r.ids(rest))
	// Step 4.
	r.iterativeAuthChecks(partial, rest)
	// Step 5.
	for k, n := range unconflicted {
		partial[k] = n
	}
	return partial, nil
}

// unconflictedStateMapAndConflictedStateSet splits the state sets (spec v2
// "Definitions", Unconflicted state map and conflicted state set): a key
// with the same event in every state set is unconflicted; every event of
// any other key is conflicted. The conflicted set is returned in a
// deterministic order (by node, i.e. first-load order is irrelevant because
// every later step orders it again).
func (r *resolver) unconflictedStateMapAndConflictedStateSet() (stateMap, []nodeID) {
	unconflicted := make(stateMap, len(r.sets[0]))
	seen := make(map[nodeID]bool)
	var conflicted []nodeID
	addConflicted := func(n nodeID) {
		if !seen[n] {
			seen[n] = true
			conflicted = append(conflicted, n)
		}
	}
	for i, set := range r.sets {
		for k, n := range set {
			same := true
			for j, other := range r.sets {
				if j == i {
					continue
				}
				if o, ok := other[k]; !ok || o != n {
					same = false
					break
				}
			}
			if same {
				unconflicted[k] = n
			} else {
				addConflicted(n)
			}
		}
	}
	return unconflicted, conflicted
}

// fullConflictedSet is the union of the conflicted state set, the auth
// difference and, in v2.1, the conflicted state subgraph (spec v2 and v12
// "Definitions", Full conflicted set).
func (r *resolver) fullConflictedSet(conflicted []nodeID, v21 bool) []nodeID {
	in := make([]bool, len(r.g.nodes))
	full := make([]nodeID, 0, len(conflicted))
	add := func(n nodeID) {
		if !in[n] {
			in[n] = true
			full = append(full, n)
		}
	}
	for _, n := range conflicted {
		add(n)
	}
	for _, n := range r.authDifference() {
		add(n)
	}
	if v21 {
		for _, n := range r.conflictedStateSubgraph(conflicted) {
			add(n)
		}
	}
	return full
}

// authDifference is ∪Cᵢ − ∩Cᵢ where Cᵢ is the full auth chain of state set
// i, the union of the auth chains of its events (spec v2 "Definitions", Auth
// difference). Each state set's chain is walked once, marking nodes, so the
// cost is linear in the size of the auth DAG per state set.
func (r *resolver) authDifference() []nodeID {
	nodes := len(r.g.nodes)
	count := make([]int32, nodes)
	mark := make([]int32, nodes) // set index + 1 that last visited the node
	var stack []nodeID
	for i, set := range r.sets {
		stamp := int32(i + 1)
		for _, n := range set {
			// The auth chain of an event holds its auth events and their
			// chains, not the event itself.
			stack = append(stack, r.g.nodes[n].auth...)
			for len(stack) > 0 {
				a := stack[len(stack)-1]
				stack = stack[:len(stack)-1]
				if mark[a] == stamp {
					continue
				}
				mark[a] = stamp
				count[a]++
				stack = append(stack, r.g.nodes[a].auth...)
			}
		}
	}
	var diff []nodeID
	for n, c := range count {
		if c > 0 && int(c) < len(r.sets) {
			diff = append(diff, nodeID(n))
		}
	}
	return diff
}

// conflictedStateSubgraph is the union of all auth_events paths between
// events of the conflicted state set, endpoints included (spec v12
// "Definitions", Conflicted state subgraph): the events reachable from a
// conflicted event that themselves reach a conflicted event. One memoised
// walk from the conflicted events decides both.
func (r *resolver) conflictedStateSubgraph(conflicted []nodeID) []nodeID {
	const (
		unvisited = iota
		visiting
		reaches
		reachesNot
	)
	isConflicted := make([]bool, len(r.g.nodes))
	for _, n := range conflicted {
		isConflicted[n] = true
	}
	status := make([]uint8, len(r.g.nodes))
	var sub []nodeID
	// Iterative post-order walk: a frame is a node and the index of the
	// next auth event to look at.
	type frame struct {
		n    nodeID
		next int
	}
	var stack []frame
	for _, c := range conflicted {
		if status[c] != unvisited {
			continue
		}
		status[c] = visiting
		stack = append(stack, frame{n: c})
		for len(stack) > 0 {
			top := &stack[len(stack)-1]
			auth := r.g.nodes[top.n].auth
			if top.next < len(auth) {
				a := auth[top.next]
				top.next++
				if status[a] == unvisited {
					status[a] = visiting
					stack = append(stack, frame{n: a})
				}
				continue
			}
			// All auth events are decided (a "visiting" one would be a
			// cycle, which cannot reach back here meaningfully).
			res := isConflicted[top.n]
			for _, a := range auth {
				if status[a] == reaches {
					res = true
					break
				}
			}
			if res {
				status[top.n] = reaches
				sub = append(sub, top.n)
			} else {
				status[top.n] = reachesNot
			}
			stack = stack[:len(stack)-1]
		}
	}
	return sub
}

// powerEventsAndTheirAuthChains is the set X of step 1: the power events of
// the full conflicted set, enlarged with the events of their auth chains
// that also belong to the full conflicted set.
func (r *resolver) powerEventsAndTheirAuthChains(full []nodeID) []nodeID {
	inFull := make([]bool, len(r.g.nodes))
	for _, n := range full {
		inFull[n] = true
	}
	inX := make([]bool, len(r.g.nodes))
	visited := make([]bool, len(r.g.nodes))
	var x, stack []nodeID
	for _, p := range full {
		if !r.g.isPowerEvent(p) {
			continue
		}
		if !inX[p] {
			inX[p] = true
			x = append(x, p)
		}
		stack = append(stack[:0], r.g.nodes[p].auth...)
		for len(stack) > 0 {
			a := stack[len(stack)-1]
			stack = stack[:len(stack)-1]
			if visited[a] {
				continue
			}
			visited[a] = true
			if inFull[a] && !inX[a] {
				inX[a] = true
				x = append(x, a)
			}
			stack = append(stack, r.g.nodes[a].auth...)
		}
	}
	return x
}

// powerKeyed is an event with the tie-break keys of the reverse topological
// power ordering computed once.
type powerKeyed struct {
	n     nodeID
	power int64
	ts    int64
	id    string
}

// powerLess is the comparison relation of the reverse topological power
// ordering: greater sender power first, then smaller origin_server_ts, then
// smaller event ID.
func powerLess(a, b *powerKeyed) bool {
	if a.power != b.power {
		return a.power > b.power
	}
	if a.ts != b.ts {
		return a.ts < b.ts
	}
	return a.id < b.id
}

type powerHeap []*powerKeyed

func (h powerHeap) Len() int           { return len(h) }
func (h powerHeap) Less(i, j int) bool { return powerLess(h[i], h[j]) }
func (h powerHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *powerHeap) Push(x any)        { *h = append(*h, x.(*powerKeyed)) }
func (h *powerHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// reverseTopologicalPowerOrdering sorts events into the lexicographically
// smallest topological order of their auth DAG, earliest first (spec v2
// "Definitions", Reverse topological power ordering): Kahn's algorithm that
// always emits the smallest ready event under powerLess. An event is ready
// when every event of the set in its auth chain has been emitted; chains
// are followed through events outside the set so that no ancestor is
// missed.
func (r *resolver) reverseTopologicalPowerOrdering(events []nodeID) ([]nodeID, error) {
	pos := make(map[nodeID]int, len(events))
	for i, n := range events {
		pos[n] = i
	}
	keyed := make([]powerKeyed, len(events))
	waiting := make([]int, len(events))      // unemitted ancestors in the set
	dependents := make([][]int, len(events)) // events waiting on this one
	mark := make(map[nodeID]int, len(events))
	var stack []nodeID
	for i, n := range events {
		nd := &r.g.nodes[n]
		keyed[i] = powerKeyed{n: n, power: r.senderPower(n), ts: nd.ts, id: nd.id}
		// Nearest ancestors in the set, walking through events outside it.
		stack = append(stack[:0], nd.auth...)
		for len(stack) > 0 {
			a := stack[len(stack)-1]
			stack = stack[:len(stack)-1]
			if m, ok := mark[a]; ok && m == i+1 {
				continue
			}
			mark[a] = i + 1
			if j, ok := pos[a]; ok {
				if j != i {
					waiting[i]++
					dependents[j] = append(dependents[j], i)
				}
				continue
			}
			stack = append(stack, r.g.nodes[a].auth...)
		}
	}
	h := make(powerHeap, 0, len(events))
	for i := range events {
		if waiting[i] == 0 {
			h = append(h, &keyed[i])
		}
	}
	heap.Init(&h)
	out := make([]nodeID, 0, len(events))
	for h.Len() > 0 {
		k := heap.Pop(&h).(*powerKeyed)
		out = append(out, k.n)
		for _, d := range dependents[pos[k.n]] {
			waiting[d]--
			if waiting[d] == 0 {
				heap.Push(&h, &keyed[d])
			}
		}
	}
	if len(out) != len(events) {
		return nil, fmt.Errorf("resolve: the auth events of %d events form a cycle; such events are forged and must be rejected before state resolution", len(events)-len(out))
	}
	return out, nil
}

// mainlineOrdering sorts events in place by the mainline ordering based on
// the power levels event pl, or -1 when the partial state has none (spec v2
// "Definitions", Mainline ordering): an event whose power levels ancestry
// meets the mainline earlier (greater position) sorts first, then smaller
// origin_server_ts, then smaller event ID.
func (r *resolver) mainlineOrdering(events []nodeID, pl nodeID) {
	const infinity = math.MaxInt
	// Mainline of P: position i of Pᵢ, P₀ = pl.
	mainline := make(map[nodeID]int)
	for i, p := 0, pl; p >= 0; i++ {
		if _, loop := mainline[p]; loop {
			break
		}
		mainline[p] = i
		p = r.g.authEventOfType(p, powerLevelsKey)
	}
	// plPosition memoises, for a power levels event eⱼ, the mainline
	// position found by walking from it: its own position if it is on the
	// mainline, else that of the power levels event in its auth_events.
	memo := make(map[nodeID]int)
	var plPosition func(p nodeID) int
	plPosition = func(p nodeID) int {
		var path []nodeID
		res := infinity
		for p >= 0 {
			if i, ok := mainline[p]; ok {
				res = i
				break
			}
			if i, ok := memo[p]; ok {
				res = i
				break
			}
			memo[p] = infinity // guards against forged cycles
			path = append(path, p)
			p = r.g.authEventOfType(p, powerLevelsKey)
		}
		for _, q := range path {
			memo[q] = res
		}
		return res
	}
	type mainlineKeyed struct {
		n        nodeID
		position int
		ts       int64
		id       string
	}
	keyed := make([]mainlineKeyed, len(events))
	for i, n := range events {
		nd := &r.g.nodes[n]
		// e₀ itself is not part of its list: start at e₁.
		keyed[i] = mainlineKeyed{n: n, position: plPosition(r.g.authEventOfType(n, powerLevelsKey)), ts: nd.ts, id: nd.id}
	}
	slices.SortFunc(keyed, func(a, b mainlineKeyed) int {
		if c := cmp.Compare(b.position, a.position); c != 0 {
			return c
		}
		if c := cmp.Compare(a.ts, b.ts); c != 0 {
			return c
		}
		return cmp.Compare(a.id, b.id)
	})
	for i, k := range keyed {
		events[i] = k.n
	}
}

// iterativeAuthChecks applies each event of the sorted list to state when
// the authorisation rules allow it against that state, taking keys the
// state lacks from the event's own non-rejected auth events (spec v2
// "Definitions", Iterative auth checks). state is updated in place.
func (r *resolver) iterativeAuthChecks(state stateMap, events []nodeID) {
	for _, n := range events {
		nd := &r.g.nodes[n]
		if !nd.isState {
			continue
		}
		if r.allowed(n, state, true) {
			state[nd.key] = n
		}
	}
}

func (r *resolver) ids(ns []nodeID) []string {
	if r.trace == nil {
		return nil
	}
	out := make([]string, len(ns))
	for i, n := range ns {
		out[i] = r.g.nodes[n].id
	}
	return out
}
