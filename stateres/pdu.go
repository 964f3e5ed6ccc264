package stateres

// PDU is the read-only view of a room event that the auth rules, state
// resolution and the projections work with. The concrete *Event (event.go)
// implements it; tests may implement it with plain structs.
//
// Every accessor is cheap (no parsing, no allocation beyond what was done
// when the event was parsed) because state resolution calls them in loops
// over tens of thousands of events.
type PDU interface {
	// EventID is the event's ID: top-level event_id in format v1, the
	// reference hash from v3 on.
	EventID() string
	// RoomID is the room the event belongs to. For a v12 create event, which
	// carries no room_id, it is the ID derived from the event ID.
	RoomID() string
	Type() string
	// StateKey is nil for non-state events.
	StateKey() *string
	Sender() string
	// Content is the event's content object as raw JSON.
	Content() []byte
	PrevEventIDs() []string
	AuthEventIDs() []string
	Depth() int64
	OriginServerTS() int64
	// Redacts is the event redacted by an m.room.redaction, from the top-level
	// field before v11 and from content from v11 on; "" otherwise.
	Redacts() string
	Version() *RoomVersion
	// JSON is the full event as it is stored and sent over federation
	// (event_id omitted from v3 on), in canonical form.
	JSON() []byte
}

// StateKeyTuple identifies a piece of room state.
type StateKeyTuple struct {
	Type     string
	StateKey string
}

// Well-known event types used by the room semantics.
const (
	MRoomCreate            = "m.room.create"
	MRoomMember            = "m.room.member"
	MRoomPowerLevels       = "m.room.power_levels"
	MRoomJoinRules         = "m.room.join_rules"
	MRoomThirdPartyInvite  = "m.room.third_party_invite"
	MRoomRedaction         = "m.room.redaction"
	MRoomAliases           = "m.room.aliases"
	MRoomHistoryVisibility = "m.room.history_visibility"
	MRoomServerACL         = "m.room.server_acl"
)
