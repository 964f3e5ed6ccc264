// Package ratelimit holds Synapse's rate limits (rc_message, rc_login,
// rc_registration, rc_joins, rc_invites, rc_admin_redaction,
// rc_media_create) with Synapse's defaults, and the token buckets that
// enforce them. Which request spends which bucket is decided by the API's
// middleware (api/middleware.go); the media API spends MediaCreate.
//
// Buckets are in memory: a rate limit is not a fact, and forgetting one
// on restart only lets a client try again sooner.
package ratelimit

import (
	"math"
	"net/http"
	"sync"
	"time"

	"github.com/engram-hs/engram/internal/mxerr"
)

// Rule is one of Synapse's rc_* settings: actions refill at PerSecond, up
// to BurstCount at once. A zero rule never limits.
type Rule struct {
	PerSecond  float64 // per_second
	BurstCount float64 // burst_count
}

// Limits reports whether the rule limits anything.
func (r Rule) Limits() bool { return r.PerSecond > 0 && r.BurstCount > 0 }

// Config is every rule, by Synapse's key names.
type Config struct {
	Message             Rule // rc_message: sending events (messages, state, redactions) and creating rooms
	Registration        Rule // rc_registration: registrations per client address
	LoginAddress        Rule // rc_login.address: login attempts per client address
	LoginAccount        Rule // rc_login.account: logins per account
	LoginFailedAttempts Rule // rc_login.failed_attempts: failed logins per account
	JoinsLocal          Rule // rc_joins.local: joins of rooms this server is in, per user
	JoinsRemote         Rule // rc_joins.remote: joins over federation, per user
	InvitesPerRoom      Rule // rc_invites.per_room
	InvitesPerUser      Rule // rc_invites.per_user: invites received, per invitee
	InvitesPerIssuer    Rule // rc_invites.per_issuer: invites sent, per inviter
	AdminRedaction      Rule // rc_admin_redaction: admins' redactions (zero: not limited)
	MediaCreate         Rule // rc_media_create: media IDs created, per user
}

// Defaults are Synapse's.
func Defaults() Config {
	return Config{
		Message:             Rule{0.2, 10},
		Registration:        Rule{0.17, 3},
		LoginAddress:        Rule{0.003, 5},
		LoginAccount:        Rule{0.003, 5},
		LoginFailedAttempts: Rule{0.17, 3},
		JoinsLocal:          Rule{0.1, 10},
		JoinsRemote:         Rule{0.01, 10},
		InvitesPerRoom:      Rule{0.3, 10},
		InvitesPerUser:      Rule{0.003, 5},
		InvitesPerIssuer:    Rule{0.3, 10},
		MediaCreate:         Rule{10, 50},
	}
}

// maxBuckets bounds the buckets kept; full ones are forgotten first.
const maxBuckets = 100_000

// Limiter is a set of token buckets, one per (bucket name, subject).
type Limiter struct {
	mu      sync.Mutex
	buckets map[string]*bucket
	now     func() time.Time
}

type bucket struct {
	tokens float64
	last   time.Time
	rule   Rule
}

// New returns an empty limiter on the wall clock.
func New() *Limiter { return NewWithClock(time.Now) }

// NewWithClock returns a limiter reading time from now (tests simulate hours).
func NewWithClock(now func() time.Time) *Limiter {
	return &Limiter{buckets: map[string]*bucket{}, now: now}
}

func (l *Limiter) refill(name string, rule Rule, subject string) (*bucket, time.Time) {
	now := l.now()
	k := name + "\x00" + subject
	b := l.buckets[k]
	if b == nil {
		if len(l.buckets) >= maxBuckets {
			l.evictFull(now)
		}
		b = &bucket{tokens: rule.BurstCount, last: now, rule: rule}
		l.buckets[k] = b
	}
	b.rule = rule // a per-user override may change the rule
	b.tokens = math.Min(rule.BurstCount, b.tokens+now.Sub(b.last).Seconds()*rule.PerSecond)
	b.last = now
	return b, now
}

func wait(b *bucket) time.Duration {
	return time.Duration((1 - b.tokens) / b.rule.PerSecond * float64(time.Second))
}

// Take spends one action of subject's bucket under rule; it returns 0
// when allowed, else how long until an action is allowed (nothing spent).
func (l *Limiter) Take(name string, rule Rule, subject string) time.Duration {
	if !rule.Limits() {
		return 0
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	b, _ := l.refill(name, rule, subject)
	if b.tokens >= 1 {
		b.tokens--
		return 0
	}
	return wait(b)
}

// Check is Take without spending: for actions counted only once they
// succeed (registrations) or fail (failed logins).
func (l *Limiter) Check(name string, rule Rule, subject string) time.Duration {
	if !rule.Limits() {
		return 0
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	b, _ := l.refill(name, rule, subject)
	if b.tokens >= 1 {
		return 0
	}
	return wait(b)
}

// Record spends one action even when none is left (the bucket goes
// negative, so repeated failures keep the subject waiting).
func (l *Limiter) Record(name string, rule Rule, subject string) {
	if !rule.Limits() {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	b, _ := l.refill(name, rule, subject)
	b.tokens = math.Max(b.tokens-1, -rule.BurstCount)
}

// evictFull drops buckets that have refilled: forgetting them changes
// nothing, so the map stays bounded by the number of active subjects.
func (l *Limiter) evictFull(now time.Time) {
	for k, b := range l.buckets {
		if b.tokens+now.Sub(b.last).Seconds()*b.rule.PerSecond >= b.rule.BurstCount {
			delete(l.buckets, k)
		}
	}
}

// Exceeded is the 429 answer: M_LIMIT_EXCEEDED with retry_after_ms (the
// API adds the Retry-After header to every such answer).
func Exceeded(wait time.Duration) *mxerr.Error {
	ms := int64(math.Ceil(float64(wait) / float64(time.Millisecond)))
	if ms < 1 {
		ms = 1
	}
	return mxerr.New(http.StatusTooManyRequests, "M_LIMIT_EXCEEDED", "Too many requests; retry in %d ms", ms).With("retry_after_ms", ms)
}
