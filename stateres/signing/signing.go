// Package signing signs and verifies JSON objects with ed25519 as the Matrix
// specification describes (appendices, "Signing JSON" and "Checking for a
// Signature"), and reads and writes signing key files.
package signing

import (
	"bufio"
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/engram-hs/engram/stateres/canonicaljson"
)

// AlgorithmEd25519 is the only signing algorithm Matrix defines.
const AlgorithmEd25519 = "ed25519"

// Key is a signing key with its key ID ("ed25519:<version>").
type Key struct {
	ID      string
	Private ed25519.PrivateKey
}

// Public returns the verification key.
func (k Key) Public() ed25519.PublicKey { return k.Private.Public().(ed25519.PublicKey) }

// GenerateKey creates a new ed25519 key named "ed25519:<version>". The caller
// supplies the randomness (crypto/rand.Reader in production) so that this
// package stays free of hidden I/O.
func GenerateKey(random io.Reader, version string) (Key, error) {
	if err := checkVersion(version); err != nil {
		return Key{}, err
	}
	_, priv, err := ed25519.GenerateKey(random)
	if err != nil {
		return Key{}, fmt.Errorf("generating ed25519 key: %w", err)
	}
	return Key{ID: AlgorithmEd25519 + ":" + version, Private: priv}, nil
}

// checkVersion enforces the key version grammar: [a-zA-Z0-9_] (spec
// server-server API, "Publishing Keys": key IDs).
func checkVersion(version string) error {
	if version == "" {
		return errors.New("signing key version is empty")
	}
	for _, c := range version {
		if !(c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
			return fmt.Errorf("signing key version %q may only contain a-z, A-Z, 0-9 and _", version)
		}
	}
	return nil
}

// EncodeKeyFile writes keys in the signing key file format used across the
// Matrix ecosystem: one "ed25519 <version> <unpadded base64 seed>" line each.
func EncodeKeyFile(keys ...Key) []byte {
	var b bytes.Buffer
	for _, k := range keys {
		alg, version, _ := strings.Cut(k.ID, ":")
		fmt.Fprintf(&b, "%s %s %s\n", alg, version, EncodeBase64(k.Private.Seed()))
	}
	return b.Bytes()
}

// DecodeKeyFile parses a signing key file written by EncodeKeyFile (or by
// another homeserver in the same format). Blank lines are ignored.
func DecodeKeyFile(data []byte) ([]Key, error) {
	var keys []Key
	sc := bufio.NewScanner(bytes.NewReader(data))
	line := 0
	for sc.Scan() {
		line++
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 {
			continue
		}
		if len(fields) != 3 {
			return nil, fmt.Errorf("signing key file line %d: want \"ed25519 <version> <base64 seed>\", got %d fields", line, len(fields))
		}
		if fields[0] != AlgorithmEd25519 {
			return nil, fmt.Errorf("signing key file line %d: unsupported algorithm %q (only ed25519 exists)", line, fields[0])
		}
		if err := checkVersion(fields[1]); err != nil {
			return nil, fmt.Errorf("signing key file line %d: %w", line, err)
		}
		seed, err := DecodeBase64(fields[2])
		if err != nil || len(seed) != ed25519.SeedSize {
			return nil, fmt.Errorf("signing key file line %d: the seed must be %d bytes of base64", line, ed25519.SeedSize)
		}
		keys = append(keys, Key{ID: AlgorithmEd25519 + ":" + fields[1], Private: ed25519.NewKeyFromSeed(seed)})
	}
	if len(keys) == 0 {
		return nil, errors.New("signing key file holds no key; generate one or point the configuration at the right file")
	}
	return keys, sc.Err()
}

// EncodeBase64 is unpadded standard base64 (appendices, "Unpadded Base64").
func EncodeBase64(b []byte) string { return base64.RawStdEncoding.EncodeToString(b) }

// EncodeURLSafeBase64 is unpadded URL-safe base64.
func EncodeURLSafeBase64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

// DecodeBase64 accepts standard or URL-safe base64, with or without padding,
// as the spec asks decoders to.
func DecodeBase64(s string) ([]byte, error) {
	s = strings.TrimRight(s, "=")
	if b, err := base64.RawStdEncoding.DecodeString(s); err == nil {
		return b, nil
	}
	return base64.RawURLEncoding.DecodeString(s)
}

// split canonicalises obj and separates the part that is signed (everything
// but signatures and unsigned) from the signatures object.
func split(obj []byte) (canon, signed, signatures, unsigned []byte, err error) {
	// Lenient: signatures on events of rooms v1-v5 cover JSON that strict
	// canonical JSON rejects; for strict-valid input both modes agree.
	canon, err = canonicaljson.Canonicalize(obj, false)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	if canon[0] != '{' {
		return nil, nil, nil, nil, errors.New("only JSON objects can be signed")
	}
	signed = make([]byte, 0, len(canon))
	signed = append(signed, '{')
	err = canonicaljson.ObjectEach(canon, func(k, v []byte) error {
		switch string(k) {
		case `"signatures"`:
			signatures = v
			return nil
		case `"unsigned"`:
			unsigned = v
			return nil
		}
		if len(signed) > 1 {
			signed = append(signed, ',')
		}
		signed = append(append(append(signed, k...), ':'), v...)
		return nil
	})
	return canon, append(signed, '}'), signatures, unsigned, err
}

