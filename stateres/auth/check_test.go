package auth

import (
	"crypto/ed25519"
	"errors"
	"testing"

	"github.com/engram-hs/engram/stateres"
	"github.com/engram-hs/engram/stateres/signing"
)

// ruleCase is one row of the rule table. Its clause is the name of the rule
// it covers: when allow is set the event must be allowed by exactly that
// clause, otherwise rejected by exactly that clause. build sets up the room
// in version v and returns the event and the state to check it against.
type ruleCase struct {
	clause   string
	versions string
	allow    bool
	build    func(t *testing.T, v string) (stateres.PDU, AuthEvents)
}

// inRoom is a build helper for the common case: a room with the join rule,
// some setup, and an event made by the room.
func inRoom(joinRule string, setup func(r *room), ev func(r *room) stateres.PDU) func(t *testing.T, v string) (stateres.PDU, AuthEvents) {
	return func(t *testing.T, v string) (stateres.PDU, AuthEvents) {
		r := newRoom(t, v, joinRule)
		if setup != nil {
			setup(r)
		}
		return ev(r), r.authEvents()
	}
}

func msg(sender string) func(r *room) stateres.PDU {
	return func(r *room) stateres.PDU {
		return r.newEvent("m.room.message", sender, nil, map[string]any{"body": "hi"})
	}
}

func memberEv(sender, target, membership string, extra map[string]any) func(r *room) stateres.PDU {
	return func(r *room) stateres.PDU { return r.member(sender, target, membership, extra) }
}

func state(typ, sender, key string, content any) func(r *room) stateres.PDU {
	return func(r *room) stateres.PDU { return r.newEvent(typ, sender, sk(key), content) }
}

func members(pairs ...string) func(r *room) {
	return func(r *room) {
		for i := 0; i+1 < len(pairs); i += 2 {
			r.setMember(pairs[i], pairs[i+1])
		}
	}
}

func then(fs ...func(r *room)) func(r *room) {
	return func(r *room) {
		for _, f := range fs {
			f(r)
		}
	}
}

func pl(content any) func(r *room) { return func(r *room) { r.setPowerLevels(content) } }

// createCase builds a fresh create event for version v from mutate.
func createCase(mutate func(v *stateres.RoomVersion, e *fakeEvent)) func(t *testing.T, v string) (stateres.PDU, AuthEvents) {
	return func(t *testing.T, v string) (stateres.PDU, AuthEvents) {
		r := newBareRoom(t, v, nil)
		e := r.create
		if mutate != nil {
			mutate(r.v, e)
		}
		return e, NewAuthEvents(r.v, nil)
	}
}

var tpiKey = ed25519.NewKeyFromSeed(make([]byte, 32))

// thirdPartyRoom: alice joined; alice issued a third-party invite "tok"
// with tpiKey; the member content signs mxid bob with it unless changed.
func thirdPartyInvite(signedMXID string, sign bool, mutate func(tpi map[string]any)) func(r *room) stateres.PDU {
	return func(r *room) stateres.PDU {
		signed := []byte(`{"mxid":"` + signedMXID + `","token":"tok"}`)
		if sign {
			var err error
			signed, err = signing.SignJSON("id.test", "ed25519:0", tpiKey, signed)
			if err != nil {
				panic(err)
			}
		}
		tpi := map[string]any{"display_name": "b...", "signed": jsonRaw(signed)}
		if mutate != nil {
			mutate(tpi)
		}
		return r.member(alice, bob, "invite", map[string]any{"third_party_invite": tpi})
	}
}

type jsonRaw []byte

func (j jsonRaw) MarshalJSON() ([]byte, error) { return j, nil }

func withTPIEvent(sender string) func(r *room) {
	return func(r *room) {
		r.add(r.newEvent(stateres.MRoomThirdPartyInvite, sender, sk("tok"), map[string]any{
			"display_name": "b...", "key_validity_url": "https://id.test/v", "public_key": "AAAA",
			"public_keys": []any{map[string]any{"public_key": signing.EncodeBase64(tpiKey.Public().(ed25519.PublicKey))}},
		}))
	}
}

