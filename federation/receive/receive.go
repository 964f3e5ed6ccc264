// Package receive decides on PDUs received over federation, in the order
// of the server-server API's "Checks performed on receipt of a PDU":
//
//  1. format and size;
//  2. signatures (Verifier, which fetches and records keys);
//  3. hashes: a content hash mismatch is redacted and kept as such;
//  4. auth against the event's own auth_events;
//  5. auth against the state before the event, which needs its
//     prev_events: missing ones are fetched with get_missing_events,
//     and when a gap remains before the oldest events that brought (or
//     a backfill's), the state at them with state_ids; a pushed event
//     that get_missing_events leaves cut off is dropped;
//  6. soft-fail against the room's current state.
//
// Decide, then record: every verdict (accepted, rejected with its reason,
// soft-failed, outlier) and any state a remote server sent end up in the
// log entries the receiver appends (facts.PDU), so that the rooms
// projection folds them without the network and a replay gives the same
// bytes.
//
// The work is split as etcd's raft splits it: a driver (Receiver) does the
// network I/O and hands what it fetched to a deterministic core (decider),
// which returns verdicts and entries. The core computes state exactly as
// the rooms projection's fold does (projections/rooms/statefold.go), over
// the events it has decided but not yet appended, so that what it checked
// an event against is what the fold will store for it.
package receive

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/projections/rooms"
	"github.com/engram-hs/engram/stateres"
	"github.com/engram-hs/engram/stateres/auth"
	"github.com/engram-hs/engram/stateres/resolve"
)

// MaxPDUSize is the largest PDU the spec allows (server-server API,
// "Size limits": 65536 bytes of canonical JSON).
const MaxPDUSize = 65536

// Verifier checks an event's signatures, fetching the signing servers'
// keys as needed (federation/keys' Keyring records the keys it fetches).
type Verifier interface {
	VerifyEvent(ctx context.Context, ev *stateres.Event) error
}

// Peer fetches from a remote server (server-server API).
type Peer interface {
	// MissingEvents is POST /get_missing_events/{roomID}: up to limit
	// events before latest and after earliest.
	MissingEvents(ctx context.Context, origin, roomID string, earliest, latest []string, limit int) ([]json.RawMessage, error)
	// StateIDs is GET /state_ids/{roomID}?event_id=: the IDs of the
	// state at (before) the event and of its auth chain.
	StateIDs(ctx context.Context, origin, roomID, eventID string) (stateIDs, authChainIDs []string, err error)
	// Event is GET /event/{eventID}: the PDU.
	Event(ctx context.Context, origin, eventID string) (json.RawMessage, error)
}

// Outcome is a verdict on one PDU.
type Outcome int

const (
	Accepted   Outcome = iota + 1
	Rejected           // recorded, never in state or a timeline
	SoftFailed         // recorded with its state, never in current state or a timeline
	Outlier            // recorded for auth chains and state only
)

func (o Outcome) String() string {
	switch o {
	case Accepted:
		return "accepted"
	case Rejected:
		return "rejected"
	case SoftFailed:
		return "soft-failed"
	case Outlier:
		return "outlier"
	}
	return "unknown"
}

// Verdict is what the receiver decided on one PDU.
type Verdict struct {
	EventID string
	Outcome Outcome
	// Reason says why an event was rejected or soft-failed.
	Reason string
	// Redacted: its content hash did not match, so it was kept redacted.
	Redacted bool
	// Dropped: not recorded at all (not even JSON, or for a room this
	// server is not in); Reason says why.
	Dropped bool
	// BadSignature: rejected because its signatures do not verify, so
	// the sender may not be the server it claims (step 2).
	BadSignature bool
}

// Local is what the receiver reads of this server: the rooms view as
// folded so far.
type Local interface {
	View() rooms.View
}

// candidate is a parsed PDU on its way through the checks.
type candidate struct {
	ev       *stateres.Event
	sigErr   error // step 2, from the driver
	redacted bool  // step 3
	outlier  bool  // fetched for state or auth chains, not part of the DAG
}

