package auth

import (
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/engram-hs/engram/stateres"
	"github.com/engram-hs/engram/stateres/signing"
)

// Check applies the authorisation rules of ev's room version to ev against
// the state in authEvents. It returns nil when the event is allowed and a
// *Rejection naming the failed clause otherwise.
//
// Check covers every rule except the ones about the auth_events list itself
// (duplicates, selection, rejected entries), which CheckAuthEventsList
// covers; of those it does check that the state it reads (create event,
// power levels, join rules, members, third-party invites) belongs to ev's
// room, and that a create event is present.
func Check(ev stateres.PDU, authEvents AuthEvents) error {
	if _, rej := decide(ev, authEvents); rej != nil {
		return rej
	}
	return nil
}

// CheckSoftFail is the check against the current state of the room (step
// 6 of "Checks performed on receipt of a PDU"). Call it only for events that
// passed Check against their auth events and against the state before them:
// a failure here means the event is soft-failed, not rejected, and the
// error is a *SoftFailure wrapping the Rejection.
func CheckSoftFail(ev stateres.PDU, currentState AuthEvents) error {
	if _, rej := decide(ev, currentState); rej != nil {
		return &SoftFailure{Rejection: rej}
	}
	return nil
}

// checker holds one evaluation: the event, its version and the state read
// for it.
type checker struct {
	ev     stateres.PDU
	v      *stateres.RoomVersion
	ae     AuthEvents
	create stateres.PDU
	pl     *PowerLevels
}

// decide runs the rules and returns the clause that allowed the event, or
// the rejection. Tests use the allowing clause to prove which rule decided.
func decide(ev stateres.PDU, ae AuthEvents) (string, *Rejection) {
	c := &checker{ev: ev, v: ev.Version(), ae: ae}
	if c.v == nil {
		return "", &Rejection{Clause: "version", Reason: "the event has no room version"}
	}
	if ev.Type() == stateres.MRoomCreate {
		return c.checkCreate()
	}
	if rej := c.loadCreate(); rej != nil {
		return "", rej
	}

	var fc createContent
	_ = json.Unmarshal(c.create.Content(), &fc)
	if string(fc.Federate) == "false" && domainOf(ev.Sender()) != domainOf(c.create.Sender()) {
		return "", c.reject("federate", fmt.Sprintf("the room does not federate and %s is not on the creator's server %s", ev.Sender(), domainOf(c.create.Sender())))
	}

	if c.v.SpecialCaseAliases && ev.Type() == stateres.MRoomAliases {
		return c.checkAliases()
	}

	plEv, rej := c.inRoom(ae.PowerLevels())
	if rej != nil {
		return "", rej
	}
	c.pl = ParsePowerLevels(c.v, c.create, plEv)

	if ev.Type() == stateres.MRoomMember {
		return c.checkMember()
	}

	senderMem, rej := c.inRoom(ae.Member(ev.Sender()))
	if rej != nil {
		return "", rej
	}
	if m := membershipOf(senderMem); m != membershipJoin {
		return "", c.reject("sender.not_joined", fmt.Sprintf("%s is not joined to the room (membership %q)", ev.Sender(), m))
	}
	senderLevel := c.pl.UserLevel(ev.Sender())

	if ev.Type() == stateres.MRoomThirdPartyInvite {
		if senderLevel.AtLeast(c.pl.Invite()) {
			return "third_party_invite.level", nil
		}
		return "", c.reject("third_party_invite.level", fmt.Sprintf("sender level %s is below the invite level %s", senderLevel, c.pl.Invite()))
	}

	if need := c.pl.EventLevel(ev.Type(), ev.StateKey() != nil); need.Above(senderLevel) {
		return "", c.reject("event.level", fmt.Sprintf("sending %s needs level %s, sender has %s", ev.Type(), need, senderLevel))
	}

	if sk := ev.StateKey(); sk != nil && strings.HasPrefix(*sk, "@") && *sk != ev.Sender() {
		return "", c.reject("event.state_key", fmt.Sprintf("state_key %q is another user's ID", *sk))
	}

	if ev.Type() == stateres.MRoomPowerLevels {
		return c.checkPowerLevels(plEv, senderLevel)
	}

	// Rooms v1 and v2 authorise redactions by the redact level or by the
	// servers of the two event IDs; from v3, event IDs carry no server and
	// the check moved to "Handling redactions", outside the auth rules.
	if c.v.EventIDFormat == stateres.EventIDServerAssigned && ev.Type() == stateres.MRoomRedaction {
		if senderLevel.AtLeast(c.pl.Redact()) {
			return "redaction.level", nil
		}
		if domainOf(ev.Redacts()) == domainOf(ev.EventID()) {
			return "redaction.same_domain", nil
		}
		return "", c.reject("redaction.level", fmt.Sprintf("sender level %s is below the redact level %s and %s is from another server", senderLevel, c.pl.Redact(), ev.Redacts()))
	}
	return "default", nil
}

