package auth

import (
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand"
	"sort"
	"strings"
	"testing"

	gmsl "github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/engram-hs/engram/stateres"
	"github.com/engram-hs/engram/stateres/signing"
)

// The differential test grows random rooms in every version: random
// memberships, power level and join rule changes, restricted joins,
// knocks, third-party invites, messages, state, aliases, redactions and
// create events, built and signed with stateres.BuildEvent. Each event is
// judged by Check and by gomatrixserverlib's Allowed (the oracle) against
// the same auth events; the decisions must agree except in the documented
// cases where the oracle departs from the spec text (oracleDeparture).
// Allowed events join the room state; now and then an event is forced into
// the state unchecked, so that the auth event sets are random too.

const diffServers = 3

type diffRoom struct {
	t      *testing.T
	rnd    *rand.Rand
	v      *stateres.RoomVersion
	oracle gmsl.IRoomVersion
	keys   []ed25519.PrivateKey
	users  []string
	roomID string
	create *stateres.Event
	state  map[stateres.StateKeyTuple]*stateres.Event
	last   *stateres.Event
	ts     int64
}

func (d *diffRoom) StateEvent(typ, key string) stateres.PDU {
	if ev, ok := d.state[stateres.StateKeyTuple{Type: typ, StateKey: key}]; ok {
		return ev
	}
	return nil
}

func server(i int) string { return fmt.Sprintf("s%d.test", i) }

func (d *diffRoom) serverIndex(user string) int {
	for i := 0; i < diffServers; i++ {
		if domainOf(user) == server(i) {
			return i
		}
	}
	d.t.Fatalf("no key for %s", user)
	return 0
}

// build makes a signed event; extraSigners add their servers' signatures.
func (d *diffRoom) build(proto *stateres.ProtoEvent, prev []stateres.PDU, extraSigners ...string) *stateres.Event {
	d.ts++
	proto.OriginServerTS = d.ts
	if proto.RoomID == "" && !(proto.Type == stateres.MRoomCreate && d.v.RoomIDFromCreate) {
		proto.RoomID = d.roomID
	}
	i := d.serverIndex(proto.Sender)
	ev, err := stateres.BuildEvent(d.v, proto, d, prev, server(i), "ed25519:1", d.keys[i])
	if err != nil {
		d.t.Fatalf("BuildEvent %s: %v", proto.Type, err)
	}
	for _, s := range extraSigners {
		if ev, err = stateres.SignEvent(ev, s, "ed25519:1", d.keys[d.serverIndex("@x:"+s)]); err != nil {
			d.t.Fatal(err)
		}
	}
	return ev
}

func (d *diffRoom) prev() []stateres.PDU {
	if d.last == nil {
		return nil
	}
	return []stateres.PDU{d.last}
}

func (d *diffRoom) user() string { return d.users[d.rnd.Intn(len(d.users))] }

func (d *diffRoom) pick(options ...string) string { return options[d.rnd.Intn(len(options))] }

func (d *diffRoom) level() any {
	n := []int64{-1, 0, 0, 10, 49, 50, 50, 51, 99, 100, 100, 101}[d.rnd.Intn(12)]
	// Strings are valid power levels before v10; floats before v6.
	switch r := d.rnd.Intn(10); {
	case r == 0 && !d.v.IntegerPowerLevels:
		return fmt.Sprintf("%d", n)
	case r == 1 && !d.v.StrictCanonicalJSON:
		return json.Number(fmt.Sprintf("%d.5", n))
	}
	return n
}

func (d *diffRoom) createContent() map[string]any {
	c := map[string]any{"room_version": d.v.ID}
	if !d.v.V11Semantics {
		c["creator"] = d.users[0]
	}
	if d.v.PrivilegedCreators && d.rnd.Intn(2) == 0 {
		c["additional_creators"] = []string{d.users[1]}
	}
	if d.rnd.Intn(12) == 0 {
		c["m.federate"] = false
	}
	return c
}

