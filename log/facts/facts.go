// Package facts holds the payload types of every log entry kind (see
// log/kinds.go). Payloads are JSON-encoded Go structs: readable by
// operators (engram log show) and tolerant of added fields.
//
// Every value in a payload was decided by the writer before proposing
// (IDs, hashes, timestamps, expiry times), so that folding it is a pure
// function of the log.
package facts

import (
	"encoding/json"
	"fmt"

	englog "github.com/engram-hs/engram/log"
)

// Encode is the one way to turn a payload into a proposal.
func Encode(kind englog.Kind, v any) (englog.Proposal, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return englog.Proposal{}, fmt.Errorf("facts: encode %s: %w", kind, err)
	}
	return englog.Proposal{Kind: kind, Payload: b}, nil
}

// MustEncode is Encode for payloads made only of marshalable fields, where
// an error is a programming bug.
func MustEncode(kind englog.Kind, v any) englog.Proposal {
	p, err := Encode(kind, v)
	if err != nil {
		panic(err)
	}
	return p
}

// Decode reads an entry's payload into v.
func Decode(e englog.Entry, v any) error {
	if err := json.Unmarshal(e.Payload, v); err != nil {
		return fmt.Errorf("facts: decode %s at offset %d: %w", e.Kind, e.Offset, err)
	}
	return nil
}

// New returns a pointer to the zero payload of a kind, or nil when the kind
// is unknown. Operators' tools use it to print entries.
func New(kind englog.Kind) any {
	switch kind {
	case englog.KindPDU:
		return &PDU{}
	case englog.KindEDU:
		return &EDU{}
	case englog.KindAccountRegistered:
		return &AccountRegistered{}
	case englog.KindPasswordChanged:
		return &PasswordChanged{}
	case englog.KindAccountDeactivated:
		return &AccountDeactivated{}
	case englog.KindProfileSet:
		return &ProfileSet{}
	case englog.KindDeviceAdded:
		return &DeviceAdded{}
	case englog.KindDeviceUpdated:
		return &DeviceUpdated{}
	case englog.KindDeviceRemoved:
		return &DeviceRemoved{}
	case englog.KindAccessTokenIssued:
		return &AccessTokenIssued{}
	case englog.KindAccessTokenRevoked:
		return &AccessTokenRevoked{}
	case englog.KindRegistrationToken:
		return &RegistrationToken{}
	case englog.KindAdminAction:
		return &AdminAction{}
	case englog.KindUserAdminSet:
		return &UserAdminSet{}
	case englog.KindUserModerated:
		return &UserModerated{}
	case englog.KindAccountReactivated:
		return &AccountReactivated{}
	case englog.KindRatelimitOverride:
		return &RatelimitOverride{}
	case englog.KindRoomBlocked:
		return &RoomBlocked{}
	case englog.KindRoomDeleted:
		return &RoomDeleted{}
	case englog.KindHistoryPurged:
		return &HistoryPurged{}
	case englog.KindReportDeleted:
		return &ReportDeleted{}
	case englog.KindServerNoticeRoom:
		return &ServerNoticeRoom{}
	case englog.KindExtremitiesDropped:
		return &ExtremitiesDropped{}
	case englog.KindServerNameSet:
		return &ServerNameSet{}
	case englog.KindRestored:
		return &Restored{}
	case englog.KindErase:
		return &englog.Erasure{}
	case englog.KindErased:
		return &englog.Tombstone{}
	case englog.KindAccountDataSet:
		return &AccountDataSet{}
	case englog.KindFilterStored:
		return &FilterStored{}
	case englog.KindToDeviceSent:
		return &ToDeviceSent{}
	case englog.KindPushRulesSet:
		return &PushRulesSet{}
	case englog.KindRoomForgotten:
		return &RoomForgotten{}
	case englog.KindToDeviceAcked:
		return &ToDeviceAcked{}
	case englog.KindPusherSet:
		return &PusherSet{}
	case englog.KindPushDelivered:
		return &PushDelivered{}
	case englog.KindAliasSet:
		return &AliasSet{}
	case englog.KindAliasRemoved:
		return &AliasRemoved{}
	case englog.KindRoomVisibilitySet:
		return &RoomVisibilitySet{}
	case englog.KindReportFiled:
		return &ReportFiled{}
	case englog.KindKeysUploaded:
		return &KeysUploaded{}
	case englog.KindKeysClaimed:
		return &KeysClaimed{}
	case englog.KindCrossSigningKeysUploaded:
		return &CrossSigningKeysUploaded{}
	case englog.KindKeySignaturesUploaded:
		return &KeySignaturesUploaded{}
	case englog.KindBackupVersionChanged:
		return &BackupVersionChanged{}
	case englog.KindRoomKeysBackedUp:
		return &RoomKeysBackedUp{}
	case englog.KindRoomKeysDeleted:
		return &RoomKeysDeleted{}
	case englog.KindOneTimeKeysDiscarded:
		return &OneTimeKeysDiscarded{}
	case englog.KindRemoteDevicesResynced:
		return &RemoteDevicesResynced{}
	case englog.KindServerKeysFetched:
		return &ServerKeysFetched{}
	case englog.KindFederationOutbound:
		return &FederationOutbound{}
	case englog.KindFederationDelivered:
		return &FederationDelivered{}
	case englog.KindFederationDestinationSet:
		return &FederationDestinationSet{}
	case englog.KindOpenIDTokenIssued:
		return &OpenIDTokenIssued{}
	case englog.KindAppserviceDelivered:
		return &AppserviceDelivered{}
	case englog.KindMediaUploaded:
		return &MediaUploaded{}
	case englog.KindMediaCreated:
		return &MediaCreated{}
	case englog.KindThumbnailStored:
		return &ThumbnailStored{}
	case englog.KindMediaQuarantined:
		return &MediaQuarantined{}
	case englog.KindMediaDeleted:
		return &MediaDeleted{}
	case englog.KindServerFact:
		return &ServerFact{}
	}
	return nil
}

