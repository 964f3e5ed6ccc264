package receive

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/engram-hs/engram/federation/keys"
	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/projections/rooms"
	"github.com/engram-hs/engram/stateres"
)

// Limits on what one PDU may make the receiver fetch.
const (
	// missingEventsLimit is the limit of a get_missing_events request
	// (Synapse asks for 10).
	missingEventsLimit = 10
	// maxFetchedPerRoom bounds the events fetched for one room in one
	// transaction (state and auth chains included).
	maxFetchedPerRoom = 20000
)

// Receiver drives the checks: it parses, verifies signatures, fetches
// what the checks need from the origin, hands everything to the
// deterministic core and appends what the core decided.
type Receiver struct {
	Local  Local
	Verify Verifier
	Peer   Peer
	// Append appends the entries (in order) and returns once the rooms
	// projection has folded them, so that the next PDU of the room is
	// checked against them.
	Append func(ctx context.Context, entries []facts.PDU) error

	mu    sync.Mutex
	rooms map[string]*sync.Mutex
}

// view is the local view. Its events are read through the cache of
// whoever provides it (the room write path's, shared with local sends
// and the federation read endpoints), not a second cache of the same
// parsed events.
func (r *Receiver) view() rooms.View { return r.Local.View() }

// roomLock serialises the receipt of a room's PDUs: each is checked
// against the state the previous ones left. It is not the write path's
// room lock: it is held across the checks' requests to the origin
// (get_missing_events, state_ids, event), which may take seconds, and
// local sends to the room must not wait for those; the write path takes
// its own lock only around the append (roomwrite.Writer.Receive).
func (r *Receiver) roomLock(roomID string) *sync.Mutex {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.rooms == nil {
		r.rooms = map[string]*sync.Mutex{}
	}
	m, ok := r.rooms[roomID]
	if !ok {
		m = &sync.Mutex{}
		r.rooms[roomID] = m
	}
	return m
}

// Transaction receives the PDUs of one transaction from origin and
// returns a verdict for each, in order. The error is for failures of this
// server (the log, the store), not of the PDUs.
func (r *Receiver) Transaction(ctx context.Context, origin string, pdus []json.RawMessage) ([]Verdict, error) {
	verdicts := make([]Verdict, len(pdus))
	byRoom := map[string][]int{}
	var order []string
	for i, raw := range pdus {
		var head struct {
			RoomID  string `json:"room_id"`
			EventID string `json:"event_id"`
		}
		if err := json.Unmarshal(raw, &head); err != nil || head.RoomID == "" {
			verdicts[i] = Verdict{EventID: head.EventID, Dropped: true, Reason: "format: not a PDU with a room_id"}
			continue
		}
		if _, ok := byRoom[head.RoomID]; !ok {
			order = append(order, head.RoomID)
		}
		byRoom[head.RoomID] = append(byRoom[head.RoomID], i)
	}
	for _, roomID := range order {
		idx := byRoom[roomID]
		raws := make([]json.RawMessage, len(idx))
		for j, i := range idx {
			raws[j] = pdus[i]
		}
		vs, err := r.Room(ctx, origin, roomID, raws)
		if err != nil {
			return nil, err
		}
		for j, i := range idx {
			verdicts[i] = vs[j]
		}
	}
	return verdicts, nil
}

// Room receives PDUs of one room (a transaction's, a backfill's).
func (r *Receiver) Room(ctx context.Context, origin, roomID string, pdus []json.RawMessage) ([]Verdict, error) {
	lock := r.roomLock(roomID)
	lock.Lock()
	defer lock.Unlock()
	view := r.view()
	room, err := view.Room(roomID)
	if err != nil {
		return nil, err
	}
	verdicts := make([]Verdict, len(pdus))
	if room == nil {
		for i := range verdicts {
			verdicts[i] = Verdict{Dropped: true, Reason: "this server is not in room " + roomID}
		}
		return verdicts, nil
	}
	version, ok := stateres.Version(room.Version)
	if !ok {
		for i := range verdicts {
			verdicts[i] = Verdict{Dropped: true, Reason: "unknown room version " + room.Version}
		}
		return verdicts, nil
	}
	d, err := newDecider(view, version, roomID)
	if err != nil {
		return nil, err
	}
	run := &run{r: r, d: d, origin: origin, fetched: map[string]*candidate{}}
	cands, errs := parseAndVerifyEach(ctx, r.Verify, version, roomID, pdus)
	for i, err := range errs {
		switch {
		case err == nil:
		case errors.Is(err, errFormat):
			verdicts[i] = run.recordMalformed(pdus[i], err)
		default:
			verdicts[i] = Verdict{EventID: cands[i].ev.EventID(), Dropped: true, Reason: err.Error()}
			cands[i] = nil
		}
	}
	// Within a transaction, an event's prev events come first (the spec
	// lets senders order PDUs any way).
	for _, i := range topoOrder(cands) {
		c := cands[i]
		if err := run.prepare(ctx, c, true); err != nil {
			return nil, err
		}
		// A pushed event still cut off from the room's history after
		// get_missing_events is not taken in, and its gap is not bridged
		// with state_ids (only the oldest events get_missing_events
		// brought are, in prepare): were it accepted, it could become the
		// room's only forward extremity, and the origin's word alone
		// would then be the room's state. It is not recorded either, so
		// it is taken in once it arrives with its predecessors (Synapse
		// answers such a PDU the same way).
		if gap := run.missingPrevs(c.ev); len(gap) > 0 && c.ev.Type() != stateres.MRoomCreate {
			verdicts[i] = Verdict{EventID: c.ev.EventID(), Dropped: true,
				Reason: fmt.Sprintf("prev events %s could not be fetched from %s", strings.Join(gap, ", "), origin)}
			continue
		}
		verdicts[i] = d.decide(c)
	}
	if len(d.entries) > 0 {
		if err := r.Append(ctx, d.entries); err != nil {
			return nil, err
		}
	}
	return verdicts, nil
}

