package auth

import (
	"fmt"

	"github.com/engram-hs/engram/stateres"
)

// checkPowerLevels is the m.room.power_levels rule: the new content must be
// well formed, may not name v12 creators, and may only change levels that
// are within the sender's reach, old and new.
func (c *checker) checkPowerLevels(oldEv stateres.PDU, senderLevel Level) (string, *Rejection) {
	next, rej := parsePowerLevels(c.v, c.ev.Content(), true)
	if rej != nil {
		return "", rej
	}
	if c.v.PrivilegedCreators {
		for _, u := range c.pl.creators {
			if _, ok := next.users[u]; ok {
				return "", c.reject("power_levels.creators", fmt.Sprintf("users names the room creator %s, whose level is fixed", u))
			}
		}
	}
	if oldEv == nil {
		return "power_levels.initial", nil
	}
	cur := c.pl
	sender := c.ev.Sender()
	for i, name := range topKeyNames {
		o, n := cur.top[i], next.top[i]
		if o == n {
			continue
		}
		if o.set && LevelOf(o.n).Above(senderLevel) {
			return "", c.reject("power_levels.top_level", fmt.Sprintf("%s is %d now, above the sender's level %s", name, o.n, senderLevel))
		}
		if n.set && LevelOf(n.n).Above(senderLevel) {
			return "", c.reject("power_levels.top_level", fmt.Sprintf("%s would become %d, above the sender's level %s", name, n.n, senderLevel))
		}
	}
	type levelMap struct {
		name      string
		cur, next map[string]int64
	}
	maps := []levelMap{{"events", cur.events, next.events}}
	if c.v.NotificationsPowerLevels {
		maps = append(maps, levelMap{"notifications", cur.notifs, next.notifs})
	}
	for _, m := range maps {
		for k, ov := range m.cur {
			if nv, ok := m.next[k]; (!ok || nv != ov) && LevelOf(ov).Above(senderLevel) {
				return "", c.reject("power_levels.events_old", fmt.Sprintf("%s[%q] is %d now, above the sender's level %s", m.name, k, ov, senderLevel))
			}
		}
	}
	for _, m := range maps {
		for k, nv := range m.next {
			if ov, ok := m.cur[k]; (!ok || nv != ov) && LevelOf(nv).Above(senderLevel) {
				return "", c.reject("power_levels.events_new", fmt.Sprintf("%s[%q] would become %d, above the sender's level %s", m.name, k, nv, senderLevel))
			}
		}
	}
	for u, ov := range cur.users {
		if u == sender {
			continue
		}
		if nv, ok := next.users[u]; (!ok || nv != ov) && LevelOf(ov).AtLeast(senderLevel) {
			return "", c.reject("power_levels.users_old", fmt.Sprintf("%s has level %d, not below the sender's level %s", u, ov, senderLevel))
		}
	}
	for u, nv := range next.users {
		if ov, ok := cur.users[u]; (!ok || nv != ov) && LevelOf(nv).Above(senderLevel) {
			return "", c.reject("power_levels.users_new", fmt.Sprintf("%s would get level %d, above the sender's level %s", u, nv, senderLevel))
		}
	}
	return "power_levels.allowed", nil
}
