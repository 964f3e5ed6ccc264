package accounts

import (
	"encoding/json"
	"sync"

	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/projections"
)

// Cache keeps what every authenticated request reads (the session of its
// access token, its user's account and message rate limit) in memory, so
// a request costs no Pebble point reads for them. It is invalidated
// through the log like every projection read: the fold's AfterCommit drops
// every entry of each user an accounts fact of the batch names, before
// the engine lets readers see the batch (WaitApplied), so a logout,
// deactivation, token refresh, device removal or lock is in force for the
// very next request. Every node folds the same log, so the same holds on
// every node of a cluster.
//
// Only what exists is cached (sessions and accounts), plus rate limits of
// existing users: an unknown token costs a read every time but cannot
// fill memory.
type Cache struct {
	mu sync.Mutex
	// epoch moves with every invalidation. A reader that missed notes it
	// before reading Pebble and stores what it read only if it has not
	// moved: otherwise the read may predate a commit whose invalidation
	// already ran, and storing it would keep a revoked token alive.
	epoch    uint64
	sessions map[string]Session    // access token hash -> session
	accounts map[string]Account    // user -> account
	limits   map[string]*RateLimit // user -> override, nil for none
	tokens   map[string][]string   // user -> cached token hashes
	// last is the last offset AfterCommit saw. A batch that does not
	// follow it means a rebuilt generation took over (schema change or
	// healing; the engine hands over the rebuild's last batch), whose
	// contents may differ anywhere: everything goes. After a schema
	// change nothing was committed on this process before the switch
	// (last is 0), so the last batch follows only when it is the whole
	// log, and then it names every user. A healed generation folds the
	// same log with the same code as the damaged one did.
	last uint64
}

// maxCached bounds each map; a full map is emptied (it refills at one
// read per active user).
const maxCached = 100_000

func newCache() *Cache {
	return &Cache{sessions: map[string]Session{}, accounts: map[string]Account{}, limits: map[string]*RateLimit{}, tokens: map[string][]string{}}
}

// accountKinds are the kinds the fold changes accounts, devices, tokens or
// rate limits with; each names its user in "user_id".
var accountKinds = map[englog.Kind]bool{
	englog.KindAccountRegistered: true, englog.KindPasswordChanged: true, englog.KindAccountDeactivated: true,
	englog.KindUserAdminSet: true, englog.KindUserModerated: true, englog.KindAccountReactivated: true,
	englog.KindRatelimitOverride: true, englog.KindDeviceAdded: true, englog.KindDeviceRemoved: true,
	englog.KindAccessTokenIssued: true, englog.KindAccessTokenRevoked: true,
}

// AfterCommit drops what the batch may have changed.
func (p *Projection) AfterCommit(entries []englog.Entry) {
	if len(entries) == 0 {
		return
	}
	var users []string
	for _, e := range entries {
		if !accountKinds[e.Kind] {
			continue
		}
		var f struct {
			UserID string `json:"user_id"`
		}
		if json.Unmarshal(e.Payload, &f) == nil {
			users = append(users, f.UserID)
		}
	}
	p.cache.invalidate(entries[0].Offset, entries[len(entries)-1].Offset, users)
}

func (c *Cache) invalidate(first, last uint64, users []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	contiguous := first == c.last+1
	c.last = last
	if !contiguous {
		c.epoch++
		c.sessions, c.accounts, c.limits, c.tokens = map[string]Session{}, map[string]Account{}, map[string]*RateLimit{}, map[string][]string{}
		return
	}
	if len(users) == 0 {
		return
	}
	c.epoch++
	for _, u := range users {
		for _, h := range c.tokens[u] {
			delete(c.sessions, h)
		}
		delete(c.tokens, u)
		delete(c.accounts, u)
		delete(c.limits, u)
	}
}

func (c *Cache) now() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.epoch
}

func (c *Cache) session(hash string) (Session, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	s, ok := c.sessions[hash]
	return s, ok
}

func (c *Cache) putSession(epoch uint64, hash string, s Session) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if epoch != c.epoch {
		return
	}
	if _, ok := c.sessions[hash]; ok {
		return
	}
	if len(c.sessions) >= maxCached {
		c.sessions, c.tokens = map[string]Session{}, map[string][]string{}
	}
	c.sessions[hash] = s
	c.tokens[s.UserID] = append(c.tokens[s.UserID], hash)
}

func (c *Cache) account(userID string) (Account, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	a, ok := c.accounts[userID]
	return a, ok
}

func (c *Cache) putAccount(epoch uint64, a Account) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if epoch != c.epoch {
		return
	}
	if len(c.accounts) >= maxCached {
		c.accounts = map[string]Account{}
	}
	c.accounts[a.UserID] = a
}

func (c *Cache) limit(userID string) (*RateLimit, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	l, ok := c.limits[userID]
	return l, ok
}

func (c *Cache) putLimit(epoch uint64, userID string, l *RateLimit) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if epoch != c.epoch {
		return
	}
	if len(c.limits) >= maxCached {
		c.limits = map[string]*RateLimit{}
	}
	c.limits[userID] = l
}

// View returns a view over r (the projection's live reader) whose
// session, account and rate-limit reads go through the cache. Views over
// snapshots must use NewView: the cache follows the newest state.
func (p *Projection) View(r projections.Reader) View { return View{r: r, cache: p.cache} }

func (v View) cachedSession(hash string) (*Session, error) {
	if s, ok := v.cache.session(hash); ok {
		return &s, nil
	}
	epoch := v.cache.now()
	s, err := projections.GetJSON[Session](v.r, projections.Key(pToken, hash))
	if err == nil && s != nil {
		v.cache.putSession(epoch, hash, *s)
	}
	return s, err
}

func (v View) cachedAccount(userID string) (*Account, error) {
	if a, ok := v.cache.account(userID); ok {
		return &a, nil
	}
	epoch := v.cache.now()
	a, err := projections.GetJSON[Account](v.r, projections.Key(pAccount, userID))
	if err == nil && a != nil {
		v.cache.putAccount(epoch, *a)
	}
	return a, err
}

func (v View) cachedRateLimit(userID string) (*RateLimit, error) {
	if l, ok := v.cache.limit(userID); ok {
		if l == nil {
			return nil, nil
		}
		cp := *l
		return &cp, nil
	}
	epoch := v.cache.now()
	l, err := projections.GetJSON[RateLimit](v.r, projections.Key(pRateLimit, userID))
	if err != nil {
		return nil, err
	}
	// Only users with an account get an entry, so names that exist
	// bound the map and not what callers send.
	if a, err := v.cachedAccount(userID); err == nil && a != nil {
		var stored *RateLimit
		if l != nil {
			cp := *l
			stored = &cp
		}
		v.cache.putLimit(epoch, userID, stored)
	}
	return l, nil
}
