package auth

import (
	"errors"
	"math"
	"strings"
	"testing"

	"github.com/engram-hs/engram/stateres"
)

func TestRuleNumbers(t *testing.T) {
	cases := []struct{ version, clause, want string }{
		{"1", "create.prev_events", "1.1"},
		{"1", "auth_events.no_create", "2.4"},
		{"1", "federate", "3"},
		{"1", "aliases.domain", "4.2"},
		{"1", "member.join.banned", "5.2.3"},
		{"1", "member.invite.3pid.mxid", "5.3.1.4"},
		{"1", "member.unknown", "5.6"},
		{"1", "sender.not_joined", "6"},
		{"1", "third_party_invite.level", "7.1"},
		{"1", "event.level", "8"},
		{"1", "event.state_key", "9"},
		{"1", "power_levels.users_new", "10.7"},
		{"1", "redaction.same_domain", "11.2"},
		{"3", "redaction.level", ""},
		{"6", "member.join.banned", "4.2.3"},
		{"6", "power_levels.events_old", "9.4"},
		{"7", "member.knock.join_rule", "4.6.1"},
		{"7", "member.unknown", "4.7"},
		{"8", "member.authorised_via.signature", "4.2.1"},
		{"8", "member.join.restricted.authoriser", "4.3.5.2"},
		{"8", "member.join.public", "4.3.6"},
		{"8", "member.unknown", "4.8"},
		{"10", "power_levels.levels", "9.1"},
		{"10", "power_levels.users", "9.3"},
		{"10", "power_levels.users_new", "9.9"},
		{"12", "create.room_id", "1.2"},
		{"12", "create.additional_creators", "1.4"},
		{"12", "room_id.create", "2"},
		{"12", "auth_events.room_id", "3.5"},
		{"12", "federate", "4"},
		{"12", "member.join.banned", "5.3.3"},
		{"12", "sender.not_joined", "6"},
		{"12", "power_levels.creators", "10.4"},
		{"12", "power_levels.initial", "10.5"},
		{"9", "power_levels.unreadable", ""},
	}
	for _, c := range cases {
		t.Run(c.clause+"/v"+c.version, func(t *testing.T) {
			if got := ruleNumber(mustVersion(t, c.version), c.clause); got != c.want {
				t.Fatalf("rule number %q, want %q", got, c.want)
			}
		})
	}
}

// Every clause the rule table covers must render as a rule number in the
// versions it applies to (except the unnumbered v1-v9 readability check).
func TestRuleTableClausesAreNumbered(t *testing.T) {
	for _, rc := range ruleCases {
		if rc.clause == "power_levels.unreadable" || rc.clause == "default" {
			continue
		}
		for _, v := range versionsIn(rc.versions) {
			if ruleNumber(mustVersion(t, v), rc.clause) == "" {
				t.Errorf("clause %s has no rule number in v%s", rc.clause, v)
			}
		}
	}
}

func TestSoftFailure(t *testing.T) {
	r := newRoom(t, "10", "public")
	r.setMember(bob, "join")
	before := NewAuthEvents(r.v, []stateres.PDU{r.create, r.state[stateres.StateKeyTuple{Type: stateres.MRoomPowerLevels}], r.state[stateres.StateKeyTuple{Type: stateres.MRoomMember, StateKey: bob}]})
	r.setMember(bob, "ban")
	ev := msg(bob)(r)
	if err := Check(ev, before); err != nil {
		t.Fatalf("the message passes its auth events: %v", err)
	}
	err := CheckSoftFail(ev, r.authEvents())
	var sf *SoftFailure
	var rej *Rejection
	if !errors.As(err, &sf) || !errors.As(err, &rej) || rej.Clause != "sender.not_joined" {
		t.Fatalf("want a soft failure wrapping sender.not_joined, got %v", err)
	}
	if !strings.Contains(err.Error(), "soft-failed") {
		t.Fatalf("error text %q", err)
	}
	if err := CheckSoftFail(msg(alice)(r), r.authEvents()); err != nil {
		t.Fatalf("alice's message is fine: %v", err)
	}
}