var ruleCases = []ruleCase{
	// Rule 1: m.room.create.
	{"create", "1-12", true, createCase(nil)},
	{"create", "11-12", true, createCase(func(v *stateres.RoomVersion, e *fakeEvent) { e.content = mustJSON(map[string]any{}) })},
	{"create", "12", true, createCase(func(v *stateres.RoomVersion, e *fakeEvent) {
		e.content = mustJSON(map[string]any{"additional_creators": []string{bob, "@historical user:c.test"}})
	})},
	{"create.prev_events", "1-12", false, createCase(func(v *stateres.RoomVersion, e *fakeEvent) { e.prev = []string{"$x"} })},
	{"create.room_id_domain", "1-11", false, createCase(func(v *stateres.RoomVersion, e *fakeEvent) { e.room = "!room:b.test" })},
	{"create.room_id", "12", false, createCase(func(v *stateres.RoomVersion, e *fakeEvent) { e.roomIDInJSON = true })},
	{"create.room_version", "1-12", false, createCase(func(v *stateres.RoomVersion, e *fakeEvent) {
		e.content = mustJSON(createContentFor(v, map[string]any{"room_version": "99"}))
	})},
	{"create.room_version", "1-12", false, createCase(func(v *stateres.RoomVersion, e *fakeEvent) {
		e.content = mustJSON(createContentFor(v, map[string]any{"room_version": 9}))
	})},
	{"create.creator", "1-10", false, createCase(func(v *stateres.RoomVersion, e *fakeEvent) { e.content = mustJSON(map[string]any{}) })},
	{"create.additional_creators", "12", false, createCase(func(v *stateres.RoomVersion, e *fakeEvent) {
		e.content = mustJSON(map[string]any{"additional_creators": []string{"bob"}})
	})},
	{"create.additional_creators", "12", false, createCase(func(v *stateres.RoomVersion, e *fakeEvent) {
		e.content = mustJSON(map[string]any{"additional_creators": bob})
	})},

	// v12 rule 2 and the auth events rules Check can see.
	{"room_id.create", "12", false, func(t *testing.T, v string) (stateres.PDU, AuthEvents) {
		r := newRoom(t, v, "public")
		ev := r.newEvent("m.room.message", alice, nil, map[string]any{})
		ev.room = "!someOtherRoom"
		return ev, r.authEvents()
	}},
	{"auth_events.no_create", "1-11", false, func(t *testing.T, v string) (stateres.PDU, AuthEvents) {
		r := newRoom(t, v, "public")
		delete(r.state, stateres.StateKeyTuple{Type: stateres.MRoomCreate})
		return msg(alice)(r), r.authEvents()
	}},
	{"auth_events.room_id", "1-12", false, inRoom("public", func(r *room) {
		other := r.newEvent(stateres.MRoomPowerLevels, alice, sk(""), map[string]any{})
		other.room = "!elsewhere:a.test"
		r.add(other)
	}, msg(alice))},
	{"auth_events.room_id", "1-11", false, func(t *testing.T, v string) (stateres.PDU, AuthEvents) {
		r := newRoom(t, v, "public")
		r.create.room = "!elsewhere:a.test"
		return msg(alice)(r), r.authEvents()
	}},

	// Rule m.federate.
	{"federate", "1-12", false, func(t *testing.T, v string) (stateres.PDU, AuthEvents) {
		r := newBareRoom(t, v, map[string]any{"m.federate": false})
		r.setMember(alice, "join")
		r.add(r.newEvent(stateres.MRoomJoinRules, alice, sk(""), map[string]any{"join_rule": "public"}))
		return r.member(bob, bob, "join", nil), r.authEvents()
	}},
	{"member.join.public", "1-12", true, func(t *testing.T, v string) (stateres.PDU, AuthEvents) {
		r := newBareRoom(t, v, map[string]any{"m.federate": false})
		r.setMember(alice, "join")
		r.add(r.newEvent(stateres.MRoomJoinRules, alice, sk(""), map[string]any{"join_rule": "public"}))
		return r.member(dave, dave, "join", nil), r.authEvents()
	}},

	// m.room.aliases (v1-v5 only).
	{"aliases", "1-5", true, inRoom("public", nil, state(stateres.MRoomAliases, bob, "b.test", map[string]any{"aliases": []string{"#x:b.test"}}))},
	{"aliases.domain", "1-5", false, inRoom("public", nil, state(stateres.MRoomAliases, bob, "a.test", map[string]any{}))},
	{"aliases.state_key", "1-5", false, inRoom("public", nil, func(r *room) stateres.PDU {
		return r.newEvent(stateres.MRoomAliases, bob, nil, map[string]any{})
	})},
	{"sender.not_joined", "6-12", false, inRoom("public", nil, state(stateres.MRoomAliases, bob, "b.test", map[string]any{}))},
	{"default", "6-12", true, inRoom("public", nil, state(stateres.MRoomAliases, alice, "b.test", map[string]any{}))},

	// m.room.member: common.
	{"member.state_key_or_membership", "1-12", false, inRoom("public", nil, state(stateres.MRoomMember, bob, bob, map[string]any{}))},
	{"member.state_key_or_membership", "1-12", false, inRoom("public", nil, state(stateres.MRoomMember, bob, bob, map[string]any{"membership": 1}))},
	{"member.state_key_or_membership", "1-12", false, inRoom("public", nil, func(r *room) stateres.PDU {
		return r.newEvent(stateres.MRoomMember, bob, nil, map[string]any{"membership": "join"})
	})},
	{"member.authorised_via.signature", "8-12", false, inRoom("restricted", nil,
		memberEv(bob, bob, "join", map[string]any{"join_authorised_via_users_server": alice}))},
	{"member.authorised_via.signature", "8-12", false, inRoom("restricted", nil,
		memberEv(bob, bob, "join", map[string]any{"join_authorised_via_users_server": 5}))},

	// Joins.
	{"member.join.creator", "1-12", true, func(t *testing.T, v string) (stateres.PDU, AuthEvents) {
		r := newBareRoom(t, v, nil)
		return r.member(alice, alice, "join", nil), r.authEvents()
	}},
	{"member.join.otherwise", "1-12", false, func(t *testing.T, v string) (stateres.PDU, AuthEvents) {
		// Only the creator gets in right after the create event.
		r := newBareRoom(t, v, nil)
		return r.member(dave, dave, "join", nil), r.authEvents()
	}},
	{"member.join.sender_not_state_key", "1-12", false, inRoom("public", nil, memberEv(alice, bob, "join", nil))},
	{"member.join.banned", "1-12", false, inRoom("public", members(bob, "ban"), memberEv(bob, bob, "join", nil))},
	{"member.join.invited", "1-12", true, inRoom("invite", members(bob, "invite"), memberEv(bob, bob, "join", nil))},
	{"member.join.invited", "1-12", true, inRoom("invite", members(bob, "join"), memberEv(bob, bob, "join", map[string]any{"displayname": "B"}))},
	{"member.join.otherwise", "1-12", false, inRoom("invite", nil, memberEv(bob, bob, "join", nil))},
	{"member.join.otherwise", "1-12", false, inRoom("invite", members(bob, "leave"), memberEv(bob, bob, "join", nil))},
	{"member.join.invited", "7-12", true, inRoom("knock", members(bob, "invite"), memberEv(bob, bob, "join", nil))},
	{"member.join.otherwise", "1-6", false, inRoom("knock", members(bob, "invite"), memberEv(bob, bob, "join", nil))},
	{"member.join.otherwise", "7-12", false, inRoom("knock", members(bob, "knock"), memberEv(bob, bob, "join", nil))},
	{"member.join.otherwise", "1-7", false, inRoom("restricted", members(bob, "invite"), memberEv(bob, bob, "join", nil))},
	{"member.join.restricted.member", "8-12", true, inRoom("restricted", members(bob, "invite"), memberEv(bob, bob, "join", nil))},
	{"member.join.otherwise", "1-9", false, inRoom("knock_restricted", members(bob, "invite"), memberEv(bob, bob, "join", nil))},
	{"member.join.restricted.member", "10-12", true, inRoom("knock_restricted", members(bob, "join"), memberEv(bob, bob, "join", nil))},
	{"member.join.restricted.authorised", "8-12", true, inRoom("restricted", nil, func(r *room) stateres.PDU {
		e := r.member(bob, bob, "join", map[string]any{"join_authorised_via_users_server": alice})
		e.signedBy = []string{"a.test"}
		return e
	})},
	{"member.join.restricted.authorised", "10-12", true, inRoom("knock_restricted", nil, func(r *room) stateres.PDU {
		e := r.member(bob, bob, "join", map[string]any{"join_authorised_via_users_server": alice})
		e.signedBy = []string{"a.test"}
		return e
	})},
	{"member.join.restricted.authoriser", "8-12", false, inRoom("restricted", nil, memberEv(bob, bob, "join", nil))},
	{"member.join.restricted.authoriser", "8-12", false, inRoom("restricted", members(carol, "leave"), func(r *room) stateres.PDU {
		e := r.member(bob, bob, "join", map[string]any{"join_authorised_via_users_server": carol})
		e.signedBy = []string{"c.test"}
		return e
	})},
	{"member.join.restricted.authoriser", "8-12", false, inRoom("restricted", then(members(carol, "join"), pl(map[string]any{"invite": 10})), func(r *room) stateres.PDU {
		e := r.member(bob, bob, "join", map[string]any{"join_authorised_via_users_server": carol})
		e.signedBy = []string{"c.test"}
		return e
	})},
	{"member.join.public", "1-12", true, inRoom("public", nil, memberEv(bob, bob, "join", nil))},
	{"member.join.public", "1-12", true, inRoom("public", members(bob, "leave"), memberEv(bob, bob, "join", nil))},
	{"member.join.otherwise", "1-12", false, inRoom("private", nil, memberEv(bob, bob, "join", nil))},
	{"member.join.otherwise", "1-12", false, func(t *testing.T, v string) (stateres.PDU, AuthEvents) {
		r := newRoom(t, v, "public")
		delete(r.state, stateres.StateKeyTuple{Type: stateres.MRoomJoinRules})
		return r.member(bob, bob, "join", nil), r.authEvents()
	}},

	// Invites.
	{"member.invite.level", "1-12", true, inRoom("invite", nil, memberEv(alice, bob, "invite", nil))},
	{"member.invite.level", "1-12", true, inRoom("invite", members(bob, "leave"), memberEv(alice, bob, "invite", nil))},
	{"member.invite.level", "1-12", false, inRoom("invite", then(members(carol, "join"), pl(map[string]any{"users": map[string]any{}, "invite": 1})), memberEv(carol, bob, "invite", nil))},
	{"member.invite.sender_not_joined", "1-12", false, inRoom("invite", nil, memberEv(carol, bob, "invite", nil))},
	{"member.invite.sender_not_joined", "1-12", false, inRoom("invite", members(carol, "invite"), memberEv(carol, bob, "invite", nil))},
	{"member.invite.target", "1-12", false, inRoom("invite", members(bob, "join"), memberEv(alice, bob, "invite", nil))},
	{"member.invite.target", "1-12", false, inRoom("invite", members(bob, "ban"), memberEv(alice, bob, "invite", nil))},
	{"member.invite.3pid.signature", "1-12", true, inRoom("invite", withTPIEvent(alice), thirdPartyInvite(bob, true, nil))},
	{"member.invite.3pid.signature", "1-12", false, inRoom("invite", withTPIEvent(alice), thirdPartyInvite(bob, false, nil))},
	{"member.invite.3pid.banned", "1-12", false, inRoom("invite", then(withTPIEvent(alice), members(bob, "ban")), thirdPartyInvite(bob, true, nil))},
	{"member.invite.3pid.signed", "1-12", false, inRoom("invite", withTPIEvent(alice), thirdPartyInvite(bob, true, func(tpi map[string]any) { delete(tpi, "signed") }))},
	{"member.invite.3pid.mxid_token", "1-12", false, inRoom("invite", withTPIEvent(alice), thirdPartyInvite(bob, true, func(tpi map[string]any) {
		tpi["signed"] = map[string]any{"mxid": bob}
	}))},
	{"member.invite.3pid.mxid", "1-12", false, inRoom("invite", withTPIEvent(alice), thirdPartyInvite(carol, true, nil))},
	{"member.invite.3pid.no_invite_event", "1-12", false, inRoom("invite", nil, thirdPartyInvite(bob, true, nil))},
	{"member.invite.3pid.sender", "1-12", false, inRoom("invite", withTPIEvent(dave), thirdPartyInvite(bob, true, nil))},

	// Leaves, kicks and unbans.
	{"member.leave.self", "1-12", true, inRoom("public", members(bob, "join"), memberEv(bob, bob, "leave", nil))},
	{"member.leave.self", "1-12", true, inRoom("public", members(bob, "invite"), memberEv(bob, bob, "leave", nil))},
	{"member.leave.self", "7-12", true, inRoom("knock", members(bob, "knock"), memberEv(bob, bob, "leave", nil))},
	{"member.leave.self", "1-6", false, inRoom("knock", members(bob, "knock"), memberEv(bob, bob, "leave", nil))},
	{"member.leave.self", "1-12", false, inRoom("public", members(bob, "ban"), memberEv(bob, bob, "leave", nil))},
	{"member.leave.self", "1-12", false, inRoom("public", nil, memberEv(bob, bob, "leave", nil))},
	{"member.leave.sender_not_joined", "1-12", false, inRoom("public", members(bob, "join"), memberEv(carol, bob, "leave", nil))},
	{"member.leave.unban_level", "1-12", false, inRoom("public", then(members(bob, "ban", carol, "join"), pl(map[string]any{"users": map[string]any{carol: 60}, "kick": 0, "ban": 70})), memberEv(carol, bob, "leave", nil))},
	{"member.leave.kick", "1-12", true, inRoom("public", members(bob, "ban"), memberEv(alice, bob, "leave", nil))},
	{"member.leave.kick", "1-12", true, inRoom("public", members(bob, "join"), memberEv(alice, bob, "leave", nil))},
	{"member.leave.kick", "1-12", false, inRoom("public", then(members(bob, "join", carol, "join"), pl(map[string]any{"users": map[string]any{carol: 50, bob: 50}})), memberEv(carol, bob, "leave", nil))},
	{"member.leave.kick", "1-12", false, inRoom("public", then(members(bob, "join", carol, "join"), pl(map[string]any{"users": map[string]any{carol: 40}, "kick": 45})), memberEv(carol, bob, "leave", nil))},

	// Bans.
	{"member.ban.level", "1-12", true, inRoom("public", members(bob, "join"), memberEv(alice, bob, "ban", nil))},
	{"member.ban.level", "1-12", true, inRoom("public", nil, memberEv(alice, bob, "ban", nil))},
	{"member.ban.level", "1-12", false, inRoom("public", then(members(bob, "join", carol, "join"), pl(map[string]any{"users": map[string]any{carol: 50, bob: 50}})), memberEv(carol, bob, "ban", nil))},
	{"member.ban.level", "1-12", false, inRoom("public", then(members(carol, "join"), pl(map[string]any{"users": map[string]any{carol: 49}})), memberEv(carol, bob, "ban", nil))},
	{"member.ban.sender_not_joined", "1-12", false, inRoom("public", nil, memberEv(carol, bob, "ban", nil))},

	// Knocks.
	{"member.knock.membership", "7-12", true, inRoom("knock", nil, memberEv(bob, bob, "knock", nil))},
	{"member.knock.membership", "7-12", true, inRoom("knock", members(bob, "leave"), memberEv(bob, bob, "knock", nil))},
	{"member.knock.membership", "10-12", true, inRoom("knock_restricted", nil, memberEv(bob, bob, "knock", nil))},
	{"member.knock.membership", "7-12", false, inRoom("knock", members(bob, "ban"), memberEv(bob, bob, "knock", nil))},
	{"member.knock.membership", "7-12", false, inRoom("knock", members(bob, "invite"), memberEv(bob, bob, "knock", nil))},
	{"member.knock.membership", "7-12", false, inRoom("knock", members(bob, "join"), memberEv(bob, bob, "knock", nil))},
	{"member.knock.join_rule", "7-12", false, inRoom("public", nil, memberEv(bob, bob, "knock", nil))},
	{"member.knock.join_rule", "7-9", false, inRoom("knock_restricted", nil, memberEv(bob, bob, "knock", nil))},
	{"member.knock.sender_not_state_key", "7-12", false, inRoom("knock", nil, memberEv(alice, bob, "knock", nil))},
	{"member.unknown", "1-6", false, inRoom("knock", nil, memberEv(bob, bob, "knock", nil))},
	{"member.unknown", "1-12", false, inRoom("public", nil, memberEv(bob, bob, "wave", nil))},

	// Everything else needs a joined sender.
	{"sender.not_joined", "1-12", false, inRoom("public", nil, msg(bob))},
	{"sender.not_joined", "1-12", false, inRoom("public", members(bob, "invite"), msg(bob))},
	{"default", "1-12", true, inRoom("public", members(bob, "join"), msg(bob))},

	{"third_party_invite.level", "1-12", true, inRoom("invite", nil, state(stateres.MRoomThirdPartyInvite, alice, "t", map[string]any{}))},
	{"third_party_invite.level", "1-12", false, inRoom("invite", then(members(bob, "join"), pl(map[string]any{"users": map[string]any{alice: 100}, "invite": 5})), state(stateres.MRoomThirdPartyInvite, bob, "t", map[string]any{}))},

	{"event.level", "1-12", false, inRoom("public", members(bob, "join"), state("m.room.name", bob, "", map[string]any{"name": "x"}))},
	{"event.level", "1-12", false, inRoom("public", then(members(bob, "join"), pl(map[string]any{"users": map[string]any{alice: 100}, "events_default": 1})), msg(bob))},
	{"event.level", "1-12", false, inRoom("public", then(members(bob, "join"), pl(map[string]any{"users": map[string]any{alice: 100}, "events": map[string]any{"m.room.message": 1}})), msg(bob))},
	{"default", "1-12", true, inRoom("public", then(members(bob, "join"), pl(map[string]any{"users": map[string]any{alice: 100}, "state_default": 0})), state("m.room.name", bob, "", map[string]any{"name": "x"}))},
	{"event.state_key", "1-12", false, inRoom("public", nil, state("m.custom", alice, bob, map[string]any{}))},
	{"default", "1-12", true, inRoom("public", nil, state("m.custom", alice, alice, map[string]any{}))},

	// Power levels.
	{"power_levels.initial", "1-12", true, func(t *testing.T, v string) (stateres.PDU, AuthEvents) {
		r := newBareRoom(t, v, nil)
		r.setMember(alice, "join")
		c := map[string]any{"users": map[string]any{bob: 100}}
		return r.newEvent(stateres.MRoomPowerLevels, alice, sk(""), c), r.authEvents()
	}},
	{"power_levels.users", "1-12", false, inRoom("public", nil, state(stateres.MRoomPowerLevels, alice, "", map[string]any{"users": map[string]any{"bob": 1}}))},
	{"power_levels.users", "1-12", false, inRoom("public", nil, state(stateres.MRoomPowerLevels, alice, "", map[string]any{"users": []any{}}))},
	{"power_levels.users", "1-12", false, inRoom("public", nil, state(stateres.MRoomPowerLevels, alice, "", `{"users":{"@bob:b.test":"x"}}`))},
	{"power_levels.users", "10-12", false, inRoom("public", nil, state(stateres.MRoomPowerLevels, alice, "", `{"users":{"@bob:b.test":"10"}}`))},
	{"power_levels.users", "6-12", false, inRoom("public", nil, state(stateres.MRoomPowerLevels, alice, "", `{"users":{"@bob:b.test":10.5}}`))},
	{"power_levels.allowed", "1-9", true, inRoom("public", nil, state(stateres.MRoomPowerLevels, alice, "", `{"users":{"@alice:a.test":" +0100 ","@bob:b.test":"10"},"ban":"50"}`))},
	{"power_levels.allowed", "1-5", true, inRoom("public", nil, state(stateres.MRoomPowerLevels, alice, "", `{"users":{"@alice:a.test":100.9,"@bob:b.test":1e1}}`))},
	{"power_levels.levels", "10-12", false, inRoom("public", nil, state(stateres.MRoomPowerLevels, alice, "", `{"ban":"50"}`))},
	{"power_levels.levels", "10-12", false, inRoom("public", nil, state(stateres.MRoomPowerLevels, alice, "", `{"kick":null}`))},
	{"power_levels.maps", "10-12", false, inRoom("public", nil, state(stateres.MRoomPowerLevels, alice, "", `{"events":{"m.room.name":"50"}}`))},
	{"power_levels.maps", "10-12", false, inRoom("public", nil, state(stateres.MRoomPowerLevels, alice, "", `{"notifications":[]}`))},
	{"power_levels.unreadable", "1-9", false, inRoom("public", nil, state(stateres.MRoomPowerLevels, alice, "", `{"ban":"fifty","users":{"@alice:a.test":100}}`))},
	{"power_levels.creators", "12", false, inRoom("public", nil, state(stateres.MRoomPowerLevels, alice, "", map[string]any{"users": map[string]any{alice: 100}}))},
	{"power_levels.creators", "12", false, func(t *testing.T, v string) (stateres.PDU, AuthEvents) {
		r := newBareRoom(t, v, map[string]any{"additional_creators": []string{bob}})
		r.setMember(alice, "join")
		return r.newEvent(stateres.MRoomPowerLevels, alice, sk(""), map[string]any{"users": map[string]any{bob: 1}}), r.authEvents()
	}},
	{"power_levels.allowed", "1-12", true, inRoom("public", nil, state(stateres.MRoomPowerLevels, alice, "", map[string]any{"users": usersWithAlice(map[string]any{bob: 100}), "ban": 100, "events": map[string]any{"m.room.name": 100}}))},
	{"power_levels.top_level", "1-12", false, inRoom("public", then(members(carol, "join"), pl(map[string]any{"users": usersWithAlice(map[string]any{carol: 50}), "state_default": 0, "kick": 60})),
		state(stateres.MRoomPowerLevels, carol, "", map[string]any{"users": usersWithAlice(map[string]any{carol: 50}), "state_default": 0}))},
	{"power_levels.top_level", "1-12", false, inRoom("public", then(members(carol, "join"), pl(map[string]any{"users": usersWithAlice(map[string]any{carol: 50}), "state_default": 0})),
		state(stateres.MRoomPowerLevels, carol, "", map[string]any{"users": usersWithAlice(map[string]any{carol: 50}), "state_default": 0, "ban": 51}))},
	{"power_levels.allowed", "1-12", true, inRoom("public", then(members(carol, "join"), pl(map[string]any{"users": usersWithAlice(map[string]any{carol: 50}), "state_default": 0, "kick": 60})),
		state(stateres.MRoomPowerLevels, carol, "", map[string]any{"users": usersWithAlice(map[string]any{carol: 50}), "state_default": 0, "kick": 60, "ban": 50}))},
	{"power_levels.events_old", "1-12", false, inRoom("public", then(members(carol, "join"), pl(map[string]any{"users": usersWithAlice(map[string]any{carol: 50}), "state_default": 0, "events": map[string]any{"m.room.name": 60}})),
		state(stateres.MRoomPowerLevels, carol, "", map[string]any{"users": usersWithAlice(map[string]any{carol: 50}), "state_default": 0}))},
	{"power_levels.events_new", "1-12", false, inRoom("public", then(members(carol, "join"), pl(map[string]any{"users": usersWithAlice(map[string]any{carol: 50}), "state_default": 0})),
		state(stateres.MRoomPowerLevels, carol, "", map[string]any{"users": usersWithAlice(map[string]any{carol: 50}), "state_default": 0, "events": map[string]any{"m.room.name": 51}}))},
	{"power_levels.events_old", "6-12", false, inRoom("public", then(members(carol, "join"), pl(map[string]any{"users": usersWithAlice(map[string]any{carol: 50}), "state_default": 0, "notifications": map[string]any{"room": 60}})),
		state(stateres.MRoomPowerLevels, carol, "", map[string]any{"users": usersWithAlice(map[string]any{carol: 50}), "state_default": 0, "notifications": map[string]any{"room": 0}}))},
	{"power_levels.allowed", "1-5", true, inRoom("public", then(members(carol, "join"), pl(map[string]any{"users": usersWithAlice(map[string]any{carol: 50}), "state_default": 0, "notifications": map[string]any{"room": 60}})),
		state(stateres.MRoomPowerLevels, carol, "", map[string]any{"users": usersWithAlice(map[string]any{carol: 50}), "state_default": 0, "notifications": map[string]any{"room": 0}}))},
	{"power_levels.events_new", "6-12", false, inRoom("public", then(members(carol, "join"), pl(map[string]any{"users": usersWithAlice(map[string]any{carol: 50}), "state_default": 0})),
		state(stateres.MRoomPowerLevels, carol, "", map[string]any{"users": usersWithAlice(map[string]any{carol: 50}), "state_default": 0, "notifications": map[string]any{"room": 99}}))},
	{"power_levels.users_old", "1-12", false, inRoom("public", then(members(carol, "join"), pl(map[string]any{"users": usersWithAlice(map[string]any{carol: 50, bob: 50}), "state_default": 0})),
		state(stateres.MRoomPowerLevels, carol, "", map[string]any{"users": usersWithAlice(map[string]any{carol: 50, bob: 10}), "state_default": 0}))},
	{"power_levels.users_old", "1-12", false, inRoom("public", then(members(carol, "join"), pl(map[string]any{"users": usersWithAlice(map[string]any{carol: 50, bob: 50}), "state_default": 0})),
		state(stateres.MRoomPowerLevels, carol, "", map[string]any{"users": usersWithAlice(map[string]any{carol: 50}), "state_default": 0}))},
	{"power_levels.allowed", "1-12", true, inRoom("public", then(members(carol, "join"), pl(map[string]any{"users": usersWithAlice(map[string]any{carol: 50, bob: 49}), "state_default": 0})),
		state(stateres.MRoomPowerLevels, carol, "", map[string]any{"users": usersWithAlice(map[string]any{carol: 10, bob: 50, dave: 50}), "state_default": 0}))},
	{"power_levels.users_new", "1-12", false, inRoom("public", then(members(carol, "join"), pl(map[string]any{"users": usersWithAlice(map[string]any{carol: 50}), "state_default": 0})),
		state(stateres.MRoomPowerLevels, carol, "", map[string]any{"users": usersWithAlice(map[string]any{carol: 51}), "state_default": 0}))},

	// Redactions: the redact level is an auth rule only in v1 and v2.
	{"redaction.level", "1-2", true, inRoom("public", nil, redaction(alice, "$x:b.test"))},
	{"redaction.same_domain", "1-2", true, inRoom("public", members(bob, "join"), redaction(bob, "$x:b.test"))},
	{"redaction.level", "1-2", false, inRoom("public", members(bob, "join"), redaction(bob, "$x:c.test"))},
	{"default", "3-12", true, inRoom("public", members(bob, "join"), redaction(bob, "$xyz"))},
	{"event.level", "3-12", false, inRoom("public", then(members(bob, "join"), pl(map[string]any{"users": usersWithAlice(nil), "events": map[string]any{"m.room.redaction": 10}})), redaction(bob, "$xyz"))},
}

