package receive

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/cockroachdb/datadriven"
	"github.com/rs/zerolog"

	"github.com/engram-hs/engram/federation/keys"
	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/projections"
	"github.com/engram-hs/engram/projections/rooms"
	"github.com/engram-hs/engram/stateres"
	"github.com/engram-hs/engram/stateres/canonicaljson"
	"github.com/engram-hs/engram/stateres/resolve"
)

// The scenarios in testdata/ drive the receiver against a real log and a
// real rooms projection; a fake origin answers get_missing_events,
// state_ids and /event from the scenario's events, and every server signs
// with a key derived from its name. Commands:
//
//	room version=V                 start over with an empty room of version V
//	local / remote                 define events, one per line (see below);
//	                               local ones are appended as this server's
//	                               own, remote ones only the origin knows
//	receive [from=S]               a transaction of the named events
//	state after=X | before=X       the state the projection holds at X
//	current                        the room's current state and extremities
//	resolve names...               state resolution run directly over the states after them
//	verify                         a rebuild of the projection equals the live fold
//	hide names...                  get_missing_events no longer returns these
//	unhide names...                it returns them again
//	requests                       the get_missing_events and state_ids requests made since the last requests
//
// An event line is: name type sender state_key content [prev=a,b]
// [auth=a,b] [forge=sig|hash] [pad=N]. state_key "-" means none, "" an
// empty one; content is JSON without spaces. prev defaults to the event
// defined just before; auth to the auth events selection over the state
// after prev.
func TestScenarios(t *testing.T) {
	datadriven.Walk(t, "testdata", func(t *testing.T, path string) {
		h := &harness{t: t}
		defer h.close()
		datadriven.RunTest(t, path, func(t *testing.T, d *datadriven.TestData) string {
			return h.run(t, d)
		})
	})
}

type harness struct {
	t       testing.TB
	version *stateres.RoomVersion
	roomID  string
	ts      int64

	node   *englog.Node
	engine *projections.Engine
	h      *projections.Handle
	recv   *Receiver

	events  map[string]*stateres.Event // by ID: every event the origin knows
	raw     map[string]json.RawMessage // the JSON the origin sends for each
	names   map[string]string          // ID -> name
	ids     map[string]string          // name -> ID
	after   map[string]rooms.StateMap  // the state after each event, as the origin sees it
	before  map[string]rooms.StateMap
	hidden  map[string]bool
	asked   []string // get_missing_events and state_ids requests, for "requests"
	last    string
	entries []facts.PDU // recorded by the last receive
}

func (h *harness) close() {
	if h.engine != nil {
		h.engine.Close()
		h.node.Close()
	}
}

var (
	serverKeysMu sync.Mutex
	serverKeys   = map[string]ed25519.PrivateKey{}
)

func serverKey(server string) ed25519.PrivateKey {
	serverKeysMu.Lock()
	defer serverKeysMu.Unlock()
	if k, ok := serverKeys[server]; ok {
		return k
	}
	seed := sha256.Sum256([]byte("key of " + server))
	k := ed25519.NewKeyFromSeed(seed[:])
	serverKeys[server] = k
	return k
}

func domain(id string) string { _, d, _ := strings.Cut(id, ":"); return d }