// listCase is a row of the auth_events list table; the name is the clause.
func TestAuthEventsList(t *testing.T) {
	type listCase struct {
		clause   string
		versions string
		build    func(r *room) (ev *fakeEvent, listed []stateres.PDU, rejected string)
	}
	get := func(r *room, typ, key string) stateres.PDU {
		return r.state[stateres.StateKeyTuple{Type: typ, StateKey: key}]
	}
	standard := func(r *room, ev *fakeEvent, extra ...stateres.PDU) []stateres.PDU {
		list := []stateres.PDU{get(r, stateres.MRoomPowerLevels, ""), get(r, stateres.MRoomMember, ev.sender)}
		if !r.v.RoomIDFromCreate {
			list = append(list, r.create)
		}
		list = append(list, extra...)
		kept := list[:0]
		for _, a := range list {
			if a != nil {
				kept = append(kept, a)
			}
		}
		list = kept
		ev.auth = nil
		for _, a := range list {
			ev.auth = append(ev.auth, a.EventID())
		}
		return list
	}
	cases := []listCase{
		{"ok", "1-12", func(r *room) (*fakeEvent, []stateres.PDU, string) {
			ev := msg(alice)(r).(*fakeEvent)
			return ev, standard(r, ev), ""
		}},
		{"ok", "1-12", func(r *room) (*fakeEvent, []stateres.PDU, string) {
			r.setMember(bob, "invite")
			ev := r.member(bob, bob, "join", nil)
			return ev, standard(r, ev, get(r, stateres.MRoomJoinRules, "")), ""
		}},
		{"ok", "8-12", func(r *room) (*fakeEvent, []stateres.PDU, string) {
			r.add(r.newEvent(stateres.MRoomJoinRules, alice, sk(""), map[string]any{"join_rule": "restricted"}))
			ev := r.member(bob, bob, "join", map[string]any{"join_authorised_via_users_server": alice})
			ev.signedBy = []string{"a.test"}
			return ev, standard(r, ev, get(r, stateres.MRoomJoinRules, ""), get(r, stateres.MRoomMember, alice)), ""
		}},
		{"auth_events.selection", "1-7", func(r *room) (*fakeEvent, []stateres.PDU, string) {
			ev := r.member(bob, bob, "join", map[string]any{"join_authorised_via_users_server": alice})
			return ev, standard(r, ev, get(r, stateres.MRoomJoinRules, ""), get(r, stateres.MRoomMember, alice)), ""
		}},
		{"auth_events.selection", "1-12", func(r *room) (*fakeEvent, []stateres.PDU, string) {
			ev := msg(alice)(r).(*fakeEvent)
			return ev, standard(r, ev, get(r, stateres.MRoomJoinRules, "")), ""
		}},
		{"auth_events.selection", "12", func(r *room) (*fakeEvent, []stateres.PDU, string) {
			ev := msg(alice)(r).(*fakeEvent)
			return ev, standard(r, ev, r.create), ""
		}},
		{"auth_events.selection", "1-12", func(r *room) (*fakeEvent, []stateres.PDU, string) {
			ev := msg(alice)(r).(*fakeEvent)
			other := msg(alice)(r)
			return ev, standard(r, ev, other), ""
		}},
		{"auth_events.duplicate", "1-12", func(r *room) (*fakeEvent, []stateres.PDU, string) {
			ev := msg(alice)(r).(*fakeEvent)
			second := r.member(alice, alice, "join", nil)
			return ev, standard(r, ev, second), ""
		}},
		{"auth_events.duplicate", "1-12", func(r *room) (*fakeEvent, []stateres.PDU, string) {
			ev := msg(alice)(r).(*fakeEvent)
			list := standard(r, ev)
			ev.auth = append(ev.auth, ev.auth[0])
			return ev, list, ""
		}},
		{"auth_events.rejected", "1-12", func(r *room) (*fakeEvent, []stateres.PDU, string) {
			ev := msg(alice)(r).(*fakeEvent)
			list := standard(r, ev)
			return ev, list, get(r, stateres.MRoomPowerLevels, "").EventID()
		}},
		{"auth_events.no_create", "1-11", func(r *room) (*fakeEvent, []stateres.PDU, string) {
			ev := msg(alice)(r).(*fakeEvent)
			list := standard(r, ev)[:2]
			ev.auth = ev.auth[:2]
			return ev, list, ""
		}},
		{"auth_events.room_id", "1-12", func(r *room) (*fakeEvent, []stateres.PDU, string) {
			ev := msg(alice)(r).(*fakeEvent)
			list := standard(r, ev)
			ev.room = "!other:a.test"
			return ev, list, ""
		}},
		{"missing", "1-12", func(r *room) (*fakeEvent, []stateres.PDU, string) {
			ev := msg(alice)(r).(*fakeEvent)
			list := standard(r, ev)
			return ev, list[1:], ""
		}},
	}
	for _, c := range cases {
		for _, v := range versionsIn(c.versions) {
			t.Run(c.clause+"/v"+v, func(t *testing.T) {
				r := newRoom(t, v, "invite")
				ev, listed, rejectedID := c.build(r)
				isRejected := func(id string) bool { return id == rejectedID }
				err := CheckAuthEventsList(ev, listed, isRejected)
				var rej *Rejection
				switch c.clause {
				case "ok":
					if err != nil {
						t.Fatalf("want ok, got %v", err)
					}
					if err := CheckWithAuthEvents(ev, listed, r.create, isRejected); err != nil {
						t.Fatalf("CheckWithAuthEvents: %v", err)
					}
				case "missing":
					if err == nil || errors.As(err, &rej) || !strings.Contains(err.Error(), "fetch") {
						t.Fatalf("want a plain error asking to fetch, got %v", err)
					}
				default:
					if !errors.As(err, &rej) || rej.Clause != c.clause {
						t.Fatalf("want rejection %s, got %v", c.clause, err)
					}
				}
			})
		}
	}
}

