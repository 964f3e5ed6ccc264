// Package federation serves the server-server API: the handler root where
// every federation route is registered. Its sub-packages do the work that
// is not HTTP: transport (outbound client, discovery, TLS, IP deny list),
// xmatrix (request signatures), keys (the keyring) and queue (outbound
// delivery).
package federation

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/engram-hs/engram/federation/keys"
	"github.com/engram-hs/engram/federation/receive"
	"github.com/engram-hs/engram/federation/transport"
	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/projections"
	"github.com/engram-hs/engram/roomwrite"
	"github.com/engram-hs/engram/stateres/signing"
)

// keyValidity is how long other servers may cache our key response
// (valid_until_ts); short, so a key rotation spreads within a day.
const keyValidity = 24 * time.Hour

// Config is what the federation listener needs to know.
type Config struct {
	ServerName string
	Version    string
	Key        signing.Key
	// MaxRequestBody bounds an inbound request body (default 32 MiB).
	MaxRequestBody int64
	// DeviceNamesOverFederation: user/devices and user/keys/query show
	// device display names (allow_device_name_lookup_over_federation;
	// off by default, as in Synapse: names often say who and where).
	DeviceNamesOverFederation bool
	Now                       func() time.Time
}

// Deps are the running pieces the handlers use.
type Deps struct {
	Log    englog.Log
	Keys   *keys.Keyring
	Logger zerolog.Logger
	// Accounts is the projection the profile query reads (as registered
	// by api); nil disables it.
	Accounts *projections.Handle
	// Rooms is the room write path (roomwrite, shared with api): room
	// endpoints read its view and record received PDUs through its
	// Receive. Nil disables the room endpoints.
	Rooms *roomwrite.Writer
	// OpenID is the openid projection (api's request_token), read by
	// openid/userinfo.
	OpenID *projections.Handle
	// E2EE is the end-to-end encryption keys projection (api/keys
	// registered it); nil disables the user/devices and user/keys
	// endpoints.
	E2EE *projections.Handle
	// Contacted is called with the origin of every authenticated inbound
	// request (the delivery queue marks a down destination up again).
	Contacted func(origin string)
	// Deliver queues entries for other servers (the outbound queue's
	// Deliver); the resident server uses it to pass a remote server's
	// join, leave or knock on to the room's other servers.
	Deliver func(ctx context.Context, destinations []string, items ...facts.OutboundItem) error
	// Client makes the requests received PDUs need (get_missing_events,
	// state_ids, event); nil: gaps are not filled.
	Client *transport.Client
}

// Server is the federation handler root.
type Server struct {
	cfg     Config
	deps    Deps
	logger  zerolog.Logger
	mux     *http.ServeMux
	pathMux *http.ServeMux
	// acl is the m.room.server_acl check (see SetServerACL).
	acl func(r *http.Request, roomID, origin string) (bool, error)

	// The room endpoints' state (rooms.go).
	recvOnce sync.Once
	recv     *receive.Receiver
	txns     txnCache
	// gapsTried: when each gap in a room's history (named by the event
	// after it) was last asked for with /backfill (backfill.go).
	gapsMu    sync.Mutex
	gapsTried map[string]time.Time
}

// New builds the handler root and registers every route.
func New(cfg Config, deps Deps) (*Server, error) {
	if cfg.ServerName == "" || cfg.Key.Private == nil {
		return nil, errors.New("federation: ServerName and Key are required")
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.MaxRequestBody <= 0 {
		cfg.MaxRequestBody = 32 << 20
	}
	s := &Server{cfg: cfg, deps: deps, logger: deps.Logger.With().Str("component", "federation").Logger(),
		mux: http.NewServeMux(), pathMux: http.NewServeMux()}
	s.Handle("GET /_matrix/federation/v1/version", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]any{"server": map[string]string{"name": "Engram", "version": cfg.Version}})
	})
	s.keyRoutes()
	s.queryRoutes()
	s.roomRoutes()
	s.timestampRoutes()
	s.e2eeRoutes()
	s.hierarchyRoutes()
	return s, nil
}

// Handler serves every federation endpoint; unknown paths are 404 and
// known paths with another method 405, both M_UNRECOGNIZED (spec,
// "Unsupported endpoints").
func (s *Server) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, pattern := s.mux.Handler(r); pattern != "" {
			s.mux.ServeHTTP(w, r)
			return
		}
		if _, p := s.pathMux.Handler(r); p != "" {
			writeError(w, errUnrecognized(http.StatusMethodNotAllowed))
			return
		}
		writeError(w, errUnrecognized(http.StatusNotFound))
	})
}

// Handle registers "METHOD /path" (no authentication).
func (s *Server) Handle(pattern string, h http.HandlerFunc) {
	s.mux.HandleFunc(pattern, h)
	_, path, _ := cutMethod(pattern)
	func() {
		defer func() { _ = recover() }() // several methods share a path
		s.pathMux.HandleFunc(path, func(http.ResponseWriter, *http.Request) {})
	}()
}

func cutMethod(pattern string) (string, string, bool) {
	for i := 0; i < len(pattern); i++ {
		if pattern[i] == ' ' {
			return pattern[:i], pattern[i+1:], true
		}
	}
	return "", pattern, false
}

// ServerKeys is the signed response of GET /_matrix/key/v2/server.
func ServerKeys(serverName string, key signing.Key, now time.Time) ([]byte, error) {
	obj, err := json.Marshal(map[string]any{
		"server_name":     serverName,
		"valid_until_ts":  now.Add(keyValidity).UnixMilli(),
		"verify_keys":     map[string]any{key.ID: map[string]string{"key": signing.EncodeBase64(key.Public())}},
		"old_verify_keys": map[string]any{},
	})
	if err != nil {
		return nil, err
	}
	return signing.SignJSON(serverName, key.ID, key.Private, obj)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status, b = http.StatusInternalServerError, []byte(`{"errcode":"M_UNKNOWN","error":"the response could not be encoded"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(b)
}
