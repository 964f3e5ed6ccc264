// Package push evaluates push rules (spec: client-server-api, "Push
// Notifications", modules/push.md): for one event and one user, which
// rule matches first and what it asks for (notify, highlight, sound and
// other tweaks). It is pure: the caller supplies the event, the user's
// ruleset and the room facts the conditions read (member count, the
// sender's power level, the user's display name).
//
// Rules are compiled once per ruleset (Compile) and events parsed once
// (ParseEvent), so that evaluating an event for every member of a room
// costs map lookups and string matches only.
package push

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/engram-hs/engram/stateres/canonicaljson"
)

// Rule is a push rule as the API stores and serves it. Conditions stay
// raw: a rule with no conditions shows "conditions": [] (override and
// underride) while other kinds show none (nil), and conditions of a kind
// this build does not know are kept as the client wrote them (they never
// match, but a client reads back what it stored).
type Rule struct {
	RuleID     string            `json:"rule_id"`
	Default    bool              `json:"default"`
	Enabled    bool              `json:"enabled"`
	Actions    []json.RawMessage `json:"actions"`
	Conditions json.RawMessage   `json:"conditions,omitempty"`
	Pattern    *string           `json:"pattern,omitempty"`
}

// Condition is one condition of an override or underride rule.
type Condition struct {
	Kind    string          `json:"kind"`
	Key     string          `json:"key,omitempty"`
	Pattern *string         `json:"pattern,omitempty"`
	Value   json.RawMessage `json:"value,omitempty"`
	Is      string          `json:"is,omitempty"`
}

// Ruleset is a user's "global" ruleset.
type Ruleset struct {
	Override  []Rule `json:"override"`
	Content   []Rule `json:"content"`
	Room      []Rule `json:"room"`
	Sender    []Rule `json:"sender"`
	Underride []Rule `json:"underride"`
}

// Context is what the conditions read besides the event.
type Context struct {
	UserID      string
	DisplayName string // the user's display name in the room ("" none)
	MemberCount int    // joined members of the room
	// SenderPower is the sender's power level; NotificationPower the
	// levels of the power levels' "notifications" (a missing key: 50).
	SenderPower       int64
	NotificationPower map[string]int64
}

// Result is what the first matching rule asks for.
type Result struct {
	RuleID    string
	Notify    bool
	Highlight bool
	Sound     string
	// Tweaks holds every set_tweak of the rule (highlight and sound too),
	// as sent to a push gateway.
	Tweaks map[string]any
	// Actions, when Notify, are the rule's actions as GET /notifications
	// shows them: "notify", then each tweak by name. Made once per rule
	// (not per notification: a json.Marshal per tweak); shared, so
	// read-only.
	Actions []json.RawMessage
}

// Event is a parsed event: its JSON as nested maps.
type Event struct {
	root map[string]any
	// lazy holds the raw values of top-level members left undecoded
	// (lazyMembers), by name; a lookup that reaches one decodes it.
	lazy map[string][]byte
	// body is content.body lower-cased, when a string.
	body    string
	hasBody bool
	// mentions: content has an m.mentions object (intentional mentions)
	mentions bool
}

// lazyMembers are the top-level members of a federation-format event that
// no default rule reads: half of a message's bytes (signatures, hashes,
// auth and prev event IDs), which the fold parsed for every event it
// evaluated. A rule whose path starts at one still sees it.
var lazyMembers = map[string]bool{"signatures": true, "hashes": true, "auth_events": true, "prev_events": true}

// ParseEvent parses an event's JSON (client or federation format). The
// event must not change while the Event is in use (lookups may read it).
func ParseEvent(raw []byte) (*Event, error) {
	ev, ok := parseCanonical(raw)
	if !ok {
		var root map[string]any
		if err := decodeJSON(raw, &root); err != nil {
			return nil, fmt.Errorf("push: event is not a JSON object: %w", err)
		}
		ev = &Event{root: root}
	}
	if c, ok := ev.root["content"].(map[string]any); ok {
		if b, ok := c["body"].(string); ok {
			ev.body, ev.hasBody = strings.ToLower(b), true
		}
		_, ev.mentions = c["m.mentions"].(map[string]any)
	}
	return ev, nil
}

// decodeJSON decodes raw into v, numbers as json.Number.
func decodeJSON(raw []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	return dec.Decode(v)
}

// parseCanonical parses an event in canonical JSON (stored events are)
// member by member, leaving the lazyMembers raw; false: raw is not
// canonical JSON, for the general decoder.
func parseCanonical(raw []byte) (*Event, bool) {
	ev := &Event{root: map[string]any{}}
	err := canonicaljson.ObjectEach(raw, func(key, value []byte) error {
		k, err := canonicaljson.Unquote(key)
		if err != nil {
			return err
		}
		if lazyMembers[k] {
			if ev.lazy == nil {
				ev.lazy = map[string][]byte{}
			}
			ev.lazy[k] = value
			return nil
		}
		switch c := value[0]; {
		case c == '"': // most members are strings: no decoder for them
			ev.root[k], err = canonicaljson.Unquote(value)
		case c == '-' || c >= '0' && c <= '9':
			ev.root[k] = json.Number(value)
		default:
			var v any
			err = decodeJSON(value, &v)
			ev.root[k] = v
		}
		return err
	})
	return ev, err == nil
}

// lookup follows a split dotted path.
func (e *Event) lookup(path []string) (any, bool) {
	var cur any = e.root
	if len(path) > 0 {
		if raw, ok := e.lazy[path[0]]; ok {
			var v any
			if decodeJSON(raw, &v) != nil {
				return nil, false
			}
			cur = map[string]any{path[0]: v}
		}
	}
	for _, p := range path {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil, false
		}
		if cur, ok = m[p]; !ok {
			return nil, false
		}
	}
	return cur, true
}

// SplitPath splits a dot-separated property path (spec appendices:
// "Dot-separated property paths": "\." is a literal dot, "\\" a
// backslash).
func SplitPath(key string) []string {
	var parts []string
	var cur strings.Builder
	for i := 0; i < len(key); i++ {
		c := key[i]
		switch {
		case c == '\\' && i+1 < len(key) && (key[i+1] == '.' || key[i+1] == '\\'):
			cur.WriteByte(key[i+1])
			i++
		case c == '.':
			parts = append(parts, cur.String())
			cur.Reset()
		default:
			cur.WriteByte(c)
		}
	}
	return append(parts, cur.String())
}

// Compiled is a ruleset ready to evaluate, in evaluation order.
type Compiled struct {
	rules []compiledRule
}

type compiledRule struct {
	id    string
	conds []cond // all must hold; a rule that can never match has never=true
	never bool
	// legacy: a legacy mention rule, skipped for events with m.mentions
	legacy bool
	res    Result
}

type cond struct {
	kind    string
	path    []string
	glob    *regexp.Regexp
	literal *string // a pattern without wildcards: compared directly (lower-cased)
	body    bool    // event_match on content.body: word-boundary match
	word    string  // a body pattern without wildcards: containsWord, not glob
	value   any     // event_property_is / _contains: a canonical scalar
	op      string  // room_member_count
	n       int
	key     string // sender_notification_permission
}

// Compile prepares a ruleset; the kinds are evaluated in the spec's order
// (override, content, room, sender, underride), disabled rules skipped.
func Compile(rs Ruleset) *Compiled {
	c := &Compiled{}
	add := func(r Rule, conds []Condition) {
		if !r.Enabled {
			return
		}
		cr := compiledRule{id: r.RuleID, res: actionsResult(r.RuleID, r.Actions), legacy: r.Default && LegacyMentionRules[r.RuleID]}
		if conds == nil && len(r.Conditions) > 0 {
			if err := json.Unmarshal(r.Conditions, &conds); err != nil {
				cr.never = true // conditions not a list of objects: never match
			}
		}
		for _, x := range conds {
			cc, ok := compileCond(x)
			if !ok {
				cr.never = true // unrecognised conditions never match
				break
			}
			cr.conds = append(cr.conds, cc)
		}
		c.rules = append(c.rules, cr)
	}
	for _, r := range rs.Override {
		add(r, nil)
	}
	for _, r := range rs.Content {
		if r.Pattern == nil {
			continue
		}
		add(r, []Condition{{Kind: "event_match", Key: "content.body", Pattern: r.Pattern}})
	}
	for _, r := range rs.Room {
		add(r, []Condition{{Kind: "event_match", Key: "room_id", Pattern: &r.RuleID}})
	}
	for _, r := range rs.Sender {
		add(r, []Condition{{Kind: "event_match", Key: "sender", Pattern: &r.RuleID}})
	}
	for _, r := range rs.Underride {
		add(r, nil)
	}
	return c
}

func compileCond(x Condition) (cond, bool) {
	c := cond{kind: x.Kind}
	switch x.Kind {
	case "event_match":
		if x.Pattern == nil || x.Key == "" {
			return c, false
		}
		c.path = SplitPath(x.Key)
		c.body = x.Key == "content.body"
		p := strings.ToLower(*x.Pattern)
		if !strings.ContainsAny(p, "*?") {
			if !c.body {
				c.literal = &p
				return c, true
			}
			if p != "" {
				// The default rules' body patterns (the user's localpart,
				// "@room"): the regexp's backtracking was most of the
				// evaluation of a message. An empty pattern keeps the
				// regexp: containsWord would test every byte boundary,
				// the regexp only rune boundaries.
				c.word = p
				return c, true
			}
		}
		re, err := regexp.Compile(globRegexp(p, c.body))
		if err != nil {
			return c, false
		}
		c.glob = re
	case "event_property_is", "event_property_contains":
		if x.Key == "" || x.Value == nil {
			return c, false
		}
		c.path = SplitPath(x.Key)
		v, ok := scalar(x.Value)
		if !ok {
			return c, false
		}
		c.value = v
	case "contains_display_name":
	case "room_member_count":
		is := x.Is
		for _, op := range []string{"==", "<=", ">=", "<", ">"} {
			if strings.HasPrefix(is, op) {
				c.op, is = op, is[len(op):]
				break
			}
		}
		if c.op == "" {
			c.op = "=="
		}
		n, err := strconv.Atoi(is)
		if err != nil {
			return c, false
		}
		c.n = n
	case "sender_notification_permission":
		if x.Key == "" {
			return c, false
		}
		c.key = x.Key
	default:
		return c, false
	}
	return c, true
}

// globRegexp turns a lower-cased glob (* any run, ? one character) into a
// regexp over the lower-cased value: the whole value, or for content.body
// any part of it that starts and ends at a word boundary.
func globRegexp(p string, body bool) string {
	var b strings.Builder
	b.WriteString("(?s)")
	if body {
		b.WriteString(`(?:^|[^a-z0-9_])`)
	} else {
		b.WriteString("^")
	}
	for _, r := range p {
		switch r {
		case '*':
			b.WriteString(".*?")
		case '?':
			b.WriteString(".")
		default:
			b.WriteString(regexp.QuoteMeta(string(r)))
		}
	}
	if body {
		b.WriteString(`(?:[^a-z0-9_]|$)`)
	} else {
		b.WriteString("$")
	}
	return b.String()
}

// scalar decodes a condition value: a string, an integer, a boolean or
// null (spec: non-compound canonical JSON values).
func scalar(raw json.RawMessage) (any, bool) {
	dec := json.NewDecoder(strings.NewReader(string(raw)))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, false
	}
	return normScalar(v)
}

func normScalar(v any) (any, bool) {
	switch x := v.(type) {
	case nil, string, bool:
		return x, true
	case json.Number:
		n, err := strconv.ParseInt(string(x), 10, 64)
		if err != nil || n > 1<<53-1 || n < -(1<<53-1) {
			return nil, false
		}
		return n, true
	}
	return nil, false
}

func actionsResult(id string, actions []json.RawMessage) Result {
	r := Result{RuleID: id}
	for _, a := range actions {
		var s string
		if json.Unmarshal(a, &s) == nil {
			if s == "notify" {
				r.Notify = true
			}
			continue // dont_notify, coalesce: ignored (spec: historical actions)
		}
		var t struct {
			SetTweak string          `json:"set_tweak"`
			Value    json.RawMessage `json:"value"`
		}
		if json.Unmarshal(a, &t) != nil || t.SetTweak == "" {
			continue
		}
		if r.Tweaks == nil {
			r.Tweaks = map[string]any{}
		}
		var v any = true
		if t.Value != nil {
			_ = json.Unmarshal(t.Value, &v)
		}
		r.Tweaks[t.SetTweak] = v
		switch t.SetTweak {
		case "highlight":
			b, ok := v.(bool)
			r.Highlight = !ok || b
		case "sound":
			r.Sound, _ = v.(string)
		}
	}
	if r.Notify {
		r.Actions = []json.RawMessage{json.RawMessage(`"notify"`)}
		for _, k := range slices.Sorted(maps.Keys(r.Tweaks)) {
			b, err := json.Marshal(map[string]any{"set_tweak": k, "value": r.Tweaks[k]})
			if err == nil {
				r.Actions = append(r.Actions, b)
			}
		}
	}
	return r
}

// Evaluate returns the result of the first rule that matches, or ok=false
// when none does (no notification).
func (c *Compiled) Evaluate(ev *Event, ctx *Context) (Result, bool) {
	for i := range c.rules {
		r := &c.rules[i]
		if r.never || r.legacy && ev.mentions {
			continue
		}
		match := true
		for j := range r.conds {
			if !r.conds[j].holds(ev, ctx) {
				match = false
				break
			}
		}
		if match {
			return r.res, true
		}
	}
	return Result{}, false
}

func (c *cond) holds(ev *Event, ctx *Context) bool {
	switch c.kind {
	case "event_match":
		if c.body {
			if !ev.hasBody {
				return false
			}
			if c.word != "" {
				return containsWord(ev.body, c.word)
			}
			return c.glob.MatchString(ev.body)
		}
		v, ok := ev.lookup(c.path)
		s, isStr := v.(string)
		if !ok || !isStr {
			return false
		}
		if c.literal != nil {
			return len(s) == len(*c.literal) && strings.EqualFold(s, *c.literal)
		}
		return c.glob.MatchString(strings.ToLower(s))
	case "event_property_is":
		v, ok := ev.lookup(c.path)
		if !ok {
			return false
		}
		n, ok := normScalar(v)
		return ok && n == c.value
	case "event_property_contains":
		v, ok := ev.lookup(c.path)
		arr, isArr := v.([]any)
		if !ok || !isArr {
			return false
		}
		for _, x := range arr {
			if n, ok := normScalar(x); ok && n == c.value {
				return true
			}
		}
		return false
	case "contains_display_name":
		if ctx.DisplayName == "" || !ev.hasBody {
			return false
		}
		return containsWord(ev.body, strings.ToLower(ctx.DisplayName))
	case "room_member_count":
		n := ctx.MemberCount
		switch c.op {
		case "==":
			return n == c.n
		case "<":
			return n < c.n
		case ">":
			return n > c.n
		case "<=":
			return n <= c.n
		case ">=":
			return n >= c.n
		}
	case "sender_notification_permission":
		need, ok := ctx.NotificationPower[c.key]
		if !ok {
			need = 50
		}
		return ctx.SenderPower >= need
	}
	return false
}

func isWordChar(b byte) bool {
	return b >= 'a' && b <= 'z' || b >= '0' && b <= '9' || b == '_' || b >= 'A' && b <= 'Z'
}

// containsWord reports whether word occurs in s starting and ending at
// word boundaries (both lower-cased).
func containsWord(s, word string) bool {
	for i := 0; ; {
		j := strings.Index(s[i:], word)
		if j < 0 {
			return false
		}
		start, end := i+j, i+j+len(word)
		if (start == 0 || !isWordChar(s[start-1])) && (end == len(s) || !isWordChar(s[end])) {
			return true
		}
		i = start + 1
	}
}
