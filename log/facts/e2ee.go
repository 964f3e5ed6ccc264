package facts

import "encoding/json"

// ---- End-to-end encryption (kinds 410-449) ----
//
// A handler checks what it can before appending (signatures, shapes, the
// caller's right to the device); the e2ee projection then folds these in
// log order and is the judge of everything that depends on order: which
// one-time key a claim gets, whether a one-time key ID is already taken,
// which backup version is current. The handler answers from that verdict,
// read back after the append (projections/e2ee Verdict).

// KeysUploaded: POST /keys/upload of one device. Every map is keyed as in
// the request ("<algorithm>:<key_id>"); DeviceKeys is the device_keys
// object as uploaded (signature checked by the writer).
type KeysUploaded struct {
	UserID       string                     `json:"user_id"`
	DeviceID     string                     `json:"device_id"`
	DeviceKeys   json.RawMessage            `json:"device_keys,omitempty"`
	OneTimeKeys  map[string]json.RawMessage `json:"one_time_keys,omitempty"`
	FallbackKeys map[string]json.RawMessage `json:"fallback_keys,omitempty"`
}

// KeysClaimed: one POST /keys/claim (or federation user/keys/claim) for
// local devices. The fold picks the keys: for each device, the oldest
// unclaimed one-time key of the algorithm, else its fallback key (kept).
// Each one-time key is handed out by exactly one claim, the first in the
// log to ask for it. Claimer names who asked (a local user, or a server
// name for federation), for operators.
type KeysClaimed struct {
	Claimer string                       `json:"claimer"`
	Claims  map[string]map[string]string `json:"claims"` // user -> device -> algorithm
}

// CrossSigningKeysUploaded: POST /keys/device_signing/upload. Each key is
// the object as uploaded (its signatures checked by the writer); a nil key
// is left as it was.
type CrossSigningKeysUploaded struct {
	UserID      string          `json:"user_id"`
	Master      json.RawMessage `json:"master_key,omitempty"`
	SelfSigning json.RawMessage `json:"self_signing_key,omitempty"`
	UserSigning json.RawMessage `json:"user_signing_key,omitempty"`
}

// KeySignature is one verified signature to add to a stored key: the
// device keys of TargetUser's device KeyID, or TargetUser's cross-signing
// key with public key KeyID.
type KeySignature struct {
	TargetUser string `json:"target_user"`
	KeyID      string `json:"key_id"`
	// Signer signed with SignerKeyID ("ed25519:...") the signature Value.
	Signer      string `json:"signer"`
	SignerKeyID string `json:"signer_key_id"`
	Value       string `json:"value"`
	// Remote: TargetUser is another server's, KeyID their master key as
	// that server answered it (a user-signing signature).
	Remote bool `json:"remote,omitempty"`
}

// KeySignaturesUploaded: the signatures of one POST /keys/signatures/upload
// that the writer verified.
type KeySignaturesUploaded struct {
	UserID     string         `json:"user_id"`
	Signatures []KeySignature `json:"signatures"`
}

// BackupVersionChanged creates, updates or deletes a server-side key
// backup version. For "create", Version is empty: the fold numbers
// versions 1, 2, ... per user. For "update" and "delete" it names one.
type BackupVersionChanged struct {
	UserID    string          `json:"user_id"`
	Op        string          `json:"op"` // "create", "update", "delete"
	Version   string          `json:"version,omitempty"`
	Algorithm string          `json:"algorithm,omitempty"`
	AuthData  json.RawMessage `json:"auth_data,omitempty"`
}

// Backup version operations.
const (
	BackupCreate = "create"
	BackupUpdate = "update"
	BackupDelete = "delete"
)

// RoomKeysBackedUp: PUT /room_keys/keys (one session, one room or all).
// The fold keeps, per session, the better of the stored and the new key
// (spec: is_verified, then first_message_index, then forwarded_count) and
// refuses the whole upload when Version is not the user's current backup.
type RoomKeysBackedUp struct {
	UserID  string                                `json:"user_id"`
	Version string                                `json:"version"`
	Rooms   map[string]map[string]json.RawMessage `json:"rooms"` // room -> session -> KeyBackupData
}

// RoomKeysDeleted: DELETE /room_keys/keys; an empty RoomID deletes every
// room, an empty SessionID every session of RoomID.
type RoomKeysDeleted struct {
	UserID    string `json:"user_id"`
	Version   string `json:"version"`
	RoomID    string `json:"room_id,omitempty"`
	SessionID string `json:"session_id,omitempty"`
}

// OneTimeKeysDiscarded: every one-time key uploaded at an offset <= UpTo
// and not yet claimed is discarded (never handed out, never stored again
// if re-uploaded). A point-in-time restore to offset UpTo appends it
// first: claims in the lost suffix after UpTo handed some of those keys
// to clients, and which ones is not known, so none may be handed out
// again. Devices see their count drop and upload fresh keys; fallback
// keys stay (they are meant to be reused).
type OneTimeKeysDiscarded struct {
	UpTo   uint64 `json:"up_to"`
	Reason string `json:"reason,omitempty"`
}

// RemoteDevicesResynced is a remote user's whole device list as their
// server answered GET /_matrix/federation/v1/user/devices/{userId}. The
// federation receiver fetches it when an m.device_list_update names a
// prev_id this server never saw (a gap), or when it holds no copy yet,
// and records it before the EDU: the e2ee projection replaces its cached
// copy with it, and later EDUs continue from StreamID.
type RemoteDevicesResynced struct {
	UserID   string         `json:"user_id"`
	Origin   string         `json:"origin"`
	StreamID uint64         `json:"stream_id"`
	Devices  []RemoteDevice `json:"devices"`
	// Master and SelfSigning are the user's cross-signing keys as their
	// server answered (absent when they have none).
	Master      json.RawMessage `json:"master_key,omitempty"`
	SelfSigning json.RawMessage `json:"self_signing_key,omitempty"`
}

// RemoteDevice is one device of a RemoteDevicesResynced.
type RemoteDevice struct {
	DeviceID    string          `json:"device_id"`
	Keys        json.RawMessage `json:"keys,omitempty"`
	DisplayName string          `json:"device_display_name,omitempty"`
}