func newDiffRoom(t *testing.T, rnd *rand.Rand, version string, keys []ed25519.PrivateKey) *diffRoom {
	v := mustVersion(t, version)
	oracle, err := gmsl.GetRoomVersion(gmsl.RoomVersion(version))
	if err != nil {
		t.Fatal(err)
	}
	d := &diffRoom{t: t, rnd: rnd, v: v, oracle: oracle, keys: keys, state: map[stateres.StateKeyTuple]*stateres.Event{}}
	for i := 0; i < 6; i++ {
		d.users = append(d.users, fmt.Sprintf("@u%d:%s", i, server(i%diffServers)))
	}
	d.roomID = "!room:" + server(0)
	create := d.build(&stateres.ProtoEvent{Type: stateres.MRoomCreate, StateKey: sk(""), Sender: d.users[0], Content: mustJSON(d.createContent())}, nil)
	d.create = create
	d.roomID = create.RoomID()
	d.accept(create)
	return d
}

func (d *diffRoom) accept(ev *stateres.Event) {
	if ev.StateKey() != nil {
		d.state[stateres.StateKeyTuple{Type: ev.Type(), StateKey: *ev.StateKey()}] = ev
	}
	d.last = ev
}

// setUp gives the room what createRoom would: the creator's join, power
// levels, a public join rule, and most users joined, so that the random
// events reach every rule rather than stopping at "sender not joined".
func (d *diffRoom) setUp() {
	add := func(typ, sender, key string, content any) {
		ev := d.build(&stateres.ProtoEvent{Type: typ, StateKey: sk(key), Sender: sender, Content: mustJSON(content)}, d.prev())
		if err := Check(ev, StateFunc(d.StateEvent)); err != nil {
			d.t.Fatalf("set-up event %s %s: %v", typ, key, err)
		}
		d.accept(ev)
	}
	add(stateres.MRoomMember, d.users[0], d.users[0], map[string]any{"membership": "join"})
	users := map[string]any{d.users[2]: 50}
	if !d.v.PrivilegedCreators {
		users[d.users[0]] = 100
	}
	add(stateres.MRoomPowerLevels, d.users[0], "", map[string]any{"users": users})
	add(stateres.MRoomJoinRules, d.users[0], "", map[string]any{"join_rule": "public"})
	for _, u := range d.users[1:5] {
		if d.create.Content() != nil && domainOf(u) != domainOf(d.users[0]) && federates(d.create) == false {
			continue
		}
		add(stateres.MRoomMember, u, u, map[string]any{"membership": "join"})
	}
}

func federates(create stateres.PDU) bool {
	var c struct {
		Federate *bool `json:"m.federate"`
	}
	_ = json.Unmarshal(create.Content(), &c)
	return c.Federate == nil || *c.Federate
}

// randomEvent makes the next event to judge.
func (d *diffRoom) randomEvent() *stateres.Event {
	r := d.rnd
	sender := d.user()
	proto := &stateres.ProtoEvent{Sender: sender}
	var signers []string
	switch k := r.Intn(100); {
	case k < 40: // membership
		target := sender
		if r.Intn(3) == 0 {
			target = d.user()
		}
		membership := d.pick("join", "join", "invite", "leave", "ban", "knock", "wave")
		if (membership == "leave" || membership == "ban") && r.Intn(2) == 0 {
			// Kicks and bans of a peer at the sender's own level: the
			// "target level below the sender's" boundary is otherwise
			// rarely reached (most users sit at users_default).
			if peer := d.peerAtLevel(sender); peer != "" {
				target = peer
			}
		}
		content := map[string]any{"membership": membership}
		if membership == "join" && r.Intn(3) == 0 {
			via := d.user()
			content["join_authorised_via_users_server"] = via
			signers = append(signers, domainOf(via))
		}
		if membership == "invite" && r.Intn(4) == 0 {
			content["third_party_invite"] = d.thirdPartyInvite(target)
		}
		proto.Type, proto.StateKey, proto.Content = stateres.MRoomMember, sk(target), mustJSON(content)
	case k < 55: // power levels
		proto.Type, proto.StateKey, proto.Content = stateres.MRoomPowerLevels, sk(""), mustJSON(d.powerLevels())
	case k < 65: // join rules
		rule := d.pick("public", "invite", "knock", "restricted", "knock_restricted", "private")
		proto.Type, proto.StateKey, proto.Content = stateres.MRoomJoinRules, sk(""), mustJSON(map[string]any{"join_rule": rule})
	case k < 75:
		proto.Type, proto.Content = "m.room.message", mustJSON(map[string]any{"body": "hello"})
	case k < 82:
		key := d.pick("", "", d.user(), sender)
		proto.Type, proto.StateKey, proto.Content = d.pick("m.room.name", "m.room.topic", "m.custom"), sk(key), mustJSON(map[string]any{"x": 1})
	case k < 86:
		proto.Type, proto.StateKey, proto.Content = stateres.MRoomAliases, sk(d.pick(domainOf(sender), server(r.Intn(diffServers)))), mustJSON(map[string]any{"aliases": []string{}})
	case k < 90:
		proto.Type, proto.StateKey = stateres.MRoomThirdPartyInvite, sk(d.pick("tok1", "tok2"))
		pub := signing.EncodeBase64(d.keys[0].Public().(ed25519.PublicKey))
		c := map[string]any{"display_name": "x", "key_validity_url": "https://id.test/v", "public_key": pub}
		if r.Intn(3) > 0 {
			c["public_keys"] = []any{map[string]any{"public_key": pub, "key_validity_url": "https://id.test/v"}}
		}
		proto.Content = mustJSON(c)
	case k < 96:
		target := d.last.EventID()
		if r.Intn(2) == 0 {
			target = fmt.Sprintf("$other:%s", server(r.Intn(diffServers)))
		}
		proto.Type, proto.Redacts, proto.Content = stateres.MRoomRedaction, target, mustJSON(map[string]any{})
	default: // a create event, valid or not
		c := d.createContent()
		switch r.Intn(4) {
		case 0:
			c["room_version"] = "99"
		case 1:
			delete(c, "creator")
		case 2:
			if d.v.PrivilegedCreators {
				c["additional_creators"] = []string{"not a user id"}
			}
		}
		proto.Type, proto.StateKey, proto.Content = stateres.MRoomCreate, sk(""), mustJSON(c)
		var prev []stateres.PDU
		if r.Intn(2) == 0 {
			prev = d.prev()
		}
		if !d.v.RoomIDFromCreate && r.Intn(2) == 0 {
			proto.RoomID = "!another:" + server(r.Intn(diffServers))
		}
		return d.build(proto, prev)
	}
	return d.build(proto, d.prev(), signers...)
}

