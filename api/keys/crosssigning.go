package keys

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strings"

	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/projections/e2ee"
	"github.com/engram-hs/engram/stateres/canonicaljson"
	"github.com/engram-hs/engram/stateres/signing"
)

// crossKeyBody is the spec's CrossSigningKey.
type crossKeyBody struct {
	UserID     string                       `json:"user_id"`
	Usage      []string                     `json:"usage"`
	Keys       map[string]string            `json:"keys"`
	Signatures map[string]map[string]string `json:"signatures"`
}

// parseCrossKey checks a cross-signing key of the given usage uploaded by
// user and returns it canonical with its public key.
func parseCrossKey(field, usage string, raw json.RawMessage, user string) (json.RawMessage, string, ed25519.PublicKey, error) {
	var k crossKeyBody
	if raw[0] != '{' || json.Unmarshal(raw, &k) != nil {
		return nil, "", nil, badJSON("%s must be a CrossSigningKey object", field)
	}
	if k.UserID != user {
		return nil, "", nil, invalidParam("%s is for %s, not for you", field, k.UserID)
	}
	if !slices.Contains(k.Usage, usage) {
		return nil, "", nil, invalidParam("%s must have usage %q", field, usage)
	}
	if len(k.Keys) != 1 {
		return nil, "", nil, invalidParam("%s must hold exactly one key", field)
	}
	var id, pubB64 string
	for id, pubB64 = range k.Keys {
	}
	if id != "ed25519:"+pubB64 {
		return nil, "", nil, invalidParam("%s: the key ID must be ed25519:<public key>", field)
	}
	pub, err := decodeEd25519(pubB64)
	if err != nil {
		return nil, "", nil, invalidParam("%s is not an ed25519 public key", field)
	}
	canon, err := canonicaljson.Canonicalize(raw, false)
	if err != nil {
		return nil, "", nil, badJSON("%s: %v", field, err)
	}
	return canon, pubB64, pub, nil
}

// crossKeyPub returns the public key of a stored cross-signing key.
func crossKeyPub(k *e2ee.CrossKey) (string, ed25519.PublicKey) {
	if k == nil {
		return "", nil
	}
	pubs := e2ee.PublicKeys(k.Key)
	if len(pubs) != 1 {
		return "", nil
	}
	pub, err := decodeEd25519(pubs[0])
	if err != nil {
		return "", nil
	}
	return pubs[0], pub
}

func (s *Service) uploadCrossSigning(w http.ResponseWriter, r *http.Request, c Caller) error {
	var req struct {
		Master      json.RawMessage `json:"master_key"`
		SelfSigning json.RawMessage `json:"self_signing_key"`
		UserSigning json.RawMessage `json:"user_signing_key"`
		Auth        json.RawMessage `json:"auth"`
	}
	if err := s.d.ReadJSON(r, &req); err != nil {
		return err
	}
	stored, err := s.view().CrossSigning(c.UserID)
	if err != nil {
		return err
	}
	if stored == nil {
		stored = &e2ee.CrossSigning{}
	}
	f := facts.CrossSigningKeysUploaded{UserID: c.UserID}
	masterPubB64, masterPub := crossKeyPub(stored.Master)
	if present(req.Master) {
		canon, pubB64, pub, err := parseCrossKey("master_key", "master", req.Master, c.UserID)
		if err != nil {
			return err
		}
		f.Master, masterPubB64, masterPub = canon, pubB64, pub
	}
	if masterPub == nil && (present(req.SelfSigning) || present(req.UserSigning)) {
		return missingParam("Upload a master_key first: the other keys must be signed by it")
	}
	for _, sub := range []struct {
		field, usage string
		raw          json.RawMessage
		out          *json.RawMessage
	}{
		{"self_signing_key", "self_signing", req.SelfSigning, &f.SelfSigning},
		{"user_signing_key", "user_signing", req.UserSigning, &f.UserSigning},
	} {
		if !present(sub.raw) {
			continue
		}
		canon, _, _, err := parseCrossKey(sub.field, sub.usage, sub.raw, c.UserID)
		if err != nil {
			return err
		}
		if err := signing.VerifyJSON(c.UserID, "ed25519:"+masterPubB64, masterPub, canon); err != nil {
			return invalidParam("%s is not signed by the master key: %v", sub.field, err)
		}
		*sub.out = canon
	}
	if f.Master == nil && f.SelfSigning == nil && f.UserSigning == nil {
		return missingParam("No keys to upload")
	}
	// Spec: UIA is required unless there is no master key yet, or the
	// request holds only keys identical to the stored ones.
	if stored.Master != nil && !(same(f.Master, stored.Master) && same(f.SelfSigning, stored.SelfSigning) && same(f.UserSigning, stored.UserSigning)) {
		if err := s.d.PasswordUIA(req.Auth, c); err != nil {
			return err
		}
	}
	verdict, err := s.commitFact(r.Context(), facts.MustEncode(englog.KindCrossSigningKeysUploaded, f))
	if err != nil {
		return err
	}
	if err := verdictError(verdict); err != nil {
		return err
	}
	if f.Master != nil || f.SelfSigning != nil {
		s.announceCrossSigning(r.Context(), c.UserID)
	}
	writeJSON(w, http.StatusOK, struct{}{})
	return nil
}

