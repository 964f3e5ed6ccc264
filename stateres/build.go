package stateres

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/engram-hs/engram/stateres/canonicaljson"
	"github.com/engram-hs/engram/stateres/signing"
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

	if !(isCreate && version.RoomIDFromCreate) && proto.RoomID == "" {
		return nil, fmt.Errorf("%w: room_id is required", ErrInvalidEvent)
	}
	if version.StrictCanonicalJSON && (proto.OriginServerTS > canonicaljson.MaxSafeInteger || proto.OriginServerTS < -canonicaljson.MaxSafeInteger) {
		return nil, invalid("origin_server_ts %d is beyond the integers canonical JSON allows", proto.OriginServerTS)
	}
	b := &eventBytes{
		version:  version,
		typ:      validUTF8(proto.Type),
		sender:   validUTF8(proto.Sender),
		ts:       proto.OriginServerTS,
		depth:    depth,
		redacts:  validUTF8(proto.Redacts),
		prev:     idsOf(prevEvents),
		auth:     idsOf(authEvents),
		isCreate: isCreate,
	}
	if proto.StateKey != nil {
		sk := validUTF8(*proto.StateKey)
		b.stateKey = &sk
	}
	if !(isCreate && version.RoomIDFromCreate) {
		b.roomID = validUTF8(proto.RoomID)
	}
	if !version.V11Semantics {
		b.origin = validUTF8(origin)
	}
	if b.content, err = canonicaljson.Canonicalize(contentOrEmpty(proto.Content), version.StrictCanonicalJSON); err != nil {
		return nil, fmt.Errorf("%w: content: %w", ErrInvalidEvent, err)
	}
	if proto.Redacts != "" && version.V11Semantics {
		if string(b.content) == "null" {
			b.content = []byte(`{}`)
		}
		if !isObject(b.content) {
			return nil, invalid("content must be an object")
		}
		if b.content, err = setKey(b.content, "redacts", canonicaljson.AppendString(nil, b.redacts)); err != nil {
			return nil, err
		}
	}
	if version.EventFormat == FormatV1 {
		if b.prevRefs, err = refHashesOf(prevEvents); err != nil {
			return nil, err
		}
		if b.authRefs, err = refHashesOf(authEvents); err != nil {
			return nil, err
		}
	}
	return b.build(origin, keyID, key)
}

// eventBytes holds the fields of an event being built, each already in
// the form its canonical JSON takes, so that BuildEvent writes the event's
// bytes directly, in key order, and fills the *Event from the same
// values: no json.Marshal of a map, no re-canonicalising, and no parse
// of the bytes it has just produced (TestBuildEventMatchesParse holds
// the result to what parsing them gives).
type eventBytes struct {
	version  *RoomVersion
	typ      string
	stateKey *string
	sender   string
	roomID   string // "" for a v12 create, which has none
	origin   string // "" from v11 on, which drop it
	redacts  string
	content  []byte // canonical
	prev     []string
	auth     []string
	prevRefs []string // rooms v1/v2: each prev event's reference hash, base64
	authRefs []string
	ts       int64
	depth    int64
	isCreate bool
}

