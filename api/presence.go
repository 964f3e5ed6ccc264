package api

import (
	"context"
	"sync"
	"time"

	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/projections/userdata"
)

// Presence is stored as facts where others' view of a user changes (what
// the user set, coming online, back from idle or offline) and derived at
// read time against the reader's clock: idle and offline are the absence
// of activity, which no fold can see happen. Activity that changes
// nothing others see (the next sync, the next message of a user who is
// online already) is kept in memory only (presenceClock): it costs no
// log entry and no fsync, so an idle syncing client does not grow the
// log. What is lost with it on a restart is only how recent that
// activity was: the user's next sync records them online again.
const (
	// presenceIdleAfter: online users with no pro-active event (a sent
	// event, coming online) for this long are unavailable (spec: idle
	// timeout, "e.g. 5 minutes").
	presenceIdleAfter = 5 * time.Minute
	// presenceOfflineAfter: users not seen syncing (nor acting) for this
	// long are offline. Sync activity is noted when a request starts and a
	// long-poll may last maxSyncTimeout, so a connected client is never
	// older than that; the margin covers a client's pause between polls.
	presenceOfflineAfter = maxSyncTimeout + presenceGrace
	presenceGrace        = time.Minute
	// presenceRecheck is how long a verdict "this user's activity changes
	// nothing others see" stands before the recorded presence is read
	// again: a busy user costs one read a minute, not one a request.
	presenceRecheck = time.Minute
)

// presenceClock is when each user last synced and last acted on this
// node, newer than what the log recorded. Entries older than
// presenceOfflineAfter say nothing the log does not and are swept.
type presenceClock struct {
	mu        sync.Mutex
	seen      map[string]presenceSeen
	lastSweep int64
}

type presenceSeen struct {
	synced, acted int64
	// When the last read of the recorded presence found that a sync with
	// set_presence quietSync, or a sent event, changes nothing others
	// see. Within presenceRecheck the verdict cannot change but through a
	// new presence fact of the user (which forget clears; one decided on
	// another node, or racing this read, is seen at the next recheck),
	// since the activity noted meanwhile keeps the user from idling.
	quietSync               string
	quietSyncAt, quietActAt int64
}

// quiet reports whether a verdict of no change for a sync with
// set_presence sp (sp == "" for a sent event) still stands at now.
func (c *presenceClock) quiet(userID, sp string, now int64) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	v, ok := c.seen[userID]
	if !ok {
		return false
	}
	if sp == "" {
		return v.quietActAt != 0 && now-v.quietActAt < presenceRecheck.Milliseconds()
	}
	return v.quietSync == sp && now-v.quietSyncAt < presenceRecheck.Milliseconds()
}

// noteQuiet keeps a verdict of no change (see quiet); the user's entry
// exists, note having made it.
func (c *presenceClock) noteQuiet(userID, sp string, now int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	v, ok := c.seen[userID]
	if !ok {
		return
	}
	if sp == "" {
		v.quietActAt = now
	} else {
		v.quietSync, v.quietSyncAt = sp, now
	}
	c.seen[userID] = v
}

// forget drops the verdicts of a user whose presence is being recorded.
func (c *presenceClock) forget(userID string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if v, ok := c.seen[userID]; ok {
		v.quietSync, v.quietSyncAt, v.quietActAt = "", 0, 0
		c.seen[userID] = v
	}
}

func (c *presenceClock) note(userID string, now int64, acted bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.seen == nil {
		c.seen = map[string]presenceSeen{}
	}
	v := c.seen[userID]
	v.synced = max(v.synced, now)
	if acted {
		v.acted = max(v.acted, now)
	}
	c.seen[userID] = v
	if now-c.lastSweep > presenceOfflineAfter.Milliseconds() {
		c.lastSweep = now
		for u, v := range c.seen {
			if now-max(v.synced, v.acted) > presenceOfflineAfter.Milliseconds() {
				delete(c.seen, u)
			}
		}
	}
}