func (h *harness) run(t *testing.T, d *datadriven.TestData) string {
	switch d.Cmd {
	case "room":
		h.close()
		v := "10"
		d.MaybeScanArgs(t, "version", &v)
		h.reset(t, v)
		return "ok"
	case "local", "remote":
		var out []string
		for _, line := range strings.Split(strings.TrimSpace(d.Input), "\n") {
			if line = strings.TrimSpace(line); line == "" || strings.HasPrefix(line, "#") {
				continue
			}
			name, ev := h.define(t, line)
			if d.Cmd == "local" {
				h.appendLocal(t, ev)
			}
			out = append(out, name)
		}
		return strings.Join(out, " ")
	case "hide":
		for _, n := range strings.Fields(d.Input) {
			h.hidden[h.id(t, n)] = true
		}
		return "ok"
	case "unhide":
		for _, n := range strings.Fields(d.Input) {
			delete(h.hidden, h.id(t, n))
		}
		return "ok"
	case "requests":
		out := strings.Join(h.asked, "\n")
		h.asked = nil
		if out == "" {
			return "none"
		}
		return out
	case "receive":
		origin := "b.test"
		d.MaybeScanArgs(t, "from", &origin)
		var pdus []json.RawMessage
		var names []string
		for _, n := range strings.Fields(d.Input) {
			if n == "garbage" {
				pdus = append(pdus, json.RawMessage(`{"room_id":"`+h.roomID+`","type":42}`))
				names = append(names, n)
				continue
			}
			pdus = append(pdus, h.raw[h.id(t, n)])
			names = append(names, n)
		}
		h.entries = nil
		verdicts, err := h.recv.Transaction(context.Background(), origin, pdus)
		if err != nil {
			t.Fatal(err)
		}
		var b strings.Builder
		for _, e := range h.entries {
			fmt.Fprintf(&b, "recorded %s\n", h.describeEntry(e))
		}
		for i, v := range verdicts {
			fmt.Fprintf(&b, "%s: %s\n", names[i], h.describeVerdict(v))
		}
		return b.String()
	case "backfill":
		// backfill before=X names...: the named events as an answer to
		// /backfill, to fill the gap before timeline entry X.
		var before string
		d.ScanArgs(t, "before", &before)
		v := rooms.NewView(h.h.Reader(), h.node)
		gap, ok := h.timelineEntry(t, v, h.id(t, before))
		if !ok {
			t.Fatalf("%s is not in the timeline", before)
		}
		var pdus []json.RawMessage
		for _, n := range strings.Fields(d.Input) {
			pdus = append(pdus, h.raw[h.id(t, n)])
		}
		h.entries = nil
		verdicts, placed, err := h.recv.Backfill(context.Background(), "b.test", h.roomID, gap, pdus)
		if err != nil {
			return "error: " + err.Error()
		}
		var b strings.Builder
		for _, e := range h.entries {
			fmt.Fprintf(&b, "recorded %s\n", h.describeEntry(e))
		}
		for _, v := range verdicts {
			fmt.Fprintf(&b, "%s: %s\n", h.name(v.EventID), h.describeVerdict(v))
		}
		fmt.Fprintf(&b, "placed %d\n", placed)
		return b.String()
	case "timeline":
		// The room's timeline, historical entries included, oldest first.
		v := rooms.NewView(h.h.Reader(), h.node)
		tl, err := v.Page(h.roomID, rooms.Pos{}, true, 1000, rooms.Pos{Offset: ^uint64(0), Seq: rooms.PosEnd})
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, te := range tl {
			n := h.name(te.EventID)
			if te.Seq > 0 {
				n += "*"
			}
			names = append(names, n)
		}
		return strings.Join(names, " ")
	case "state":
		var name string
		var m rooms.StateMap
		var ok bool
		var err error
		v := rooms.NewView(h.h.Reader(), h.node)
		if d.MaybeScanArgs(t, "after", &name) {
			m, ok, err = v.StateIDsAfter(h.id(t, name))
		} else {
			d.ScanArgs(t, "before", &name)
			m, ok, err = v.StateIDsBefore(h.id(t, name))
		}
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			return "no state"
		}
		return h.describeState(m)
	case "current":
		v := rooms.NewView(h.h.Reader(), h.node)
		m, err := v.CurrentStateIDs(h.roomID)
		if err != nil {
			t.Fatal(err)
		}
		ext, err := v.ForwardExtremities(h.roomID)
		if err != nil {
			t.Fatal(err)
		}
		var en []string
		for _, x := range ext {
			en = append(en, h.name(x))
		}
		sort.Strings(en)
		return h.describeState(m) + "extremities: " + strings.Join(en, " ")
	case "resolve":
		// The spec algorithm (stateres/resolve) run directly on the
		// origin's view of the states after the named events.
		var sets []map[stateres.StateKeyTuple]string
		for _, n := range strings.Fields(d.Input) {
			sets = append(sets, h.after[h.id(t, n)])
		}
		res, err := resolve.Resolve(h.version, sets, resolverEvents{h})
		if err != nil {
			t.Fatal(err)
		}
		return h.describeState(res)
	case "verify":
		live, err := h.engine.Digest("rooms")
		if err != nil {
			t.Fatal(err)
		}
		// A second engine over the same store rebuilds into the same
		// keyspace: stop the live one first, then serve from the new one.
		h.engine.Close()
		e2 := projections.NewEngine(h.node, h.node.DB(), zerolog.Nop(), nil)
		h2 := e2.Register(rooms.New(h.node, nil))
		if err := e2.Rebuild(context.Background(), "rooms"); err != nil {
			t.Fatal(err)
		}
		rebuilt, err := e2.Digest("rooms")
		if err != nil {
			t.Fatal(err)
		}
		if err := e2.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		h.engine, h.h = e2, h2
		if !bytes.Equal(live, rebuilt) {
			return "replay differs"
		}
		return "replay identical"
	}
	t.Fatalf("%s: unknown command %q", d.Pos, d.Cmd)
	return ""
}

