// Package admin serves Synapse's admin API (/_synapse/admin/...) and the
// spec's account moderation endpoints (/_matrix/client/v1/admin/...), with
// Synapse's request and response shapes, so that synadm and the other
// tools operators know work unchanged. Only server admins may call them:
// 401 without a valid token, 403 M_FORBIDDEN for everybody else.
//
// Every call that changes something appends a facts.AdminAction naming
// the admin and what changed, in the same batch as the change: the audit
// trail is part of the log (engram log shows it; it survives a rebuild).
package admin

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/engram-hs/engram/internal/mxerr"
	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/projections/accounts"
	"github.com/engram-hs/engram/projections/adminstate"
	"github.com/engram-hs/engram/projections/reports"
	"github.com/engram-hs/engram/projections/rooms"
	"github.com/engram-hs/engram/stateres"
)

// Caller is the user behind a request's access token.
type Caller struct {
	UserID   string
	DeviceID string
	Admin    bool
}

// CreateRoom is what the admin API asks of a new room (server notices,
// the replacement room of a deleted one).
type CreateRoom struct {
	Creator string
	Name    string
	Topic   string
	Preset  string   // "private_chat" or "public_chat"
	Invite  []string // users invited in the creation batch
	// PowerLevelUsers, when set, replaces the creator-only users map of
	// m.room.power_levels.
	PowerLevelUsers map[string]int
	// EventsDefault is m.room.power_levels' events_default (0 when nil).
	EventsDefault *int
}

// Host is what the admin API needs of the client-server API it is mounted
// on: authentication, the log and the projections, and the one shared
// room write path (so that kicks, joins and notices are built, signed and
// authorised like every other event).
type Host interface {
	// Authenticate returns the caller of the request's access token, or
	// the client-server API's 401 error.
	Authenticate(r *http.Request) (Caller, error)
	// Commit appends the proposals in one batch and waits until every
	// projection the API answers from has applied them.
	Commit(ctx context.Context, props ...englog.Proposal) ([]uint64, error)
	// Log is the log, read to decide what a purge erases.
	Log() englog.Log
	Accounts() accounts.View
	Rooms() rooms.View
	Reports() reports.View
	State() adminstate.View
	// HashPassword hashes with the server's bcrypt cost.
	HashPassword(pw string) (string, error)
	// SendEvent builds, authorises and commits one event through the room
	// write path and returns its ID; with a client transaction (txn not
	// nil), a retry returns the event the first attempt created.
	SendEvent(ctx context.Context, proto stateres.ProtoEvent, txn *facts.TxnRef) (string, error)
	// CreateRoom creates a room through the room write path.
	CreateRoom(ctx context.Context, req CreateRoom) (string, error)
	// LeaveAllRooms makes the user leave (or decline) every room.
	LeaveAllRooms(ctx context.Context, userID string) error
	// PropagateProfile sends the user's new profile to their joined rooms.
	PropagateProfile(ctx context.Context, userID string) error
	// DevicesWithKeys lists those of the devices that have identity keys:
	// other servers hear of changes to those (read before a removal).
	DevicesWithKeys(userID string, devices []string) ([]string, error)
	// AnnounceDevices tells the servers sharing a room with the user
	// that the devices changed or were deleted (m.device_list_update),
	// as the client API does for its own device edits.
	AnnounceDevices(ctx context.Context, userID string, devices []string, deleted bool)
}

// ServerNotices is Synapse's server_notices configuration: notices come
// from a system user, each recipient in a room of its own.
type ServerNotices struct {
	SystemMXIDLocalpart   string // system_mxid_localpart; empty disables server notices
	SystemMXIDDisplayName string // system_mxid_display_name
	SystemMXIDAvatarURL   string // system_mxid_avatar_url
	RoomName              string // room_name
	RoomTopic             string // room_topic
}

// Config is the admin API's part of the server configuration.
type Config struct {
	ServerName    string
	Version       string // answered by v1/server_version
	ServerNotices ServerNotices
	// Media reports users' media usage; nil when no media store is
	// mounted (every user then has none).
	Media MediaUsage
}

// API is the admin API.
type API struct {
	cfg  Config
	host Host
	now  func() time.Time
}

// Handler is a handler that reports failure by returning an error (a
// *mxerr.Error is answered as is).
type Handler func(w http.ResponseWriter, r *http.Request) error

// New builds the admin API; Register mounts it.
func New(cfg Config, host Host) *API {
	if cfg.ServerNotices.RoomName == "" {
		cfg.ServerNotices.RoomName = "Server Notices"
	}
	if cfg.ServerNotices.SystemMXIDDisplayName == "" {
		cfg.ServerNotices.SystemMXIDDisplayName = "Server Notices"
	}
	return &API{cfg: cfg, host: host, now: time.Now}
}

// adminHandler is a handler for admins only.
type adminHandler func(w http.ResponseWriter, r *http.Request, c Caller) error

// Register mounts every endpoint with handle (method, full path pattern).
func (a *API) Register(handle func(method, path string, h Handler)) {
	for _, e := range a.endpoints() {
		handle(e.method, e.fullPath(), a.adminsOnly(e.h))
	}
}