// peerAtLevel picks another user whose power level equals sender's, or "".
func (d *diffRoom) peerAtLevel(sender string) string {
	pl := ParsePowerLevels(d.v, d.create, d.StateEvent(stateres.MRoomPowerLevels, ""))
	var peers []string
	for _, u := range d.users {
		if u != sender && pl.UserLevel(u) == pl.UserLevel(sender) {
			peers = append(peers, u)
		}
	}
	if len(peers) == 0 {
		return ""
	}
	return peers[d.rnd.Intn(len(peers))]
}

// thirdPartyInvite signs {mxid, token} with server 0's key (the one the
// random m.room.third_party_invite events publish) or another key.
func (d *diffRoom) thirdPartyInvite(target string) map[string]any {
	signed := mustJSON(map[string]any{"mxid": target, "token": d.pick("tok1", "tok2")})
	key := d.keys[d.rnd.Intn(2)]
	s, err := signing.SignJSON("id.test", "ed25519:0", key, signed)
	if err != nil {
		d.t.Fatal(err)
	}
	return map[string]any{"display_name": "x", "signed": jsonRaw(s)}
}

func (d *diffRoom) powerLevels() map[string]any {
	r := d.rnd
	c := map[string]any{}
	if cur := d.StateEvent(stateres.MRoomPowerLevels, ""); cur != nil && r.Intn(3) > 0 {
		_ = json.Unmarshal(cur.Content(), &c)
	}
	users, _ := c["users"].(map[string]any)
	if users == nil {
		users = map[string]any{}
	}
	for n := r.Intn(3); n > 0; n-- {
		u := d.user()
		if r.Intn(4) == 0 {
			delete(users, u)
		} else {
			users[u] = d.level()
		}
	}
	if d.v.PrivilegedCreators && r.Intn(3) > 0 {
		for _, creator := range []string{d.create.Sender(), d.users[1]} {
			delete(users, creator)
		}
	}
	c["users"] = users
	for n := r.Intn(3); n > 0; n-- {
		key := d.pick("users_default", "events_default", "state_default", "ban", "kick", "redact", "invite")
		if r.Intn(4) == 0 {
			delete(c, key)
		} else {
			c[key] = d.level()
		}
	}
	if r.Intn(3) == 0 {
		c["events"] = map[string]any{d.pick("m.room.name", "m.room.message", "m.room.power_levels"): d.level()}
	}
	if r.Intn(4) == 0 {
		c["notifications"] = map[string]any{"room": d.level()}
	}
	return c
}

