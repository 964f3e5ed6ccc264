package api

import (
	"context"
	"time"

	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/projections/userdata"
)

// Presence is stored as facts (what the user set, when they last acted,
// when they last synced) and derived at read time against the reader's
// clock: idle and offline are the absence of facts, which no fold can
// see happen.
const (
	// presenceIdleAfter: online users with no pro-active event (a sent
	// event, coming online) for this long are unavailable (spec: idle
	// timeout, "e.g. 5 minutes").
	presenceIdleAfter = 5 * time.Minute
	// presenceOfflineAfter: users not seen syncing (nor acting) for this
	// long are offline. Sync activity is recorded at most once per
	// presenceRecordEvery when a request starts, and a long-poll may last
	// maxSyncTimeout, so a connected client is never older than their sum.
	presenceOfflineAfter = maxSyncTimeout + presenceRecordEvery
	// presenceRecordEvery: activity is written to the log at most this
	// often per user, so a polling client does not write on every request.
	presenceRecordEvery = time.Minute
)

// derivedPresence is the presence a reader reports at time now (Unix
// ms), and currently_active.
func derivedPresence(p *userdata.Presence, now int64) (string, bool) {
	if p == nil {
		return "offline", false
	}
	state := p.Presence
	switch {
	case state == "offline":
	case now-max(p.LastActiveTS, p.LastSyncTS) > presenceOfflineAfter.Milliseconds():
		state = "offline"
	case state == "online" && now-p.LastActiveTS > presenceIdleAfter.Milliseconds():
		state = "unavailable"
	}
	// currently_active (spec): while true the client takes the user as
	// active whatever last_active_ago says; it turns false with idleness.
	return state, state == "online"
}

func presenceContent(p *userdata.Presence, now int64) map[string]any {
	state, active := derivedPresence(p, now)
	c := map[string]any{"presence": state, "currently_active": active}
	if p != nil {
		c["last_active_ago"] = max(now-p.LastActiveTS, 0)
		if p.StatusMsg != nil {
			c["status_msg"] = *p.StatusMsg
		}
	}
	return c
}

func (s *Server) presenceFact(c facts.PresenceContent) englog.Proposal {
	return facts.MustEncode(englog.KindEDU, facts.EDU{Type: facts.EDUPresence, Origin: s.cfg.ServerName, Content: mustJSON(c)})
}

// syncPresenceFact decides what a /sync with set_presence=sp (online or
// unavailable) records: a visible change when the user's presence as
// others see it changes (first sync, another presence, back after being
// offline), a quiet record of the sync at most once per
// presenceRecordEvery otherwise, and nothing in between (ok=false).
func syncPresenceFact(p *userdata.Presence, userID, sp string, now int64) (facts.PresenceContent, bool) {
	c := facts.PresenceContent{UserID: userID, Presence: sp, Activity: facts.PresenceSynced}
	if state, _ := derivedPresence(p, now); p == nil || p.Presence != sp || state == "offline" {
		return c, true
	}
	c.Quiet = true
	return c, now-p.LastSyncTS >= presenceRecordEvery.Milliseconds()
}

// recordSyncPresence records what syncPresenceFact decides. A failure is
// logged, not returned: presence must not fail a sync.
func (s *Server) recordSyncPresence(ctx context.Context, userID, sp string) {
	p, err := s.userdataView().Presence(userID)
	if err == nil {
		c, ok := syncPresenceFact(p, userID, sp, nowMS())
		if !ok {
			return
		}
		_, err = s.log.Append(ctx, s.presenceFact(c))
	}
	if err != nil {
		s.logger.Warn().Err(err).Str("user", userID).Msg("could not record presence set by /sync")
	}
}

// activityFacts are what a pro-active event of the user (sending an
// event) adds to its commit: at most one activity record per
// presenceRecordEvery, which brings an idle user back online (spec: idle
// timeout). An explicit offline stays offline.
func (s *Server) activityFacts(userID string) []englog.Proposal {
	p, err := s.userdataView().Presence(userID)
	if err != nil {
		s.logger.Warn().Err(err).Str("user", userID).Msg("could not read presence to record activity")
		return nil
	}
	now := nowMS()
	if p != nil && now-p.LastActiveTS < presenceRecordEvery.Milliseconds() {
		return nil
	}
	presence := "online"
	if p != nil && p.Presence == "offline" {
		presence = "offline"
	}
	state, _ := derivedPresence(p, now)
	quiet := p != nil && p.Presence == presence && state == presence // others see no change
	return []englog.Proposal{s.presenceFact(facts.PresenceContent{UserID: userID, Presence: presence, Activity: facts.PresenceActive, Quiet: quiet})}
}
