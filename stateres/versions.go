// Package stateres holds the room semantics of Matrix as pure, deterministic
// functions: room versions, the event (PDU) format, hashing and signing,
// redaction, authorisation rules and state resolution. Nothing in stateres or
// its sub-packages touches the clock, the network, the disk or randomness.
//
// Sub-packages:
//   - canonicaljson: the canonical JSON encoding (spec appendices).
//   - signing: ed25519 signing and verification of JSON objects and events.
//   - auth: the authorisation rules of every room version.
//   - resolve: state resolution v1, v2 and v2.1.
package stateres

// DefaultRoomVersion is the version new rooms are created in when the
// client names none (config: default_room_version). The spec makes 12 the
// default but says servers SHOULD keep using 11 for a little while
// (changelog v1.16, MSC4304): servers that do not know v12 yet (Dendrite
// v0.13.8, older Synapse) cannot join a v12 room, and clients and
// Complement still assume the pre-v12 creator rules for a room created
// without a version. Operators who want v12 set default_room_version.
const DefaultRoomVersion = "11"

// EventFormat names the shape of a PDU on the wire.
type EventFormat int

const (
	// FormatV1 (rooms v1, v2): event_id is a top-level field of the form
	// $localpart:server; prev_events and auth_events are [id, hashes] pairs.
	FormatV1 EventFormat = 1
	// FormatV3 (rooms v3 and later): the event ID is the reference hash,
	// not carried in the event; prev_events and auth_events are lists of IDs.
	FormatV3 EventFormat = 3
)

// EventIDFormat names how an event ID is derived.
type EventIDFormat int

const (
	EventIDServerAssigned EventIDFormat = 1 // v1, v2: $opaque:server
	EventIDBase64         EventIDFormat = 3 // v3: $ + standard unpadded base64 of the reference hash
	EventIDURLSafeBase64  EventIDFormat = 4 // v4+: $ + URL-safe unpadded base64 of the reference hash
)

// StateResAlgorithm names a state resolution algorithm.
type StateResAlgorithm int

const (
	StateResV1  StateResAlgorithm = 1  // room v1
	StateResV2  StateResAlgorithm = 2  // rooms v2-v11
	StateResV21 StateResAlgorithm = 21 // room v12 ("v2.1", MSC4297)
)

// RedactionRules names the redaction algorithm of a room version.
type RedactionRules int

const (
	RedactionV1  RedactionRules = 1  // rooms v1-v5
	RedactionV6  RedactionRules = 6  // rooms v6, v7: m.room.aliases no longer keeps content
	RedactionV8  RedactionRules = 8  // room v8: keeps join_authorised_via_users_server... on join_rules: allow
	RedactionV9  RedactionRules = 9  // rooms v9, v10: member keeps join_authorised_via_users_server
	RedactionV11 RedactionRules = 11 // rooms v11, v12
)

// RoomVersion is the table of behaviours that one room version selects.
// Room semantics branch on these fields, never on the version string.
type RoomVersion struct {
	ID            string
	Stable        bool
	EventFormat   EventFormat
	EventIDFormat EventIDFormat
	StateRes      StateResAlgorithm
	Redaction     RedactionRules

	// EnforceKeyValidity: signing keys must be valid at origin_server_ts (v5+).
	EnforceKeyValidity bool
	// StrictCanonicalJSON: integers outside [-(2^53)+1, 2^53-1] and floats are
	// rejected (v6+).
	StrictCanonicalJSON bool
	// SpecialCaseAliases: m.room.aliases has its own auth rule (v1-v5).
	SpecialCaseAliases bool
	// NotificationsPowerLevels: power levels' "notifications" is checked (v6+).
	NotificationsPowerLevels bool
	// Knocking: the knock membership and join rule exist (v7+).
	Knocking bool
	// RestrictedJoins: the restricted join rule exists (v8+).
	RestrictedJoins bool
	// KnockRestricted: the knock_restricted join rule exists (v10+).
	KnockRestricted bool
	// IntegerPowerLevels: power level values must be JSON integers (v10+).
	IntegerPowerLevels bool
	// V11Semantics: creator comes from the create event's sender, redacts
	// moves into content, top-level origin/membership/prev_state are gone (v11+).
	V11Semantics bool
	// StrictEventByteLimits: type and state_key are bounded to 255 bytes;
	// before v11 to 255 codepoints (v11+).
	StrictEventByteLimits bool
	// RoomIDFromCreate: the room ID is derived from the create event's ID and
	// the create event carries no room_id (v12).
	RoomIDFromCreate bool
	// PrivilegedCreators: the create event's sender and additional_creators
	// have infinite power and may not appear in power levels' users (v12).
	PrivilegedCreators bool
}

var roomVersions = map[string]*RoomVersion{}

func init() {
	base := RoomVersion{
		Stable:             true,
		EventFormat:        FormatV1,
		EventIDFormat:      EventIDServerAssigned,
		StateRes:           StateResV1,
		Redaction:          RedactionV1,
		SpecialCaseAliases: true,
	}
	add := func(id string, change func(v *RoomVersion)) {
		change(&base)
		v := base
		v.ID = id
		roomVersions[id] = &v
	}
	add("1", func(v *RoomVersion) {})
	add("2", func(v *RoomVersion) { v.StateRes = StateResV2 })
	add("3", func(v *RoomVersion) { v.EventFormat = FormatV3; v.EventIDFormat = EventIDBase64 })
	add("4", func(v *RoomVersion) { v.EventIDFormat = EventIDURLSafeBase64 })
	add("5", func(v *RoomVersion) { v.EnforceKeyValidity = true })
	add("6", func(v *RoomVersion) {
		v.Redaction = RedactionV6
		v.StrictCanonicalJSON = true
		v.SpecialCaseAliases = false
		v.NotificationsPowerLevels = true
	})
	add("7", func(v *RoomVersion) { v.Knocking = true })
	add("8", func(v *RoomVersion) { v.RestrictedJoins = true; v.Redaction = RedactionV8 })
	add("9", func(v *RoomVersion) { v.Redaction = RedactionV9 })
	add("10", func(v *RoomVersion) { v.KnockRestricted = true; v.IntegerPowerLevels = true })
	add("11", func(v *RoomVersion) {
		v.V11Semantics = true
		v.Redaction = RedactionV11
		v.StrictEventByteLimits = true
	})
	add("12", func(v *RoomVersion) {
		v.RoomIDFromCreate = true
		v.PrivilegedCreators = true
		v.StateRes = StateResV21
	})
}

// Version returns the room version with the given identifier, or false when
// Engram does not know it (the caller answers M_UNSUPPORTED_ROOM_VERSION).
func Version(id string) (*RoomVersion, bool) {
	v, ok := roomVersions[id]
	return v, ok
}

// KnownVersions lists the identifiers of every supported room version, in
// ascending numeric order.
func KnownVersions() []string {
	return []string{"1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12"}
}