// ---- Room events and ephemeral data ----

// PDU is a room event entering the system, local or received.
type PDU struct {
	RoomVersion string `json:"room_version"`
	// Event is the full PDU JSON as stored and sent over federation.
	Event json.RawMessage `json:"event"`
	// EventID is the event's ID as the writer derived it when it parsed
	// and checked the event before appending it; projections adopt it
	// instead of hashing the event again (stateres.ParseTrustedEvent).
	// Empty in entries written before it was recorded.
	EventID string `json:"event_id,omitempty"`
	// Txn is set for events a local client sent with a transaction ID, so
	// that a retried PUT /send returns the same event (spec: transaction
	// identifiers are scoped to the device).
	Txn *TxnRef `json:"txn,omitempty"`
	// Rejected is non-empty when the event was stored but failed the auth
	// checks (federation); projections keep it out of state and timelines.
	Rejected string `json:"rejected,omitempty"`
	// SoftFailed: authorised by its auth events but not by the current
	// state; kept out of the timeline and current state.
	SoftFailed bool `json:"soft_failed,omitempty"`
	// Outlier: stored for auth chains only, not part of the room's DAG view.
	Outlier bool `json:"outlier,omitempty"`
	// StateBefore, when set, is the state before the event as the
	// receiver established it (from a remote server's /state_ids or
	// send_join response, checked before appending) because some of its
	// prev_events are unknown: [type, state_key, event_id] triples. The
	// fold uses it instead of resolving the prev_events' states, so it
	// never needs the network.
	StateBefore [][3]string `json:"state_before,omitempty"`
	// Backfill, when set, marks a historical event: fetched with
	// /backfill to fill a gap in the room's history here, it is placed in
	// the room's timeline at Place (before the event whose missing
	// prev_events it is), has a state like any event in the DAG, but
	// changes neither the current state nor the forward extremities, and
	// notifies no one.
	Backfill *TimelinePlace `json:"backfill,omitempty"`
}

