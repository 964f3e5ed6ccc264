// Package keys serves the end-to-end encryption endpoints of the
// client-server API: device and one-time keys (/keys/upload, /keys/query,
// /keys/claim, /keys/changes), cross-signing (/keys/device_signing/upload,
// /keys/signatures/upload) and server-side key backup (/room_keys/...),
// and the E2EE parts of /sync (device lists and key counts).
//
// Handlers check what can be checked before appending (shapes,
// signatures, the caller's right to a device) and record facts
// (log/facts/e2ee.go); the e2ee projection folds them in log order and
// gives the verdict on everything that depends on order (which one-time
// key a claim gets, which backup version is current), which the handler
// reads back after the append.
package keys

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"

	"github.com/engram-hs/engram/api/appservice"
	"github.com/engram-hs/engram/internal/mxerr"
	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/projections"
	"github.com/engram-hs/engram/projections/accounts"
	"github.com/engram-hs/engram/projections/e2ee"
	"github.com/engram-hs/engram/projections/rooms"
	"github.com/rs/zerolog"
)

// Caller is the authenticated user and device behind a request.
type Caller struct {
	UserID   string
	DeviceID string
	// Appservice is set when an application service acts for UserID;
	// it replaces cross-signing keys without interactive auth.
	Appservice *appservice.Registration
}

// HandlerFunc is an endpoint; a returned error is written by the API
// (a *mxerr.Error as a Matrix error, anything else as a 500).
type HandlerFunc func(w http.ResponseWriter, r *http.Request, c Caller) error

// Route is one endpoint under /_matrix/client/v3.
type Route struct {
	Method, Path string
	Handler      HandlerFunc
}

// Deps are what the package needs from the API that mounts it.
type Deps struct {
	ServerName string
	Engine     *projections.Engine
	Logger     zerolog.Logger
	// Commit appends and waits until the given projections applied the
	// entries (read-your-writes); it returns their offsets.
	Commit func(ctx context.Context, wait []*projections.Handle, props ...englog.Proposal) ([]uint64, error)
	// ReadJSON decodes a request body with the API's limits and errors.
	ReadJSON func(r *http.Request, v any) error
	// ParseToken reads a /sync next_batch token as a log offset.
	ParseToken func(tok string) (uint64, error)
	Accounts   func() accounts.View
	Rooms      func() rooms.View
	// PasswordUIA runs one round of user-interactive authentication with
	// the caller's password; nil means done, else the error to answer.
	PasswordUIA func(auth json.RawMessage, c Caller) error
	// Touched is told after each commit which users' device lists changed.
	Touched func(e2ee.Touched)
	// Remote asks other servers for their users' keys; nil: none.
	Remote Remote
	// DeviceNamesOverFederation: other servers are told device display
	// names (allow_device_name_lookup_over_federation; off by default).
	DeviceNamesOverFederation bool
}

// Service serves the endpoints.
type Service struct {
	d Deps
	h *projections.Handle
}

// New registers the e2ee projection on d.Engine (before it starts).
func New(d Deps) *Service {
	return &Service{d: d, h: d.Engine.Register(e2ee.New(d.Touched))}
}

// Handle is the e2ee projection; /sync waits for it like for the others.
func (s *Service) Handle() *projections.Handle { return s.h }

func (s *Service) view() e2ee.View { return e2ee.NewView(s.h.Reader()) }

// Routes lists the endpoints to mount under /_matrix/client/v3 (and r0).
func (s *Service) Routes() []Route {
	return []Route{
		{"POST", "/keys/upload", s.upload},
		{"POST", "/keys/upload/{deviceId}", s.upload}, // r0's deprecated form
		{"POST", "/keys/query", s.query},
		{"POST", "/keys/claim", s.claim},
		{"GET", "/keys/changes", s.changes},
		{"POST", "/keys/device_signing/upload", s.uploadCrossSigning},
		{"POST", "/keys/signatures/upload", s.uploadSignatures},
		{"POST", "/room_keys/version", s.createBackup},
		{"GET", "/room_keys/version", s.getBackup},
		{"GET", "/room_keys/version/{version}", s.getBackup},
		{"PUT", "/room_keys/version/{version}", s.updateBackup},
		{"DELETE", "/room_keys/version/{version}", s.deleteBackup},
		{"GET", "/room_keys/keys", s.getRoomKeys},
		{"GET", "/room_keys/keys/{roomId}", s.getRoomKeys},
		{"GET", "/room_keys/keys/{roomId}/{sessionId}", s.getRoomKeys},
		{"PUT", "/room_keys/keys", s.putRoomKeys},
		{"PUT", "/room_keys/keys/{roomId}", s.putRoomKeys},
		{"PUT", "/room_keys/keys/{roomId}/{sessionId}", s.putRoomKeys},
		{"DELETE", "/room_keys/keys", s.deleteRoomKeys},
		{"DELETE", "/room_keys/keys/{roomId}", s.deleteRoomKeys},
		{"DELETE", "/room_keys/keys/{roomId}/{sessionId}", s.deleteRoomKeys},
	}
}

func errorf(status int, code, format string, a ...any) *mxerr.Error {
	return mxerr.New(status, code, format, a...)
}

var (
	badJSON      = mxerr.BadJSON
	invalidParam = mxerr.InvalidParam
	notFound     = mxerr.NotFound
	missingParam = mxerr.MissingParam
)

// verdictError turns a refusing verdict into its error.
func verdictError(v *e2ee.Verdict) error {
	if v.Errcode == "" {
		return nil
	}
	status := http.StatusBadRequest
	switch v.Errcode {
	case "M_NOT_FOUND":
		status = http.StatusNotFound
	case "M_FORBIDDEN", "M_WRONG_ROOM_KEYS_VERSION":
		status = http.StatusForbidden
	}
	e := errorf(status, v.Errcode, "%s", v.Error)
	if v.Errcode == "M_WRONG_ROOM_KEYS_VERSION" {
		e.With("current_version", v.Current)
	}
	return e
}

// commitFact appends one fact, waits for the e2ee projection and returns
// its verdict.
func (s *Service) commitFact(ctx context.Context, p englog.Proposal) (*e2ee.Verdict, error) {
	offs, err := s.d.Commit(ctx, []*projections.Handle{s.h}, p)
	if err != nil {
		return nil, err
	}
	v, err := s.view().Verdict(offs[0])
	if err != nil {
		return nil, err
	}
	if v == nil {
		return nil, fmt.Errorf("e2ee: no verdict for the fact at offset %d", offs[0])
	}
	return v, nil
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status = http.StatusInternalServerError
		b = []byte(`{"errcode":"M_UNKNOWN","error":"response could not be encoded"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

// serverOf returns the server name of a user ID, or "" when it is not
// one.
func serverOf(userID string) string {
	if !strings.HasPrefix(userID, "@") {
		return ""
	}
	_, server, ok := strings.Cut(userID, ":")
	if !ok || server == "" {
		return ""
	}
	return server
}

func (s *Service) local(userID string) bool { return serverOf(userID) == s.d.ServerName }