// Endpoints lists every endpoint as "METHOD /full/path/{param}", for the
// admins-only table test.
func (a *API) Endpoints() []string {
	var out []string
	for _, e := range a.endpoints() {
		out = append(out, e.method+" "+e.fullPath())
	}
	return out
}

type endpoint struct {
	method, path string
	h            adminHandler
}

// fullPath is the endpoint's path: Synapse's admin paths are relative to
// /_synapse/admin; the spec's (/_matrix/) and Engram's own (/_engram/) are
// given whole.
func (e endpoint) fullPath() string {
	if strings.HasPrefix(e.path, "/_matrix/") || strings.HasPrefix(e.path, "/_engram/") {
		return e.path
	}
	return "/_synapse/admin" + e.path
}

func (a *API) endpoints() []endpoint {
	var es []endpoint
	es = append(es, endpoint{"GET", "/v1/server_version", a.serverVersion})
	es = append(es, a.userEndpoints()...)
	es = append(es, a.regTokenEndpoints()...)
	es = append(es, a.reportEndpoints()...)
	es = append(es, a.roomEndpoints()...)
	es = append(es, a.noticeEndpoints()...)
	es = append(es, a.statsEndpoints()...)
	es = append(es, debugEndpoints()...)
	return es
}

// adminsOnly authenticates (401 without a valid token) and refuses
// everybody but server admins (403 M_FORBIDDEN), before anything is
// looked up: nobody else learns which users or rooms exist.
func (a *API) adminsOnly(h adminHandler) Handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		c, err := a.host.Authenticate(r)
		if err != nil {
			return err
		}
		if !c.Admin {
			return mxerr.Forbidden("You are not a server admin")
		}
		return h(w, r, c)
	}
}

func (a *API) serverVersion(w http.ResponseWriter, r *http.Request, c Caller) error {
	writeJSON(w, http.StatusOK, map[string]string{"server_version": a.cfg.Version})
	return nil
}

// commit records an admin action: the proposals that make the change and
// the audit record naming the admin, in one batch.
func (a *API) commit(ctx context.Context, c Caller, action, target string, changes any, props ...englog.Proposal) error {
	audit := facts.AdminAction{Admin: c.UserID, Action: action, Target: target}
	if changes != nil {
		b, err := json.Marshal(changes)
		if err != nil {
			return err
		}
		audit.Changes = b
	}
	props = append(props, facts.MustEncode(englog.KindAdminAction, audit))
	_, err := a.host.Commit(ctx, props...)
	return err
}

// ---- helpers ----

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

// readJSON decodes the body into v; an empty body reads as {}.
func readJSON(r *http.Request, v any) error {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return mxerr.New(http.StatusRequestEntityTooLarge, "M_TOO_LARGE", "Request body is larger than %d bytes", mbe.Limit)
		}
		return mxerr.New(http.StatusBadRequest, "M_UNKNOWN", "Could not read the request body: %v", err)
	}
	if len(strings.TrimSpace(string(body))) == 0 {
		body = []byte("{}")
	}
	if !json.Valid(body) {
		return mxerr.New(http.StatusBadRequest, "M_NOT_JSON", "Request body is not valid JSON")
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(body, &obj); err != nil {
		return mxerr.BadJSON("Request body must be a JSON object")
	}
	if err := json.Unmarshal(body, v); err != nil {
		return mxerr.BadJSON("Request body has a field of the wrong type: %v", err)
	}
	return nil
}

// queryInt reads a non-negative integer query parameter.
func queryInt(r *http.Request, name string, def int) (int, error) {
	s := r.URL.Query().Get(name)
	if s == "" {
		return def, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		return 0, mxerr.InvalidParam("Query parameter %s must be a non-negative integer", name)
	}
	return n, nil
}

// queryBool reads a true/false query parameter; nil when absent.
func queryBool(r *http.Request, name string) (*bool, error) {
	s := r.URL.Query().Get(name)
	switch strings.ToLower(s) {
	case "":
		return nil, nil
	case "true", "1":
		t := true
		return &t, nil
	case "false", "0":
		f := false
		return &f, nil
	}
	return nil, mxerr.InvalidParam("Query parameter %s must be true or false", name)
}

func boolPtr(b bool) *bool { return &b }

// isLocal reports whether a user ID is of this server.
func (a *API) isLocal(userID string) bool {
	_, server, ok := strings.Cut(strings.TrimPrefix(userID, "@"), ":")
	return strings.HasPrefix(userID, "@") && ok && server == a.cfg.ServerName
}

// localUser checks that userID is a local user that exists.
func (a *API) localUser(userID string) (*accounts.Account, error) {
	if !a.isLocal(userID) {
		return nil, mxerr.InvalidParam("Can only look up local users")
	}
	acc, err := a.host.Accounts().Account(userID)
	if err != nil {
		return nil, err
	}
	if acc == nil {
		return nil, mxerr.NotFound("User not found")
	}
	return acc, nil
}
