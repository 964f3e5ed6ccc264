package resolve

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strconv"
	"testing"

	"github.com/engram-hs/engram/stateres"
	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
)

// testEvent is a stateres.PDU backed by a gomatrixserverlib event parsed
// from JSON the test built, so that the same event feeds both this package
// and the oracle.
type testEvent struct {
	g       gomatrixserverlib.PDU
	version *stateres.RoomVersion
	name    string // the test's label, for failure messages
}

func (e *testEvent) EventID() string                { return e.g.EventID() }
func (e *testEvent) RoomID() string                 { return e.g.RoomID().String() }
func (e *testEvent) Type() string                   { return e.g.Type() }
func (e *testEvent) StateKey() *string              { return e.g.StateKey() }
func (e *testEvent) Sender() string                 { return string(e.g.SenderID()) }
func (e *testEvent) Content() []byte                { return e.g.Content() }
func (e *testEvent) PrevEventIDs() []string         { return e.g.PrevEventIDs() }
func (e *testEvent) AuthEventIDs() []string         { return e.g.AuthEventIDs() }
func (e *testEvent) Depth() int64                   { return e.g.Depth() }
func (e *testEvent) OriginServerTS() int64          { return int64(e.g.OriginServerTS()) }
func (e *testEvent) Redacts() string                { return e.g.Redacts() }
func (e *testEvent) Version() *stateres.RoomVersion { return e.version }
func (e *testEvent) JSON() []byte                   { return e.g.JSON() }

func userIDForSender(_ spec.RoomID, s spec.SenderID) (*spec.UserID, error) {
	return spec.NewUserID(string(s), true)
}

// gmslAuthCheck runs gomatrixserverlib's authorisation rules. It stands in
// for the stateres/auth package in tests until that package is wired in.
func gmslAuthCheck(ev stateres.PDU, authEvents []stateres.PDU) error {
	pdus := make([]gomatrixserverlib.PDU, len(authEvents))
	for i, a := range authEvents {
		pdus[i] = a.(*testEvent).g
	}
	provider, err := gomatrixserverlib.NewAuthEvents(pdus)
	if err != nil {
		return err
	}
	return gomatrixserverlib.Allowed(ev.(*testEvent).g, provider, userIDForSender)
}

// testRoom builds a room DAG event by event. Event IDs are deterministic
// (derived from a counter), so runs are reproducible.
type testRoom struct {
	tb       testing.TB
	version  *stateres.RoomVersion
	gver     gomatrixserverlib.IRoomVersion
	roomID   string
	events   map[string]*testEvent
	byName   map[string]string
	rejected map[string]bool
	counter  int
}

func newTestRoom(tb testing.TB, version string) *testRoom {
	v, ok := stateres.Version(version)
	if !ok {
		tb.Fatalf("unknown room version %s", version)
	}
	return &testRoom{
		tb:       tb,
		version:  v,
		gver:     gomatrixserverlib.MustGetRoomVersion(gomatrixserverlib.RoomVersion(version)),
		roomID:   "!room:example.org",
		events:   map[string]*testEvent{},
		byName:   map[string]string{},
		rejected: map[string]bool{},
	}
}

func (r *testRoom) Event(id string) (stateres.PDU, bool) {
	e, ok := r.events[id]
	if !ok {
		return nil, false
	}
	return e, true
}

func (r *testRoom) Rejected(id string) bool { return r.rejected[id] }

// id returns the event ID of a named event.
func (r *testRoom) id(name string) string {
	id, ok := r.byName[name]
	if !ok {
		r.tb.Fatalf("no event named %q", name)
	}
	return id
}

func (r *testRoom) newEventID() string {
	r.counter++
	sum := sha256.Sum256([]byte(strconv.Itoa(r.counter) + r.version.ID))
	switch r.version.EventIDFormat {
	case stateres.EventIDServerAssigned:
		return "$" + base64.RawURLEncoding.EncodeToString(sum[:9]) + ":example.org"
	case stateres.EventIDBase64:
		return "$" + base64.RawStdEncoding.EncodeToString(sum[:])
	default:
		return "$" + base64.RawURLEncoding.EncodeToString(sum[:])
	}
}