func (c *checker) reject(clause, reason string) *Rejection { return reject(c.v, clause, reason) }

// inRoom passes through a state event read for the check, rejecting it when
// it belongs to another room (auth events rule: "If any event in
// auth_events has a room_id which does not match that of the event being
// authorised, reject").
func (c *checker) inRoom(ev stateres.PDU) (stateres.PDU, *Rejection) {
	if ev != nil && ev.RoomID() != c.ev.RoomID() {
		return nil, c.reject("auth_events.room_id", fmt.Sprintf("auth event %s is in room %s, not %s", ev.EventID(), ev.RoomID(), c.ev.RoomID()))
	}
	return ev, nil
}

// loadCreate finds the room's create event. Before v12 it must be among
// the auth events; in v12 the room ID names it.
func (c *checker) loadCreate() *Rejection {
	create := c.ae.Create()
	if c.v.RoomIDFromCreate {
		if create == nil || create.Type() != stateres.MRoomCreate || create.RoomID() != c.ev.RoomID() {
			return c.reject("room_id.create", fmt.Sprintf("room ID %s is not the ID of an accepted create event", c.ev.RoomID()))
		}
		c.create = create
		return nil
	}
	if create == nil {
		return c.reject("auth_events.no_create", "there is no m.room.create event among the auth events")
	}
	var rej *Rejection
	c.create, rej = c.inRoom(create)
	return rej
}

func (c *checker) checkCreate() (string, *Rejection) {
	ev := c.ev
	if n := len(ev.PrevEventIDs()); n > 0 {
		return "", c.reject("create.prev_events", fmt.Sprintf("a create event has no prev_events, this one has %d", n))
	}
	if c.v.RoomIDFromCreate {
		var top struct {
			RoomID json.RawMessage `json:"room_id"`
		}
		if err := json.Unmarshal(ev.JSON(), &top); err != nil || top.RoomID != nil {
			return "", c.reject("create.room_id", "a create event in this room version carries no room_id")
		}
	} else if domainOf(ev.RoomID()) != domainOf(ev.Sender()) {
		return "", c.reject("create.room_id_domain", fmt.Sprintf("room ID %s is not on the sender's server %s", ev.RoomID(), domainOf(ev.Sender())))
	}
	var cc createContent
	if err := json.Unmarshal(ev.Content(), &cc); err != nil {
		return "", c.reject("create.room_version", "content is not a JSON object")
	}
	if cc.RoomVersion != nil {
		id, ok := jsonString(cc.RoomVersion)
		if _, known := stateres.Version(id); !ok || !known {
			return "", c.reject("create.room_version", "content.room_version "+string(cc.RoomVersion)+" is not a recognised room version")
		}
	}
	if !c.v.V11Semantics && cc.Creator == nil {
		return "", c.reject("create.creator", "content has no creator")
	}
	if c.v.PrivilegedCreators && cc.AdditionalCreators != nil {
		var list []json.RawMessage
		if err := json.Unmarshal(cc.AdditionalCreators, &list); err != nil || list == nil {
			return "", c.reject("create.additional_creators", "content.additional_creators is not an array")
		}
		for _, raw := range list {
			if u, ok := jsonString(raw); !ok || !validUserID(u) {
				return "", c.reject("create.additional_creators", "content.additional_creators has an entry that is not a valid user ID: "+string(raw))
			}
		}
	}
	return "create", nil
}