// authSet is the auth events selection for ev from the current state, plus
// (for v12, where it is not selected) the create event.
func (d *diffRoom) authSet(ev *stateres.Event) []stateres.PDU {
	var set []stateres.PDU
	seen := map[string]bool{}
	for _, id := range ev.AuthEventIDs() {
		seen[id] = true
	}
	for _, ev := range d.state {
		if seen[ev.EventID()] {
			set = append(set, ev)
		}
	}
	if d.v.RoomIDFromCreate {
		set = append(set, d.create)
	}
	sort.Slice(set, func(i, j int) bool { return set[i].EventID() < set[j].EventID() })
	return set
}

func (d *diffRoom) oracleAllows(ev *stateres.Event, set []stateres.PDU) error {
	toOracle := func(e stateres.PDU) gmsl.PDU {
		p, err := d.oracle.NewEventFromTrustedJSON(e.JSON(), false)
		if err != nil {
			d.t.Fatalf("oracle cannot read %s: %v", e.JSON(), err)
		}
		return p
	}
	var theirs []gmsl.PDU
	for _, e := range set {
		theirs = append(theirs, toOracle(e))
	}
	provider, err := gmsl.NewAuthEvents(theirs)
	if err != nil {
		d.t.Fatal(err)
	}
	return gmsl.Allowed(toOracle(ev), provider, func(_ spec.RoomID, s spec.SenderID) (*spec.UserID, error) {
		return spec.NewUserID(string(s), true)
	})
}

func TestDifferentialAgainstGomatrixserverlib(t *testing.T) {
	keys := make([]ed25519.PrivateKey, diffServers)
	for i := range keys {
		seed := make([]byte, ed25519.SeedSize)
		seed[0] = byte(i + 1)
		keys[i] = ed25519.NewKeyFromSeed(seed)
	}
	roomsPerVersion, eventsPerRoom := 8, 100
	if testing.Short() {
		roomsPerVersion = 3
	}
	total, allowed, mismatches, departures := 0, 0, 0, map[string]int{}
	for _, version := range stateres.KnownVersions() {
		for n := 0; n < roomsPerVersion; n++ {
			seed := int64(n)*1000 + int64(len(version))*7 + int64(version[0])
			rnd := rand.New(rand.NewSource(seed))
			d := newDiffRoom(t, rnd, version, keys)
			d.setUp()
			for i := 0; i < eventsPerRoom; i++ {
				ev := d.randomEvent()
				set := d.authSet(ev)
				ours := Check(ev, NewAuthEvents(d.v, set))
				theirs := d.oracleAllows(ev, set)
				total++
				if (ours == nil) != (theirs == nil) {
					why, ok := oracleDeparture(d, ev, ours, theirs)
					if !ok {
						mismatches++
						if mismatches <= 8 {
							t.Errorf("v%s seed %d event %d: we say %v, the oracle says %v\nevent %s %s %s content %s\nauth events:\n%s", version, seed, i, ours, theirs, ev.Type(), ev.Sender(), deref(ev.StateKey()), ev.Content(), dumpSet(set))
						}
					}
					departures[why]++
				}
				if ours == nil {
					allowed++
					if ev.Type() != stateres.MRoomCreate {
						d.accept(ev)
					}
				} else if ev.Type() == stateres.MRoomMember && rnd.Intn(6) == 0 {
					d.accept(ev) // forced: random auth sets
				}
			}
		}
	}
	if mismatches > 0 {
		t.Fatalf("%d undocumented disagreements with the oracle", mismatches)
	}
	t.Logf("%d events judged, %d allowed; documented oracle departures: %v", total, allowed, departures)
	// Each excuse may cover only as many cases as the seeded rooms produce
	// today (counts per 9,600 judged events, with headroom): a regression
	// that hides behind an excuse then shows up as its count jumping.
	for why, n := range departures {
		limit, known := departureLimitPer10k[why]
		if !known {
			t.Errorf("departure %q has no bound in departureLimitPer10k", why)
			continue
		}
		max := limit * total / 10000
		if max < 10 {
			max = 10 // a shorter run does not make a handful of cases suspicious
		}
		if n > max {
			t.Errorf("departure %q covered %d of %d events, more than its bound %d: a disagreement hides behind this excuse", why, n, total, max)
		}
	}
	if allowed < total/5 || allowed > total*4/5 {
		t.Fatalf("the generator is lopsided: %d of %d allowed", allowed, total)
	}
}