// TimelinePlace is a position in a room's timeline between two log
// offsets: after every event at offset After, and after the historical
// events placed there with a lower Seq (1 <= Seq < MaxUint64).
type TimelinePlace struct {
	After uint64 `json:"after"`
	Seq   uint64 `json:"seq"`
}

// TxnRef names the client transaction that created an event.
type TxnRef struct {
	UserID   string `json:"user_id"`
	DeviceID string `json:"device_id"`
	TxnID    string `json:"txn_id"`
}

// EDU is ephemeral data: typing, receipts, presence, device list updates.
// Type selects the content struct (TypingContent, ReceiptContent,
// PresenceContent); federation may append other types as raw content.
type EDU struct {
	Type    string          `json:"type"`
	Origin  string          `json:"origin,omitempty"`
	Content json.RawMessage `json:"content"`
}

// EDU types with content structs here.
const (
	EDUTyping   = "m.typing"
	EDUReceipt  = "m.receipt"
	EDUPresence = "m.presence"
)

// TypingContent: one user started or stopped typing in a room. ExpiresAt
// (Unix ms) is decided by the writer; projections compare it with
// Entry.Time, never the clock.
type TypingContent struct {
	RoomID    string `json:"room_id"`
	UserID    string `json:"user_id"`
	Typing    bool   `json:"typing"`
	ExpiresAt int64  `json:"expires_at,omitempty"`
}

// ReceiptContent: one user's receipt on one event.
type ReceiptContent struct {
	RoomID      string `json:"room_id"`
	UserID      string `json:"user_id"`
	EventID     string `json:"event_id"`
	ReceiptType string `json:"receipt_type"` // m.read, m.read.private, m.fully_read
	ThreadID    string `json:"thread_id,omitempty"`
	TS          int64  `json:"ts"`
}

// PresenceContent: one user's presence.
type PresenceContent struct {
	UserID    string  `json:"user_id"`
	Presence  string  `json:"presence"`
	StatusMsg *string `json:"status_msg,omitempty"`
	// Activity, when set, makes this a record of activity rather than a
	// presence the user set: PresenceSynced (the user's client synced) or
	// PresenceActive (the user acted: sent an event). StatusMsg is then
	// ignored (kept as it was).
	Activity string `json:"activity,omitempty"`
	// Quiet: the writer saw that others' view of the user does not change
	// (only the timestamps move), so readers do not report it as a change.
	Quiet bool `json:"quiet,omitempty"`
}

// PresenceContent.Activity values.
const (
	PresenceSynced = "synced"
	PresenceActive = "active"
)

// ---- Accounts, devices and sessions ----

// AccountRegistered creates a user. Two API nodes may both decide to
// register the same user ID: the first entry in the log wins, a later one
// is refused at fold time, and so are the device, token and registration
// token use that carry the same Registration.
type AccountRegistered struct {
	UserID string `json:"user_id"`
	// Registration is a random ID the writer chose for this attempt.
	Registration string `json:"registration,omitempty"`
	// PasswordHash is bcrypt ($2b$), empty for accounts that cannot log in
	// with a password.
	PasswordHash string `json:"password_hash,omitempty"`
	Admin        bool   `json:"admin,omitempty"`
	Guest        bool   `json:"guest,omitempty"`
	DisplayName  string `json:"displayname,omitempty"`
	// RegistrationToken is the token the registration used: the fold
	// refuses the registration when the token is unknown, expired at the
	// entry's time or used up, and counts the use otherwise.
	RegistrationToken string `json:"registration_token,omitempty"`
	// Appservice is the id of the application service that registered
	// the user, if one did.
	Appservice string `json:"appservice_id,omitempty"`
}

// PasswordChanged replaces a user's password hash. When LogoutDevices is
// set, every device but KeepDeviceID is removed with its tokens.
type PasswordChanged struct {
	UserID        string `json:"user_id"`
	PasswordHash  string `json:"password_hash"`
	LogoutDevices bool   `json:"logout_devices,omitempty"`
	KeepDeviceID  string `json:"keep_device_id,omitempty"`
}