func present(raw json.RawMessage) bool { return len(raw) > 0 && string(raw) != "null" }

// same: an absent key in the request, or one equal to the stored one.
func same(uploaded json.RawMessage, stored *e2ee.CrossKey) bool {
	if uploaded == nil {
		return true
	}
	return stored != nil && bytes.Equal(uploaded, stored.Key)
}

// unsignedPart is a key object without signatures and unsigned, canonical:
// what its signatures cover.
func unsignedPart(raw json.RawMessage) ([]byte, error) {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(raw, &obj); err != nil {
		return nil, err
	}
	delete(obj, "signatures")
	delete(obj, "unsigned")
	b, err := json.Marshal(obj)
	if err != nil {
		return nil, err
	}
	return canonicaljson.Canonicalize(b, false)
}

// uploadSignatures checks each signature the caller adds (spec: POST
// /keys/signatures/upload) and records the valid ones; each invalid one
// is a failure of its key.
func (s *Service) uploadSignatures(w http.ResponseWriter, r *http.Request, c Caller) error {
	var req map[string]map[string]json.RawMessage
	if err := s.d.ReadJSON(r, &req); err != nil {
		return err
	}
	v := s.view()
	own, err := v.CrossSigning(c.UserID)
	if err != nil {
		return err
	}
	if own == nil {
		own = &e2ee.CrossSigning{}
	}
	sskB64, sskPub := crossKeyPub(own.SelfSigning)
	uskB64, uskPub := crossKeyPub(own.UserSigning)
	failures := map[string]map[string]any{}
	fail := func(user, keyID, code, msg string) {
		if failures[user] == nil {
			failures[user] = map[string]any{}
		}
		failures[user][keyID] = map[string]string{"errcode": code, "error": msg}
	}
	var sigs []facts.KeySignature
	remoteMasters := map[string]remoteMaster{}
	var signedDevices []string // the caller's own
	signedMaster := false
	for _, user := range slices.Sorted(maps.Keys(req)) {
		for _, keyID := range slices.Sorted(maps.Keys(req[user])) {
			raw := req[user][keyID]
			if !s.local(user) {
				sig, code, msg := s.remoteMasterSignature(r.Context(), c.UserID, user, keyID, raw, uskB64, uskPub, remoteMasters)
				if code != "" {
					fail(user, keyID, code, msg)
					continue
				}
				sigs = append(sigs, sig)
				continue
			}
			var body struct {
				Signatures map[string]map[string]string `json:"signatures"`
			}
			if len(raw) == 0 || raw[0] != '{' || json.Unmarshal(raw, &body) != nil {
				fail(user, keyID, "M_BAD_JSON", "The key must be a signed key object")
				continue
			}
			signed, err := unsignedPart(raw)
			if err != nil {
				fail(user, keyID, "M_BAD_JSON", err.Error())
				continue
			}
			// The target: a device of the user, or a cross-signing key.
			var target json.RawMessage
			if dk, err := v.DeviceKeys(user, keyID); err != nil {
				return err
			} else if dk != nil {
				target = dk.Keys
			}
			targetCS, err := v.CrossSigning(user)
			if err != nil {
				return err
			}
			isMaster := false
			if target == nil && targetCS != nil {
				if pub, _ := crossKeyPub(targetCS.Master); pub == keyID {
					target, isMaster = targetCS.Master.Key, true
				}
			}
			if target == nil {
				fail(user, keyID, "M_NOT_FOUND", "No such device or master key")
				continue
			}
			want, err := unsignedPart(target)
			if err != nil {
				return err
			}
			if !bytes.Equal(want, signed) {
				fail(user, keyID, "M_INVALID_SIGNATURE", "The signed object does not match the stored key")
				continue
			}
			// Which of the caller's keys may sign it.
			var signerID string
			var signerPub ed25519.PublicKey
			switch {
			case user == c.UserID && !isMaster:
				signerID, signerPub = "ed25519:"+sskB64, sskPub
			case user != c.UserID && isMaster:
				signerID, signerPub = "ed25519:"+uskB64, uskPub
			case user == c.UserID && isMaster:
				// The master key signed by one of the caller's devices.
				for kid := range body.Signatures[c.UserID] {
					dev, ok := strings.CutPrefix(kid, "ed25519:")
					if !ok {
						continue
					}
					dk, err := v.DeviceKeys(c.UserID, dev)
					if err != nil {
						return err
					}
					if dk != nil {
						var d deviceKeysBody
						if json.Unmarshal(dk.Keys, &d) == nil {
							if p, err := decodeEd25519(d.Keys[kid]); err == nil {
								signerID, signerPub = kid, p
							}
						}
					}
				}
			default:
				fail(user, keyID, "M_FORBIDDEN", "You can sign only your own devices and keys, and other users' master keys")
				continue
			}
			if signerPub == nil {
				fail(user, keyID, "M_INVALID_SIGNATURE", "You have no key that may sign this (upload cross-signing keys first)")
				continue
			}
			sig := body.Signatures[c.UserID][signerID]
			if err := signing.VerifyCanonical(c.UserID, signerID, signerPub, signed, mustJSON(body.Signatures)); err != nil || sig == "" {
				fail(user, keyID, "M_INVALID_SIGNATURE", "Invalid signature")
				continue
			}
			sigs = append(sigs, facts.KeySignature{TargetUser: user, KeyID: keyID, Signer: c.UserID, SignerKeyID: signerID, Value: sig})
			if user == c.UserID && isMaster {
				signedMaster = true
			} else if user == c.UserID {
				signedDevices = append(signedDevices, keyID)
			}
		}
	}
	if len(sigs) > 0 {
		verdict, err := s.commitFact(r.Context(), facts.MustEncode(englog.KindKeySignaturesUploaded, facts.KeySignaturesUploaded{UserID: c.UserID, Signatures: sigs}))
		if err != nil {
			return err
		}
		if err := verdictError(verdict); err != nil {
			return err
		}
		// Other servers learn of the caller's own keys that gained a
		// signature: signed devices are an m.device_list_update, a signed
		// master key an m.signing_key_update. A signature on another
		// user's master key (user-signing) is visible to the signer only.
		if len(signedDevices) > 0 {
			s.AnnounceDevices(r.Context(), c.UserID, signedDevices, false)
		}
		if signedMaster {
			s.announceCrossSigning(r.Context(), c.UserID)
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{"failures": failures})
	return nil
}

func mustJSON(v any) []byte {
	b, _ := json.Marshal(v)
	return b
}

// remoteMaster is a remote user's master key as their server answered
// user/keys/query, or why it could not be had.
type remoteMaster struct {
	key json.RawMessage
	err error
}

// remoteMasterSignature checks the caller's user-signing signature of a
// remote user's master key against the key their server holds (asked
// once per user and request); it returns the signature to record, or the
// failure's errcode and message.
func (s *Service) remoteMasterSignature(ctx context.Context, caller, user, keyID string, raw json.RawMessage, uskB64 string, uskPub ed25519.PublicKey, masters map[string]remoteMaster) (facts.KeySignature, string, string) {
	if uskPub == nil {
		return facts.KeySignature{}, "M_INVALID_SIGNATURE", "You have no user-signing key to sign other users' master keys with (upload cross-signing keys first)"
	}
	var body struct {
		Signatures map[string]map[string]string `json:"signatures"`
	}
	if len(raw) == 0 || raw[0] != '{' || json.Unmarshal(raw, &body) != nil {
		return facts.KeySignature{}, "M_BAD_JSON", "The key must be a signed key object"
	}
	m, asked := masters[user]
	if !asked {
		m.key, m.err = s.fetchRemoteMaster(ctx, user)
		masters[user] = m
	}
	if m.err != nil {
		return facts.KeySignature{}, "M_UNKNOWN", m.err.Error()
	}
	if m.key == nil || !slices.Contains(e2ee.PublicKeys(m.key), keyID) {
		return facts.KeySignature{}, "M_NOT_FOUND", "No such master key of " + user
	}
	signed, err := unsignedPart(raw)
	if err != nil {
		return facts.KeySignature{}, "M_BAD_JSON", err.Error()
	}
	want, err := unsignedPart(m.key)
	if err != nil || !bytes.Equal(want, signed) {
		return facts.KeySignature{}, "M_INVALID_SIGNATURE", "The signed object does not match the master key " + user + "'s server holds"
	}
	signerID := "ed25519:" + uskB64
	sig := body.Signatures[caller][signerID]
	if err := signing.VerifyCanonical(caller, signerID, uskPub, signed, mustJSON(body.Signatures)); err != nil || sig == "" {
		return facts.KeySignature{}, "M_INVALID_SIGNATURE", "Invalid signature (only your user-signing key may sign another user's master key)"
	}
	return facts.KeySignature{TargetUser: user, KeyID: keyID, Signer: caller, SignerKeyID: signerID, Value: sig, Remote: true}, "", ""
}

// fetchRemoteMaster asks user's server for their master key (nil: none).
func (s *Service) fetchRemoteMaster(ctx context.Context, user string) (json.RawMessage, error) {
	if s.d.Remote == nil {
		return nil, fmt.Errorf("this server does not federate: it cannot check keys of %s", user)
	}
	ctx, cancel := context.WithTimeout(ctx, remoteTimeout)
	defer cancel()
	raw, err := s.d.Remote.QueryKeys(ctx, serverOf(user), map[string][]string{user: {}})
	if err != nil {
		return nil, fmt.Errorf("could not ask %s for the keys of %s: %v", serverOf(user), user, err)
	}
	var a struct {
		MasterKeys map[string]json.RawMessage `json:"master_keys"`
	}
	if err := json.Unmarshal(raw, &a); err != nil {
		return nil, fmt.Errorf("%s answered user/keys/query with something else: %v", serverOf(user), err)
	}
	return a.MasterKeys[user], nil
}