// departureLimitPer10k bounds how often each documented departure may
// occur, per 10,000 judged events. The full run judges 9,600 events; the
// figures are what it produced when the bounds were set, about doubled
// (at least 10), so small generator changes do not trip them.
var departureLimitPer10k = map[string]int{
	"no join rules: oracle assumes invite":                                     10,
	"leave -> leave: oracle NOTSPEC":                                           250,
	"leave from knock before v7":                                               20,
	"unban above the sender's level: oracle checks the ban level only":         10,
	"invited/joined user joins under any join rule":                            140,
	"power levels: new users entry judged by users_default":                    10,
	"aliases rule kept after v5":                                               280,
	"public join from a membership other than leave":                           90,
	"3pid: oracle ignores public_key":                                          10,
	"3pid: oracle skips the banned / same sender checks":                       20,
	"power levels: oracle ignores users_default changes":                       10,
	"power levels: added property judged by its default":                       10,
	"power levels: float values":                                               10,
	"power levels: notifications judged with defaults / without creator power": 10,
	"knock_restricted before v10":                                              10,
	"create: oracle skips room_version check in v11":                           10,
}

// oracleDeparture recognises the cases where gomatrixserverlib does not
// follow the spec text; Engram follows the spec. Each case says why.
func oracleDeparture(d *diffRoom, ev *stateres.Event, ours, theirs error) (string, bool) {
	var rej *Rejection
	errors.As(ours, &rej)
	clause := ""
	if rej != nil {
		clause = rej.Clause
	}
	set := NewAuthEvents(d.v, d.authSet(ev))
	senderMem := membershipOf(set.Member(ev.Sender()))
	switch {
	// With no m.room.join_rules event the spec's join rules name no join
	// rule, so a join that is not the creator's first falls to "Otherwise,
	// reject". The oracle (like Synapse) assumes "invite" and lets joined or
	// invited users join. Expected: rejected.
	case clause == "member.join.otherwise" && theirs == nil && set.JoinRules() == nil:
		return "no join rules: oracle assumes invite", true
	// A user with no membership (or "leave") leaving again: the spec allows
	// a self-leave only from invite, join (and knock from v7). The oracle
	// allows leave -> leave on purpose (its comment: "NOTSPEC ... Synapse
	// incorrectly accepting this event"). Expected: rejected.
	case clause == "member.leave.self" && theirs == nil && (senderMem == "" || senderMem == membershipLeave):
		return "leave -> leave: oracle NOTSPEC", true
	// Unbanning: the spec passes an unban by someone at the ban level on to
	// the kick rule (the target's level must be below the sender's); the
	// oracle allows it on the ban level alone ("You can unban someone with
	// higher power_level than you"). Synapse follows the spec. Expected:
	// rejected.
	case clause == "member.leave.kick" && theirs == nil && ev.StateKey() != nil && membershipOf(set.Member(*ev.StateKey())) == membershipBan:
		return "unban above the sender's level: oracle checks the ban level only", true
	// Knock memberships exist from v7; a knock state in an older room can
	// only come from a forced (unchecked) state here. The spec's v1-v6
	// self-leave rule does not list knock; the oracle does not look at the
	// version. Expected: rejected.
	case clause == "member.leave.self" && theirs == nil && senderMem == membershipKnock && !d.v.Knocking:
		return "leave from knock before v7", true
	// "An invited user is always allowed to join, regardless of the join
	// rule" (oracle comment), and a joined user may always re-join. The spec
	// allows those only under the invite rule (knock from v7; restricted
	// and knock_restricted from v8/v10 go their own way). Expected:
	// rejected, e.g. join rule "private", or "knock" before v7.
	case clause == "member.join.otherwise" && theirs == nil && (senderMem == membershipInvite || senderMem == membershipJoin):
		return "invited/joined user joins under any join rule", true
	// The users rules (10.6/10.7 in v1) speak of entries in the users
	// property. Adding an entry for a user who had no entry is an addition,
	// bounded only by the new value; the oracle compares the user's
	// effective old level (users_default) against the sender's. Expected:
	// allowed.
	case ours == nil && theirs != nil && ev.Type() == stateres.MRoomPowerLevels && addsUserAtOrAboveSender(d, ev, set):
		return "power levels: new users entry judged by users_default", true
	// From v6 m.room.aliases has no rule of its own and is an ordinary state
	// event (sender joined, state_default...). The oracle keeps the v1-v5
	// aliases rule in every version. Expected: the ordinary rules.
	// The oracle allows exactly when the state_key is the sender's server,
	// so the excuse holds only where that alone explains the difference:
	// the oracle allows a sender's own server's entry that the ordinary
	// rules refuse (not joined, level too low), or refuses another
	// server's entry that the ordinary rules allow.
	case ev.Type() == stateres.MRoomAliases && !d.v.SpecialCaseAliases && aliasesKeyIsSenderServer(ev) == (theirs == nil) &&
		(theirs != nil || clause == "sender.not_joined" || clause == "event.level"):
		return "aliases rule kept after v5", true
	// A join into a public room from knock (or, through forced unchecked
	// state here, a membership the spec does not name) is allowed by the
	// public rule; the oracle only lets "leave" (or no membership) in.
	// Expected: allowed.
	case ours == nil && theirs != nil && ev.Type() == stateres.MRoomMember && joinRuleOf(set.JoinRules()) == joinRulePublic &&
		!(senderMem == "" || senderMem == membershipLeave || senderMem == membershipInvite || senderMem == membershipJoin):
		return "public join from a membership other than leave", true
	// The spec counts content.public_key of the m.room.third_party_invite
	// as one of its keys; the oracle reads only content.public_keys.
	// Expected: allowed when public_key verifies.
	case clause == "" && theirs != nil && ev.Type() == stateres.MRoomMember && onlySinglePublicKey(ev, set):
		return "3pid: oracle ignores public_key", true
	// Third-party invites: the oracle checks neither that the target is not
	// banned (rule "If target user is banned, reject") nor that the invite's
	// sender sent the m.room.third_party_invite. Expected: rejected.
	case (clause == "member.invite.3pid.banned" || clause == "member.invite.3pid.sender") && theirs == nil:
		return "3pid: oracle skips the banned / same sender checks", true
	// users_default is one of the properties whose change rule 10.3 (9.3,
	// 9.5) bounds by the sender's level; the oracle does not check it.
	// Expected: rejected.
	case clause == "power_levels.top_level" && theirs == nil && changesUsersDefault(d, ev, set):
		return "power levels: oracle ignores users_default changes", true
	// A top-level property being added has no current value for rule 10.3.1
	// to compare; the oracle compares its default (kick 50, ...). Expected:
	// allowed when the new value is within the sender's level.
	case ours == nil && theirs != nil && ev.Type() == stateres.MRoomPowerLevels && addsDefaultedTopLevel(d, ev, set):
		return "power levels: added property judged by its default", true
	// Floats in power levels (v1-v5) are truncated towards zero
	// (v1-floaty-power-levels.md) and then compared; the oracle reads them
	// differently. Expected: the truncated value decides.
	case ev.Type() == stateres.MRoomPowerLevels && !d.v.StrictCanonicalJSON && (hasFloatLevel(ev.Content()) || hasFloatLevel(contentOf(set.PowerLevels()))):
		return "power levels: float values", true
	// Power levels: adding a notifications entry is judged by the new value
	// (rule 9.5 in v6-v9); the oracle compares the defaulted old value (room:
	// 50) too, like it does for users. And in v12 the oracle checks
	// notification changes against the creator's users_default level
	// rather than the creator's infinite level. Expected: allowed.
	case ours == nil && theirs != nil && ev.Type() == stateres.MRoomPowerLevels && touchesNotifications(d, ev, set):
		return "power levels: notifications judged with defaults / without creator power", true
	// knock_restricted exists from v10; the oracle accepts knocks under it
	// from v8. Expected: rejected.
	case clause == "member.knock.join_rule" && theirs == nil && !d.v.KnockRestricted:
		return "knock_restricted before v10", true
	// Create event rule 1.3 (unrecognised content.room_version) holds in
	// every version; the oracle's v11 create check skips it. Expected:
	// rejected.
	case clause == "create.room_version" && theirs == nil:
		return "create: oracle skips room_version check in v11", true
	}
	return "", false
}