// verify is step 2. A wrong or missing signature is the event's fault
// and rejects it (c.sigErr); keys that cannot be obtained now are this
// server's problem: the event is not decided on (the error), so that it
// is not recorded as rejected for a transient failure.
func verify(ctx context.Context, v Verifier, c *candidate) error {
	err := v.VerifyEvent(ctx, c.ev)
	if err != nil && errors.Is(err, keys.ErrUnknownKey) {
		return fmt.Errorf("signatures: the signing keys could not be obtained, try again later: %w", err)
	}
	c.sigErr = err
	return nil
}

// run is one Room call's driver state.
type run struct {
	r       *Receiver
	d       *decider
	origin  string
	fetched map[string]*candidate
	count   int
}

// recordMalformed records a PDU that failed step 1 as rejected when it
// is at least a JSON object (so the log keeps what was refused), and
// drops it otherwise.
func (u *run) recordMalformed(raw json.RawMessage, err error) Verdict {
	var obj map[string]json.RawMessage
	if json.Unmarshal(raw, &obj) != nil {
		return Verdict{Dropped: true, Reason: err.Error()}
	}
	var head struct {
		EventID string `json:"event_id"`
	}
	_ = json.Unmarshal(raw, &head)
	u.d.entries = append(u.d.entries, facts.PDU{RoomVersion: u.d.version.ID, Event: raw, Rejected: err.Error()})
	return Verdict{EventID: head.EventID, Outcome: Rejected, Reason: err.Error()}
}

// fetch gets an event from the origin and runs steps 1-3 on it.
func (u *run) fetch(ctx context.Context, id string) (*candidate, error) {
	if c, ok := u.fetched[id]; ok {
		return c, nil
	}
	u.count++
	if u.count > maxFetchedPerRoom {
		return nil, fmt.Errorf("more than %d events to fetch", maxFetchedPerRoom)
	}
	raw, err := u.r.Peer.Event(ctx, u.origin, id)
	if err != nil {
		return nil, fmt.Errorf("fetching %s from %s: %w", id, u.origin, err)
	}
	c, err := parse(u.d.version, u.d.roomID, raw)
	if err != nil {
		return nil, fmt.Errorf("%s sent %s: %w", u.origin, id, err)
	}
	if c.ev.EventID() != id {
		return nil, fmt.Errorf("%s sent %s when asked for %s", u.origin, c.ev.EventID(), id)
	}
	if err := verify(ctx, u.r.Verify, c); err != nil {
		return nil, err
	}
	checkHash(c)
	u.fetched[id] = c
	return c, nil
}

// prepare makes sure the core can decide on c: its auth events (and
// theirs) are decided, and the state after each of its prev events is
// known, fetching from the origin what is missing. A pushed event
// (pushed: a transaction's) gets its missing predecessors with
// get_missing_events; the events that brings, and a backfill's, get the
// state after theirs with state_ids. A fetch that fails leaves the data
// missing; the core then rejects the event for it (the caller drops a
// pushed one instead).
func (u *run) prepare(ctx context.Context, c *candidate, pushed bool) error {
	if c.outlier || c.ev.Type() == stateres.MRoomCreate {
		return u.ensureAuth(ctx, c.ev)
	}
	// Missing predecessors first: an auth event that is also one of them
	// must enter the DAG, not be fetched as an outlier.
	missing := u.missingPrevs(c.ev)
	if len(missing) > 0 && pushed {
		raws, err := u.r.Peer.MissingEvents(ctx, u.origin, u.d.roomID, u.d.extremities, []string{c.ev.EventID()}, missingEventsLimit)
		if err == nil {
			var got []*candidate
			for _, raw := range raws {
				m, err := parse(u.d.version, u.d.roomID, raw)
				if err != nil || u.d.known(m.ev.EventID()) || m.ev.EventID() == c.ev.EventID() {
					continue
				}
				if verify(ctx, u.r.Verify, m) != nil {
					continue
				}
				checkHash(m)
				got = append(got, m)
			}
			for _, i := range topoOrder(got) {
				if err := u.prepare(ctx, got[i], false); err != nil {
					return err
				}
				u.d.decide(got[i])
			}
		}
		missing = u.missingPrevs(c.ev)
	}
	if len(missing) > 0 && pushed {
		return nil // the caller drops it: see Room
	}
	if err := u.ensureAuth(ctx, c.ev); err != nil {
		return err
	}
	// A gap remains: ask the origin for the state at each missing prev
	// event (server-server API, step 5: "state_ids").
	for _, p := range missing {
		if err := u.fetchStateAt(ctx, p); err != nil {
			return nil // left missing: the core rejects the event, saying why
		}
	}
	return nil
}