// usersWithAlice marks a users map to which room.newEvent adds alice at
// level 100, except in v12 where she is a creator and may not be listed.
func usersWithAlice(m map[string]any) usersMap { return usersMap(m) }

type usersMap map[string]any

func redaction(sender, target string) func(r *room) stateres.PDU {
	return func(r *room) stateres.PDU {
		c := map[string]any{}
		if r.v.V11Semantics {
			c["redacts"] = target
		}
		e := r.newEvent(stateres.MRoomRedaction, sender, nil, c)
		e.redacts = target
		return e
	}
}

func TestRules(t *testing.T) {
	for _, rc := range ruleCases {
		for _, v := range versionsIn(rc.versions) {
			t.Run(rc.clause+"/v"+v, func(t *testing.T) {
				ev, ae := rc.build(t, v)
				allowedBy, rej := decide(ev, ae)
				if rc.allow {
					if rej != nil {
						t.Fatalf("want allowed by %s, got %v", rc.clause, rej)
					}
					if allowedBy != rc.clause {
						t.Fatalf("allowed by %s, want %s", allowedBy, rc.clause)
					}
					if err := Check(ev, ae); err != nil {
						t.Fatalf("Check: %v", err)
					}
					return
				}
				if rej == nil {
					t.Fatalf("want rejection by %s, allowed by %s", rc.clause, allowedBy)
				}
				if rej.Clause != rc.clause {
					t.Fatalf("rejected by %s (%s), want %s", rej.Clause, rej.Reason, rc.clause)
				}
				var got *Rejection
				if err := Check(ev, ae); !errors.As(err, &got) || got.Clause != rc.clause {
					t.Fatalf("Check returned %v", err)
				}
			})
		}
	}
}
