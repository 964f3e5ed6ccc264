// Package api serves the Matrix client-server API (and, in sub-packages,
// the admin, media and well-known endpoints). Handlers validate input,
// build events with stateres, propose entries to the log, wait until the
// projection they answer from has applied them, and answer from
// projections. No handler keeps state that a replay would not rebuild.
package api

import (
	"net/netip"
	"time"

	"github.com/engram-hs/engram/api/admin"
	"github.com/engram-hs/engram/api/appservice"
	apimedia "github.com/engram-hs/engram/api/media"
	"github.com/engram-hs/engram/api/ratelimit"
)

// Config is what the API needs to know of the server's configuration. The
// binary (cmd/engram) fills it from the YAML file, whose keys use Synapse's
// homeserver.yaml names where the meaning is the same; they are given in
// the comments.
type Config struct {
	ServerName    string // server_name
	PublicBaseURL string // public_baseurl, e.g. https://matrix.example.org/
	// ServeServerWellKnown/WellKnownServer: what /.well-known/matrix/server
	// answers ({"m.server": WellKnownServer}); empty means 404.
	WellKnownServer string // serve_server_wellknown + federation_listen port

	EnableRegistration                    bool   // enable_registration
	EnableRegistrationWithoutVerification bool   // enable_registration_without_verification
	RegistrationSharedSecret              string // registration_shared_secret
	RegistrationRequiresToken             bool   // registration_requires_token
	AllowGuestAccess                      bool   // allow_guest_access
	AllowPublicRoomsWithoutAuth           bool   // allow_public_rooms_without_auth
	AllowDeviceNameLookupOverFederation   bool   // allow_device_name_lookup_over_federation
	// Appservices are the application services of app_service_config_files.
	Appservices        *appservice.Set
	DefaultRoomVersion string // default_room_version
	MaxUploadSize      int64  // max_upload_size, bytes
	// MaxRequestBodySize bounds JSON request bodies (not media uploads).
	MaxRequestBodySize int64

	TurnURIs         []string      // turn_uris
	TurnSharedSecret string        // turn_shared_secret
	TurnUserLifetime time.Duration // turn_user_lifetime
	TurnAllowGuests  bool          // turn_allow_guests

	RateLimitingEnabled bool             // rate_limiting_enabled
	RateLimits          ratelimit.Config // rc_message, rc_login, ... (zero rules do not limit)
	// Client addresses: X-Forwarded-For is believed from every peer when
	// XForwarded (Synapse's listener option x_forwarded), else only from
	// peers in TrustedProxies (trusted_proxies).
	XForwarded     bool
	TrustedProxies []netip.Prefix

	// BcryptCost is the bcrypt work factor of password hashes
	// (bcrypt_rounds); 0 means 12, as Synapse. Tests lower it.
	BcryptCost int // bcrypt_rounds
	// PushRetryMin is the first retry delay of a failing push gateway
	// (doubling up to 10 minutes); 0 means a second. Tests lower it.
	PushRetryMin time.Duration

	// ServerVersion is what the admin API's server_version answers.
	ServerVersion string
	// ServerNotices is Synapse's server_notices section.
	ServerNotices admin.ServerNotices // server_notices.*

	// Media configures the media repository (api/media); an empty
	// Media.Repo.Dir leaves the media endpoints unregistered.
	Media apimedia.Config

	// SyncCacheBytes bounds what /sync keeps in memory between builds
	// (api/synccache: memberships, the rooms' shared parts, formatted
	// events), by the sizes of what it keeps; 0 means
	// DefaultSyncCacheBytes. The binary gives it a share of
	// memory_target.
	SyncCacheBytes int64
}

// DefaultSyncCacheBytes is SyncCacheBytes when none is given: the share
// of the default memory_target (128M).
const DefaultSyncCacheBytes = 24 << 20