// appendJSON writes the canonical event with the given event_id ("" for
// none), hashes and signatures (nil for none). contentAt is where the
// content starts in dst.
func (b *eventBytes) appendJSON(dst []byte, eventID string, hashes, signatures []byte) (out []byte, contentAt int) {
	key := func(k string) {
		if dst[len(dst)-1] != '{' {
			dst = append(dst, ',')
		}
		dst = append(append(append(dst, '"'), k...), '"', ':')
	}
	refs := func(ids, hashes []string) {
		dst = append(dst, '[')
		for i, id := range ids {
			if i > 0 {
				dst = append(dst, ',')
			}
			if b.version.EventFormat == FormatV1 {
				dst = append(dst, '[')
				dst = canonicaljson.AppendString(dst, id)
				dst = append(dst, `,{"sha256":`...)
				dst = canonicaljson.AppendString(dst, hashes[i])
				dst = append(dst, '}', ']')
			} else {
				dst = canonicaljson.AppendString(dst, id)
			}
		}
		dst = append(dst, ']')
	}
	dst = append(dst, '{')
	key("auth_events")
	refs(b.auth, b.authRefs)
	key("content")
	contentAt = len(dst)
	dst = append(dst, b.content...)
	key("depth")
	dst = strconv.AppendInt(dst, b.depth, 10)
	if eventID != "" {
		key("event_id")
		dst = canonicaljson.AppendString(dst, eventID)
	}
	if hashes != nil {
		key("hashes")
		dst = append(dst, hashes...)
	}
	if !b.version.V11Semantics {
		key("origin")
		dst = canonicaljson.AppendString(dst, b.origin)
	}
	key("origin_server_ts")
	dst = strconv.AppendInt(dst, b.ts, 10)
	key("prev_events")
	refs(b.prev, b.prevRefs)
	if b.redacts != "" && !b.version.V11Semantics {
		key("redacts")
		dst = canonicaljson.AppendString(dst, b.redacts)
	}
	if b.roomID != "" {
		key("room_id")
		dst = canonicaljson.AppendString(dst, b.roomID)
	}
	key("sender")
	dst = canonicaljson.AppendString(dst, b.sender)
	if signatures != nil {
		key("signatures")
		dst = append(dst, signatures...)
	}
	if b.stateKey != nil {
		key("state_key")
		dst = canonicaljson.AppendString(dst, *b.stateKey)
	}
	key("type")
	dst = canonicaljson.AppendString(dst, b.typ)
	return append(dst, '}'), contentAt
}

// build hashes and signs the event once and returns it parsed: the bytes
// signed are the redacted event without signatures, which are also what
// the reference hash (and so the v3+ event ID) is taken over.
func (b *eventBytes) build(origin, keyID string, key ed25519.PrivateKey) (*Event, error) {
	v := b.version
	if err := b.check(); err != nil {
		return nil, err
	}
	if !strings.HasPrefix(keyID, signing.AlgorithmEd25519+":") {
		return nil, fmt.Errorf("key ID %q does not name an ed25519 key", keyID)
	}
	empty := []byte(`{}`)
	var eventID string
	if v.EventIDFormat == EventIDServerAssigned {
		// Derived from the event's own hash, with empty hashes and
		// signatures, so that building stays deterministic.
		unsigned, _ := b.appendJSON(nil, "", empty, empty)
		sum := sha256.Sum256(unsigned)
		eventID = "$" + base64.RawURLEncoding.EncodeToString(sum[:]) + ":" + origin
	}
	body, _ := b.appendJSON(nil, eventID, nil, nil)
	sum := sha256.Sum256(body)
	contentHash := signing.EncodeBase64(sum[:])
	hashes := append(append([]byte(`{"sha256":"`), contentHash...), '"', '}')
	withHash, _ := b.appendJSON(body[:0], eventID, hashes, empty)
	toSign, err := signedBytes(v, withHash)
	if err != nil {
		return nil, err
	}
	refHash := sha256.Sum256(toSign)
	sigs, err := setPath(empty, origin, keyID, signing.Sign(key, toSign))
	if err != nil {
		return nil, err
	}
	canon, contentAt := b.appendJSON(make([]byte, 0, len(withHash)+len(sigs)), eventID, hashes, sigs)
	if len(canon) > MaxPDUBytes {
		return nil, fmt.Errorf("%w: %w: %d bytes exceed the %d byte limit", ErrInvalidEvent, ErrEventTooLarge, len(canon), MaxPDUBytes)
	}
	e := &Event{
		version:        v,
		json:           canon,
		eventID:        eventID,
		roomID:         b.roomID,
		typ:            b.typ,
		stateKey:       b.stateKey,
		sender:         b.sender,
		origin:         b.origin,
		content:        canon[contentAt : contentAt+len(b.content)],
		prevEvents:     b.prev,
		authEvents:     b.auth,
		depth:          b.depth,
		originServerTS: b.ts,
		hashes:         hashes,
		signatures:     sigs,
		contentHash:    contentHash,
		referenceHash:  refHash,
	}
	if b.typ == MRoomRedaction {
		if v.V11Semantics {
			if src := canonicaljson.Get(e.content, "redacts"); src != nil && src[0] == '"' {
				e.redacts, _ = canonicaljson.Unquote(src)
			}
		} else {
			e.redacts = b.redacts
		}
	}
	switch v.EventIDFormat {
	case EventIDBase64:
		e.eventID = "$" + base64.RawStdEncoding.EncodeToString(refHash[:])
	case EventIDURLSafeBase64:
		e.eventID = "$" + base64.RawURLEncoding.EncodeToString(refHash[:])
	}
	if v.RoomIDFromCreate && b.isCreate {
		e.roomID = "!" + e.eventID[1:]
	}
	return e, nil
}