// decided is an event the core decided in this run (not folded yet).
type decided struct {
	ev      *stateres.Event
	outcome Outcome
	after   rooms.StateMap // state after it (Accepted, SoftFailed)
}

// decider is the deterministic core for one room: given the local view,
// the candidates (parsed, with their signature results) and the state the
// driver fetched, it returns verdicts and the entries to append.
type decider struct {
	view    rooms.View
	version *stateres.RoomVersion
	roomID  string

	events  map[string]*decided
	stored  map[string]stateres.PDU // stored events read so far
	entries []facts.PDU
	// extremities are the room's forward extremities as the fold will see
	// them after the entries decided so far.
	extremities []string
	current     rooms.StateMap // nil: recompute
	// fetchedState holds, for prev events the room does not have, the
	// state after them as the origin described it (state_ids plus the
	// event itself), filled in by the driver.
	fetchedState map[string]rooms.StateMap
	// given holds states before events that a resident server sent with
	// them (send_join), recorded as they are.
	given map[string]rooms.StateMap
	// fresh: the room is not known here yet (a join in progress); its
	// current state is the state before the join.
	fresh bool
	// historical: the events are history (backfill): no soft-fail check
	// against the current state, and they never become extremities.
	historical bool
}

func newDecider(view rooms.View, version *stateres.RoomVersion, roomID string) (*decider, error) {
	ext, err := view.ForwardExtremities(roomID)
	if err != nil {
		return nil, err
	}
	room, err := view.Room(roomID)
	if err != nil {
		return nil, err
	}
	return &decider{view: view, version: version, roomID: roomID, events: map[string]*decided{}, stored: map[string]stateres.PDU{},
		extremities: slices.Clone(ext), fetchedState: map[string]rooms.StateMap{}, fresh: room == nil}, nil
}

// event finds an event decided in this run or stored locally.
func (d *decider) event(id string) (stateres.PDU, bool) {
	if e, ok := d.events[id]; ok {
		return e.ev, true
	}
	if p, ok := d.stored[id]; ok {
		return p, p != nil
	}
	var p stateres.PDU
	if e, err := d.view.Event(id); err == nil && e != nil {
		if pdu, err := e.PDU(); err == nil {
			p = pdu
		}
	}
	if p != nil {
		d.stored[id] = p // stored events never change (redaction aside, which keeps what auth reads)
	}
	return p, p != nil
}

// Event and Rejected make the decider a resolve.EventLookup.
func (d *decider) Event(id string) (stateres.PDU, bool) { return d.event(id) }

func (d *decider) Rejected(id string) bool {
	if e, ok := d.events[id]; ok {
		return e.outcome == Rejected
	}
	e, err := d.view.Event(id)
	return err == nil && e != nil && e.Rejected != ""
}

// known reports whether the event is stored or decided (in any way).
func (d *decider) known(id string) bool {
	_, ok := d.event(id)
	return ok
}

// stateAfter is the state after an event that has one (in the DAG or
// soft-failed), as the fold computes it; ok is false otherwise.
func (d *decider) stateAfter(id string) (rooms.StateMap, bool, error) {
	if e, ok := d.events[id]; ok {
		return e.after, e.after != nil, nil
	}
	return d.view.StateIDsAfter(id)
}

// resolveStates resolves several states with the room version's
// algorithm; identical states count once, as in the fold.
func (d *decider) resolveStates(sets []rooms.StateMap) (rooms.StateMap, error) {
	var distinct []rooms.StateMap
	for _, s := range sets {
		dup := false
		for _, o := range distinct {
			if mapsEqual(s, o) {
				dup = true
				break
			}
		}
		if !dup {
			distinct = append(distinct, s)
		}
	}
	if len(distinct) == 1 {
		return distinct[0], nil
	}
	in := make([]map[stateres.StateKeyTuple]string, len(distinct))
	for i, s := range distinct {
		in[i] = s
	}
	return resolve.Resolve(d.version, in, d)
}

