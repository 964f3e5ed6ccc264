package stateres

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math"

	"github.com/engram-hs/engram/stateres/canonicaljson"
)

// ProtoEvent is what a local client asks for; BuildEvent turns it into a
// signed PDU. OriginServerTS comes from the caller (handlers decide, the log
// records), never from a clock in here.
type ProtoEvent struct {
	Type     string
	StateKey *string
	Sender   string
	Content  json.RawMessage
	// Redacts is the event an m.room.redaction redacts; BuildEvent puts it
	// where the room version wants it (top level before v11, content after).
	Redacts        string
	RoomID         string
	OriginServerTS int64
}

// StateLookup gives the current state of the room the event is built on.
type StateLookup interface {
	// StateEvent returns the state event for (typ, stateKey), nil when absent.
	StateEvent(typ, stateKey string) PDU
}

// AuthEventTuples returns the state keys an event needs as auth events
// (server-server API, "Auth events selection"), per room version: no create
// event in v12, whose room ID implies it.
func AuthEventTuples(version *RoomVersion, proto *ProtoEvent) ([]StateKeyTuple, error) {
	if proto.Type == MRoomCreate && proto.StateKey != nil && *proto.StateKey == "" {
		return nil, nil
	}
	var out []StateKeyTuple
	add := func(typ, key string) {
		t := StateKeyTuple{Type: typ, StateKey: key}
		for _, have := range out {
			if have == t {
				return
			}
		}
		out = append(out, t)
	}
	if !version.RoomIDFromCreate {
		add(MRoomCreate, "")
	}
	add(MRoomPowerLevels, "")
	add(MRoomMember, proto.Sender)
	if proto.Type != MRoomMember {
		return out, nil
	}
	if proto.StateKey == nil {
		return nil, fmt.Errorf("%w: an m.room.member event needs a state_key (the target user)", ErrInvalidEvent)
	}
	var content struct {
		Membership       string `json:"membership"`
		ThirdPartyInvite *struct {
			Signed struct {
				Token *string `json:"token"`
			} `json:"signed"`
		} `json:"third_party_invite"`
		JoinAuthorisedVia *string `json:"join_authorised_via_users_server"`
	}
	if err := json.Unmarshal(contentOrEmpty(proto.Content), &content); err != nil {
		return nil, fmt.Errorf("%w: m.room.member content: %v", ErrInvalidEvent, err)
	}
	add(MRoomMember, *proto.StateKey)
	switch content.Membership {
	case "join", "invite", "knock":
		add(MRoomJoinRules, "")
	}
	if content.Membership == "invite" && content.ThirdPartyInvite != nil && content.ThirdPartyInvite.Signed.Token != nil {
		add(MRoomThirdPartyInvite, *content.ThirdPartyInvite.Signed.Token)
	}
	if content.Membership == "join" && content.JoinAuthorisedVia != nil && version.RestrictedJoins {
		add(MRoomMember, *content.JoinAuthorisedVia)
	}
	return out, nil
}

func contentOrEmpty(c json.RawMessage) json.RawMessage {
	if len(c) == 0 {
		return json.RawMessage(`{}`)
	}
	return c
}

// referenceHasher is implemented by *Event; rooms v1 and v2 reference prev
// and auth events together with their reference hashes.
type referenceHasher interface {
	ReferenceHash() [sha256.Size]byte
}

