package api

import (
	"context"
	"encoding/json"
	"strings"

	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/projections"
	"github.com/engram-hs/engram/push"
	"github.com/engram-hs/engram/stateres"
)

// carryPushRules copies a local user's push rules for a room's
// predecessor to the room when they come into it (its creator, or a user
// joining it), as Synapse does on an upgrade: a muted room stays muted
// after it is upgraded. The rules copied are the user's own (never the
// defaults) that name the old room: the room rule whose ID is the old
// room, and override, underride or content rules whose rule ID holds the
// old room's ID, with their room_id condition pointed at the new room. A
// rule the user already has for the new room is left as it is. A failure
// is logged, not returned: the join itself has happened.
func (s *Server) carryPushRules(ctx context.Context, userID, roomID string) {
	var create struct {
		Predecessor *struct {
			RoomID string `json:"room_id"`
		} `json:"predecessor"`
	}
	if _, err := stateContent(s.roomsView(), roomID, stateres.MRoomCreate, "", &create); err != nil {
		s.logger.Warn().Err(err).Str("room", roomID).Str("user", userID).Msg("could not read the room's create event to carry push rules over from its predecessor; the user's rules for the old room were not copied")
		return
	}
	if create.Predecessor == nil || create.Predecessor.RoomID == "" || create.Predecessor.RoomID == roomID {
		return
	}
	oldRoomID := create.Predecessor.RoomID
	defer s.locks.Lock("pushrules:" + userID)()
	rs, err := s.pushRules(userID)
	if err != nil {
		s.logger.Warn().Err(err).Str("room", roomID).Str("user", userID).Msg("could not read push rules to carry them over from the room's predecessor; the user's rules for the old room were not copied")
		return
	}
	changed := false
	carry := func(rules []push.Rule, byRoomID bool) []push.Rule {
		have := map[string]bool{}
		for _, r := range rules {
			have[r.RuleID] = true
		}
		out := make([]push.Rule, 0, len(rules))
		for _, r := range rules {
			out = append(out, r)
			if r.Default {
				continue
			}
			var c push.Rule
			switch {
			case byRoomID && r.RuleID == oldRoomID:
				c = r
				c.RuleID = roomID
			case !byRoomID && strings.Contains(r.RuleID, oldRoomID):
				c = r
				c.RuleID = strings.ReplaceAll(r.RuleID, oldRoomID, roomID)
				c.Conditions = retargetRoomConditions(r.Conditions, oldRoomID, roomID)
			default:
				continue
			}
			if have[c.RuleID] {
				continue
			}
			have[c.RuleID] = true
			out = append(out, c)
			changed = true
		}
		return out
	}
	rs.Room = carry(rs.Room, true)
	rs.Override = carry(rs.Override, false)
	rs.Content = carry(rs.Content, false)
	rs.Underride = carry(rs.Underride, false)
	if !changed {
		return
	}
	content := mustJSON(pushRulesContent{Global: rs})
	if _, err := s.commit(ctx, []*projections.Handle{s.userdataH}, facts.MustEncode(englog.KindAccountDataSet, facts.AccountDataSet{UserID: userID, Type: "m.push_rules", Content: content})); err != nil {
		s.logger.Warn().Err(err).Str("room", roomID).Str("user", userID).Msg("could not record the push rules carried over from the room's predecessor; the user can set them again")
	}
}

// retargetRoomConditions points a rule's room_id conditions for the old
// room at the new one, keeping every other condition and key as it is.
func retargetRoomConditions(raw json.RawMessage, oldRoomID, roomID string) json.RawMessage {
	var conds []map[string]json.RawMessage
	if len(raw) == 0 || json.Unmarshal(raw, &conds) != nil {
		return raw
	}
	for _, c := range conds {
		var key, pattern string
		_ = json.Unmarshal(c["key"], &key)
		_ = json.Unmarshal(c["pattern"], &pattern)
		if key == "room_id" && pattern == oldRoomID {
			c["pattern"] = mustJSON(roomID)
		}
	}
	return mustJSON(conds)
}
