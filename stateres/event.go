package stateres

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"unicode/utf8"

	"github.com/engram-hs/engram/stateres/canonicaljson"
)

// Size limits from the client-server API, "Size limits".
const (
	// MaxPDUBytes bounds a whole event in canonical federation form,
	// signatures included.
	MaxPDUBytes = 65536
	// MaxIDBytes bounds sender, room_id, event_id, type and state_key.
	MaxIDBytes = 255
	// MaxPrevEvents and MaxAuthEvents bound the event references of a PDU
	// (server-server PDU definitions).
	MaxPrevEvents = 20
	MaxAuthEvents = 10
	// maxRawInput rejects absurd input before spending work canonicalising
	// it; whitespace aside, nothing this large can fit in MaxPDUBytes.
	maxRawInput = 4 * MaxPDUBytes
)

// ErrInvalidEvent is wrapped by every error ParseEvent returns: the event does
// not follow its room version's format and must be dropped (server-server
// API, "Checks performed on receipt of a PDU", step 1).
var ErrInvalidEvent = errors.New("invalid event")

// ErrEventTooLarge is also returned (wrapped with ErrInvalidEvent) for an
// event over MaxPDUBytes, which clients are told with 413 M_TOO_LARGE.
var ErrEventTooLarge = errors.New("event too large")

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalidEvent, fmt.Sprintf(format, args...))
}

// Event is a parsed PDU of a known room version. It is immutable: every
// accessor returns precomputed data, and the byte slices it hands out alias
// its JSON and must not be modified.
type Event struct {
	version *RoomVersion
	json    []byte // canonical, as stored and sent over federation

	eventID        string
	roomID         string
	typ            string
	stateKey       *string
	sender         string
	origin         string
	redacts        string
	content        []byte
	prevEvents     []string
	authEvents     []string
	depth          int64
	originServerTS int64

	hashes     []byte
	signatures []byte
	unsigned   []byte

	contentHash   string // hashes.sha256 as carried by the event
	referenceHash [sha256.Size]byte
}

var _ PDU = (*Event)(nil)

func (e *Event) EventID() string        { return e.eventID }
func (e *Event) RoomID() string         { return e.roomID }
func (e *Event) Type() string           { return e.typ }
func (e *Event) StateKey() *string      { return e.stateKey }
func (e *Event) Sender() string         { return e.sender }
func (e *Event) Content() []byte        { return e.content }
func (e *Event) PrevEventIDs() []string { return e.prevEvents }
func (e *Event) AuthEventIDs() []string { return e.authEvents }
func (e *Event) Depth() int64           { return e.depth }
func (e *Event) OriginServerTS() int64  { return e.originServerTS }
func (e *Event) Redacts() string        { return e.redacts }
func (e *Event) Version() *RoomVersion  { return e.version }
func (e *Event) JSON() []byte           { return e.json }

// IsState reports whether the event has a state_key.
func (e *Event) IsState() bool { return e.stateKey != nil }

// Origin is the top-level origin field (absent from v11 on), "" when absent.
// It is informational only: the auth rules and signature checks use sender.
func (e *Event) Origin() string { return e.origin }

// Hashes is the raw "hashes" object; Signatures the raw "signatures" object;
// Unsigned the raw "unsigned" object or nil when the event has none.
func (e *Event) Hashes() []byte     { return e.hashes }
func (e *Event) Signatures() []byte { return e.signatures }
func (e *Event) Unsigned() []byte   { return e.unsigned }

// ReferenceHash is the sha256 reference hash of the event (server-server
// API, "Calculating the reference hash for an event").
func (e *Event) ReferenceHash() [sha256.Size]byte { return e.referenceHash }

// CheckContentHash compares hashes.sha256 with the hash of the event's
// content. A mismatch means the event must be replaced by its redacted form
// before it is processed further (it is not dropped).
func (e *Event) CheckContentHash() error {
	want, err := DecodeBase64(e.contentHash)
	if err != nil {
		return fmt.Errorf("hashes.sha256 of %s is not base64: %w", e.eventID, err)
	}
	got, err := ContentHash(e.json)
	if err != nil {
		return err
	}
	if !bytes.Equal(want, got[:]) {
		return fmt.Errorf("content hash mismatch for %s: the event was altered or redacted in transit", e.eventID)
	}
	return nil
}

