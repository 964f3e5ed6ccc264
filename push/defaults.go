package push

import (
	"encoding/json"
	"strings"
)

// Defaults is the server-default ruleset for userID: the spec's predefined
// rules, the poll rules of MSC3930 that Synapse ships, and the legacy
// mention rules (LegacyMentionRules), in evaluation order. The master rule
// comes first in override, and user-defined rules go after it and before
// the other defaults (Merge).
//
// Spec v1.17 dropped the legacy rules from its predefined list, but the
// spec lets a server add server-default rules of its own, and Synapse
// still ships them: messages from clients and bridges that do not send
// m.mentions ("hi @alice:example.org", "alice: lunch?", "@room") would
// otherwise never highlight. They keep the v1.7 rule that they do not
// apply to an event that carries m.mentions (Evaluate), so a client that
// sends intentional mentions is not second-guessed.
func Defaults(userID string) Ruleset {
	uid, _ := json.Marshal(userID)
	localpart := userID
	if i := strings.IndexByte(localpart, ':'); i > 0 {
		localpart = localpart[1:i]
	}
	rule := func(id string, enabled bool, conds string, actions ...string) Rule {
		if !json.Valid([]byte(conds)) {
			panic("push: invalid default conditions " + conds) // the literals below
		}
		r := Rule{RuleID: id, Default: true, Enabled: enabled, Actions: []json.RawMessage{}, Conditions: json.RawMessage(conds)}
		for _, a := range actions {
			r.Actions = append(r.Actions, json.RawMessage(a))
		}
		return r
	}
	const (
		notify    = `"notify"`
		sound     = `{"set_tweak":"sound","value":"default"}`
		ring      = `{"set_tweak":"sound","value":"ring"}`
		highlight = `{"set_tweak":"highlight"}`
	)
	return Ruleset{
		Override: []Rule{
			rule(".m.rule.master", false, `[]`),
			rule(".m.rule.suppress_notices", true, `[{"kind":"event_match","key":"content.msgtype","pattern":"m.notice"}]`),
			rule(".m.rule.invite_for_me", true, `[{"key":"type","kind":"event_match","pattern":"m.room.member"},{"key":"content.membership","kind":"event_match","pattern":"invite"},{"key":"state_key","kind":"event_match","pattern":`+string(uid)+`}]`, notify, sound),
			rule(".m.rule.member_event", true, `[{"key":"type","kind":"event_match","pattern":"m.room.member"}]`),
			rule(".m.rule.is_user_mention", true, `[{"kind":"event_property_contains","key":"content.m\\.mentions.user_ids","value":`+string(uid)+`}]`, notify, sound, highlight),
			rule(".m.rule.contains_display_name", true, `[{"kind":"contains_display_name"}]`, notify, sound, highlight),
			rule(".m.rule.is_room_mention", true, `[{"kind":"event_property_is","key":"content.m\\.mentions.room","value":true},{"kind":"sender_notification_permission","key":"room"}]`, notify, highlight),
			rule(".m.rule.roomnotif", true, `[{"kind":"event_match","key":"content.body","pattern":"@room"},{"kind":"sender_notification_permission","key":"room"}]`, notify, highlight),
			rule(".m.rule.tombstone", true, `[{"kind":"event_match","key":"type","pattern":"m.room.tombstone"},{"kind":"event_match","key":"state_key","pattern":""}]`, notify, highlight),
			rule(".m.rule.reaction", true, `[{"kind":"event_match","key":"type","pattern":"m.reaction"}]`),
			rule(".m.rule.room.server_acl", true, `[{"kind":"event_match","key":"type","pattern":"m.room.server_acl"},{"kind":"event_match","key":"state_key","pattern":""}]`),
			rule(".m.rule.suppress_edits", true, `[{"kind":"event_property_is","key":"content.m\\.relates_to.rel_type","value":"m.replace"}]`),
			rule(".org.matrix.msc3930.rule.poll_response", true, `[{"kind":"event_match","key":"type","pattern":"org.matrix.msc3381.poll.response"}]`),
		},
		Content: []Rule{contentRule(".m.rule.contains_user_name", localpart, notify, sound, highlight)},
		Room:    []Rule{},
		Sender:  []Rule{},
		Underride: []Rule{
			rule(".m.rule.call", true, `[{"key":"type","kind":"event_match","pattern":"m.call.invite"}]`, notify, ring),
			rule(".m.rule.encrypted_room_one_to_one", true, `[{"kind":"room_member_count","is":"2"},{"kind":"event_match","key":"type","pattern":"m.room.encrypted"}]`, notify, sound),
			rule(".m.rule.room_one_to_one", true, `[{"kind":"room_member_count","is":"2"},{"kind":"event_match","key":"type","pattern":"m.room.message"}]`, notify, sound),
			rule(".m.rule.message", true, `[{"kind":"event_match","key":"type","pattern":"m.room.message"}]`, notify),
			rule(".m.rule.encrypted", true, `[{"kind":"event_match","key":"type","pattern":"m.room.encrypted"}]`, notify),
			rule(".org.matrix.msc3930.rule.poll_start_one_to_one", true, `[{"kind":"room_member_count","is":"2"},{"kind":"event_match","key":"type","pattern":"org.matrix.msc3381.poll.start"}]`, notify, sound),
			rule(".org.matrix.msc3930.rule.poll_start", true, `[{"kind":"event_match","key":"type","pattern":"org.matrix.msc3381.poll.start"}]`, notify),
			rule(".org.matrix.msc3930.rule.poll_end_one_to_one", true, `[{"kind":"room_member_count","is":"2"},{"kind":"event_match","key":"type","pattern":"org.matrix.msc3381.poll.end"}]`, notify, sound),
			rule(".org.matrix.msc3930.rule.poll_end", true, `[{"kind":"event_match","key":"type","pattern":"org.matrix.msc3381.poll.end"}]`, notify),
		},
	}
}

// LegacyMentionRules are the server-default rules that look for mentions
// in content.body; they do not apply to an event with m.mentions.
var LegacyMentionRules = map[string]bool{
	".m.rule.contains_display_name": true,
	".m.rule.contains_user_name":    true,
	".m.rule.roomnotif":             true,
}

func contentRule(id, pattern string, actions ...string) Rule {
	r := Rule{RuleID: id, Default: true, Enabled: true, Pattern: &pattern, Actions: []json.RawMessage{}}
	for _, a := range actions {
		r.Actions = append(r.Actions, json.RawMessage(a))
	}
	return r
}
