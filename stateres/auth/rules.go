package auth

import (
	"strconv"
	"strings"

	"github.com/engram-hs/engram/stateres"
)

// The clause names are paths through the rule tree of the spec; the
// version's text numbers each node by its position among its siblings,
// which differ between versions (aliases leave in v6, knock arrives in v7,
// join_authorised_via_users_server in v8, ...). ruleChildren lists the
// siblings under each node for a version, so that ruleNumber can render a
// stable clause name as the number the version's text uses.
func ruleChildren(v *stateres.RoomVersion, parent string) []string {
	when := func(cond bool, names ...string) []string {
		if cond {
			return names
		}
		return nil
	}
	cat := func(parts ...[]string) []string {
		var out []string
		for _, p := range parts {
			out = append(out, p...)
		}
		return out
	}
	switch parent {
	case "":
		return cat([]string{"create"}, when(v.RoomIDFromCreate, "room_id"),
			[]string{"auth_events", "federate"}, when(v.SpecialCaseAliases, "aliases"),
			[]string{"member", "sender", "third_party_invite", "event.level", "event.state_key", "power_levels"},
			when(v.EventIDFormat == stateres.EventIDServerAssigned, "redaction"))
	case "create":
		fourth := "creator"
		if v.PrivilegedCreators {
			fourth = "additional_creators"
		}
		second := "room_id_domain"
		if v.RoomIDFromCreate {
			second = "room_id"
		}
		return []string{"prev_events", second, "room_version", fourth}
	case "auth_events":
		// v12 drops rule 3.4 (no create event) and keeps 3.5's number.
		return []string{"duplicate", "selection", "rejected", "no_create", "room_id"}
	case "aliases":
		return []string{"state_key", "domain"}
	case "member":
		return cat([]string{"state_key_or_membership"}, when(v.RestrictedJoins, "authorised_via"),
			[]string{"join", "invite", "leave", "ban"}, when(v.Knocking, "knock"), []string{"unknown"})
	case "member.authorised_via":
		return []string{"signature"}
	case "member.join":
		return cat([]string{"creator", "sender_not_state_key", "banned", "invited"},
			when(v.RestrictedJoins, "restricted"), []string{"public", "otherwise"})
	case "member.join.restricted":
		return []string{"member", "authoriser", "authorised"}
	case "member.invite":
		return []string{"3pid", "sender_not_joined", "target", "level"}
	case "member.invite.3pid":
		return []string{"banned", "signed", "mxid_token", "mxid", "no_invite_event", "sender", "signature"}
	case "member.leave":
		return []string{"self", "sender_not_joined", "unban_level", "kick"}
	case "member.ban":
		return []string{"sender_not_joined", "level"}
	case "member.knock":
		return []string{"join_rule", "sender_not_state_key", "membership"}
	case "third_party_invite":
		return []string{"level"}
	case "power_levels":
		return cat(when(v.IntegerPowerLevels, "levels", "maps"), []string{"users"},
			when(v.PrivilegedCreators, "creators"),
			[]string{"initial", "top_level", "events_old", "events_new", "users_old", "users_new", "allowed"})
	case "redaction":
		return []string{"level", "same_domain"}
	}
	return nil
}

// ruleNumber renders a clause as the rule number in v's text ("5.2.3"), or
// "" for clauses outside the numbered list.
func ruleNumber(v *stateres.RoomVersion, clause string) string {
	// Top-level nodes whose name contains a dot.
	parent, rest := "", clause
	for _, top := range []string{"event.level", "event.state_key"} {
		if clause == top {
			return strconv.Itoa(indexOf(ruleChildren(v, ""), top) + 1)
		}
	}
	var nums []string
	for rest != "" {
		token := rest
		if i := strings.IndexByte(rest, '.'); i >= 0 {
			token, rest = rest[:i], rest[i+1:]
		} else {
			rest = ""
		}
		siblings := ruleChildren(v, parent)
		if siblings == nil && parent != "" {
			break // a rule that is a single check: "sender.not_joined" is rule 6
		}
		i := indexOf(siblings, token)
		if i < 0 {
			return ""
		}
		nums = append(nums, strconv.Itoa(i+1))
		if parent == "" {
			parent = token
		} else {
			parent += "." + token
		}
	}
	return strings.Join(nums, ".")
}

func indexOf(list []string, s string) int {
	for i, x := range list {
		if x == s {
			return i
		}
	}
	return -1
}

func reject(v *stateres.RoomVersion, clause, reason string) *Rejection {
	return &Rejection{Clause: clause, Rule: ruleNumber(v, clause), Reason: reason}
}