// Sign returns the unpadded base64 ed25519 signature of already-canonical
// bytes.
func Sign(key ed25519.PrivateKey, canonical []byte) string {
	return EncodeBase64(ed25519.Sign(key, canonical))
}

// SignJSON signs the JSON object obj as serverName with the key keyID
// ("ed25519:<version>") and returns the canonical object with the signature
// merged into any existing signatures.
func SignJSON(serverName, keyID string, key ed25519.PrivateKey, obj []byte) ([]byte, error) {
	if !strings.HasPrefix(keyID, AlgorithmEd25519+":") {
		return nil, fmt.Errorf("key ID %q does not name an ed25519 key", keyID)
	}
	_, signed, signatures, unsigned, err := split(obj)
	if err != nil {
		return nil, err
	}
	all := map[string]map[string]string{}
	if signatures != nil {
		if err := json.Unmarshal(signatures, &all); err != nil {
			return nil, fmt.Errorf("existing signatures are not an object of objects of strings: %w", err)
		}
	}
	if all[serverName] == nil {
		all[serverName] = map[string]string{}
	}
	all[serverName][keyID] = Sign(key, signed)
	sigJSON, err := canonicaljson.Marshal(all)
	if err != nil {
		return nil, err
	}
	return merge(signed, sigJSON, unsigned)
}

// merge adds signatures and unsigned back to a canonical object.
func merge(signed, signatures, unsigned []byte) ([]byte, error) {
	out := make([]byte, 0, len(signed)+len(signatures)+len(unsigned)+32)
	out = append(out, signed[:len(signed)-1]...)
	if len(signed) > 2 {
		out = append(out, ',')
	}
	out = append(append(out, `"signatures":`...), signatures...)
	if unsigned != nil {
		out = append(append(out, `,"unsigned":`...), unsigned...)
	}
	out = append(out, '}')
	return canonicaljson.Canonicalize(out, false)
}

// ErrNoSignature means the object carries no signature by the given server
// and key; ErrBadSignature that it carries one that does not verify.
var (
	ErrNoSignature  = errors.New("no signature by this server and key")
	ErrBadSignature = errors.New("signature does not verify")
)

// VerifyJSON checks that obj carries a valid signature by serverName with the
// key keyID, following "Checking for a Signature".
func VerifyJSON(serverName, keyID string, pub ed25519.PublicKey, obj []byte) error {
	if !strings.HasPrefix(keyID, AlgorithmEd25519+":") {
		return fmt.Errorf("key ID %q: unsupported algorithm", keyID)
	}
	if len(pub) != ed25519.PublicKeySize {
		return fmt.Errorf("verification key for %s %s has %d bytes, want %d", serverName, keyID, len(pub), ed25519.PublicKeySize)
	}
	_, signed, signatures, _, err := split(obj)
	if err != nil {
		return err
	}
	return verifySigned(serverName, keyID, pub, signed, signatures)
}

// VerifyCanonical is VerifyJSON for callers that already hold the signed
// bytes (canonical, without signatures and unsigned) and the raw signatures
// object.
func VerifyCanonical(serverName, keyID string, pub ed25519.PublicKey, signed, signatures []byte) error {
	return verifySigned(serverName, keyID, pub, signed, signatures)
}

func verifySigned(serverName, keyID string, pub ed25519.PublicKey, signed, signatures []byte) error {
	sig := Lookup(signatures, serverName, keyID)
	if sig == "" {
		return fmt.Errorf("%w: %s %s", ErrNoSignature, serverName, keyID)
	}
	raw, err := DecodeBase64(sig)
	if err != nil || len(raw) != ed25519.SignatureSize {
		return fmt.Errorf("%w: signature by %s %s is not a base64 ed25519 signature", ErrBadSignature, serverName, keyID)
	}
	if len(pub) != ed25519.PublicKeySize || !ed25519.Verify(pub, signed, raw) {
		return fmt.Errorf("%w: %s %s", ErrBadSignature, serverName, keyID)
	}
	return nil
}

// Lookup returns signatures[serverName][keyID] from a canonical signatures
// object, or "" when absent or not a string.
func Lookup(signatures []byte, serverName, keyID string) string {
	if len(signatures) == 0 || signatures[0] != '{' {
		return ""
	}
	var found string
	_ = canonicaljson.ObjectEach(signatures, func(k, v []byte) error {
		name, err := canonicaljson.Unquote(k)
		if err != nil || name != serverName || len(v) == 0 || v[0] != '{' {
			return nil
		}
		_ = canonicaljson.ObjectEach(v, func(k2, v2 []byte) error {
			id, err := canonicaljson.Unquote(k2)
			if err == nil && id == keyID && len(v2) > 0 && v2[0] == '"' {
				found, _ = canonicaljson.Unquote(v2)
			}
			return nil
		})
		return nil
	})
	return found
}

// KeyIDs lists the key IDs serverName signed with, in key order.
func KeyIDs(signatures []byte, serverName string) []string {
	var ids []string
	if len(signatures) == 0 || signatures[0] != '{' {
		return nil
	}
	_ = canonicaljson.ObjectEach(signatures, func(k, v []byte) error {
		name, err := canonicaljson.Unquote(k)
		if err != nil || name != serverName || len(v) == 0 || v[0] != '{' {
			return nil
		}
		return canonicaljson.ObjectEach(v, func(k2, _ []byte) error {
			if id, err := canonicaljson.Unquote(k2); err == nil {
				ids = append(ids, id)
			}
			return nil
		})
	})
	return ids
}