func (c *checker) checkAliases() (string, *Rejection) {
	sk := c.ev.StateKey()
	if sk == nil {
		return "", c.reject("aliases.state_key", "m.room.aliases has no state_key")
	}
	if *sk != domainOf(c.ev.Sender()) {
		return "", c.reject("aliases.domain", fmt.Sprintf("state_key %q is not the sender's server %s", *sk, domainOf(c.ev.Sender())))
	}
	return "aliases", nil
}

// creator is the user the "only previous event is the create event" join
// rule names: content.creator before v11, the create event's sender after.
func (c *checker) creator() string {
	if c.v.V11Semantics {
		return c.create.Sender()
	}
	var cc createContent
	_ = json.Unmarshal(c.create.Content(), &cc)
	s, _ := jsonString(cc.Creator)
	return s
}

func (c *checker) checkMember() (string, *Rejection) {
	ev := c.ev
	sk := ev.StateKey()
	var mc memberContent
	_ = json.Unmarshal(ev.Content(), &mc)
	membership, hasMembership := jsonString(mc.Membership)
	if sk == nil || !hasMembership {
		return "", c.reject("member.state_key_or_membership", "a member event needs a state_key and a string content.membership")
	}
	target := *sk
	sender := ev.Sender()

	if c.v.RestrictedJoins && mc.JoinAuthorisedVia != nil {
		via, _ := jsonString(mc.JoinAuthorisedVia)
		if via == "" || !signedBy(ev, domainOf(via)) {
			return "", c.reject("member.authorised_via.signature", fmt.Sprintf("join_authorised_via_users_server %s but the event carries no signature from that user's server", string(mc.JoinAuthorisedVia)))
		}
	}

	senderEv, rej := c.inRoom(c.ae.Member(sender))
	if rej != nil {
		return "", rej
	}
	senderMem := membershipOf(senderEv)
	targetMem := senderMem
	if target != sender {
		targetEv, rej := c.inRoom(c.ae.Member(target))
		if rej != nil {
			return "", rej
		}
		targetMem = membershipOf(targetEv)
	}

	switch membership {
	case membershipJoin:
		return c.checkJoin(mc, target, senderMem)
	case membershipInvite:
		return c.checkInvite(mc, target, senderMem, targetMem)
	case membershipLeave:
		return c.checkLeave(target, senderMem, targetMem)
	case membershipBan:
		if senderMem != membershipJoin {
			return "", c.reject("member.ban.sender_not_joined", fmt.Sprintf("%s is not joined (membership %q)", sender, senderMem))
		}
		sl, tl := c.pl.UserLevel(sender), c.pl.UserLevel(target)
		if sl.AtLeast(c.pl.Ban()) && tl.Cmp(sl) < 0 {
			return "member.ban.level", nil
		}
		return "", c.reject("member.ban.level", fmt.Sprintf("sender level %s, ban level %s, target level %s", sl, c.pl.Ban(), tl))
	case membershipKnock:
		if c.v.Knocking {
			return c.checkKnock(target, senderMem)
		}
	}
	return "", c.reject("member.unknown", fmt.Sprintf("membership %q is unknown in room version %s", membership, c.v.ID))
}

