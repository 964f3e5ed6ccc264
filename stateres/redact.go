package stateres

import (
	"github.com/engram-hs/engram/stateres/canonicaljson"
)

// Redaction algorithm, per room version (rooms/fragments/v1-redactions.md,
// v6, v8 (rooms/v8.md), v9 and v11-redactions.md; v12 inherits v11).

// keptTopLevel lists the top-level keys a redaction keeps.
func keptTopLevel(rules RedactionRules, key string) bool {
	switch key {
	case "event_id", "type", "room_id", "sender", "state_key", "content", "hashes",
		"signatures", "depth", "prev_events", "auth_events", "origin_server_ts":
		return true
	case "prev_state", "origin", "membership":
		return rules < RedactionV11
	}
	return false
}

// keptContent reports whether a content key of an event of type typ
// survives redaction. m.room.member's third_party_invite is handled apart.
func keptContent(rules RedactionRules, typ, key string) bool {
	switch typ {
	case MRoomMember:
		return key == "membership" || (rules >= RedactionV9 && key == "join_authorised_via_users_server")
	case MRoomCreate:
		return rules >= RedactionV11 || key == "creator"
	case MRoomJoinRules:
		return key == "join_rule" || (rules >= RedactionV8 && key == "allow")
	case MRoomPowerLevels:
		switch key {
		case "ban", "events", "events_default", "kick", "redact", "state_default", "users", "users_default":
			return true
		case "invite":
			return rules >= RedactionV11
		}
	case MRoomAliases:
		return rules < RedactionV6 && key == "aliases"
	case MRoomHistoryVisibility:
		return key == "history_visibility"
	case MRoomRedaction:
		return rules >= RedactionV11 && key == "redacts"
	}
	return false
}

// Redact applies the redaction algorithm of version to a canonical event
// object and returns the canonical redacted object. Keys are filtered in
// place, so the result stays in canonical order.
func Redact(version *RoomVersion, canonicalEvent []byte) ([]byte, error) {
	if !isObject(canonicalEvent) {
		return nil, invalid("event is not a JSON object")
	}
	rules := version.Redaction
	var typ string
	if t := canonicaljson.Get(canonicalEvent, "type"); t != nil && t[0] == '"' {
		typ, _ = canonicaljson.Unquote(t)
	}
	out := make([]byte, 0, len(canonicalEvent))
	out = append(out, '{')
	err := canonicaljson.ObjectEach(canonicalEvent, func(k, v []byte) error {
		name, err := canonicaljson.Unquote(k)
		if err != nil {
			return err
		}
		if !keptTopLevel(rules, name) {
			return nil
		}
		if len(out) > 1 {
			out = append(out, ',')
		}
		out = append(out, k...)
		out = append(out, ':')
		if name == "content" && isObject(v) {
			out = redactContent(out, rules, typ, v)
		} else {
			out = append(out, v...)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return append(out, '}'), nil
}

func redactContent(out []byte, rules RedactionRules, typ string, content []byte) []byte {
	out = append(out, '{')
	start := len(out)
	_ = canonicaljson.ObjectEach(content, func(k, v []byte) error {
		name, err := canonicaljson.Unquote(k)
		if err != nil {
			return nil
		}
		var keep []byte
		switch {
		case keptContent(rules, typ, name):
			keep = v
		case rules >= RedactionV11 && typ == MRoomMember && name == "third_party_invite" && isObject(v):
			// v11: only third_party_invite.signed survives, because the
			// auth rules of third-party invites need it.
			if signed := canonicaljson.Get(v, "signed"); signed != nil {
				keep = append(append([]byte(`{"signed":`), signed...), '}')
			}
		}
		if keep == nil {
			return nil
		}
		if len(out) > start {
			out = append(out, ',')
		}
		out = append(out, k...)
		out = append(out, ':')
		out = append(out, keep...)
		return nil
	})
	return append(out, '}')
}
