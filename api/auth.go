package api

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/engram-hs/engram/api/appservice"
	"github.com/engram-hs/engram/projections/accounts"
)

// session is the caller behind a valid access token.
type session struct {
	UserID    string
	DeviceID  string
	TokenHash string
	Admin     bool
	Guest     bool
	// Set by server admins (api/admin); see moderation.go.
	Suspended    bool
	ShadowBanned bool
	// Appservice is set when an application service makes the request
	// with its as_token, as UserID (appservices.go).
	Appservice *appservice.Registration
}

// bearerToken takes the token from "Authorization: Bearer", or else from
// the deprecated access_token query parameter.
func bearerToken(r *http.Request) string {
	if h := r.Header.Get("Authorization"); h != "" {
		if t, ok := strings.CutPrefix(h, "Bearer "); ok {
			return strings.TrimSpace(t)
		}
		return ""
	}
	return r.URL.Query().Get("access_token")
}

func hashToken(tok string) string {
	sum := sha256.Sum256([]byte(tok))
	return hex.EncodeToString(sum[:])
}

// lookupToken returns the live session of a token, or nil.
func (s *Server) lookupToken(tok string) (*accounts.Session, error) {
	return s.accountsView().Session(hashToken(tok))
}

func (s *Server) authenticate(r *http.Request) (*session, error) {
	tok := bearerToken(r)
	if tok == "" {
		return nil, merr(http.StatusUnauthorized, "M_MISSING_TOKEN", "Missing access token")
	}
	if r.Header.Get("Authorization") == "" {
		logDeprecatedQueryToken(r)
	}
	if reg := s.cfg.Appservices.ByToken(tok); reg != nil {
		return s.appserviceSession(r, reg)
	}
	h := hashToken(tok)
	v := s.accountsView()
	st, err := v.Session(h)
	if err != nil {
		return nil, err
	}
	if st == nil {
		return nil, merr(http.StatusUnauthorized, "M_UNKNOWN_TOKEN", "Unrecognised access token").With("soft_logout", false)
	}
	if st.ExpiresAt != 0 && st.ExpiresAt <= nowMS() {
		// Spec (refreshing access tokens): an expired token is a soft logout.
		return nil, merr(http.StatusUnauthorized, "M_UNKNOWN_TOKEN", "Access token has expired").With("soft_logout", true)
	}
	acc, err := v.Account(st.UserID)
	if err != nil {
		return nil, err
	}
	if acc == nil || acc.Deactivated {
		return nil, merr(http.StatusUnauthorized, "M_UNKNOWN_TOKEN", "Unrecognised access token").With("soft_logout", false)
	}
	if ri := reqInfoFrom(r); ri != nil {
		ri.user = st.UserID
	}
	if acc.Locked && !lockedAllowed(r) {
		return nil, errUserLocked()
	}
	return &session{UserID: st.UserID, DeviceID: st.DeviceID, TokenHash: h, Admin: acc.Admin, Guest: acc.Guest,
		Suspended: acc.Suspended, ShadowBanned: acc.ShadowBanned}, nil
}

// randomString returns n random bytes in URL-safe base64.
func randomString(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

func newAccessToken() string  { return "mat_" + randomString(24) }
func newRefreshToken() string { return "mar_" + randomString(24) }

// newDeviceID is ten upper-case letters, like the IDs clients are used to.
func newDeviceID() string {
	const letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
	b := make([]byte, 10)
	_, _ = rand.Read(b)
	for i := range b {
		b[i] = letters[int(b[i])%len(letters)]
	}
	return string(b)
}

// nonceStore keeps the shared-secret registration nonces. Nonces are
// ephemeral: not facts, so they live in memory with an expiry.
type nonceStore struct {
	mu     sync.Mutex
	nonces map[string]time.Time
}

func newNonceStore() *nonceStore { return &nonceStore{nonces: map[string]time.Time{}} }

const nonceLifetime = 60 * time.Second

// maxEphemeral bounds each store of ephemeral request state (nonces, UIA
// sessions).
const maxEphemeral = 10_000

func (n *nonceStore) issue() string {
	nonce := hex.EncodeToString([]byte(randomString(16)))
	now := time.Now()
	n.mu.Lock()
	defer n.mu.Unlock()
	makeRoom(n.nonces, now, func(exp time.Time) time.Time { return exp })
	n.nonces[nonce] = now.Add(nonceLifetime)
	return nonce
}

// makeRoom keeps a store of ephemeral request state bounded: when it is
// full it drops the expired entries and, if it is still full, the one
// that expires soonest, so one more fits. The store is keyed by what
// unauthenticated callers ask for, so it must not grow with them.
func makeRoom[V any](m map[string]V, now time.Time, expires func(V) time.Time) {
	if len(m) < maxEphemeral {
		return
	}
	soonestKey, soonest := "", time.Time{}
	for k, v := range m {
		exp := expires(v)
		if now.After(exp) {
			delete(m, k)
			continue
		}
		if soonestKey == "" || exp.Before(soonest) {
			soonestKey, soonest = k, exp
		}
	}
	if len(m) >= maxEphemeral {
		delete(m, soonestKey)
	}
}

// consume reports whether the nonce was issued, unexpired and unused.
func (n *nonceStore) consume(nonce string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	exp, ok := n.nonces[nonce]
	delete(n.nonces, nonce)
	return ok && time.Now().Before(exp)
}