// AccountDeactivated disables a user for good and removes every device and
// token.
type AccountDeactivated struct {
	UserID string `json:"user_id"`
	Erase  bool   `json:"erase,omitempty"`
}

// ProfileSet changes fields of a user's global profile; nil fields are
// left as they are.
type ProfileSet struct {
	UserID      string  `json:"user_id"`
	DisplayName *string `json:"displayname,omitempty"`
	AvatarURL   *string `json:"avatar_url,omitempty"`
}

// DeviceAdded creates (or, when it exists, keeps) a device.
type DeviceAdded struct {
	UserID      string `json:"user_id"`
	DeviceID    string `json:"device_id"`
	DisplayName string `json:"display_name,omitempty"`
	IP          string `json:"ip,omitempty"`
	// Registration ties the device to an AccountRegistered of the same
	// batch: when that registration was refused, so is the device.
	Registration string `json:"registration,omitempty"`
}

// DeviceUpdated renames a device.
type DeviceUpdated struct {
	UserID      string  `json:"user_id"`
	DeviceID    string  `json:"device_id"`
	DisplayName *string `json:"display_name,omitempty"`
}

// DeviceRemoved deletes devices and every token issued to them.
type DeviceRemoved struct {
	UserID    string   `json:"user_id"`
	DeviceIDs []string `json:"device_ids"`
}

// AccessTokenIssued records a new session token. Only SHA-256 hashes (hex)
// of tokens ever reach the log.
type AccessTokenIssued struct {
	UserID      string `json:"user_id"`
	DeviceID    string `json:"device_id"`
	TokenSHA256 string `json:"token_sha256"`
	// ExpiresAt is Unix ms; 0 means the token does not expire.
	ExpiresAt int64 `json:"expires_at,omitempty"`
	// RefreshSHA256 is the hash of the refresh token issued with it.
	RefreshSHA256 string `json:"refresh_sha256,omitempty"`
	// Replaces is the hash of the refresh token this issue consumed; that
	// refresh token and the access token issued with it are revoked.
	Replaces string `json:"replaces,omitempty"`
	// Registration: see DeviceAdded.Registration.
	Registration string `json:"registration,omitempty"`
}

// AccessTokenRevoked deletes one token (logout).
type AccessTokenRevoked struct {
	UserID      string `json:"user_id"`
	TokenSHA256 string `json:"token_sha256"`
}

// RegistrationToken creates, uses or deletes a registration token.
type RegistrationToken struct {
	Op          string `json:"op"` // "create", "use", "delete"
	Token       string `json:"token"`
	UsesAllowed *int   `json:"uses_allowed,omitempty"`
	ExpiryTime  int64  `json:"expiry_time,omitempty"`
	// Registration: a "use" counts only when that registration won.
	Registration string `json:"registration,omitempty"`
	// An "update" changes the fields it names: uses_allowed (nil: no
	// limit) when SetUsesAllowed, expiry_time (0: never) when
	// SetExpiryTime.
	SetUsesAllowed bool `json:"set_uses_allowed,omitempty"`
	SetExpiryTime  bool `json:"set_expiry_time,omitempty"`
}

// Registration token operations.
const (
	RegistrationTokenCreate = "create"
	RegistrationTokenUse    = "use"
	RegistrationTokenDelete = "delete"
	RegistrationTokenUpdate = "update"
)

// ---- Server administration ----

// AdminAction is the audit record of one admin API call that changed
// something: it is appended in the same batch as the entries that make
// the change, so the trail and the change commit together. Changes says
// what changed, never a secret (a new password is "changed", not the
// password or its hash).
type AdminAction struct {
	Admin   string          `json:"admin"`  // the admin's user ID
	Action  string          `json:"action"` // the endpoint's name: "reset_password", "delete_room", ...
	Target  string          `json:"target,omitempty"`
	Changes json.RawMessage `json:"changes,omitempty"`
}

