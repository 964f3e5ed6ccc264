package stateres

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"strings"

	"github.com/engram-hs/engram/stateres/canonicaljson"
	"github.com/engram-hs/engram/stateres/signing"
)

// signedBytes is what an event signature covers: the redacted event without
// signatures and unsigned, in canonical form (server-server API, "Signing
// events"). It is also the preimage of the reference hash.
func signedBytes(version *RoomVersion, canon []byte) ([]byte, error) {
	red, err := Redact(version, canon)
	if err != nil {
		return nil, err
	}
	return withoutKey(red, "signatures", "unsigned"), nil
}

// hashAndSign sets hashes.sha256 of the canonical event and signs it as
// serverName, returning the canonical result. Existing signatures by other
// servers are kept; the content hash replaces any hashes object.
func hashAndSign(version *RoomVersion, canon []byte, serverName, keyID string, key ed25519.PrivateKey) ([]byte, error) {
	sum, err := ContentHash(canon)
	if err != nil {
		return nil, err
	}
	hashes := append(append([]byte(`{"sha256":"`), signing.EncodeBase64(sum[:])...), '"', '}')
	withHash, err := setKey(canon, "hashes", hashes)
	if err != nil {
		return nil, err
	}
	return addSignature(version, withHash, serverName, keyID, key)
}

// addSignature signs the canonical event as serverName and merges the
// signature into its signatures object.
func addSignature(version *RoomVersion, canon []byte, serverName, keyID string, key ed25519.PrivateKey) ([]byte, error) {
	if !strings.HasPrefix(keyID, signing.AlgorithmEd25519+":") {
		return nil, fmt.Errorf("key ID %q does not name an ed25519 key", keyID)
	}
	toSign, err := signedBytes(version, canon)
	if err != nil {
		return nil, err
	}
	sig := signing.Sign(key, toSign)
	sigs := canonicaljson.Get(canon, "signatures")
	if sigs == nil {
		sigs = []byte(`{}`)
	}
	merged, err := setPath(sigs, serverName, keyID, sig)
	if err != nil {
		return nil, err
	}
	return setKey(canon, "signatures", merged)
}

// setKey returns the canonical object obj with key set to the canonical
// value v, added in key order or replaced in place.
func setKey(obj []byte, key string, v []byte) ([]byte, error) {
	out := make([]byte, 0, len(obj)+len(key)+len(v)+4)
	out = append(out, '{')
	done := false
	encKey := canonicaljson.AppendString(nil, key)
	write := func(k, val []byte) {
		if len(out) > 1 {
			out = append(out, ',')
		}
		out = append(append(append(out, k...), ':'), val...)
	}
	err := canonicaljson.ObjectEach(obj, func(k, val []byte) error {
		name, err := canonicaljson.Unquote(k)
		if err != nil {
			return err
		}
		if !done && name >= key {
			write(encKey, v)
			done = true
			if name == key {
				return nil
			}
		}
		write(k, val)
		return nil
	})
	if err != nil {
		return nil, err
	}
	if !done {
		write(encKey, v)
	}
	return append(out, '}'), nil
}

// setPath sets signatures[server][keyID] = sig in a canonical signatures
// object.
func setPath(sigs []byte, server, keyID, sig string) ([]byte, error) {
	if !isObject(sigs) {
		return nil, errors.New("signatures is not an object")
	}
	inner := canonicaljson.Get(sigs, server)
	if inner == nil || !isObject(inner) {
		// Get matches raw keys only; names needing escapes are rare enough
		// that re-canonicalising the slow way is fine.
		inner = []byte(`{}`)
	}
	inner, err := setKey(inner, keyID, canonicaljson.AppendString(nil, sig))
	if err != nil {
		return nil, err
	}
	return setKey(sigs, server, inner)
}

// SignEvent adds serverName's signature to an event, as a resident server
// does for a restricted join or an invite it countersigns. The event ID is
// unchanged because signatures are not part of the reference hash.
func SignEvent(ev *Event, serverName, keyID string, key ed25519.PrivateKey) (*Event, error) {
	signed, err := addSignature(ev.version, ev.json, serverName, keyID, key)
	if err != nil {
		return nil, err
	}
	return parseCanonical(ev.version, signed)
}

// KeyLookup returns the verification key of serverName's keyID, and false
// when it is unknown or was not valid at the event's origin_server_ts (the
// caller decides validity; from room v5 on the spec requires it).
type KeyLookup func(serverName, keyID string) (ed25519.PublicKey, bool)

// ErrSignature is wrapped by every signature verification failure: the event
// must be dropped.
var ErrSignature = errors.New("event signature check failed")

// RequiredSigners lists the servers whose signatures an event must carry
// (server-server API, "Validating hashes and signatures on received events"):
// the sender's server, except for invites made from a third-party invite;
// in rooms v1 and v2 also the server of the event ID; and from room v8 on,
// for a join authorised by a resident user, that user's server.
func RequiredSigners(ev PDU) []string {
	var out []string
	add := func(s string) {
		if s == "" {
			return
		}
		for _, have := range out {
			if have == s {
				return
			}
		}
		out = append(out, s)
	}
	version := ev.Version()
	member := ev.Type() == MRoomMember
	membership := ""
	if member {
		if m := canonicaljson.Get(ev.Content(), "membership"); m != nil && m[0] == '"' {
			membership, _ = canonicaljson.Unquote(m)
		}
	}
	if !(member && membership == "invite" && canonicaljson.Get(ev.Content(), "third_party_invite") != nil) {
		add(domainOf(ev.Sender()))
	}
	if version.EventIDFormat == EventIDServerAssigned {
		add(domainOf(ev.EventID()))
	}
	if version.RestrictedJoins && member && membership == "join" {
		if via := canonicaljson.Get(ev.Content(), "join_authorised_via_users_server"); via != nil && via[0] == '"' {
			user, _ := canonicaljson.Unquote(via)
			add(domainOf(user))
		}
	}
	return out
}

// domainOf returns the server name of a user or event ID ("@a:b" -> "b").
func domainOf(id string) string {
	_, domain, ok := strings.Cut(id, ":")
	if !ok {
		return ""
	}
	return domain
}

// VerifyEventSignatures checks the signatures of every required signer (see
// RequiredSigners) on the redacted form of the event. For each server,
// signatures by keys the lookup does not know are skipped; every known key's
// signature must verify and at least one must exist.
func VerifyEventSignatures(ev *Event, keys KeyLookup) error {
	toVerify, err := signedBytes(ev.version, ev.json)
	if err != nil {
		return err
	}
	signers := RequiredSigners(ev)
	if len(signers) == 0 {
		return fmt.Errorf("%w: %s names no server that must sign it", ErrSignature, ev.eventID)
	}
	for _, server := range signers {
		verified := 0
		for _, keyID := range signing.KeyIDs(ev.signatures, server) {
			if !strings.HasPrefix(keyID, signing.AlgorithmEd25519+":") {
				continue
			}
			pub, ok := keys(server, keyID)
			if !ok {
				continue
			}
			if err := signing.VerifyCanonical(server, keyID, pub, toVerify, ev.signatures); err != nil {
				return fmt.Errorf("%w: %s: %w", ErrSignature, ev.eventID, err)
			}
			verified++
		}
		if verified == 0 {
			return fmt.Errorf("%w: %s carries no signature by %s with a known key; fetch %s's keys and retry", ErrSignature, ev.eventID, server, server)
		}
	}
	return nil
}