func mapsEqual(a, b rooms.StateMap) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// stateBefore is the state before ev. recorded is set when the fold could
// not derive it from the prev_events it will hold, so it must be written
// into the entry: some prev events are unknown here (their state came
// from the origin), or none counts.
func (d *decider) stateBefore(ev stateres.PDU) (state rooms.StateMap, recorded bool, err error) {
	if ev.Type() == stateres.MRoomCreate && ev.StateKey() != nil && *ev.StateKey() == "" {
		return rooms.StateMap{}, false, nil
	}
	if s, ok := d.given[ev.EventID()]; ok {
		return s, true, nil
	}
	var sets []rooms.StateMap
	counted := 0
	for _, p := range ev.PrevEventIDs() {
		s, ok, err := d.stateAfter(p)
		if err != nil {
			return nil, false, err
		}
		if ok {
			sets = append(sets, s)
			counted++
			continue
		}
		if d.Rejected(p) {
			continue // the fold ignores rejected prev events too
		}
		if s, ok := d.fetchedState[p]; ok {
			sets = append(sets, s)
			recorded = true
			continue
		}
		return nil, false, fmt.Errorf("the state after prev event %s is not known", p)
	}
	if len(sets) == 0 {
		// Every prev event was rejected: the fold would fall back on the
		// current state at fold time, which may have moved; record it.
		cur, err := d.currentState()
		return cur, true, err
	}
	if counted == 0 {
		recorded = true
	}
	state, err = d.resolveStates(sets)
	return state, recorded, err
}

// currentState is the room's current state after what was decided so far:
// the resolution over the forward extremities, as the fold computes it.
func (d *decider) currentState() (rooms.StateMap, error) {
	if d.current != nil {
		return d.current, nil
	}
	var sets []rooms.StateMap
	for _, x := range d.extremities {
		s, ok, err := d.stateAfter(x)
		if err != nil {
			return nil, err
		}
		if ok {
			sets = append(sets, s)
		}
	}
	if len(sets) == 0 {
		cur, err := d.view.CurrentStateIDs(d.roomID)
		if err != nil {
			return nil, err
		}
		d.current = cur
		return cur, nil
	}
	cur, err := d.resolveStates(sets)
	if err != nil {
		return nil, err
	}
	d.current = cur
	return cur, nil
}

func (d *decider) lookupIn(state rooms.StateMap) auth.StateFunc {
	return func(typ, stateKey string) stateres.PDU {
		id := state[stateres.StateKeyTuple{Type: typ, StateKey: stateKey}]
		if id == "" {
			return nil
		}
		p, _ := d.event(id)
		return p
	}
}

// create is the room's create event (for v12's auth checks).
func (d *decider) create() stateres.PDU {
	if !d.version.RoomIDFromCreate || !strings.HasPrefix(d.roomID, "!") {
		return nil
	}
	p, _ := d.event("$" + d.roomID[1:])
	return p
}

