package api

import (
	"bytes"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"

	"github.com/engram-hs/engram/api/ratelimit"
)

// Which request spends which of Synapse's rate limits. Reads are never
// limited, and neither are typing notifications, receipts, read markers,
// presence or logout: only what Synapse limits is limited, each by its
// own rule and subject (user, account, client address, room, invitee).
// Server admins are exempt, and an admin can set a user's own message
// limit (override_ratelimit; zero and zero: not limited).

// clientAddr is the client's address. X-Forwarded-For is believed only
// from a trusted proxy: every peer of the listener when x_forwarded is
// set (Synapse: the left-most address), or peers in trusted_proxies (the
// right-most address that is not itself a trusted proxy).
func (s *Server) clientAddr(r *http.Request) string {
	peer := r.RemoteAddr
	if h, _, err := net.SplitHostPort(peer); err == nil {
		peer = h
	}
	xff := r.Header.Values("X-Forwarded-For")
	if len(xff) == 0 || (!s.cfg.XForwarded && !s.trustedProxy(peer)) {
		return peer
	}
	var hops []string
	for _, v := range xff {
		for _, h := range strings.Split(v, ",") {
			if h = strings.TrimSpace(h); h != "" {
				hops = append(hops, h)
			}
		}
	}
	if len(hops) == 0 {
		return peer
	}
	if s.cfg.XForwarded {
		return hops[0]
	}
	for i := len(hops) - 1; i >= 0; i-- {
		if !s.trustedProxy(hops[i]) {
			return hops[i]
		}
	}
	return hops[0]
}

func (s *Server) trustedProxy(addr string) bool {
	ip, err := netip.ParseAddr(strings.Trim(addr, "[]"))
	if err != nil {
		return false
	}
	ip = ip.Unmap()
	for _, p := range s.cfg.TrustedProxies {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// RateLimits is the limiter and its rules, for sub-APIs that limit their
// own actions (the media API spends Config.MediaCreate per user); nil
// when rate limiting is off.
func (s *Server) RateLimits() (*ratelimit.Limiter, ratelimit.Config) {
	return s.limiter, s.cfg.RateLimits
}

// Routes spending rc_message: sending events and creating rooms.
var messageRoutes = map[string]bool{
	"PUT /rooms/{roomId}/send/{eventType}/{txnId}":        true,
	"PUT /rooms/{roomId}/state/{eventType}":               true,
	"PUT /rooms/{roomId}/state/{eventType}/{stateKey...}": true,
	"PUT /rooms/{roomId}/redact/{eventId}/{txnId}":        true,
	"POST /createRoom":             true,
	"POST /rooms/{roomId}/upgrade": true,
}

// peekJSON decodes the body into v and puts it back for the handler.
func peekJSON(r *http.Request, v any) {
	body, err := io.ReadAll(r.Body)
	r.Body = io.NopCloser(bytes.NewReader(body))
	if err == nil {
		_ = json.Unmarshal(body, v)
	}
}

// rateLimit decides whether the request may run; after, when not nil, is
// called with the answer's status and errcode (for limits that count only
// successes or failures).
func (s *Server) rateLimit(r *http.Request) (after func(status int, errcode string), err error) {
	if s.limiter == nil || r.Method == http.MethodGet || r.Method == http.MethodHead {
		return nil, nil
	}
	tail := routeTail(r)
	ip := clientIP(r)
	rc := s.cfg.RateLimits
	l := s.limiter
	exceeded := func(name string, rule ratelimit.Rule, subject string) error {
		if w := l.Take(name, rule, subject); w > 0 {
			return ratelimit.Exceeded(w)
		}
		return nil
	}
	switch tail {
	case "POST /login":
		if err := exceeded("login_address", rc.LoginAddress, ip); err != nil {
			return nil, err
		}
		var req authDict
		peekJSON(r, &req)
		account := s.passwordUser(&req)
		if account == "" {
			return nil, nil
		}
		// A failed login counts against the account it names, whoever
		// sends it: enough of them lock that account for a while, and
		// nobody else.
		if w := l.Check("login_failed", rc.LoginFailedAttempts, account); w > 0 {
			return nil, ratelimit.Exceeded(w)
		}
		if w := l.Check("login_account", rc.LoginAccount, account); w > 0 {
			return nil, ratelimit.Exceeded(w)
		}
		return func(status int, errcode string) {
			switch {
			case status == http.StatusOK:
				l.Record("login_account", rc.LoginAccount, account)
			case status == http.StatusForbidden && errcode == "M_FORBIDDEN":
				l.Record("login_failed", rc.LoginFailedAttempts, account)
			}
		}, nil
	case "POST /register":
		if r.URL.Query().Get("kind") == "guest" {
			return nil, exceeded("registration", rc.Registration, ip)
		}
		if w := l.Check("registration", rc.Registration, ip); w > 0 {
			return nil, ratelimit.Exceeded(w)
		}
		return func(status int, _ string) {
			if status == http.StatusOK {
				l.Record("registration", rc.Registration, ip)
			}
		}, nil
	}
	limited := messageRoutes[tail] || tail == "POST /rooms/{roomId}/join" || tail == "POST /join/{roomIdOrAlias}" || tail == "POST /rooms/{roomId}/invite"
	if !limited {
		return nil, nil
	}
	tok := bearerToken(r)
	if tok == "" {
		return nil, nil // the handler answers 401
	}
	if reg := s.cfg.Appservices.ByToken(tok); reg != nil {
		// Appservices speak for many users at once: exempt, unless the
		// registration says rate_limited: true (never for its sender).
		user := r.URL.Query().Get("user_id")
		if !reg.Throttled() || user == "" || user == reg.Sender() {
			return nil, nil
		}
		return nil, exceeded("message", rc.Message, user)
	}
	sess, err := s.lookupToken(tok)
	if err != nil || sess == nil {
		return nil, err
	}
	acc, err := s.accountsView().Account(sess.UserID)
	if err != nil || acc == nil {
		return nil, err
	}
	user := sess.UserID
	if acc.Admin {
		if tail == "PUT /rooms/{roomId}/redact/{eventId}/{txnId}" {
			return nil, exceeded("admin_redaction", rc.AdminRedaction, user)
		}
		return nil, nil
	}
	switch tail {
	case "POST /rooms/{roomId}/join", "POST /join/{roomIdOrAlias}":
		id := r.PathValue("roomId")
		if id == "" {
			id, _ = s.resolveRoom(r.PathValue("roomIdOrAlias"))
		}
		if room, err := s.roomsView().Room(id); err == nil && room != nil {
			return nil, exceeded("joins_local", rc.JoinsLocal, user)
		}
		return nil, exceeded("joins_remote", rc.JoinsRemote, user)
	case "POST /rooms/{roomId}/invite":
		var req struct {
			UserID string `json:"user_id"`
		}
		peekJSON(r, &req)
		if err := exceeded("invites_room", rc.InvitesPerRoom, r.PathValue("roomId")); err != nil {
			return nil, err
		}
		if err := exceeded("invites_issuer", rc.InvitesPerIssuer, user); err != nil {
			return nil, err
		}
		return nil, exceeded("invites_user", rc.InvitesPerUser, req.UserID)
	}
	rule := rc.Message
	if o, err := s.accountsView().RateLimit(user); err != nil {
		return nil, err
	} else if o != nil {
		rule = ratelimit.Rule{PerSecond: o.MessagesPerSecond, BurstCount: float64(o.BurstCount)}
	}
	return nil, exceeded("message", rule, user)
}