// missingPrevs lists ev's prev events whose state after them is unknown.
func (u *run) missingPrevs(ev stateres.PDU) []string {
	var out []string
	for _, p := range ev.PrevEventIDs() {
		if _, ok, _ := u.d.stateAfter(p); ok {
			continue
		}
		if _, ok := u.d.fetchedState[p]; ok || u.d.Rejected(p) {
			continue
		}
		out = append(out, p)
	}
	return out
}

// ensureAuth decides, as outliers, the auth events of ev that are not
// known yet, and theirs: it fetches the whole unknown part of ev's auth
// chain first and then decides it oldest first. The walk is iterative:
// chains are naturally long (each membership event of a user names the
// one before it, so a user who changed their display name 250 times has
// a chain of 250), and a depth limit would leave the oldest of them
// undecided and so reject every newer one. What one run may fetch is
// bounded by maxFetchedPerRoom; an event that cannot be fetched stays
// missing and the core rejects whatever names it.
func (u *run) ensureAuth(ctx context.Context, ev stateres.PDU) error {
	var cands []*candidate
	seen := map[string]bool{}
	queue := slices.Clone(ev.AuthEventIDs())
	for len(queue) > 0 {
		id := queue[0]
		queue = queue[1:]
		if seen[id] || u.d.known(id) {
			continue
		}
		seen[id] = true
		a, err := u.fetch(ctx, id)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			continue
		}
		cands = append(cands, a)
		queue = append(queue, a.ev.AuthEventIDs()...)
	}
	for _, i := range authOrder(cands) {
		a := cands[i]
		if !u.d.known(a.ev.EventID()) {
			a.outlier = true
			u.d.decide(a)
		}
	}
	return nil
}

// fetchStateAt asks the origin for the state at prev event p and records
// the state after it (that state plus p) for the core, deciding the
// events it names as outliers.
func (u *run) fetchStateAt(ctx context.Context, p string) error {
	stateIDs, authIDs, err := u.r.Peer.StateIDs(ctx, u.origin, u.d.roomID, p)
	if err != nil {
		return err
	}
	ids := append(append(slices.Clone(authIDs), stateIDs...), p)
	var cands []*candidate
	for _, id := range ids {
		if u.d.known(id) {
			continue
		}
		c, err := u.fetch(ctx, id)
		if err != nil {
			return err
		}
		c.outlier = true
		cands = append(cands, c)
	}
	for _, i := range authOrder(cands) {
		c := cands[i]
		if err := u.ensureAuth(ctx, c.ev); err != nil {
			return err
		}
		if !u.d.known(c.ev.EventID()) {
			u.d.decide(c)
		}
	}
	after := make(rooms.StateMap, len(stateIDs)+1)
	for _, id := range stateIDs {
		ev, ok := u.d.event(id)
		if !ok || ev.StateKey() == nil || u.d.Rejected(id) {
			continue
		}
		after[stateres.StateKeyTuple{Type: ev.Type(), StateKey: *ev.StateKey()}] = id
	}
	if ev, ok := u.d.event(p); ok && ev.StateKey() != nil && !u.d.Rejected(p) {
		after[stateres.StateKeyTuple{Type: ev.Type(), StateKey: *ev.StateKey()}] = p
	}
	u.d.fetchedState[p] = after
	return nil
}

// topoOrder orders candidates so that an event comes after those of its
// prev events that are among them; otherwise by depth, then input order.
func topoOrder(cands []*candidate) []int {
	return orderBy(cands, func(ev stateres.PDU) []string { return ev.PrevEventIDs() })
}

// authOrder orders candidates so that an event comes after its auth
// events among them.
func authOrder(cands []*candidate) []int {
	return orderBy(cands, func(ev stateres.PDU) []string { return ev.AuthEventIDs() })
}

func orderBy(cands []*candidate, deps func(stateres.PDU) []string) []int {
	index := map[string]int{}
	var idx []int
	for i, c := range cands {
		if c != nil {
			index[c.ev.EventID()] = i
			idx = append(idx, i)
		}
	}
	slices.SortStableFunc(idx, func(a, b int) int {
		da, db := cands[a].ev.Depth(), cands[b].ev.Depth()
		if da != db {
			if da < db {
				return -1
			}
			return 1
		}
		return 0
	})
	done := make(map[int]bool, len(idx))
	out := make([]int, 0, len(idx))
	var visit func(i int, depth int)
	visit = func(i int, depth int) {
		if done[i] || depth > len(idx) {
			return
		}
		done[i] = true
		for _, p := range deps(cands[i].ev) {
			if j, ok := index[p]; ok {
				visit(j, depth+1)
			}
		}
		out = append(out, i)
	}
	for _, i := range idx {
		visit(i, 0)
	}
	return out
}