// UserAdminSet makes a user a server admin, or not.
type UserAdminSet struct {
	UserID string `json:"user_id"`
	Admin  bool   `json:"admin"`
}

// UserModerated sets the moderation flags of a user; nil ones stay as
// they are. Locked: no request with the user's tokens is served (spec
// v1.18 M_USER_LOCKED). Suspended: the user can read but not send
// (M_USER_SUSPENDED). ShadowBanned: the user's sends are answered as if
// they succeeded but reach nobody (Synapse's shadow ban).
type UserModerated struct {
	UserID       string `json:"user_id"`
	Locked       *bool  `json:"locked,omitempty"`
	Suspended    *bool  `json:"suspended,omitempty"`
	ShadowBanned *bool  `json:"shadow_banned,omitempty"`
}

// AccountReactivated makes a deactivated user active again, with a new
// password hash (Synapse requires one for a local user).
type AccountReactivated struct {
	UserID       string `json:"user_id"`
	PasswordHash string `json:"password_hash,omitempty"`
}

// RatelimitOverride sets a user's own message rate limit (Synapse's
// override_ratelimit: 0 and 0 mean not limited); Delete removes it.
type RatelimitOverride struct {
	UserID            string  `json:"user_id"`
	MessagesPerSecond float64 `json:"messages_per_second,omitempty"`
	BurstCount        int     `json:"burst_count,omitempty"`
	Delete            bool    `json:"delete,omitempty"`
}

// RoomBlocked blocks a room: local users may not join it, and it is
// left out of the room directory.
type RoomBlocked struct {
	RoomID  string `json:"room_id"`
	Blocked bool   `json:"blocked"`
	By      string `json:"by,omitempty"`
}

// RoomDeleted records the outcome of an admin's room deletion (the
// members' leave events were committed before it). Purge marks the room
// gone: it is no longer listed, and local users cannot join it again.
type RoomDeleted struct {
	RoomID       string   `json:"room_id"`
	DeleteID     string   `json:"delete_id"`
	Status       string   `json:"status"` // "complete" or "failed"
	Error        string   `json:"error,omitempty"`
	Purge        bool     `json:"purge,omitempty"`
	KickedUsers  []string `json:"kicked_users,omitempty"`
	FailedToKick []string `json:"failed_to_kick_users,omitempty"`
	LocalAliases []string `json:"local_aliases,omitempty"`
	NewRoomID    string   `json:"new_room_id,omitempty"`
	StartedAt    int64    `json:"started_at,omitempty"`
}

// HistoryPurged hides a room's events up to and including the entry at
// UpTo (a log offset) from clients: /messages no longer serves its
// non-state events. The log keeps them.
type HistoryPurged struct {
	RoomID  string `json:"room_id"`
	PurgeID string `json:"purge_id"`
	UpTo    uint64 `json:"up_to"`
}

// ExtremitiesDropped removes forward extremities from a room (Synapse's
// DELETE /_synapse/admin/v1/rooms/{roomId}/forward_extremities): the next
// event references only the ones left. Those of Drop that are no longer
// extremities when the fact is folded are ignored, and the room always
// keeps at least one. The room's current state is not changed; the next
// event is built on the state after the extremities left.
type ExtremitiesDropped struct {
	RoomID string   `json:"room_id"`
	Drop   []string `json:"drop"`
}

// ReportDeleted deletes an event report (its ID is the offset that filed it).
type ReportDeleted struct {
	ReportID uint64 `json:"report_id"`
}

// ServerNoticeRoom records the room server notices go to for a user.
type ServerNoticeRoom struct {
	UserID string `json:"user_id"`
	RoomID string `json:"room_id"`
}

// ServerNameSet records the server name the data was created under; a
// later start under another name is refused, since every user ID, alias
// and signature in the log carries the first one.
type ServerNameSet struct {
	ServerName string `json:"server_name"`
}