// eventSpec describes one event to add. Prev and Auth are event IDs.
type eventSpec struct {
	Name     string
	Sender   string
	Type     string
	StateKey *string
	Content  any
	Prev     []string
	Auth     []string
	TS       int64
}

func sk(s string) *string { return &s }

// add builds, parses and stores an event; it returns its ID.
func (r *testRoom) add(s eventSpec) string {
	r.tb.Helper()
	id := r.newEventID()
	isCreate := s.Type == stateres.MRoomCreate && s.StateKey != nil && *s.StateKey == ""
	if isCreate && r.version.RoomIDFromCreate {
		r.roomID = "!" + id[1:]
	}
	var depth int64
	for _, p := range s.Prev {
		if d := r.events[p].Depth(); d > depth {
			depth = d
		}
	}
	content, err := json.Marshal(s.Content)
	if err != nil {
		r.tb.Fatal(err)
	}
	refs := func(ids []string) any {
		if ids == nil {
			ids = []string{}
		}
		if r.version.EventFormat == stateres.FormatV1 {
			out := make([][]any, len(ids))
			for i, x := range ids {
				out[i] = []any{x, map[string]string{"sha256": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}}
			}
			return out
		}
		return ids
	}
	ev := map[string]any{
		"type":             s.Type,
		"sender":           s.Sender,
		"content":          json.RawMessage(content),
		"prev_events":      refs(s.Prev),
		"auth_events":      refs(s.Auth),
		"depth":            depth + 1,
		"origin_server_ts": s.TS,
		"origin":           "example.org",
		"hashes":           map[string]string{"sha256": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"},
		"signatures":       map[string]any{},
	}
	if !(isCreate && r.version.RoomIDFromCreate) {
		ev["room_id"] = r.roomID
	}
	if s.StateKey != nil {
		ev["state_key"] = *s.StateKey
	}
	if r.version.EventFormat == stateres.FormatV1 {
		ev["event_id"] = id
	}
	raw, err := json.Marshal(ev)
	if err != nil {
		r.tb.Fatal(err)
	}
	g, err := r.gver.NewEventFromTrustedJSONWithEventID(id, raw, false)
	if err != nil {
		r.tb.Fatalf("building %s: %v", s.Name, err)
	}
	r.events[id] = &testEvent{g: g, version: r.version, name: s.Name}
	if s.Name != "" {
		r.byName[s.Name] = id
	}
	return id
}

// names maps event IDs back to names in a resolved state, for messages.
func (r *testRoom) describe(state map[stateres.StateKeyTuple]string) string {
	out := "{"
	for k, id := range state {
		n := id
		if e, ok := r.events[id]; ok && e.name != "" {
			n = e.name
		}
		out += fmt.Sprintf(" %s/%s=%s", k.Type, k.StateKey, n)
	}
	return out + " }"
}

// branch is one server's view of the room: its state and its forward
// extremity. send picks auth events from the branch's state the way a
// homeserver does, checks the event with the oracle's auth rules and, if
// allowed, applies it.
type branch struct {
	r     *testRoom
	state map[stateres.StateKeyTuple]string
	tip   []string
}

func (r *testRoom) start() *branch {
	return &branch{r: r, state: map[stateres.StateKeyTuple]string{}}
}

func (b *branch) fork() *branch {
	c := &branch{r: b.r, state: make(map[stateres.StateKeyTuple]string, len(b.state)), tip: append([]string(nil), b.tip...)}
	for k, v := range b.state {
		c.state[k] = v
	}
	return c
}

// authFor lists the auth events of a new event from the branch state.
func (b *branch) authFor(sender, typ string, stateKey *string, content any) []string {
	keys := []stateres.StateKeyTuple{powerLevelsKey, {Type: stateres.MRoomMember, StateKey: sender}}
	if !b.r.version.RoomIDFromCreate {
		keys = append(keys, createKey)
	}
	if typ == stateres.MRoomMember && stateKey != nil {
		keys = append(keys, stateres.StateKeyTuple{Type: stateres.MRoomMember, StateKey: *stateKey})
		if m, _ := content.(map[string]any)["membership"].(string); m == "join" || m == "invite" || m == "knock" {
			keys = append(keys, joinRulesKey)
		}
	}
	var auth []string
	seen := map[string]bool{}
	for _, k := range keys {
		if id, ok := b.state[k]; ok && !seen[id] {
			seen[id] = true
			auth = append(auth, id)
		}
	}
	return auth
}

// send adds an event on the branch. It returns the event ID and whether the
// oracle allowed it; a disallowed event is stored as rejected and changes
// nothing unless force is set (a misbehaving server accepting it anyway).
func (b *branch) send(name, sender, typ string, stateKey *string, content any, ts int64) (string, bool) {
	return b.sendForce(name, sender, typ, stateKey, content, ts, false)
}

func (b *branch) sendForce(name, sender, typ string, stateKey *string, content any, ts int64, force bool) (string, bool) {
	b.r.tb.Helper()
	isCreate := typ == stateres.MRoomCreate
	var auth []string
	if !isCreate {
		auth = b.authFor(sender, typ, stateKey, content)
	}
	id := b.r.add(eventSpec{Name: name, Sender: sender, Type: typ, StateKey: stateKey, Content: content, Prev: b.tip, Auth: auth, TS: ts})
	ev := b.r.events[id]
	authPDUs := make([]stateres.PDU, 0, len(auth)+1)
	for _, a := range auth {
		authPDUs = append(authPDUs, b.r.events[a])
	}
	if b.r.version.RoomIDFromCreate && !isCreate {
		authPDUs = append(authPDUs, b.r.events[b.state[createKey]])
	}
	ok := gmslAuthCheck(ev, authPDUs) == nil
	if !ok {
		b.r.rejected[id] = true
	}
	if ok || force {
		b.tip = []string{id}
		if stateKey != nil {
			b.state[stateres.StateKeyTuple{Type: typ, StateKey: *stateKey}] = id
		}
	}
	return id, ok
}

// must is send for events the scenario needs to be allowed.
func (b *branch) must(name, sender, typ string, stateKey *string, content any, ts int64) string {
	b.r.tb.Helper()
	id, ok := b.send(name, sender, typ, stateKey, content, ts)
	if !ok {
		b.r.tb.Fatalf("scenario event %s was not allowed by the auth rules", name)
	}
	return id
}

func (b *branch) stateSet() map[stateres.StateKeyTuple]string {
	out := make(map[stateres.StateKeyTuple]string, len(b.state))
	for k, v := range b.state {
		out[k] = v
	}
	return out
}

// merge makes b's tip cite the other branches' tips too.
func (b *branch) merge(others ...*branch) {
	for _, o := range others {
		b.tip = append(b.tip, o.tip...)
	}
}

// createRoom starts a room: create, creator join, power levels giving the
// creator 100 plus the given users, public join rules.
func createRoom(tb testing.TB, version, creator string, users map[string]int, ts int64) (*testRoom, *branch) {
	r := newTestRoom(tb, version)
	b := r.start()
	createContent := map[string]any{}
	if v, _ := stateres.Version(version); !v.V11Semantics {
		createContent["creator"] = creator
	}
	createContent["room_version"] = version
	b.must("create", creator, stateres.MRoomCreate, sk(""), createContent, ts)
	b.must("creator-join", creator, stateres.MRoomMember, sk(creator), map[string]any{"membership": "join"}, ts+1)
	pl := map[string]any{}
	if !r.version.PrivilegedCreators {
		pl[creator] = 100
	}
	for u, l := range users {
		pl[u] = l
	}
	b.must("pl0", creator, stateres.MRoomPowerLevels, sk(""), powerContent(pl), ts+2)
	b.must("jr-public", creator, stateres.MRoomJoinRules, sk(""), map[string]any{"join_rule": "public"}, ts+3)
	return r, b
}

func powerContent(users map[string]any) map[string]any {
	return map[string]any{
		"users": users, "users_default": 0, "events_default": 0, "state_default": 50,
		"ban": 50, "kick": 50, "redact": 50, "invite": 0,
		"events": map[string]any{stateres.MRoomPowerLevels: 100, "m.room.topic": 0},
	}
}

func member(m string) map[string]any { return map[string]any{"membership": m} }

func memberKey(u string) stateres.StateKeyTuple {
	return stateres.StateKeyTuple{Type: stateres.MRoomMember, StateKey: u}
}
