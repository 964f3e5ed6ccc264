package push

import "encoding/json"

// Merge is a user's effective ruleset: their stored ruleset (nil: none
// yet, the content of the m.push_rules account data's "global") merged
// with this build's defaults. User rules keep their order; server-default
// rules are rebuilt from Defaults and keep only the user's enabled and
// actions choices, so a server upgrade that adds or changes a default
// reaches every user. The master rule comes first in override, user
// override rules after it, then the other default override rules.
func Merge(userID string, stored *Ruleset) Ruleset {
	d := Defaults(userID)
	type choice struct {
		enabled bool
		actions []json.RawMessage
	}
	chosen := map[string]choice{}
	user := map[string][]Rule{}
	if stored != nil {
		for _, k := range Kinds {
			for _, r := range *stored.Kind(k) {
				if r.Default {
					chosen[k+"\x00"+r.RuleID] = choice{r.Enabled, r.Actions}
				} else {
					user[k] = append(user[k], r)
				}
			}
		}
	}
	apply := func(k string, rules ...Rule) []Rule {
		out := make([]Rule, 0, len(rules))
		for _, r := range rules {
			if c, ok := chosen[k+"\x00"+r.RuleID]; ok {
				r.Enabled, r.Actions = c.enabled, c.actions
			}
			out = append(out, r)
		}
		return out
	}
	return Ruleset{
		Override:  append(append(apply("override", d.Override[0]), user["override"]...), apply("override", d.Override[1:]...)...),
		Content:   append(append([]Rule{}, user["content"]...), apply("content", d.Content...)...),
		Room:      append([]Rule{}, user["room"]...),
		Sender:    append([]Rule{}, user["sender"]...),
		Underride: append(append([]Rule{}, user["underride"]...), apply("underride", d.Underride...)...),
	}
}

// Kinds are the rule kinds in the order the spec evaluates them.
var Kinds = []string{"override", "content", "room", "sender", "underride"}

// Kind returns the rules of kind k (one of Kinds), nil for another name.
func (rs *Ruleset) Kind(k string) *[]Rule {
	switch k {
	case "override":
		return &rs.Override
	case "content":
		return &rs.Content
	case "room":
		return &rs.Room
	case "sender":
		return &rs.Sender
	case "underride":
		return &rs.Underride
	}
	return nil
}