// BuildEvent builds, hashes and signs a new local event of the given room
// version on top of prevEvents, taking auth events from state. Callers then
// run the auth rules (stateres/auth) against the state before proposing it.
//
// In rooms v1 and v2 the event ID is $<opaque>:<origin>; the opaque part is
// derived from the event's own hash so that building stays deterministic.
func BuildEvent(version *RoomVersion, proto *ProtoEvent, state StateLookup, prevEvents []PDU, origin string, keyID string, key ed25519.PrivateKey) (*Event, error) {
	if version == nil || proto == nil {
		return nil, errors.New("BuildEvent needs a room version and a proto event")
	}
	if proto.Type == "" || proto.Sender == "" {
		return nil, fmt.Errorf("%w: type and sender are required", ErrInvalidEvent)
	}
	isCreate := proto.Type == MRoomCreate && proto.StateKey != nil && *proto.StateKey == ""
	if len(prevEvents) > MaxPrevEvents {
		return nil, fmt.Errorf("%w: %d prev events, the limit is %d; pass the most recent forward extremities", ErrInvalidEvent, len(prevEvents), MaxPrevEvents)
	}

	tuples, err := AuthEventTuples(version, proto)
	if err != nil {
		return nil, err
	}
	var authEvents []PDU
	if state != nil {
		for _, t := range tuples {
			if ev := state.StateEvent(t.Type, t.StateKey); ev != nil {
				authEvents = append(authEvents, ev)
			}
		}
	}

	// Depth: the maximum depth of the prev events plus one, held at the
	// largest integer the version's JSON allows.
	maxDepth := int64(math.MaxInt64)
	if version.StrictCanonicalJSON {
		maxDepth = canonicaljson.MaxSafeInteger
	}
	depth := int64(1)
	for _, p := range prevEvents {
		if d := p.Depth(); d >= depth {
			if d >= maxDepth {
				depth = maxDepth
			} else {
				depth = d + 1
			}
		}
	}

	fields := map[string]any{
		"type":             proto.Type,
		"sender":           proto.Sender,
		"origin_server_ts": proto.OriginServerTS,
		"depth":            depth,
		"hashes":           map[string]string{},
		"signatures":       map[string]any{},
	}
	if proto.StateKey != nil {
		fields["state_key"] = *proto.StateKey
	}
	if !(isCreate && version.RoomIDFromCreate) {
		if proto.RoomID == "" {
			return nil, fmt.Errorf("%w: room_id is required", ErrInvalidEvent)
		}
		fields["room_id"] = proto.RoomID
	}
	if !version.V11Semantics {
		fields["origin"] = origin
	}
	content := contentOrEmpty(proto.Content)
	if proto.Redacts != "" {
		if version.V11Semantics {
			var m map[string]json.RawMessage
			if err := json.Unmarshal(content, &m); err != nil {
				return nil, fmt.Errorf("%w: content: %v", ErrInvalidEvent, err)
			}
			if m == nil {
				m = map[string]json.RawMessage{}
			}
			m["redacts"], _ = json.Marshal(proto.Redacts)
			content, _ = json.Marshal(m)
		} else {
			fields["redacts"] = proto.Redacts
		}
	}
	fields["content"] = content
	if version.EventFormat == FormatV1 {
		if fields["prev_events"], err = refPairsOf(prevEvents); err != nil {
			return nil, err
		}
		if fields["auth_events"], err = refPairsOf(authEvents); err != nil {
			return nil, err
		}
	} else {
		fields["prev_events"] = idsOf(prevEvents)
		fields["auth_events"] = idsOf(authEvents)
	}

	// Rooms v1-v5 allow integers beyond 2^53 (depth up to 2^63-1), so the
	// version's own canonical JSON rules apply rather than Marshal's strict ones.
	raw, err := json.Marshal(fields)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidEvent, err)
	}
	canon, err := canonicaljson.Canonicalize(raw, version.StrictCanonicalJSON)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidEvent, err)
	}
	if version.EventIDFormat == EventIDServerAssigned {
		sum := sha256.Sum256(canon)
		id := "$" + base64.RawURLEncoding.EncodeToString(sum[:]) + ":" + origin
		if canon, err = setKey(canon, "event_id", canonicaljson.AppendString(nil, id)); err != nil {
			return nil, err
		}
	}
	signed, err := hashAndSign(version, canon, origin, keyID, key)
	if err != nil {
		return nil, err
	}
	return parseCanonical(version, signed)
}

func idsOf(evs []PDU) []string {
	ids := make([]string, len(evs))
	for i, ev := range evs {
		ids[i] = ev.EventID()
	}
	return ids
}

func refPairsOf(evs []PDU) ([][2]any, error) {
	out := make([][2]any, len(evs))
	for i, ev := range evs {
		rh, ok := ev.(referenceHasher)
		if !ok {
			return nil, fmt.Errorf("event %s has no reference hash; rooms v1 and v2 need *stateres.Event prev and auth events", ev.EventID())
		}
		sum := rh.ReferenceHash()
		out[i] = [2]any{ev.EventID(), map[string]string{"sha256": base64.RawStdEncoding.EncodeToString(sum[:])}}
	}
	return out, nil
}
