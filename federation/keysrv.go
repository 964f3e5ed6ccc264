package federation

import (
	"encoding/json"
	"net/http"

	"github.com/engram-hs/engram/federation/transport"
	"github.com/engram-hs/engram/stateres/signing"
)

// keyRoutes: our own keys, and the notary endpoint (server-server API,
// "Retrieving server keys").
func (s *Server) keyRoutes() {
	own := func(w http.ResponseWriter, r *http.Request) {
		body, err := ServerKeys(s.cfg.ServerName, s.cfg.Key, s.cfg.Now())
		if err != nil {
			writeError(w, err)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write(body)
	}
	s.Handle("GET /_matrix/key/v2/server", own)
	// Deprecated form with a key ID; the response is the same.
	s.Handle("GET /_matrix/key/v2/server/{keyID}", own)

	s.Handle("GET /_matrix/key/v2/query/{serverName}", func(w http.ResponseWriter, r *http.Request) {
		var min int64
		if v := r.URL.Query().Get("minimum_valid_until_ts"); v != "" {
			if err := json.Unmarshal([]byte(v), &min); err != nil {
				writeError(w, Errorf(http.StatusBadRequest, "M_INVALID_PARAM", "minimum_valid_until_ts must be an integer"))
				return
			}
		}
		s.notary(w, r, map[string]int64{r.PathValue("serverName"): min})
	})
	s.Handle("GET /_matrix/key/v2/query/{serverName}/{keyID}", func(w http.ResponseWriter, r *http.Request) {
		s.notary(w, r, map[string]int64{r.PathValue("serverName"): 0})
	})
	s.Handle("POST /_matrix/key/v2/query", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			ServerKeys map[string]map[string]struct {
				MinimumValidUntilTS int64 `json:"minimum_valid_until_ts"`
			} `json:"server_keys"`
		}
		if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20)).Decode(&req); err != nil {
			writeError(w, Errorf(http.StatusBadRequest, "M_BAD_JSON", "The body must be {\"server_keys\": {...}}"))
			return
		}
		if len(req.ServerKeys) > 100 {
			writeError(w, Errorf(http.StatusBadRequest, "M_LIMIT_EXCEEDED", "At most 100 servers per query"))
			return
		}
		want := map[string]int64{}
		for server, ids := range req.ServerKeys {
			want[server] = 0
			for _, c := range ids {
				want[server] = max(want[server], c.MinimumValidUntilTS)
			}
		}
		s.notary(w, r, want)
	})
}

// notary answers a key query: for each server, its latest response
// (fetched when needed), countersigned by us. Servers whose keys cannot
// be obtained are left out, as the spec allows.
func (s *Server) notary(w http.ResponseWriter, r *http.Request, want map[string]int64) {
	out := []json.RawMessage{}
	for server, min := range want {
		if _, _, _, err := transport.SplitServerName(server); err != nil {
			continue
		}
		if server == s.cfg.ServerName {
			own, err := ServerKeys(s.cfg.ServerName, s.cfg.Key, s.cfg.Now())
			if err != nil {
				writeError(w, err)
				return
			}
			out = append(out, own)
			continue
		}
		if s.deps.Keys == nil {
			continue
		}
		responses, err := s.deps.Keys.Responses(r.Context(), server, min)
		if err != nil {
			writeError(w, err)
			return
		}
		for _, resp := range responses {
			signed, err := signing.SignJSON(s.cfg.ServerName, s.cfg.Key.ID, s.cfg.Key.Private, resp)
			if err != nil {
				continue
			}
			out = append(out, signed)
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{"server_keys": out})
}