// check applies the limits parseCanonical would to the same fields.
func (b *eventBytes) check() error {
	v := b.version
	keyLimit := func(s, name string) error {
		if v.StrictEventByteLimits {
			return idLimit(s, name)
		}
		if n := utf8.RuneCountInString(s); n > MaxIDBytes {
			return invalid("%s is %d codepoints, the limit is %d in room version %s", name, n, MaxIDBytes, v.ID)
		}
		return nil
	}
	if err := keyLimit(b.typ, "type"); err != nil {
		return err
	}
	if err := idLimit(b.sender, "sender"); err != nil {
		return err
	}
	if b.stateKey != nil {
		if err := keyLimit(*b.stateKey, "state_key"); err != nil {
			return err
		}
	}
	if !isObject(b.content) {
		return invalid("content must be an object")
	}
	if b.roomID != "" {
		if err := idLimit(b.roomID, "room_id"); err != nil {
			return err
		}
	}
	if len(b.auth) > MaxAuthEvents {
		return invalid("auth_events has %d entries, the limit is %d", len(b.auth), MaxAuthEvents)
	}
	for _, ids := range [][]string{b.prev, b.auth} {
		for _, id := range ids {
			if err := idLimit(id, "prev_events/auth_events entry"); err != nil {
				return err
			}
		}
	}
	return nil
}

func idLimit(s, name string) error {
	if len(s) > MaxIDBytes {
		return invalid("%s is %d bytes, the limit is %d", name, len(s), MaxIDBytes)
	}
	return nil
}

// validUTF8 replaces each byte that is not UTF-8 with U+FFFD, as
// encoding/json did when BuildEvent marshalled its fields: events built
// from the same input keep the same bytes and event ID.
func validUTF8(s string) string {
	if utf8.ValidString(s) {
		return s
	}
	var out strings.Builder
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && n == 1 {
			out.WriteString("\uFFFD")
		} else {
			out.WriteString(s[i : i+n])
		}
		i += n
	}
	return out.String()
}

func idsOf(evs []PDU) []string {
	ids := make([]string, len(evs))
	for i, ev := range evs {
		ids[i] = ev.EventID()
	}
	return ids
}

// refHashesOf is the base64 reference hash of each event, which rooms
// v1 and v2 carry next to its ID in prev_events and auth_events.
func refHashesOf(evs []PDU) ([]string, error) {
	out := make([]string, len(evs))
	for i, ev := range evs {
		rh, ok := ev.(referenceHasher)
		if !ok {
			return nil, fmt.Errorf("event %s has no reference hash; rooms v1 and v2 need *stateres.Event prev and auth events", ev.EventID())
		}
		sum := rh.ReferenceHash()
		out[i] = base64.RawStdEncoding.EncodeToString(sum[:])
	}
	return out, nil
}