// decide runs steps 4-6 (1-3 happened in parsing and in the driver) on a
// candidate whose auth events and prev events' states are available,
// and records the verdict.
func (d *decider) decide(c *candidate) Verdict {
	ev := c.ev
	v := Verdict{EventID: ev.EventID(), Redacted: c.redacted}
	if prior, ok := d.events[ev.EventID()]; ok {
		v.Outcome = prior.outcome
		return v
	}
	record := func(o Outcome, reason string, after rooms.StateMap, stateBefore rooms.StateMap) Verdict {
		v.Outcome, v.Reason = o, reason
		d.events[ev.EventID()] = &decided{ev: ev, outcome: o, after: after}
		f := facts.PDU{RoomVersion: d.version.ID, Event: ev.JSON(), EventID: ev.EventID(), Outlier: o == Outlier, SoftFailed: o == SoftFailed}
		if o == Rejected {
			f.Rejected = reason
			f.Outlier = c.outlier
		}
		if stateBefore != nil {
			f.StateBefore = triples(stateBefore)
		}
		d.entries = append(d.entries, f)
		return v
	}
	if c.sigErr != nil {
		v.BadSignature = true
		return record(Rejected, "signatures: "+c.sigErr.Error(), nil, nil)
	}
	// Step 4: the event's own auth events.
	listed := make([]stateres.PDU, 0, len(ev.AuthEventIDs()))
	for _, id := range ev.AuthEventIDs() {
		if p, ok := d.event(id); ok {
			listed = append(listed, p)
		}
	}
	if err := auth.CheckWithAuthEvents(ev, listed, d.create(), d.Rejected); err != nil {
		return record(Rejected, "auth events: "+err.Error(), nil, nil)
	}
	if c.outlier {
		return record(Outlier, "", nil, nil)
	}
	// Step 5: the state before the event.
	before, recorded, err := d.stateBefore(ev)
	if err != nil {
		return record(Rejected, "state before the event: "+err.Error(), nil, nil)
	}
	if err := auth.Check(ev, d.lookupIn(before)); err != nil {
		return record(Rejected, "state before the event: "+err.Error(), nil, nil)
	}
	after := before
	if sk := ev.StateKey(); sk != nil {
		after = make(rooms.StateMap, len(before)+1)
		for k, id := range before {
			after[k] = id
		}
		after[stateres.StateKeyTuple{Type: ev.Type(), StateKey: *sk}] = ev.EventID()
	}
	var recordedState rooms.StateMap
	if recorded {
		recordedState = before
	}
	if d.historical {
		return record(Accepted, "", after, recordedState)
	}
	// Step 6: soft-fail against the current state.
	cur, err := d.currentState()
	if err != nil {
		return record(Rejected, "current state: "+err.Error(), nil, nil)
	}
	if d.fresh && len(d.extremities) == 0 {
		cur = before // the first event of a room joined here
	}
	if err := auth.CheckSoftFail(ev, d.lookupIn(cur)); err != nil {
		return record(SoftFailed, err.Error(), after, recordedState)
	}
	out := record(Accepted, "", after, recordedState)
	// The event becomes a forward extremity in place of its prev events.
	ext := d.extremities[:0:0]
	for _, x := range d.extremities {
		if !slices.Contains(ev.PrevEventIDs(), x) {
			ext = append(ext, x)
		}
	}
	d.extremities = append(ext, ev.EventID())
	d.current = nil
	return out
}

// triples encodes a state for facts.PDU.StateBefore, sorted.
func triples(m rooms.StateMap) [][3]string {
	out := make([][3]string, 0, len(m))
	for k, id := range m {
		out = append(out, [3]string{k.Type, k.StateKey, id})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i][0] != out[j][0] {
			return out[i][0] < out[j][0]
		}
		return out[i][1] < out[j][1]
	})
	return out
}

// errFormat marks PDUs that fail step 1.
var errFormat = errors.New("format")

// parse is step 1 (format and size) and step 3 (hashes) for one PDU of a
// room whose version is known.
func parse(version *stateres.RoomVersion, roomID string, raw json.RawMessage) (*candidate, error) {
	if len(raw) > MaxPDUSize {
		return nil, fmt.Errorf("%w: the PDU is %d bytes, over the %d-byte limit", errFormat, len(raw), MaxPDUSize)
	}
	ev, err := stateres.ParseEvent(version, raw)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errFormat, err)
	}
	if len(ev.JSON()) > MaxPDUSize {
		return nil, fmt.Errorf("%w: the PDU is %d bytes, over the %d-byte limit", errFormat, len(ev.JSON()), MaxPDUSize)
	}
	if ev.RoomID() != roomID {
		return nil, fmt.Errorf("%w: the event is in room %s, not %s", errFormat, ev.RoomID(), roomID)
	}
	c := &candidate{ev: ev}
	return c, nil
}

// checkHash is step 3: an event whose content does not match its hash is
// kept redacted (server-server API: "the event is redacted" and "stored
// as such").
func checkHash(c *candidate) {
	if err := c.ev.CheckContentHash(); err != nil {
		c.ev = c.ev.Redacted()
		c.redacted = true
	}
}