// Restored: `engram restore` rebuilt this log from a backup up to offset
// Cut and appended this entry right after it. Everything the original
// server wrote after Cut is gone, but clients may still hold what it
// handed out then: stream tokens past Cut name positions of the lost
// timeline, which new entries now reuse. Tokens handed out after the
// restore name it (its offset), so a token past Cut that does not is
// refused (M_UNKNOWN_POS) and the client starts again.
type Restored struct {
	Cut    uint64 `json:"cut"`
	Reason string `json:"reason,omitempty"`
}

// ---- Per-user data ----

// AccountDataSet sets one account data event, global when RoomID is "".
type AccountDataSet struct {
	UserID  string          `json:"user_id"`
	RoomID  string          `json:"room_id,omitempty"`
	Type    string          `json:"type"`
	Content json.RawMessage `json:"content"`
}

// FilterStored stores a filter; its ID is the entry's offset in decimal.
type FilterStored struct {
	UserID string          `json:"user_id"`
	Filter json.RawMessage `json:"filter"`
}

// ToDeviceSent delivers a to-device message to devices of one user
// ("*" for all of them). One PUT /sendToDevice becomes one entry per
// target user; SenderDevice+TxnID make a retried PUT a no-op at fold time
// (the first entry of a transaction wins), so two racing retries can never
// deliver twice.
type ToDeviceSent struct {
	Sender       string                     `json:"sender"`
	SenderDevice string                     `json:"sender_device,omitempty"`
	TxnID        string                     `json:"txn_id,omitempty"`
	Type         string                     `json:"type"`
	UserID       string                     `json:"user_id"`
	Messages     map[string]json.RawMessage `json:"messages"` // device ID or "*" -> content
}

// ToDeviceAcked: a /sync of the device carried a since token >= UpTo, so
// the device has received every to-device message with offset <= UpTo;
// they are deleted from its inbox.
type ToDeviceAcked struct {
	UserID   string `json:"user_id"`
	DeviceID string `json:"device_id"`
	UpTo     uint64 `json:"up_to"`
}

// PushRulesSet replaces a user's whole push rule set.
type PushRulesSet struct {
	UserID string          `json:"user_id"`
	Rules  json.RawMessage `json:"rules"`
}

// PusherSet creates, replaces or deletes (Pusher nil) the pusher of a
// user with an app ID and pushkey (spec: POST /pushers/set). Unless
// Append, the same app ID and pushkey is deleted for every other user.
type PusherSet struct {
	UserID string `json:"user_id"`
	AppID  string `json:"app_id"`
	// Pushkey as the client sent it; at most 512 bytes.
	Pushkey string  `json:"pushkey"`
	Pusher  *Pusher `json:"pusher,omitempty"`
	Append  bool    `json:"append,omitempty"`
	// Reason says why a deletion was decided: "client", "rejected" (the
	// gateway refused the pushkey), "device_removed", ...
	Reason string `json:"reason,omitempty"`
}

// Pusher is a pusher as the client set it. DeviceID is the device whose
// access token set it: removing that device removes the pusher.
type Pusher struct {
	Kind              string          `json:"kind"`
	AppDisplayName    string          `json:"app_display_name"`
	DeviceDisplayName string          `json:"device_display_name"`
	ProfileTag        string          `json:"profile_tag,omitempty"`
	Lang              string          `json:"lang"`
	Data              json.RawMessage `json:"data"`
	DeviceID          string          `json:"device_id,omitempty"`
}

// PushDelivered: a pusher's gateway accepted (or the sender gave up on)
// every notification of the user up to UpTo, the offset of the event.
type PushDelivered struct {
	UserID  string `json:"user_id"`
	AppID   string `json:"app_id"`
	Pushkey string `json:"pushkey"`
	UpTo    uint64 `json:"up_to"`
}

// RoomForgotten: a user forgot a room they left.
type RoomForgotten struct {
	UserID string `json:"user_id"`
	RoomID string `json:"room_id"`
}

// ---- Directory ----

// AliasSet maps a room alias to a room.
type AliasSet struct {
	Alias   string `json:"alias"`
	RoomID  string `json:"room_id"`
	Creator string `json:"creator"`
}