// aliasesKeyIsSenderServer reports whether an m.room.aliases event's
// state_key is its sender's server: the oracle's only test from v6 on.
func aliasesKeyIsSenderServer(ev stateres.PDU) bool {
	sk := ev.StateKey()
	return sk != nil && *sk == domainOf(ev.Sender())
}

// hasFloatLevel reports whether power levels content holds a level written
// as a non-integer JSON number (the generator writes "N.5"), at the top
// level or inside events, users or notifications. User IDs and event types
// contain dots too, so only numbers count.
func hasFloatLevel(content []byte) bool {
	var pl map[string]json.RawMessage
	if json.Unmarshal(content, &pl) != nil {
		return false
	}
	isFloat := func(raw json.RawMessage) bool {
		var n json.Number
		return json.Unmarshal(raw, &n) == nil && strings.ContainsAny(n.String(), ".eE")
	}
	for k, raw := range pl {
		switch k {
		case "events", "users", "notifications":
			var m map[string]json.RawMessage
			_ = json.Unmarshal(raw, &m)
			for _, v := range m {
				if isFloat(v) {
					return true
				}
			}
		default:
			if isFloat(raw) {
				return true
			}
		}
	}
	return false
}

func contentOf(ev stateres.PDU) []byte {
	if ev == nil {
		return nil
	}
	return ev.Content()
}