func TestPowerLevelsDefaults(t *testing.T) {
	for _, vid := range stateres.KnownVersions() {
		t.Run("v"+vid, func(t *testing.T) {
			r := newBareRoom(t, vid, nil)
			p := ParsePowerLevels(r.v, r.create, nil)
			want := LevelOf(100)
			if r.v.PrivilegedCreators {
				want = Infinite
			}
			if got := p.UserLevel(alice); got != want {
				t.Fatalf("creator level %v, want %v", got, want)
			}
			checks := []struct {
				name      string
				got, want Level
			}{
				{"others", p.UserLevel(bob), LevelOf(0)},
				{"ban", p.Ban(), LevelOf(50)}, {"kick", p.Kick(), LevelOf(50)}, {"redact", p.Redact(), LevelOf(50)},
				{"invite", p.Invite(), LevelOf(0)}, {"state_default", p.StateDefault(), LevelOf(50)},
				{"events_default", p.EventsDefault(), LevelOf(0)}, {"users_default", p.UsersDefault(), LevelOf(0)},
				{"state event", p.EventLevel("m.room.name", true), LevelOf(50)},
				{"message", p.EventLevel("m.room.message", false), LevelOf(0)},
				{"notifications room", p.Notifications("room"), LevelOf(50)},
			}
			for _, c := range checks {
				if c.got != c.want {
					t.Errorf("%s: %v, want %v", c.name, c.got, c.want)
				}
			}
			if p.Exists() {
				t.Fatal("no power levels event, yet Exists")
			}
		})
	}
}

func TestPowerLevelsParse(t *testing.T) {
	content := `{"users":{"@bob:b.test":"  -007 ","@carol:c.test":12.9},"users_default":"5","events":{"m.room.name":"+60"},"notifications":{"room":"20"},"kick":"bad"}`
	cases := []struct {
		version             string
		bob, carol, dflt, n Level
		kick, room          Level
	}{
		{"1", LevelOf(-7), LevelOf(12), LevelOf(5), LevelOf(60), LevelOf(50), LevelOf(20)},
		{"6", LevelOf(-7), LevelOf(5), LevelOf(5), LevelOf(60), LevelOf(50), LevelOf(20)},
		{"10", LevelOf(0), LevelOf(0), LevelOf(0), LevelOf(50), LevelOf(50), LevelOf(50)},
	}
	for _, c := range cases {
		t.Run("v"+c.version, func(t *testing.T) {
			r := newBareRoom(t, c.version, nil)
			ev := r.newEvent(stateres.MRoomPowerLevels, alice, sk(""), content)
			p := ParsePowerLevels(r.v, r.create, ev)
			if got := p.UserLevel(bob); got != c.bob {
				t.Errorf("bob %v want %v", got, c.bob)
			}
			if got := p.UserLevel(carol); got != c.carol {
				t.Errorf("carol %v want %v", got, c.carol)
			}
			if got := p.UserLevel(dave); got != c.dflt {
				t.Errorf("users_default %v want %v", got, c.dflt)
			}
			if got := p.UserLevel(alice); got != c.dflt {
				t.Errorf("alice (creator, not listed) %v want %v", got, c.dflt)
			}
			if got := p.EventLevel("m.room.name", true); got != c.n {
				t.Errorf("m.room.name %v want %v", got, c.n)
			}
			if got := p.Kick(); got != c.kick {
				t.Errorf("kick %v want %v", got, c.kick)
			}
			if got := p.Notifications("room"); got != c.room {
				t.Errorf("notifications room %v want %v", got, c.room)
			}
			if ValidatePowerLevels(r.v, []byte(content)) == nil {
				t.Error("ValidatePowerLevels accepted kick \"bad\"")
			}
		})
	}
}