func (c *checker) checkJoin(mc memberContent, target, senderMem string) (string, *Rejection) {
	ev := c.ev
	if prev := ev.PrevEventIDs(); len(prev) == 1 && prev[0] == c.create.EventID() && target == c.creator() {
		return "member.join.creator", nil
	}
	if ev.Sender() != target {
		return "", c.reject("member.join.sender_not_state_key", fmt.Sprintf("%s cannot join for %s", ev.Sender(), target))
	}
	if senderMem == membershipBan {
		return "", c.reject("member.join.banned", ev.Sender()+" is banned")
	}
	jrEv, rej := c.inRoom(c.ae.JoinRules())
	if rej != nil {
		return "", rej
	}
	rule := joinRuleOf(jrEv)
	if rule == joinRuleInvite || (c.v.Knocking && rule == joinRuleKnock) {
		if senderMem == membershipInvite || senderMem == membershipJoin {
			return "member.join.invited", nil
		}
	}
	if c.v.RestrictedJoins && (rule == joinRuleRestricted || (c.v.KnockRestricted && rule == joinRuleKnockRestricted)) {
		if senderMem == membershipJoin || senderMem == membershipInvite {
			return "member.join.restricted.member", nil
		}
		via, _ := jsonString(mc.JoinAuthorisedVia)
		if via == "" {
			return "", c.reject("member.join.restricted.authoriser", "a restricted join needs join_authorised_via_users_server")
		}
		viaEv, rej := c.inRoom(c.ae.Member(via))
		if rej != nil {
			return "", rej
		}
		if m := membershipOf(viaEv); m != membershipJoin {
			return "", c.reject("member.join.restricted.authoriser", fmt.Sprintf("authorising user %s is not joined (membership %q)", via, m))
		}
		if l := c.pl.UserLevel(via); !l.AtLeast(c.pl.Invite()) {
			return "", c.reject("member.join.restricted.authoriser", fmt.Sprintf("authorising user %s has level %s, below the invite level %s", via, l, c.pl.Invite()))
		}
		return "member.join.restricted.authorised", nil
	}
	if rule == joinRulePublic {
		return "member.join.public", nil
	}
	return "", c.reject("member.join.otherwise", fmt.Sprintf("join rule %q does not let %s (membership %q) join", rule, ev.Sender(), senderMem))
}

func (c *checker) checkInvite(mc memberContent, target, senderMem, targetMem string) (string, *Rejection) {
	ev := c.ev
	if mc.ThirdPartyInvite != nil {
		return c.checkThirdPartyInvite(mc.ThirdPartyInvite, target, targetMem)
	}
	if senderMem != membershipJoin {
		return "", c.reject("member.invite.sender_not_joined", fmt.Sprintf("%s is not joined (membership %q)", ev.Sender(), senderMem))
	}
	if targetMem == membershipJoin || targetMem == membershipBan {
		return "", c.reject("member.invite.target", fmt.Sprintf("%s is already %s", target, targetMem))
	}
	if l := c.pl.UserLevel(ev.Sender()); l.AtLeast(c.pl.Invite()) {
		return "member.invite.level", nil
	} else {
		return "", c.reject("member.invite.level", fmt.Sprintf("sender level %s is below the invite level %s", l, c.pl.Invite()))
	}
}

func (c *checker) checkThirdPartyInvite(raw json.RawMessage, target, targetMem string) (string, *Rejection) {
	if targetMem == membershipBan {
		return "", c.reject("member.invite.3pid.banned", target+" is banned")
	}
	var tpi struct {
		Signed json.RawMessage `json:"signed"`
	}
	if err := json.Unmarshal(raw, &tpi); err != nil || len(tpi.Signed) == 0 || tpi.Signed[0] != '{' {
		return "", c.reject("member.invite.3pid.signed", "content.third_party_invite has no signed object")
	}
	var signed struct {
		MXID       json.RawMessage                       `json:"mxid"`
		Token      json.RawMessage                       `json:"token"`
		Signatures map[string]map[string]json.RawMessage `json:"signatures"`
	}
	_ = json.Unmarshal(tpi.Signed, &signed)
	mxid, okM := jsonString(signed.MXID)
	token, okT := jsonString(signed.Token)
	if !okM || !okT {
		return "", c.reject("member.invite.3pid.mxid_token", "signed needs string mxid and token")
	}
	if mxid != target {
		return "", c.reject("member.invite.3pid.mxid", fmt.Sprintf("signed.mxid %s is not the state_key %s", mxid, target))
	}
	inviteEv, rej := c.inRoom(c.ae.ThirdPartyInvite(token))
	if rej != nil {
		return "", rej
	}
	if inviteEv == nil {
		return "", c.reject("member.invite.3pid.no_invite_event", "no m.room.third_party_invite with state_key "+token)
	}
	if inviteEv.Sender() != c.ev.Sender() {
		return "", c.reject("member.invite.3pid.sender", fmt.Sprintf("the third-party invite was sent by %s, not %s", inviteEv.Sender(), c.ev.Sender()))
	}
	keys := thirdPartyInviteKeys(inviteEv.Content())
	for server, byKey := range signed.Signatures {
		for keyID := range byKey {
			for _, pub := range keys {
				if signing.VerifyJSON(server, keyID, pub, tpi.Signed) == nil {
					return "member.invite.3pid.signature", nil
				}
			}
		}
	}
	return "", c.reject("member.invite.3pid.signature", "no signature in signed verifies with a public key of the third-party invite")
}