// Redacted returns the event with the redaction algorithm of its room
// version applied. The event ID is unchanged.
func (e *Event) Redacted() *Event {
	red, err := Redact(e.version, e.json)
	if err != nil {
		// e.json was produced by ParseEvent, so it is a canonical object.
		panic("stateres: redacting a parsed event failed: " + err.Error())
	}
	out, err := parseCanonical(e.version, red)
	if err != nil {
		panic("stateres: re-parsing a redacted event failed: " + err.Error())
	}
	return out
}

// ParseEvent parses an untrusted PDU of the given room version: it enforces
// the size limits, the canonical JSON rules of the version and the PDU
// format, and derives the event ID. It does not check signatures, the content
// hash or the auth rules.
//
// In the v3+ formats the event ID is derived, so a top-level event_id claimed
// by the sender is removed from the stored JSON.
func ParseEvent(version *RoomVersion, raw []byte) (*Event, error) {
	if version == nil {
		return nil, invalid("no room version")
	}
	if len(raw) > maxRawInput {
		return nil, fmt.Errorf("%w: %w: %d bytes exceed the %d byte limit", ErrInvalidEvent, ErrEventTooLarge, len(raw), MaxPDUBytes)
	}
	canon, err := canonicaljson.Canonicalize(raw, version.StrictCanonicalJSON)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidEvent, err)
	}
	return parseCanonical(version, canon)
}

// topLevel holds the raw top-level fields parseCanonical looks at.
type topLevel struct {
	eventID, roomID, typ, stateKey, sender, origin, redacts []byte
	content, prevEvents, authEvents, depth, ts              []byte
	hashes, signatures, unsigned                            []byte
}

func parseCanonical(version *RoomVersion, canon []byte) (*Event, error) {
	return parseCanonicalWithID(version, canon, "")
}