func (h *harness) reset(t testing.TB, version string) {
	v, ok := stateres.Version(version)
	if !ok {
		t.Fatalf("unknown room version %s", version)
	}
	*h = harness{t: t, version: v, roomID: "!r:a.test", ts: 1_700_000_000_000,
		events: map[string]*stateres.Event{}, raw: map[string]json.RawMessage{}, names: map[string]string{}, ids: map[string]string{},
		after: map[string]rooms.StateMap{}, before: map[string]rooms.StateMap{}, hidden: map[string]bool{}}
	node, err := englog.Open(englog.Config{Dir: t.TempDir(), Logger: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	h.node = node
	h.engine = projections.NewEngine(node, node.DB(), zerolog.Nop(), nil)
	h.h = h.engine.Register(rooms.New(node, nil))
	if err := h.engine.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	h.recv = &Receiver{
		Local:  localView{h, rooms.NewEventCache(8192)},
		Verify: staticKeys{},
		Peer:   &fakePeer{h: h},
		Append: func(ctx context.Context, entries []facts.PDU) error {
			h.entries = append(h.entries, entries...)
			return h.append(ctx, entries)
		},
	}
}

func (h *harness) append(ctx context.Context, entries []facts.PDU) error {
	props := make([]englog.Proposal, 0, len(entries))
	for _, e := range entries {
		p, err := facts.Encode(englog.KindPDU, e)
		if err != nil {
			return err
		}
		props = append(props, p)
	}
	offs, err := h.node.Append(ctx, props...)
	if err != nil {
		return err
	}
	return h.h.WaitApplied(ctx, offs[len(offs)-1])
}

func (h *harness) appendLocal(t testing.TB, ev *stateres.Event) {
	if err := h.append(context.Background(), []facts.PDU{{RoomVersion: h.version.ID, Event: ev.JSON(), EventID: ev.EventID()}}); err != nil {
		t.Fatal(err)
	}
}

// localView reads through an event cache, as the room write path's view
// does in the server.
type localView struct {
	h     *harness
	cache *rooms.EventCache
}

func (l localView) View() rooms.View {
	return rooms.NewView(l.h.h.Reader(), l.h.node).WithCache(l.cache)
}

// staticKeys verifies with the keys every scenario server signs with.
type staticKeys struct{}

func (staticKeys) VerifyEvent(_ context.Context, ev *stateres.Event) error {
	if domain(ev.Sender()) == "nokeys.test" {
		return fmt.Errorf("%w: nokeys.test does not answer", keys.ErrUnknownKey)
	}
	return stateres.VerifyEventSignatures(ev, func(server, keyID string) (ed25519.PublicKey, bool) {
		if keyID != "ed25519:1" {
			return nil, false
		}
		return serverKey(server).Public().(ed25519.PublicKey), true
	})
}

// fakePeer is the origin: it knows every event the scenario defined.
type fakePeer struct{ h *harness }

var errHidden = errors.New("404 M_NOT_FOUND")

func (p *fakePeer) Event(_ context.Context, _ string, id string) (json.RawMessage, error) {
	if _, ok := p.h.events[id]; !ok {
		return nil, errHidden
	}
	return p.h.raw[id], nil
}

// MissingEvents walks back from latest through prev_events, not past
// earliest, as the spec describes; oldest first.
func (p *fakePeer) MissingEvents(_ context.Context, _, _ string, earliest, latest []string, limit int) ([]json.RawMessage, error) {
	p.h.asked = append(p.h.asked, "get_missing_events latest="+p.names(latest))
	stop := map[string]bool{}
	for _, e := range earliest {
		stop[e] = true
	}
	seen := map[string]bool{}
	queue := []string{}
	for _, l := range latest {
		if ev, ok := p.h.events[l]; ok {
			queue = append(queue, ev.PrevEventIDs()...)
		}
	}
	var out []*stateres.Event
	for len(queue) > 0 && len(out) < limit {
		id := queue[0]
		queue = queue[1:]
		if seen[id] || stop[id] {
			continue
		}
		seen[id] = true
		ev, ok := p.h.events[id]
		if !ok || p.h.hidden[id] {
			continue
		}
		out = append(out, ev)
		queue = append(queue, ev.PrevEventIDs()...)
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Depth() < out[j].Depth() })
	raws := make([]json.RawMessage, len(out))
	for i, ev := range out {
		raws[i] = p.h.raw[ev.EventID()]
	}
	return raws, nil
}

func (p *fakePeer) names(ids []string) string {
	var ns []string
	for _, id := range ids {
		ns = append(ns, p.h.name(id))
	}
	return strings.Join(ns, ",")
}

func (p *fakePeer) StateIDs(_ context.Context, _, _, eventID string) ([]string, []string, error) {
	p.h.asked = append(p.h.asked, "state_ids at="+p.h.name(eventID))
	st, ok := p.h.before[eventID]
	if !ok {
		return nil, nil, errHidden
	}
	var ids []string
	for _, id := range st {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	chain := map[string]bool{}
	var walk func(id string)
	walk = func(id string) {
		ev := p.h.events[id]
		if ev == nil {
			return
		}
		for _, a := range ev.AuthEventIDs() {
			if !chain[a] {
				chain[a] = true
				walk(a)
			}
		}
	}
	for _, id := range ids {
		walk(id)
	}
	var authIDs []string
	for id := range chain {
		authIDs = append(authIDs, id)
	}
	sort.Strings(authIDs)
	return ids, authIDs, nil
}

func (h *harness) id(t testing.TB, name string) string {
	id, ok := h.ids[name]
	if !ok {
		t.Fatalf("no event named %q", name)
	}
	return id
}

func (h *harness) name(id string) string {
	if n, ok := h.names[id]; ok {
		return n
	}
	return id
}

type lookupState func(typ, sk string) stateres.PDU

func (f lookupState) StateEvent(typ, sk string) stateres.PDU { return f(typ, sk) }

// resolverEvents lets resolve read the scenario's events.
type resolverEvents struct{ h *harness }

func (r resolverEvents) Event(id string) (stateres.PDU, bool) {
	ev, ok := r.h.events[id]
	return ev, ok
}

// define builds, signs and names one event.
func (h *harness) define(t testing.TB, line string) (string, *stateres.Event) {
	f := strings.Fields(line)
	if len(f) < 5 {
		t.Fatalf("event line %q: want name type sender state_key content", line)
	}
	name, typ, sender, skRaw := f[0], f[1], f[2], f[3]
	// The content is the JSON value that starts after the fourth field
	// (it may hold spaces); options follow it.
	rest := line
	for range 4 {
		rest = strings.TrimLeft(rest, " \t")
		rest = rest[strings.IndexAny(rest+" ", " \t"):]
	}
	rest = strings.TrimLeft(rest, " \t")
	dec := json.NewDecoder(strings.NewReader(rest))
	var raw json.RawMessage
	if err := dec.Decode(&raw); err != nil {
		t.Fatalf("event line %q: content: %v", line, err)
	}
	content := string(raw)
	opts := map[string]string{}
	for _, o := range strings.Fields(rest[dec.InputOffset():]) {
		k, v, _ := strings.Cut(o, "=")
		opts[k] = v
	}
	var stateKey *string
	switch skRaw {
	case "-":
	case `""`:
		s := ""
		stateKey = &s
	default:
		s := skRaw
		stateKey = &s
	}
	var prevs []stateres.PDU
	prevNames := []string{}
	if p, ok := opts["prev"]; ok {
		if p != "" {
			prevNames = strings.Split(p, ",")
		}
	} else if h.last != "" {
		prevNames = []string{h.last}
	}
	var sets []map[stateres.StateKeyTuple]string
	for _, pn := range prevNames {
		id := h.id(t, pn)
		prevs = append(prevs, h.events[id])
		sets = append(sets, h.after[id])
	}
	before := rooms.StateMap{}
	if len(sets) == 1 {
		before = maps.Clone(sets[0])
	} else if len(sets) > 1 {
		res, err := resolve.Resolve(h.version, sets, resolverEvents{h})
		if err != nil {
			t.Fatal(err)
		}
		before = res
	}
	authState := before
	if a, ok := opts["auth"]; ok {
		authState = rooms.StateMap{}
		for _, an := range strings.Split(a, ",") {
			ev := h.events[h.id(t, an)]
			authState[stateres.StateKeyTuple{Type: ev.Type(), StateKey: *ev.StateKey()}] = ev.EventID()
		}
	}
	h.ts++
	proto := &stateres.ProtoEvent{Type: typ, StateKey: stateKey, Sender: sender, Content: json.RawMessage(content), RoomID: h.roomID, OriginServerTS: h.ts}
	lookup := lookupState(func(typ, sk string) stateres.PDU {
		id := authState[stateres.StateKeyTuple{Type: typ, StateKey: sk}]
		if id == "" {
			return nil
		}
		return h.events[id]
	})
	origin := domain(sender)
	key := serverKey(origin)
	if opts["forge"] == "sig" {
		key = serverKey("forger of " + origin)
	}
	ev, err := stateres.BuildEvent(h.version, proto, lookup, prevs, origin, "ed25519:1", key)
	if err != nil {
		t.Fatalf("building %s: %v", name, err)
	}
	if opts["forge"] == "hash" {
		// Change the content after hashing and signing: the event ID and
		// signatures (over the redacted form) still hold, the content
		// hash does not.
		var obj map[string]json.RawMessage
		if err := json.Unmarshal(ev.JSON(), &obj); err != nil {
			t.Fatal(err)
		}
		obj["content"] = json.RawMessage(`{"body":"tampered","msgtype":"m.text"}`)
		raw, _ := json.Marshal(obj)
		canon, err := canonicaljson.Canonicalize(raw, true)
		if err != nil {
			t.Fatal(err)
		}
		if ev, err = stateres.ParseEvent(h.version, canon); err != nil {
			t.Fatal(err)
		}
	}
	if h.version.RoomIDFromCreate && typ == stateres.MRoomCreate {
		h.roomID = ev.RoomID()
	}
	id := ev.EventID()
	h.events[id], h.names[id], h.ids[name] = ev, name, id
	h.raw[id] = ev.JSON()
	if pad, ok := opts["pad"]; ok {
		// Grown past the size limit after building (BuildEvent refuses
		// to build it): what a peer that ignores the limit would send.
		n, _ := strconv.Atoi(pad)
		var obj map[string]json.RawMessage
		if err := json.Unmarshal(ev.JSON(), &obj); err != nil {
			t.Fatal(err)
		}
		obj["content"] = json.RawMessage(`{"body":"` + strings.Repeat("x", n) + `","msgtype":"m.text"}`)
		h.raw[id], _ = json.Marshal(obj)
	}
	h.before[id] = before
	after := maps.Clone(before)
	if stateKey != nil {
		after[stateres.StateKeyTuple{Type: typ, StateKey: *stateKey}] = id
	}
	h.after[id] = after
	h.last = name
	return name, ev
}

func (h *harness) describeState(m rooms.StateMap) string {
	var lines []string
	for k, id := range m {
		lines = append(lines, fmt.Sprintf("%s %q: %s", k.Type, k.StateKey, h.name(id)))
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n") + "\n"
}

func (h *harness) names_(s string) string {
	for id, n := range h.names {
		s = strings.ReplaceAll(s, id, n)
	}
	return s
}

func (h *harness) describeEntry(e facts.PDU) string {
	name := h.name(e.EventID)
	if e.EventID == "" {
		name = "(unparsed)"
	}
	var parts []string
	switch {
	case e.Rejected != "":
		parts = append(parts, "rejected: "+h.names_(e.Rejected))
	case e.SoftFailed:
		parts = append(parts, "soft-failed")
	case e.Outlier:
		parts = append(parts, "outlier")
	default:
		parts = append(parts, "accepted")
	}
	if e.Backfill != nil {
		parts = append(parts, "historical")
	}
	if e.StateBefore != nil {
		var st []string
		for _, tr := range e.StateBefore {
			st = append(st, h.name(tr[2]))
		}
		parts = append(parts, "state_before=["+strings.Join(st, " ")+"]")
	}
	return name + " " + strings.Join(parts, " ")
}

func (h *harness) describeVerdict(v Verdict) string {
	if v.Dropped {
		return "dropped: " + h.names_(v.Reason)
	}
	s := v.Outcome.String()
	if v.Redacted {
		s += " (redacted: content hash mismatch)"
	}
	if v.Reason != "" {
		s += ": " + h.names_(v.Reason)
	}
	return s
}

// timelineEntry finds an event's entry in the room's timeline.
func (h *harness) timelineEntry(t *testing.T, v rooms.View, id string) (rooms.TimelineEntry, bool) {
	tl, err := v.Page(h.roomID, rooms.Pos{}, true, 1000, rooms.Pos{Offset: ^uint64(0), Seq: rooms.PosEnd})
	if err != nil {
		t.Fatal(err)
	}
	for _, te := range tl {
		if te.EventID == id {
			return te, true
		}
	}
	return rooms.TimelineEntry{}, false
}