// thirdPartyInviteKeys collects the public keys of an m.room.third_party_invite:
// content.public_key and content.public_keys[].public_key, unpadded base64.
func thirdPartyInviteKeys(content []byte) []ed25519.PublicKey {
	var c struct {
		PublicKey  json.RawMessage `json:"public_key"`
		PublicKeys []struct {
			PublicKey json.RawMessage `json:"public_key"`
		} `json:"public_keys"`
	}
	_ = json.Unmarshal(content, &c)
	var out []ed25519.PublicKey
	add := func(raw json.RawMessage) {
		s, ok := jsonString(raw)
		if !ok {
			return
		}
		if b, err := signing.DecodeBase64(s); err == nil && len(b) == ed25519.PublicKeySize {
			out = append(out, ed25519.PublicKey(b))
		}
	}
	add(c.PublicKey)
	for _, k := range c.PublicKeys {
		add(k.PublicKey)
	}
	return out
}

func (c *checker) checkLeave(target, senderMem, targetMem string) (string, *Rejection) {
	sender := c.ev.Sender()
	if sender == target {
		if senderMem == membershipInvite || senderMem == membershipJoin || (c.v.Knocking && senderMem == membershipKnock) {
			return "member.leave.self", nil
		}
		return "", c.reject("member.leave.self", fmt.Sprintf("%s cannot leave from membership %q", sender, senderMem))
	}
	if senderMem != membershipJoin {
		return "", c.reject("member.leave.sender_not_joined", fmt.Sprintf("%s is not joined (membership %q)", sender, senderMem))
	}
	sl, tl := c.pl.UserLevel(sender), c.pl.UserLevel(target)
	if targetMem == membershipBan && sl.Cmp(c.pl.Ban()) < 0 {
		return "", c.reject("member.leave.unban_level", fmt.Sprintf("unbanning needs the ban level %s, sender has %s", c.pl.Ban(), sl))
	}
	if sl.AtLeast(c.pl.Kick()) && tl.Cmp(sl) < 0 {
		return "member.leave.kick", nil
	}
	return "", c.reject("member.leave.kick", fmt.Sprintf("sender level %s, kick level %s, target level %s", sl, c.pl.Kick(), tl))
}

func (c *checker) checkKnock(target, senderMem string) (string, *Rejection) {
	jrEv, rej := c.inRoom(c.ae.JoinRules())
	if rej != nil {
		return "", rej
	}
	rule := joinRuleOf(jrEv)
	if rule != joinRuleKnock && !(c.v.KnockRestricted && rule == joinRuleKnockRestricted) {
		return "", c.reject("member.knock.join_rule", fmt.Sprintf("join rule %q does not allow knocking", rule))
	}
	if c.ev.Sender() != target {
		return "", c.reject("member.knock.sender_not_state_key", fmt.Sprintf("%s cannot knock for %s", c.ev.Sender(), target))
	}
	switch senderMem {
	case membershipBan, membershipInvite, membershipJoin:
		return "", c.reject("member.knock.membership", fmt.Sprintf("%s cannot knock from membership %q", target, senderMem))
	}
	return "member.knock.membership", nil
}

// signedBy reports whether ev's signatures include one by server. Whether
// that signature verifies is the signature check's business (it runs
// before the auth rules and verifies every signature an event must carry,
// including the authorising server's for restricted joins): this package
// does no key lookups.
func signedBy(ev stateres.PDU, server string) bool {
	var top struct {
		Signatures map[string]map[string]json.RawMessage `json:"signatures"`
	}
	if json.Unmarshal(ev.JSON(), &top) != nil {
		return false
	}
	return len(top.Signatures[server]) > 0
}