// parseCanonicalWithID is parseCanonical that, given the event ID a trusted
// writer derived (ParseTrustedEvent), adopts it instead of hashing again.
func parseCanonicalWithID(version *RoomVersion, canon []byte, knownID string) (*Event, error) {
	if len(canon) == 0 || canon[0] != '{' {
		return nil, invalid("event is not a JSON object")
	}
	var f topLevel
	err := canonicaljson.ObjectEach(canon, func(key, value []byte) error {
		switch string(key) {
		case `"event_id"`:
			f.eventID = value
		case `"room_id"`:
			f.roomID = value
		case `"type"`:
			f.typ = value
		case `"state_key"`:
			f.stateKey = value
		case `"sender"`:
			f.sender = value
		case `"origin"`:
			f.origin = value
		case `"redacts"`:
			f.redacts = value
		case `"content"`:
			f.content = value
		case `"prev_events"`:
			f.prevEvents = value
		case `"auth_events"`:
			f.authEvents = value
		case `"depth"`:
			f.depth = value
		case `"origin_server_ts"`:
			f.ts = value
		case `"hashes"`:
			f.hashes = value
		case `"signatures"`:
			f.signatures = value
		case `"unsigned"`:
			f.unsigned = value
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidEvent, err)
	}
	if version.EventFormat != FormatV1 && f.eventID != nil {
		canon = withoutKey(canon, "event_id")
		return parseCanonicalWithID(version, canon, knownID)
	}
	if len(canon) > MaxPDUBytes {
		return nil, fmt.Errorf("%w: %w: %d bytes exceed the %d byte limit", ErrInvalidEvent, ErrEventTooLarge, len(canon), MaxPDUBytes)
	}

	e := &Event{version: version, json: canon}
	if e.typ, err = keyString(version, f.typ, "type"); err != nil {
		return nil, err
	}
	if e.sender, err = idString(f.sender, "sender"); err != nil {
		return nil, err
	}
	if f.stateKey != nil {
		sk, err := keyString(version, f.stateKey, "state_key")
		if err != nil {
			return nil, err
		}
		e.stateKey = &sk
	}
	if !isObject(f.content) {
		return nil, invalid("content must be an object")
	}
	e.content = f.content
	if e.depth, err = integer(f.depth, "depth"); err != nil {
		return nil, err
	}
	if e.originServerTS, err = integer(f.ts, "origin_server_ts"); err != nil {
		return nil, err
	}
	if !isObject(f.hashes) {
		return nil, invalid("hashes must be an object")
	}
	e.hashes = f.hashes
	sha := canonicaljson.Get(f.hashes, "sha256")
	if sha == nil || sha[0] != '"' {
		return nil, invalid("hashes.sha256 must be a string")
	}
	e.contentHash, _ = canonicaljson.Unquote(sha)
	if !isObject(f.signatures) {
		return nil, invalid("signatures must be an object")
	}
	e.signatures = f.signatures
	if f.unsigned != nil {
		if !isObject(f.unsigned) {
			return nil, invalid("unsigned must be an object")
		}
		e.unsigned = f.unsigned
	}
	if f.origin != nil && f.origin[0] == '"' {
		e.origin, _ = canonicaljson.Unquote(f.origin)
	}

	isCreate := e.typ == MRoomCreate
	if version.RoomIDFromCreate && isCreate {
		if f.roomID != nil {
			return nil, invalid("an m.room.create event carries no room_id in room version %s", version.ID)
		}
	} else if e.roomID, err = idString(f.roomID, "room_id"); err != nil {
		return nil, err
	}

	switch version.EventFormat {
	case FormatV1:
		if e.eventID, err = idString(f.eventID, "event_id"); err != nil {
			return nil, err
		}
		if e.prevEvents, err = refPairs(f.prevEvents, "prev_events", MaxPrevEvents); err != nil {
			return nil, err
		}
		if e.authEvents, err = refPairs(f.authEvents, "auth_events", MaxAuthEvents); err != nil {
			return nil, err
		}
	default:
		if e.prevEvents, err = refIDs(f.prevEvents, "prev_events", MaxPrevEvents); err != nil {
			return nil, err
		}
		if e.authEvents, err = refIDs(f.authEvents, "auth_events", MaxAuthEvents); err != nil {
			return nil, err
		}
	}

	if e.typ == MRoomRedaction {
		src := f.redacts
		if version.V11Semantics {
			src = canonicaljson.Get(f.content, "redacts")
		}
		if src != nil && src[0] == '"' {
			e.redacts, _ = canonicaljson.Unquote(src)
		}
	}

	if knownID != "" && version.EventIDFormat != EventIDServerAssigned {
		if err := e.adoptEventID(knownID); err != nil {
			return nil, err
		}
		if version.RoomIDFromCreate && isCreate {
			e.roomID = "!" + e.eventID[1:]
		}
		return e, nil
	}
	if e.referenceHash, err = referenceHash(version, canon); err != nil {
		return nil, err
	}
	switch version.EventIDFormat {
	case EventIDBase64:
		e.eventID = "$" + base64.RawStdEncoding.EncodeToString(e.referenceHash[:])
	case EventIDURLSafeBase64:
		e.eventID = "$" + base64.RawURLEncoding.EncodeToString(e.referenceHash[:])
	}
	if version.RoomIDFromCreate && isCreate {
		e.roomID = "!" + e.eventID[1:]
	}
	return e, nil
}

func isObject(v []byte) bool { return len(v) >= 2 && v[0] == '{' }

// requiredString decodes a required string field.
func requiredString(v []byte, name string) (string, error) {
	if v == nil {
		return "", invalid("missing %s", name)
	}
	if v[0] != '"' {
		return "", invalid("%s must be a string", name)
	}
	s, err := canonicaljson.Unquote(v)
	if err != nil {
		return "", invalid("%s: %v", name, err)
	}
	return s, nil
}

// idString decodes a required string field limited to MaxIDBytes.
func idString(v []byte, name string) (string, error) {
	s, err := requiredString(v, name)
	if err != nil {
		return "", err
	}
	if len(s) > MaxIDBytes {
		return "", invalid("%s is %d bytes, the limit is %d", name, len(s), MaxIDBytes)
	}
	return s, nil
}

// keyString decodes type or state_key. Room versions before 11 bound
// them to MaxIDBytes codepoints rather than bytes: servers did so when
// those rooms were made, so their rooms hold longer non-ASCII keys that
// every server must still accept (as prev and auth events too, or the
// room's history breaks apart).
func keyString(version *RoomVersion, v []byte, name string) (string, error) {
	if version.StrictEventByteLimits {
		return idString(v, name)
	}
	s, err := requiredString(v, name)
	if err != nil {
		return "", err
	}
	if n := utf8.RuneCountInString(s); n > MaxIDBytes {
		return "", invalid("%s is %d codepoints, the limit is %d in room version %s", name, n, MaxIDBytes, version.ID)
	}
	return s, nil
}

func integer(v []byte, name string) (int64, error) {
	if v == nil {
		return 0, invalid("missing %s", name)
	}
	n, err := canonicaljson.Int(v)
	if err != nil {
		return 0, invalid("%s must be an integer that fits in 64 bits", name)
	}
	return n, nil
}

// refIDs decodes a v3+ list of event IDs.
func refIDs(v []byte, name string, limit int) ([]string, error) {
	if v == nil || v[0] != '[' {
		return nil, invalid("%s must be an array of event IDs", name)
	}
	ids := []string{}
	err := canonicaljson.ArrayEach(v, func(item []byte) error {
		id, err := idString(item, name+" entry")
		if err != nil {
			return err
		}
		ids = append(ids, id)
		return nil
	})
	if err != nil {
		return nil, err
	}
	if len(ids) > limit {
		return nil, invalid("%s has %d entries, the limit is %d", name, len(ids), limit)
	}
	return ids, nil
}

// refPairs decodes a v1-format list of [event_id, {hashes}] pairs.
func refPairs(v []byte, name string, limit int) ([]string, error) {
	if v == nil || v[0] != '[' {
		return nil, invalid("%s must be an array of [event_id, hashes] pairs", name)
	}
	ids := []string{}
	err := canonicaljson.ArrayEach(v, func(pair []byte) error {
		var parts [][]byte
		if len(pair) == 0 || pair[0] != '[' {
			return invalid("%s entries must be [event_id, hashes] pairs", name)
		}
		if err := canonicaljson.ArrayEach(pair, func(p []byte) error {
			parts = append(parts, p)
			return nil
		}); err != nil {
			return err
		}
		if len(parts) != 2 || !isObject(parts[1]) {
			return invalid("%s entries must be [event_id, hashes] pairs", name)
		}
		id, err := idString(parts[0], name+" event ID")
		if err != nil {
			return err
		}
		ids = append(ids, id)
		return nil
	})
	if err != nil {
		return nil, err
	}
	if len(ids) > limit {
		return nil, invalid("%s has %d entries, the limit is %d", name, len(ids), limit)
	}
	return ids, nil
}

// withoutKey returns the canonical object obj without the given top-level
// keys; removing members keeps a canonical object canonical.
func withoutKey(obj []byte, keys ...string) []byte {
	out := make([]byte, 0, len(obj))
	out = append(out, '{')
	_ = canonicaljson.ObjectEach(obj, func(k, v []byte) error {
		for _, drop := range keys {
			if len(k) == len(drop)+2 && string(k[1:len(k)-1]) == drop {
				return nil
			}
		}
		if len(out) > 1 {
			out = append(out, ',')
		}
		out = append(out, k...)
		out = append(out, ':')
		out = append(out, v...)
		return nil
	})
	return append(out, '}')
}

// ContentHash computes the content hash of a canonical event (server-server
// API, "Calculating the content hash for an event"): sha256 of the event
// without unsigned, signatures and hashes.
func ContentHash(canonicalEvent []byte) ([sha256.Size]byte, error) {
	if !isObject(canonicalEvent) {
		return [sha256.Size]byte{}, invalid("event is not a JSON object")
	}
	return sha256.Sum256(withoutKey(canonicalEvent, "unsigned", "signatures", "hashes")), nil
}

// referenceHash computes the reference hash: sha256 of the redacted event
// without signatures and unsigned.
func referenceHash(version *RoomVersion, canon []byte) ([sha256.Size]byte, error) {
	red, err := Redact(version, canon)
	if err != nil {
		return [sha256.Size]byte{}, err
	}
	return sha256.Sum256(withoutKey(red, "signatures", "unsigned")), nil
}

// DecodeBase64 decodes unpadded (or, leniently, padded) standard or URL-safe
// base64, as the spec asks implementations to accept.
func DecodeBase64(s string) ([]byte, error) {
	for len(s) > 0 && s[len(s)-1] == '=' {
		s = s[:len(s)-1]
	}
	if b, err := base64.RawStdEncoding.DecodeString(s); err == nil {
		return b, nil
	}
	return base64.RawURLEncoding.DecodeString(s)
}
