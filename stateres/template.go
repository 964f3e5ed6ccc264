package stateres

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"

	"github.com/engram-hs/engram/stateres/canonicaljson"
)

// BuildFromTemplate completes an event template a resident server sent
// (make_join, make_leave, make_knock: server-server API) into a signed
// event of origin: it takes the template's fields as they are (type,
// room_id, sender, state_key, content, prev_events, auth_events, depth),
// sets origin_server_ts (decided by the caller) and, before v11, origin,
// assigns the event ID in rooms v1 and v2, computes the content hash and
// signs. The caller checks the result against the room's rules.
func BuildFromTemplate(version *RoomVersion, template json.RawMessage, originServerTS int64, origin, keyID string, key ed25519.PrivateKey) (*Event, error) {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(template, &fields); err != nil || fields == nil {
		return nil, fmt.Errorf("%w: the event template is not a JSON object", ErrInvalidEvent)
	}
	for _, k := range []string{"event_id", "hashes", "signatures", "unsigned"} {
		delete(fields, k)
	}
	fields["origin_server_ts"], _ = json.Marshal(originServerTS)
	fields["hashes"] = json.RawMessage(`{}`)
	fields["signatures"] = json.RawMessage(`{}`)
	if !version.V11Semantics {
		fields["origin"], _ = json.Marshal(origin)
	} else {
		delete(fields, "origin")
	}
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

// Template turns an event this server built (BuildEvent) into the
// template a resident server answers make_join and the like with: the
// event without what the joining server sets (event_id, hashes,
// signatures, unsigned, origin).
func Template(ev *Event) (json.RawMessage, error) {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(ev.JSON(), &fields); err != nil {
		return nil, err
	}
	for _, k := range []string{"event_id", "hashes", "signatures", "unsigned", "origin"} {
		delete(fields, k)
	}
	return json.Marshal(fields)
}