// addsUserAtOrAboveSender reports whether ev adds a users entry for a user
// whose current (users_default) level is at or above the sender's.
func addsUserAtOrAboveSender(d *diffRoom, ev stateres.PDU, set AuthEvents) bool {
	cur := ParsePowerLevels(d.v, set.Create(), set.PowerLevels())
	next, _ := parsePowerLevels(d.v, ev.Content(), false)
	senderLevel := cur.UserLevel(ev.Sender())
	for u, nv := range next.users {
		if _, listed := cur.users[u]; !listed && u != ev.Sender() && cur.UserLevel(u).AtLeast(senderLevel) && LevelOf(nv) != cur.UserLevel(u) {
			return true
		}
	}
	return false
}

// touchesNotifications reports whether ev adds, changes or removes a
// notifications entry.
func touchesNotifications(d *diffRoom, ev stateres.PDU, set AuthEvents) bool {
	cur := ParsePowerLevels(d.v, set.Create(), set.PowerLevels())
	next, _ := parsePowerLevels(d.v, ev.Content(), false)
	for k, nv := range next.notifs {
		if ov, ok := cur.notifs[k]; !ok || ov != nv {
			return true
		}
	}
	for k := range cur.notifs {
		if _, ok := next.notifs[k]; !ok {
			return true
		}
	}
	return false
}

func addsDefaultedTopLevel(d *diffRoom, ev stateres.PDU, set AuthEvents) bool {
	cur := ParsePowerLevels(d.v, set.Create(), set.PowerLevels())
	next, _ := parsePowerLevels(d.v, ev.Content(), false)
	senderLevel := cur.UserLevel(ev.Sender())
	for i := range topKeyNames {
		if !cur.top[i].set && next.top[i].set && LevelOf(topKeyDefaults[i]).Above(senderLevel) {
			return true
		}
	}
	return false
}

func changesUsersDefault(d *diffRoom, ev stateres.PDU, set AuthEvents) bool {
	var curTop optInt
	if pl := set.PowerLevels(); pl != nil {
		cur, _ := parsePowerLevels(d.v, pl.Content(), false)
		curTop = cur.top[keyUsersDefault]
	}
	next, _ := parsePowerLevels(d.v, ev.Content(), false)
	return next.top[keyUsersDefault] != curTop
}

// onlySinglePublicKey reports whether ev is a third-party invite whose
// m.room.third_party_invite event has no public_keys list.
func onlySinglePublicKey(ev stateres.PDU, set AuthEvents) bool {
	var mc struct {
		TPI *struct {
			Signed struct {
				Token string `json:"token"`
			} `json:"signed"`
		} `json:"third_party_invite"`
	}
	if json.Unmarshal(ev.Content(), &mc) != nil || mc.TPI == nil {
		return false
	}
	tpi := set.ThirdPartyInvite(mc.TPI.Signed.Token)
	return tpi != nil && !strings.Contains(string(tpi.Content()), `"public_keys"`)
}

func dumpSet(set []stateres.PDU) string {
	out := ""
	for _, e := range set {
		out += fmt.Sprintf("  %s %s %s %s %s\n", e.EventID(), e.Type(), e.Sender(), deref(e.StateKey()), e.Content())
	}
	return out
}

func deref(s *string) string {
	if s == nil {
		return "<nil>"
	}
	return fmt.Sprintf("%q", *s)
}
