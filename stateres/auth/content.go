package auth

import (
	"encoding/json"
	"strings"
	"unicode/utf8"

	"github.com/engram-hs/engram/stateres"
)

// Membership values of m.room.member content.
const (
	membershipJoin   = "join"
	membershipInvite = "invite"
	membershipLeave  = "leave"
	membershipBan    = "ban"
	membershipKnock  = "knock"
)

// Join rules of m.room.join_rules content.
const (
	joinRulePublic          = "public"
	joinRuleInvite          = "invite"
	joinRuleKnock           = "knock"
	joinRuleRestricted      = "restricted"
	joinRuleKnockRestricted = "knock_restricted"
)

type createContent struct {
	Creator            json.RawMessage `json:"creator"`
	RoomVersion        json.RawMessage `json:"room_version"`
	Federate           json.RawMessage `json:"m.federate"`
	AdditionalCreators json.RawMessage `json:"additional_creators"`
}

type memberContent struct {
	Membership        json.RawMessage `json:"membership"`
	ThirdPartyInvite  json.RawMessage `json:"third_party_invite"`
	JoinAuthorisedVia json.RawMessage `json:"join_authorised_via_users_server"`
}

// jsonString decodes raw as a JSON string; ok is false when raw is absent or
// another JSON type.
func jsonString(raw json.RawMessage) (string, bool) {
	if len(raw) == 0 || raw[0] != '"' {
		return "", false
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", false
	}
	return s, true
}

// membershipOf is the membership a member event records, "" when the event
// is absent or its content has no string membership (such a user is in no
// membership state the rules name, like a user who never joined).
func membershipOf(ev stateres.PDU) string {
	if ev == nil {
		return ""
	}
	var c struct {
		Membership json.RawMessage `json:"membership"`
	}
	if json.Unmarshal(ev.Content(), &c) != nil {
		return ""
	}
	m, _ := jsonString(c.Membership)
	return m
}

// joinRuleOf is the join rule of a join rules event, "" when absent.
func joinRuleOf(ev stateres.PDU) string {
	if ev == nil {
		return ""
	}
	var c struct {
		JoinRule json.RawMessage `json:"join_rule"`
	}
	if json.Unmarshal(ev.Content(), &c) != nil {
		return ""
	}
	r, _ := jsonString(c.JoinRule)
	return r
}

// domainOf returns the server name part of a user, room or (v1/v2) event
// ID: everything after the first colon.
func domainOf(id string) string {
	if i := strings.IndexByte(id, ':'); i >= 0 {
		return id[i+1:]
	}
	return ""
}

// validUserID accepts the user IDs a server must accept (appendices, "User
// Identifiers", including "Historical User IDs"): "@", a localpart of any
// code points but ":" and NUL, ":", a server name; 255 bytes at most.
func validUserID(id string) bool {
	if len(id) > 255 || len(id) < 2 || id[0] != '@' || !utf8.ValidString(id) {
		return false
	}
	i := strings.IndexByte(id, ':')
	if i < 0 || strings.IndexByte(id[:i], 0) >= 0 {
		return false
	}
	return validServerName(id[i+1:])
}

// validServerName follows the server_name grammar of the appendices:
// hostname [":" port], hostname an IPv4 literal, a bracketed IPv6 literal
// or a DNS name.
func validServerName(s string) bool {
	host, port := s, ""
	if strings.HasPrefix(s, "[") {
		end := strings.IndexByte(s, ']')
		if end < 0 {
			return false
		}
		host, port = s[:end+1], s[end+1:]
		inner := host[1 : len(host)-1]
		if len(inner) < 2 || len(inner) > 45 {
			return false
		}
		for _, c := range []byte(inner) {
			if !isDigit(c) && !(c >= 'a' && c <= 'f') && !(c >= 'A' && c <= 'F') && c != ':' && c != '.' {
				return false
			}
		}
	} else {
		if i := strings.IndexByte(s, ':'); i >= 0 {
			host, port = s[:i], s[i:]
		}
		if len(host) == 0 || len(host) > 255 {
			return false
		}
		for _, c := range []byte(host) {
			if !isDigit(c) && !(c >= 'a' && c <= 'z') && !(c >= 'A' && c <= 'Z') && c != '-' && c != '.' {
				return false
			}
		}
	}
	if port == "" {
		return true
	}
	if port[0] != ':' {
		return false
	}
	port = port[1:]
	if len(port) == 0 || len(port) > 5 {
		return false
	}
	for _, c := range []byte(port) {
		if !isDigit(c) {
			return false
		}
	}
	return true
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }
