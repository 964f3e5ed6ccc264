package api

import (
	"encoding/json"
	"net/http"
	"slices"
	"strings"

	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/projections"
	"github.com/engram-hs/engram/push"
)

// Push rules (spec: modules/push.md, pushrules.yaml).
//
// A user's rules are stored as global account data "m.push_rules" whose
// content is the whole ruleset ({"global": {...}}), the same content the
// spec says /sync delivers; so /sync shows changes without knowing about
// push rules. Server-default rules are not trusted from storage: every read
// rebuilds them from this build's defaults and only keeps the user's
// enabled/actions choices for them, so a server upgrade that adds or
// changes a default reaches every user.

// pushRulesContent is the content of m.push_rules.
type pushRulesContent struct {
	Global push.Ruleset `json:"global"`
}

// pushRules returns a user's current ruleset.
func (s *Server) pushRules(userID string) (push.Ruleset, error) {
	rec, err := s.userdataView().AccountData(userID, "", "m.push_rules")
	if err != nil {
		return push.Ruleset{}, err
	}
	if rec == nil {
		return push.Merge(userID, nil), nil
	}
	var c pushRulesContent
	if err := json.Unmarshal(rec.Content, &c); err != nil {
		// Written only by this file; unreadable content is replaced by
		// the defaults rather than locking the user out of push rules.
		s.logger.Warn().Err(err).Str("user", userID).Msg("stored m.push_rules is unreadable; serving the default push rules")
		return push.Merge(userID, nil), nil
	}
	return push.Merge(userID, &c.Global), nil
}

// PushRulesContent is the content of the m.push_rules account data event
// of a user, defaults included, for /sync to show a user who never changed
// their rules.
func (s *Server) PushRulesContent(userID string) (json.RawMessage, error) {
	rs, err := s.pushRules(userID)
	if err != nil {
		return nil, err
	}
	return mustJSON(pushRulesContent{Global: rs}), nil
}

func (s *Server) pushRuleRoutes() {
	s.client("GET", "/pushrules/{$}", s.authed(s.getAllPushRules))
	s.client("GET", "/pushrules/global/{$}", s.authed(s.getGlobalPushRules))
	s.client("GET", "/pushrules/global/{kind}/{ruleId}", s.authed(s.getPushRule))
	s.client("PUT", "/pushrules/global/{kind}/{ruleId}", s.authed(s.putPushRule))
	s.client("DELETE", "/pushrules/global/{kind}/{ruleId}", s.authed(s.deletePushRule))
	s.client("GET", "/pushrules/global/{kind}/{ruleId}/enabled", s.authed(s.getPushRuleEnabled))
	s.client("PUT", "/pushrules/global/{kind}/{ruleId}/enabled", s.authed(s.putPushRuleEnabled))
	s.client("GET", "/pushrules/global/{kind}/{ruleId}/actions", s.authed(s.getPushRuleActions))
	s.client("PUT", "/pushrules/global/{kind}/{ruleId}/actions", s.authed(s.putPushRuleActions))
}

func (s *Server) getAllPushRules(w http.ResponseWriter, r *http.Request, sess *session) error {
	rs, err := s.pushRules(sess.UserID)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, pushRulesContent{Global: rs})
	return nil
}

func (s *Server) getGlobalPushRules(w http.ResponseWriter, r *http.Request, sess *session) error {
	rs, err := s.pushRules(sess.UserID)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, rs)
	return nil
}

func pushKindParam(r *http.Request) (string, error) {
	k := r.PathValue("kind")
	if !slices.Contains(push.Kinds, k) {
		return "", errInvalidParam("Unknown push rule kind %q; use one of %s", k, strings.Join(push.Kinds, ", "))
	}
	return k, nil
}

func errRuleNotFound() error { return errNotFound("The push rule was not found.") }

// existingRuleKind is the kind of a path naming an existing rule. Under
// a kind this server does not have (such as an unstable MSC's) there is
// no such rule: 404, which clients probing for optional rules expect.
func existingRuleKind(r *http.Request) (string, error) {
	k := r.PathValue("kind")
	if !slices.Contains(push.Kinds, k) {
		return "", errRuleNotFound()
	}
	return k, nil
}

// findRule locates a rule of the given kind in the user's ruleset.
func (s *Server) findRule(r *http.Request, sess *session) (rs push.Ruleset, kind string, idx int, err error) {
	kind, err = existingRuleKind(r)
	if err != nil {
		return rs, "", -1, err
	}
	rs, err = s.pushRules(sess.UserID)
	if err != nil {
		return rs, "", -1, err
	}
	id := r.PathValue("ruleId")
	idx = slices.IndexFunc(*rs.Kind(kind), func(p push.Rule) bool { return p.RuleID == id })
	if idx < 0 {
		return rs, "", -1, errRuleNotFound()
	}
	return rs, kind, idx, nil
}

func (s *Server) getPushRule(w http.ResponseWriter, r *http.Request, sess *session) error {
	rs, kind, idx, err := s.findRule(r, sess)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, (*rs.Kind(kind))[idx])
	return nil
}

func (s *Server) getPushRuleEnabled(w http.ResponseWriter, r *http.Request, sess *session) error {
	rs, kind, idx, err := s.findRule(r, sess)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]bool{"enabled": (*rs.Kind(kind))[idx].Enabled})
	return nil
}

func (s *Server) getPushRuleActions(w http.ResponseWriter, r *http.Request, sess *session) error {
	rs, kind, idx, err := s.findRule(r, sess)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]any{"actions": (*rs.Kind(kind))[idx].Actions})
	return nil
}

// editPushRules runs a read-modify-write of the caller's ruleset under a
// per-user lock, so two concurrent edits cannot lose one another, and
// records the result as the m.push_rules account data fact.
func (s *Server) editPushRules(r *http.Request, sess *session, edit func(rs *push.Ruleset) error) error {
	defer s.locks.Lock("pushrules:" + sess.UserID)()
	rs, err := s.pushRules(sess.UserID)
	if err != nil {
		return err
	}
	if err := edit(&rs); err != nil {
		return err
	}
	content := mustJSON(pushRulesContent{Global: rs})
	_, err = s.commit(r.Context(), []*projections.Handle{s.userdataH}, facts.MustEncode(englog.KindAccountDataSet, facts.AccountDataSet{UserID: sess.UserID, Type: "m.push_rules", Content: content}))
	return err
}

// validActions accepts what the spec allows in an actions list: strings
// and objects (set_tweak); the deprecated "dont_notify" and "coalesce" are
// accepted and kept, as clients still send them.
func validActions(actions []json.RawMessage) error {
	for _, a := range actions {
		t := strings.TrimSpace(string(a))
		if t == "" || (t[0] != '"' && t[0] != '{') {
			return errInvalidParam("Each push rule action must be a string or an object")
		}
		if t[0] == '{' {
			var tw struct {
				SetTweak *string `json:"set_tweak"`
			}
			if json.Unmarshal(a, &tw) != nil || tw.SetTweak == nil {
				return errInvalidParam("An object push rule action needs a set_tweak string")
			}
		}
	}
	return nil
}

func (s *Server) putPushRule(w http.ResponseWriter, r *http.Request, sess *session) error {
	kind, err := pushKindParam(r)
	if err != nil {
		return err
	}
	id := r.PathValue("ruleId")
	if id == "" || strings.HasPrefix(id, ".") || strings.ContainsAny(id, `/\`) {
		return errInvalidParam("A push rule ID must not be empty, start with '.' (reserved for server-default rules) or contain '/' or '\\'")
	}
	var req struct {
		Actions    *[]json.RawMessage `json:"actions"`
		Conditions *[]json.RawMessage `json:"conditions"`
		Pattern    *string            `json:"pattern"`
	}
	if err := readJSON(r, &req); err != nil {
		return err
	}
	if req.Actions == nil {
		return errMissingParam("actions is required")
	}
	if err := validActions(*req.Actions); err != nil {
		return err
	}
	rule := push.Rule{RuleID: id, Enabled: true, Actions: *req.Actions}
	switch kind {
	case "content":
		if req.Pattern == nil {
			return errMissingParam("content rules need a pattern")
		}
		rule.Pattern = req.Pattern
	case "override", "underride":
		conds := []json.RawMessage{}
		if req.Conditions != nil {
			conds = *req.Conditions
		}
		for _, c := range conds {
			var cond struct {
				Kind string `json:"kind"`
			}
			if json.Unmarshal(c, &cond) != nil || cond.Kind == "" {
				return errInvalidParam("Each push rule condition must be an object with a kind")
			}
		}
		rule.Conditions = mustJSON(conds)
	}
	before, after := r.URL.Query().Get("before"), r.URL.Query().Get("after")
	err = s.editPushRules(r, sess, func(rs *push.Ruleset) error {
		list := rs.Kind(kind)
		// An update keeps the rule's place unless before/after move it.
		pos := slices.IndexFunc(*list, func(p push.Rule) bool { return p.RuleID == id })
		if pos >= 0 {
			rule.Enabled = (*list)[pos].Enabled
			*list = slices.Delete(*list, pos, pos+1)
		}
		// Relative placement names a user-defined rule of the same kind.
		anchor := func(ref string) (int, error) {
			i := slices.IndexFunc(*list, func(p push.Rule) bool { return p.RuleID == ref && !p.Default })
			if i < 0 {
				return 0, merr(http.StatusBadRequest, "M_UNKNOWN", "before/after rule not found: %s", ref)
			}
			return i, nil
		}
		switch {
		case before != "":
			i, err := anchor(before)
			if err != nil {
				return err
			}
			pos = i
		case after != "":
			i, err := anchor(after)
			if err != nil {
				return err
			}
			pos = i + 1
		case pos < 0:
			// New rules are the most important user-defined rule: first
			// after the master rule, ahead of the other defaults.
			pos = 0
			if kind == "override" {
				pos = 1
			}
		}
		*list = slices.Insert(*list, pos, rule)
		return nil
	})
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, struct{}{})
	return nil
}

func (s *Server) deletePushRule(w http.ResponseWriter, r *http.Request, sess *session) error {
	kind, err := existingRuleKind(r)
	if err != nil {
		return err
	}
	id := r.PathValue("ruleId")
	err = s.editPushRules(r, sess, func(rs *push.Ruleset) error {
		list := rs.Kind(kind)
		i := slices.IndexFunc(*list, func(p push.Rule) bool { return p.RuleID == id })
		if i < 0 {
			return errRuleNotFound()
		}
		if (*list)[i].Default {
			return merr(http.StatusBadRequest, "M_UNKNOWN", "Server-default push rules cannot be deleted; disable it instead")
		}
		*list = slices.Delete(*list, i, i+1)
		return nil
	})
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, struct{}{})
	return nil
}

// setRuleField edits one existing rule (enabled or actions).
func (s *Server) setRuleField(w http.ResponseWriter, r *http.Request, sess *session, set func(*push.Rule)) error {
	kind, err := existingRuleKind(r)
	if err != nil {
		return err
	}
	id := r.PathValue("ruleId")
	err = s.editPushRules(r, sess, func(rs *push.Ruleset) error {
		list := *rs.Kind(kind)
		i := slices.IndexFunc(list, func(p push.Rule) bool { return p.RuleID == id })
		if i < 0 {
			return errRuleNotFound()
		}
		set(&list[i])
		return nil
	})
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, struct{}{})
	return nil
}

func (s *Server) putPushRuleEnabled(w http.ResponseWriter, r *http.Request, sess *session) error {
	var req struct {
		Enabled *bool `json:"enabled"`
	}
	if err := readJSON(r, &req); err != nil {
		return err
	}
	if req.Enabled == nil {
		return errMissingParam("enabled is required")
	}
	return s.setRuleField(w, r, sess, func(p *push.Rule) { p.Enabled = *req.Enabled })
}

func (s *Server) putPushRuleActions(w http.ResponseWriter, r *http.Request, sess *session) error {
	var req struct {
		Actions *[]json.RawMessage `json:"actions"`
	}
	if err := readJSON(r, &req); err != nil {
		return err
	}
	if req.Actions == nil {
		return errMissingParam("actions is required")
	}
	if err := validActions(*req.Actions); err != nil {
		return err
	}
	return s.setRuleField(w, r, sess, func(p *push.Rule) { p.Actions = *req.Actions })
}
