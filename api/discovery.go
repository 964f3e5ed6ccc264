package api

import (
	"net/http"
	"strings"

	"github.com/engram-hs/engram/stateres"
)

func (s *Server) discoveryRoutes() {
	s.handle("GET", "/_matrix/client/versions", s.versions)
	s.handle("GET", "/.well-known/matrix/client", s.wellKnownClient)
	s.handle("GET", "/.well-known/matrix/server", s.wellKnownServer)
	s.client("GET", "/capabilities", s.authed(s.capabilities))
}

// versions lists only spec versions whose endpoints this server serves
// truthfully: the core of the r0/v1.x client-server API implemented here.
func (s *Server) versions(w http.ResponseWriter, r *http.Request) error {
	writeJSON(w, http.StatusOK, map[string]any{
		"versions": []string{"r0.6.1", "v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6", "v1.7", "v1.8", "v1.9", "v1.10", "v1.11"},
		// Cross-signing (api/keys) under its pre-v1.1 flag, which older
		// clients still look for (as Synapse advertises it).
		"unstable_features": map[string]bool{"org.matrix.e2e_cross_signing": true},
	})
	return nil
}

func (s *Server) wellKnownClient(w http.ResponseWriter, r *http.Request) error {
	if s.cfg.PublicBaseURL == "" {
		return errNotFound("No client well-known is configured (public_baseurl is empty)")
	}
	writeJSON(w, http.StatusOK, map[string]any{"m.homeserver": map[string]string{"base_url": strings.TrimRight(s.cfg.PublicBaseURL, "/")}})
	return nil
}

func (s *Server) wellKnownServer(w http.ResponseWriter, r *http.Request) error {
	if s.cfg.WellKnownServer == "" {
		return errNotFound("No server well-known is configured")
	}
	writeJSON(w, http.StatusOK, map[string]string{"m.server": s.cfg.WellKnownServer})
	return nil
}

func (s *Server) capabilities(w http.ResponseWriter, r *http.Request, sess *session) error {
	avail := map[string]string{}
	for _, v := range stateres.KnownVersions() {
		rv, _ := stateres.Version(v)
		if rv.Stable {
			avail[v] = "stable"
		} else {
			avail[v] = "unstable"
		}
	}
	caps := map[string]any{
		"m.room_versions":   map[string]any{"default": s.cfg.DefaultRoomVersion, "available": avail},
		"m.change_password": map[string]bool{"enabled": true},
		"m.set_displayname": map[string]bool{"enabled": true},
		"m.set_avatar_url":  map[string]bool{"enabled": true},
		"m.3pid_changes":    map[string]bool{"enabled": false},
		"m.get_login_token": map[string]bool{"enabled": false},
		"m.profile_fields":  map[string]any{"enabled": true, "allowed": []string{"displayname", "avatar_url"}},
	}
	if sess.Admin {
		// Spec v1.18: server admins may lock and suspend (api/admin).
		caps["m.account_moderation"] = map[string]bool{"suspend": true, "lock": true}
	}
	writeJSON(w, http.StatusOK, map[string]any{"capabilities": caps})
	return nil
}
