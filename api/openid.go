package api

import (
	"net/http"
	"time"

	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/projections"
)

// openIDTokenLifetime is how long a third party may use an OpenID token
// (Synapse's default: one hour).
const openIDTokenLifetime = time.Hour

func (s *Server) openIDRoutes() {
	s.client("POST", "/user/{userId}/openid/request_token", s.authed(s.requestOpenIDToken))
}

// requestOpenIDToken issues a token a third party (an integration
// manager) exchanges at our federation openid/userinfo for the user's ID
// (client-server API, "OpenID").
func (s *Server) requestOpenIDToken(w http.ResponseWriter, r *http.Request, sess *session) error {
	if err := ownUser(r, sess); err != nil {
		return err
	}
	var req map[string]any
	if err := readJSON(r, &req); err != nil {
		return err
	}
	tok := randomString(32)
	expires := time.Now().Add(openIDTokenLifetime)
	if _, err := s.commit(r.Context(), []*projections.Handle{s.openidH}, facts.MustEncode(englog.KindOpenIDTokenIssued, facts.OpenIDTokenIssued{
		UserID: sess.UserID, TokenSHA256: hashToken(tok), ExpiresAt: expires.UnixMilli()})); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"access_token":       tok,
		"token_type":         "Bearer",
		"matrix_server_name": s.cfg.ServerName,
		"expires_in":         int(openIDTokenLifetime / time.Second),
	})
	return nil
}
