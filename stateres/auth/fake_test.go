package auth

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/engram-hs/engram/stateres"
)

// fakeEvent is a hand-built PDU so that the rule tests do not depend on
// the event parser; the differential tests use real parsed events.
type fakeEvent struct {
	id, room, typ, sender string
	stateKey              *string
	content               []byte
	prev, auth            []string
	redacts               string
	v                     *stateres.RoomVersion
	signedBy              []string
	roomIDInJSON          bool
}

func (e *fakeEvent) EventID() string                { return e.id }
func (e *fakeEvent) RoomID() string                 { return e.room }
func (e *fakeEvent) Type() string                   { return e.typ }
func (e *fakeEvent) StateKey() *string              { return e.stateKey }
func (e *fakeEvent) Sender() string                 { return e.sender }
func (e *fakeEvent) Content() []byte                { return e.content }
func (e *fakeEvent) PrevEventIDs() []string         { return e.prev }
func (e *fakeEvent) AuthEventIDs() []string         { return e.auth }
func (e *fakeEvent) Depth() int64                   { return int64(len(e.prev)) }
func (e *fakeEvent) OriginServerTS() int64          { return 0 }
func (e *fakeEvent) Redacts() string                { return e.redacts }
func (e *fakeEvent) Version() *stateres.RoomVersion { return e.v }
func (e *fakeEvent) JSON() []byte {
	m := map[string]any{"type": e.typ, "sender": e.sender, "content": json.RawMessage(e.content)}
	if e.roomIDInJSON {
		m["room_id"] = e.room
	}
	if e.stateKey != nil {
		m["state_key"] = *e.stateKey
	}
	sigs := map[string]map[string]string{}
	for _, s := range append([]string{domainOf(e.sender)}, e.signedBy...) {
		sigs[s] = map[string]string{"ed25519:1": "c2ln"}
	}
	m["signatures"] = sigs
	b, _ := json.Marshal(m)
	return b
}

func sk(s string) *string { return &s }

func mustJSON(v any) []byte {
	if b, ok := v.([]byte); ok {
		return b
	}
	if s, ok := v.(string); ok {
		return []byte(s)
	}
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

// room is a test room: its create event, its state and a counter for IDs.
type room struct {
	t      testing.TB
	v      *stateres.RoomVersion
	id     string
	create *fakeEvent
	state  map[stateres.StateKeyTuple]stateres.PDU
	last   string
	n      int
}

const (
	alice = "@alice:a.test"
	bob   = "@bob:b.test"
	carol = "@carol:c.test"
	dave  = "@dave:a.test"
)

func mustVersion(t testing.TB, id string) *stateres.RoomVersion {
	v, ok := stateres.Version(id)
	if !ok {
		t.Fatalf("unknown room version %s", id)
	}
	return v
}

// createContentFor is a valid create content for the version, sent by alice.
func createContentFor(v *stateres.RoomVersion, extra map[string]any) map[string]any {
	c := map[string]any{"room_version": v.ID}
	if !v.V11Semantics {
		c["creator"] = alice
	}
	for k, x := range extra {
		c[k] = x
	}
	return c
}

// newBareRoom makes a room holding only its create event.
func newBareRoom(t testing.TB, version string, createExtra map[string]any) *room {
	v := mustVersion(t, version)
	r := &room{t: t, v: v, state: map[stateres.StateKeyTuple]stateres.PDU{}}
	r.id = "!room:a.test"
	create := r.newEvent(stateres.MRoomCreate, alice, sk(""), createContentFor(v, createExtra))
	create.prev = nil
	if v.RoomIDFromCreate {
		create.room = "!" + strings.TrimPrefix(create.id, "$")
		r.id = create.room
	}
	r.create = create
	r.add(create)
	return r
}

// newRoom makes a room where alice created, joined, holds level 100 and
// set the given join rule.
func newRoom(t testing.TB, version, joinRule string) *room {
	r := newBareRoom(t, version, nil)
	r.add(r.member(alice, alice, "join", nil))
	pl := map[string]any{}
	if !r.v.PrivilegedCreators {
		pl["users"] = map[string]any{alice: 100}
	}
	r.add(r.newEvent(stateres.MRoomPowerLevels, alice, sk(""), pl))
	r.add(r.newEvent(stateres.MRoomJoinRules, alice, sk(""), map[string]any{"join_rule": joinRule}))
	return r
}

func (r *room) newEvent(typ, sender string, stateKey *string, content any) *fakeEvent {
	r.n++
	var id string
	if r.v.EventIDFormat == stateres.EventIDServerAssigned {
		id = fmt.Sprintf("$e%d:%s", r.n, domainOf(sender))
	} else {
		h := sha256.Sum256([]byte(fmt.Sprintf("%s/%d", r.t.Name(), r.n)))
		id = "$" + base64.RawURLEncoding.EncodeToString(h[:])
	}
	content = r.fixUsers(content)
	e := &fakeEvent{id: id, room: r.id, typ: typ, sender: sender, stateKey: stateKey, content: mustJSON(content), v: r.v, roomIDInJSON: true}
	if r.last != "" {
		e.prev = []string{r.last}
	}
	if typ == stateres.MRoomCreate && r.v.RoomIDFromCreate {
		e.roomIDInJSON = false
	}
	return e
}

func (r *room) member(sender, target, membership string, extra map[string]any) *fakeEvent {
	c := map[string]any{"membership": membership}
	for k, x := range extra {
		c[k] = x
	}
	return r.newEvent(stateres.MRoomMember, sender, sk(target), c)
}

// add puts ev into the room's state and makes it the next prev event.
func (r *room) add(ev stateres.PDU) *room {
	r.state[stateres.StateKeyTuple{Type: ev.Type(), StateKey: *ev.StateKey()}] = ev
	r.last = ev.EventID()
	return r
}

// setMember records target's membership directly.
func (r *room) setMember(target, membership string) *room {
	return r.add(r.member(target, target, membership, nil))
}

func (r *room) setPowerLevels(content any) *room {
	return r.add(r.newEvent(stateres.MRoomPowerLevels, alice, sk(""), content))
}

func (r *room) authEvents() AuthEvents {
	return StateFunc(func(typ, key string) stateres.PDU {
		return r.state[stateres.StateKeyTuple{Type: typ, StateKey: key}]
	})
}

// versionsIn expands "1-12", "7-", "-5", "12" into version IDs.
func versionsIn(spec string) []string {
	lo, hi := 1, 12
	if a, b, ok := strings.Cut(spec, "-"); ok {
		if a != "" {
			fmt.Sscan(a, &lo)
		}
		if b != "" {
			fmt.Sscan(b, &hi)
		}
	} else {
		fmt.Sscan(spec, &lo)
		hi = lo
	}
	var out []string
	for i := lo; i <= hi; i++ {
		out = append(out, fmt.Sprint(i))
	}
	return out
}

// fixUsers gives alice level 100 in a usersMap, except where she is a
// privileged creator (v12) and must not be listed. It copies, as the table
// rows share their maps across versions.
func (r *room) fixUsers(content any) any {
	m, ok := content.(map[string]any)
	if !ok {
		return content
	}
	u, ok := m["users"].(usersMap)
	if !ok {
		return content
	}
	users := map[string]any{}
	for k, x := range u {
		users[k] = x
	}
	if !r.v.PrivilegedCreators {
		users[alice] = 100
	}
	out := map[string]any{}
	for k, x := range m {
		out[k] = x
	}
	out["users"] = users
	return out
}