// overlay returns p with the activity this node saw since (a copy; p is
// not changed). A user the log never saw stays nil: presence starts with
// a recorded change.
func (c *presenceClock) overlay(userID string, p *userdata.Presence) *userdata.Presence {
	if p == nil {
		return nil
	}
	c.mu.Lock()
	v, ok := c.seen[userID]
	c.mu.Unlock()
	if !ok {
		return p
	}
	q := *p
	q.LastSyncTS = max(q.LastSyncTS, v.synced)
	q.LastActiveTS = max(q.LastActiveTS, v.acted)
	return &q
}

// presenceOf is userID's presence as recorded, with the activity this
// node saw since.
func (s *Server) presenceOf(uv userdata.View, userID string) (*userdata.Presence, error) {
	p, err := uv.Presence(userID)
	if err != nil {
		return nil, err
	}
	return s.presenceClock.overlay(userID, p), nil
}

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
	s.presenceClock.forget(c.UserID)
	return facts.MustEncode(englog.KindEDU, facts.EDU{Type: facts.EDUPresence, Origin: s.cfg.ServerName, Content: mustJSON(c)})
}

// syncPresenceFact decides what a /sync with set_presence=sp (online or
// unavailable) records, given p (with this node's activity overlaid): a
// change when the user's presence as others see it changes (first sync,
// another presence, back after being offline), and nothing otherwise
// (ok=false): the sync is then only noted in memory.
func syncPresenceFact(p *userdata.Presence, userID, sp string, now int64) (facts.PresenceContent, bool) {
	c := facts.PresenceContent{UserID: userID, Presence: sp, Activity: facts.PresenceSynced}
	state, _ := derivedPresence(p, now)
	return c, p == nil || p.Presence != sp || state == "offline"
}

// recordSyncPresence records what syncPresenceFact decides and notes the
// sync. A failure is logged, not returned: presence must not fail a sync.
func (s *Server) recordSyncPresence(ctx context.Context, userID, sp string) {
	now := nowMS()
	if s.presenceClock.quiet(userID, sp, now) {
		s.presenceClock.note(userID, now, false)
		return
	}
	p, err := s.presenceOf(s.userdataView(), userID)
	quiet := false
	if err == nil {
		c, ok := syncPresenceFact(p, userID, sp, now)
		if ok {
			_, err = s.log.Append(ctx, s.presenceFact(c))
		}
		quiet = !ok
	}
	if err == nil {
		s.presenceClock.note(userID, now, false)
		if quiet {
			s.presenceClock.noteQuiet(userID, sp, now)
		}
		return
	}
	s.logger.Warn().Err(err).Str("user", userID).Msg("could not record presence set by /sync")
}

// activityFacts are what a pro-active event of the user (sending an
// event) adds to its commit: an activity record when it changes what
// others see (it brings an idle or offline user back online; spec: idle
// timeout), nothing otherwise (the activity is noted in memory). An
// explicit offline stays offline.
func (s *Server) activityFacts(userID string) []englog.Proposal {
	now := nowMS()
	if s.presenceClock.quiet(userID, "", now) {
		s.presenceClock.note(userID, now, true)
		return nil
	}
	p, err := s.presenceOf(s.userdataView(), userID)
	if err != nil {
		s.logger.Warn().Err(err).Str("user", userID).Msg("could not read presence to record activity")
		return nil
	}
	s.presenceClock.note(userID, now, true)
	presence := "online"
	if p != nil && p.Presence == "offline" {
		presence = "offline"
	}
	if state, _ := derivedPresence(p, now); p != nil && p.Presence == presence && state == presence {
		s.presenceClock.noteQuiet(userID, "", now)
		return nil // others see no change
	}
	return []englog.Proposal{s.presenceFact(facts.PresenceContent{UserID: userID, Presence: presence, Activity: facts.PresenceActive})}
}
