package api

import (
	"crypto/hmac"
	"crypto/sha1"
	"encoding/base64"
	"net/http"
	"strconv"
	"time"
)

// TURN credentials (spec: voip.yaml) in the "TURN REST API" scheme that
// coturn's use-auth-secret / static-auth-secret understands, as Synapse
// issues them: username "<expiry unix seconds>:<user ID>", password
// base64(HMAC-SHA1(shared secret, username)).

// defaultTurnUserLifetime is Synapse's turn_user_lifetime default (1h).
const defaultTurnUserLifetime = time.Hour

func (s *Server) voipRoutes() {
	s.client("GET", "/voip/turnServer", s.authed(s.turnServer))
}

func (s *Server) turnServer(w http.ResponseWriter, r *http.Request, sess *session) error {
	// No TURN configured, or guests not allowed it: the spec defines no
	// error for this; clients (and Synapse) treat an empty object as "no
	// TURN server", which keeps calls possible over STUN/host candidates.
	if len(s.cfg.TurnURIs) == 0 || s.cfg.TurnSharedSecret == "" || (sess.Guest && !s.cfg.TurnAllowGuests) {
		writeJSON(w, http.StatusOK, struct{}{})
		return nil
	}
	lifetime := s.cfg.TurnUserLifetime
	if lifetime <= 0 {
		lifetime = defaultTurnUserLifetime
	}
	username, password := turnCredentials(s.cfg.TurnSharedSecret, sess.UserID, time.Now().Add(lifetime))
	writeJSON(w, http.StatusOK, map[string]any{
		"username": username,
		"password": password,
		"uris":     s.cfg.TurnURIs,
		"ttl":      int64(lifetime / time.Second),
	})
	return nil
}

// turnCredentials derives time-limited TURN credentials for userID.
func turnCredentials(secret, userID string, expires time.Time) (username, password string) {
	username = strconv.FormatInt(expires.Unix(), 10) + ":" + userID
	mac := hmac.New(sha1.New, []byte(secret))
	mac.Write([]byte(username))
	return username, base64.StdEncoding.EncodeToString(mac.Sum(nil))
}