// AliasRemoved deletes an alias.
type AliasRemoved struct {
	Alias string `json:"alias"`
}

// RoomVisibilitySet publishes ("public") or hides ("private") a room in the
// room directory.
type RoomVisibilitySet struct {
	RoomID     string `json:"room_id"`
	Visibility string `json:"visibility"`
}

// ReportFiled records a content report.
type ReportFiled struct {
	UserID  string `json:"user_id"`
	RoomID  string `json:"room_id,omitempty"`
	EventID string `json:"event_id,omitempty"`
	Reason  string `json:"reason,omitempty"`
	Score   *int   `json:"score,omitempty"`
	// TargetUserID is set for a report about a user (POST
	// /users/{userId}/report); RoomID for a room, RoomID+EventID for an
	// event.
	TargetUserID string `json:"target_user_id,omitempty"`
}

// ---- Media ----
//
// Media bytes never enter the log: they live in the blob store under their
// SHA-256, and these facts carry the metadata the media projection folds.

// MediaUploaded records a file whose bytes are in the blob store: a local
// upload (Origin is this server) or remote media fetched into the cache.
// An upload to an ID reserved by MediaCreated fills that reservation; a
// second MediaUploaded for the same media is refused at fold time (the
// first wins), as the writer also checked.
type MediaUploaded struct {
	Origin      string `json:"origin"`
	MediaID     string `json:"media_id"`
	UserID      string `json:"user_id,omitempty"` // the uploader; empty for remote media
	ContentType string `json:"content_type,omitempty"`
	FileName    string `json:"file_name,omitempty"`
	Size        int64  `json:"size"`
	SHA256      string `json:"sha256"` // hex
	// CreatedTS (Unix ms) is the upload time, or for remote media the time
	// it was cached.
	CreatedTS int64 `json:"created_ts"`
	// Authenticated: uploaded (or cached) while authenticated media was
	// enforced, so the deprecated unauthenticated endpoints refuse it
	// (spec 1.11, "freeze").
	Authenticated bool `json:"authenticated,omitempty"`
}

// MediaCreated reserves an mxc:// URI for a later PUT /upload by the same
// user, until ExpiresAt (Unix ms, decided by the writer).
type MediaCreated struct {
	MediaID       string `json:"media_id"`
	UserID        string `json:"user_id"`
	CreatedTS     int64  `json:"created_ts"`
	ExpiresAt     int64  `json:"expires_at"`
	Authenticated bool   `json:"authenticated,omitempty"`
}

// ThumbnailStored records a generated thumbnail of one media item.
type ThumbnailStored struct {
	Origin      string `json:"origin"`
	MediaID     string `json:"media_id"`
	Width       int    `json:"width"`  // the requested size it answers
	Height      int    `json:"height"` // (the stored image may be smaller)
	Method      string `json:"method"` // "crop" or "scale"
	ContentType string `json:"content_type"`
	Size        int64  `json:"size"`
	SHA256      string `json:"sha256"`
}

// MediaRef names one media item.
type MediaRef struct {
	Origin  string `json:"origin"`
	MediaID string `json:"media_id"`
}

// MediaQuarantined marks media as quarantined (or releases it): the
// writer resolved "a room's" or "a user's" media into the list of items.
type MediaQuarantined struct {
	Media       []MediaRef `json:"media"`
	Quarantined bool       `json:"quarantined"`
	By          string     `json:"by,omitempty"` // the admin's user ID
}

// MediaDeleted removes media metadata (and so, once no record refers to
// them, the blobs). The writer decided which items: an admin's choice, the
// items media_retention expired, or a purge of the remote cache.
type MediaDeleted struct {
	Media  []MediaRef `json:"media"`
	Reason string     `json:"reason,omitempty"` // "admin", "retention", "purge_media_cache"
}

// ServerFact is anything else; Type names its meaning.
type ServerFact struct {
	Type string          `json:"type"`
	Data json.RawMessage `json:"data,omitempty"`
}