func TestParseLevelValue(t *testing.T) {
	v1, v6, v10 := mustVersion(t, "1"), mustVersion(t, "6"), mustVersion(t, "10")
	cases := []struct {
		raw         string
		v           *stateres.RoomVersion
		want        int64
		ok          bool
		description string
	}{
		{"100", v10, 100, true, "integer"},
		{"-100", v10, -100, true, "negative integer"},
		{`"100"`, v10, 0, false, "string in v10"},
		{`"100"`, v6, 100, true, "string before v10"},
		{`"000100"`, v6, 100, true, "leading zeros"},
		{`" +100 "`, v6, 100, true, "sign and whitespace"},
		{`"1 00"`, v6, 0, false, "inner space"},
		{`"++1"`, v6, 0, false, "two signs"},
		{`"1.5"`, v6, 0, false, "decimal string"},
		{`""`, v6, 0, false, "empty string"},
		{`"9223372036854775808"`, v6, 0, false, "overflow"},
		{"5.114698E4", v1, 51146, true, "float exponent, truncated"},
		{"-2.9", v1, -2, true, "negative float truncates towards zero"},
		{"1.5", v6, 0, false, "float from v6"},
		{"1e400", v1, 0, false, "outside binary64"},
		{"true", v1, 0, false, "boolean"},
		{"null", v1, 0, false, "null"},
		{"{}", v1, 0, false, "object"},
	}
	for _, c := range cases {
		n, ok := parseLevelValue(c.v, []byte(c.raw))
		if ok != c.ok || (ok && n != c.want) {
			t.Errorf("%s: parseLevelValue(v%s, %s) = %d, %v; want %d, %v", c.description, c.v.ID, c.raw, n, ok, c.want, c.ok)
		}
	}
}

func TestLevel(t *testing.T) {
	max := LevelOf(math.MaxInt64)
	if !Infinite.Above(max) || max.Above(Infinite) || !Infinite.AtLeast(Infinite) || Infinite.Above(Infinite) {
		t.Fatal("Infinite must be above every integer level and equal to itself")
	}
	if LevelOf(-1).AtLeast(LevelOf(0)) || !LevelOf(1).Above(LevelOf(0)) || LevelOf(3).Cmp(LevelOf(3)) != 0 {
		t.Fatal("finite comparisons")
	}
	if Infinite.String() != "infinite" || LevelOf(-5).String() != "-5" || Infinite.Int64() != math.MaxInt64 {
		t.Fatal("rendering")
	}
}

func TestV12Creators(t *testing.T) {
	r := newBareRoom(t, "12", map[string]any{"additional_creators": []string{bob, "not-a-user"}})
	r.add(r.newEvent(stateres.MRoomPowerLevels, alice, sk(""), map[string]any{"users": map[string]any{carol: 100}}))
	p := ParsePowerLevels(r.v, r.create, r.state[stateres.StateKeyTuple{Type: stateres.MRoomPowerLevels}])
	if !p.UserLevel(alice).IsInfinite() || !p.UserLevel(bob).IsInfinite() || p.UserLevel(carol) != LevelOf(100) {
		t.Fatalf("creators alice, bob infinite; carol 100: got %v %v %v", p.UserLevel(alice), p.UserLevel(bob), p.UserLevel(carol))
	}
	if got := p.Creators(); len(got) != 2 {
		t.Fatalf("creators %v: the invalid entry is skipped", got)
	}
	// A creator can ban a 100-level admin; the admin cannot ban the creator.
	r.setMember(alice, "join").setMember(carol, "join").setMember(bob, "join")
	if err := Check(r.member(alice, carol, "ban", nil), r.authEvents()); err != nil {
		t.Fatalf("creator bans admin: %v", err)
	}
	var rej *Rejection
	if err := Check(r.member(carol, bob, "ban", nil), r.authEvents()); !errors.As(err, &rej) || rej.Clause != "member.ban.level" {
		t.Fatalf("admin bans creator: %v", err)
	}
	// Before v12 the creator is an ordinary user once power levels exist.
	r11 := newBareRoom(t, "11", nil)
	r11.add(r11.newEvent(stateres.MRoomPowerLevels, alice, sk(""), map[string]any{"users": map[string]any{carol: 100}}))
	p11 := ParsePowerLevels(r11.v, r11.create, r11.state[stateres.StateKeyTuple{Type: stateres.MRoomPowerLevels}])
	if p11.UserLevel(alice) != LevelOf(0) {
		t.Fatalf("v11 creator not in users: %v", p11.UserLevel(alice))
	}
}

func TestValidUserID(t *testing.T) {
	good := []string{"@a:b", "@alice:example.org", "@a:1.2.3.4:8448", "@a:[::1]", "@a:[::1]:80", "@ü:x.test", "@:x.test", "@a b:x.test"}
	bad := []string{"a:b", "@ab", "@a:", "@a:b:", "@a:b:123456", "@a:[::1", "@a:[::1]x", "@a:b_c", "@a\x00:b", "@" + strings.Repeat("a", 255) + ":b"}
	for _, u := range good {
		if !validUserID(u) {
			t.Errorf("%q should be valid", u)
		}
	}
	for _, u := range bad {
		if validUserID(u) {
			t.Errorf("%q should be invalid", u)
		}
	}
}
