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
	"time"

	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/projections/e2ee"
	"github.com/engram-hs/engram/stateres/canonicaljson"
	"github.com/engram-hs/engram/stateres/signing"
)

// maxClaimDevices bounds one /keys/claim: the claim is one log entry
// folded in one step, and a client asks for at most the devices of the
// rooms it shares. Larger requests are refused (M_TOO_LARGE), never cut.
const maxClaimDevices = 5000

// maxQueryUsers bounds one /keys/query.
const maxQueryUsers = 5000

// deviceKeysBody is the spec's DeviceKeys, as far as the server checks it.
type deviceKeysBody struct {
	UserID     string                       `json:"user_id"`
	DeviceID   string                       `json:"device_id"`
	Algorithms []string                     `json:"algorithms"`
	Keys       map[string]string            `json:"keys"`
	Signatures map[string]map[string]string `json:"signatures"`
}

// checkDeviceKeys validates a device_keys object uploaded by c and
// returns it canonical, with its ed25519 key.
func checkDeviceKeys(raw json.RawMessage, c Caller) (json.RawMessage, ed25519.PublicKey, error) {
	var dk deviceKeysBody
	if len(raw) == 0 || raw[0] != '{' || json.Unmarshal(raw, &dk) != nil {
		return nil, nil, badJSON("device_keys must be a DeviceKeys object")
	}
	if dk.UserID == "" || dk.DeviceID == "" || dk.Algorithms == nil || dk.Keys == nil || dk.Signatures == nil {
		return nil, nil, badJSON("device_keys needs user_id, device_id, algorithms, keys and signatures")
	}
	if dk.UserID != c.UserID || dk.DeviceID != c.DeviceID {
		return nil, nil, invalidParam("device_keys are for %s device %s, but you are %s device %s", dk.UserID, dk.DeviceID, c.UserID, c.DeviceID)
	}
	pub, err := decodeEd25519(dk.Keys["ed25519:"+dk.DeviceID])
	if err != nil {
		return nil, nil, invalidParam("device_keys has no valid ed25519:%s key", dk.DeviceID)
	}
	canon, err := canonicaljson.Canonicalize(raw, false)
	if err != nil {
		return nil, nil, badJSON("device_keys: %v", err)
	}
	// The device's own signature is checked when it is there. Keys
	// without it are stored as Synapse does (Complement's device-list
	// tests upload such keys): every client refuses them at query time,
	// so they cannot be used to impersonate the device; a signature that
	// is there and wrong is refused here.
	if _, signed := dk.Signatures[dk.UserID]["ed25519:"+dk.DeviceID]; signed {
		if err := signing.VerifyJSON(dk.UserID, "ed25519:"+dk.DeviceID, pub, canon); err != nil {
			return nil, nil, invalidParam("device_keys are not signed by the device's own ed25519 key: %v", err)
		}
	}
	return canon, pub, nil
}

func decodeEd25519(s string) (ed25519.PublicKey, error) {
	b, err := signing.DecodeBase64(s)
	if err != nil {
		return nil, err
	}
	if len(b) != ed25519.PublicKeySize {
		return nil, errorf(http.StatusBadRequest, "M_INVALID_PARAM", "not an ed25519 public key")
	}
	return ed25519.PublicKey(b), nil
}

// checkOneTimeKeys validates one_time_keys or fallback_keys: IDs are
// "<algorithm>:<id>", and signed keys carry a valid signature of the
// device (when its ed25519 key is known). It returns them canonical.
func checkOneTimeKeys(field string, in map[string]json.RawMessage, c Caller, pub ed25519.PublicKey) (map[string]json.RawMessage, error) {
	out := make(map[string]json.RawMessage, len(in))
	for full, raw := range in {
		alg, id, ok := strings.Cut(full, ":")
		if !ok || alg == "" || id == "" {
			return nil, invalidParam("%s: key ID %q is not <algorithm>:<key_id>", field, full)
		}
		canon, err := canonicaljson.Canonicalize(raw, false)
		if err != nil {
			return nil, badJSON("%s %s: %v", field, full, err)
		}
		if strings.HasPrefix(alg, "signed_") {
			var k struct {
				Key        string          `json:"key"`
				Signatures json.RawMessage `json:"signatures"`
			}
			if canon[0] != '{' || json.Unmarshal(canon, &k) != nil || k.Key == "" || len(k.Signatures) == 0 {
				return nil, badJSON("%s %s must be an object with key and signatures", field, full)
			}
			if pub != nil {
				if err := signing.VerifyJSON(c.UserID, "ed25519:"+c.DeviceID, pub, canon); err != nil {
					return nil, invalidParam("%s %s is not signed by the device: %v", field, full, err)
				}
			}
		} else if canon[0] != '"' && canon[0] != '{' {
			return nil, badJSON("%s %s must be a string or an object", field, full)
		}
		out[full] = canon
	}
	return out, nil
}

func (s *Service) upload(w http.ResponseWriter, r *http.Request, c Caller) error {
	if dev := r.PathValue("deviceId"); dev != "" && dev != c.DeviceID {
		return invalidParam("You can only upload keys for your own device")
	}
	var req struct {
		DeviceKeys   json.RawMessage            `json:"device_keys"`
		OneTimeKeys  map[string]json.RawMessage `json:"one_time_keys"`
		FallbackKeys map[string]json.RawMessage `json:"fallback_keys"`
	}
	if err := s.d.ReadJSON(r, &req); err != nil {
		return err
	}
	v := s.view()
	f := facts.KeysUploaded{UserID: c.UserID, DeviceID: c.DeviceID}
	var pub ed25519.PublicKey
	if len(req.DeviceKeys) > 0 && string(req.DeviceKeys) != "null" {
		canon, p, err := checkDeviceKeys(req.DeviceKeys, c)
		if err != nil {
			return err
		}
		f.DeviceKeys, pub = canon, p
	} else if stored, err := v.DeviceKeys(c.UserID, c.DeviceID); err != nil {
		return err
	} else if stored != nil {
		var dk deviceKeysBody
		if json.Unmarshal(stored.Keys, &dk) == nil {
			pub, _ = decodeEd25519(dk.Keys["ed25519:"+c.DeviceID])
		}
	}
	var err error
	if f.OneTimeKeys, err = checkOneTimeKeys("one_time_keys", req.OneTimeKeys, c, pub); err != nil {
		return err
	}
	if f.FallbackKeys, err = checkOneTimeKeys("fallback_keys", req.FallbackKeys, c, pub); err != nil {
		return err
	}
	algs := map[string]bool{}
	for full := range f.FallbackKeys {
		alg, _, _ := strings.Cut(full, ":")
		if algs[alg] {
			return invalidParam("fallback_keys may hold one key per algorithm; %s has several", alg)
		}
		algs[alg] = true
	}
	// The common refusal, answered without a log entry; the fold decides
	// again in log order (two racing uploads).
	for _, full := range slices.Sorted(maps.Keys(f.OneTimeKeys)) {
		sum, ok, err := v.OneTimeKey(c.UserID, c.DeviceID, full)
		if err != nil {
			return err
		}
		if ok && sum != e2ee.Sum(f.OneTimeKeys[full]) {
			return invalidParam("One-time key %s already exists with a different value", full)
		}
	}
	if len(f.DeviceKeys) > 0 || len(f.OneTimeKeys) > 0 || len(f.FallbackKeys) > 0 {
		changedKeys := false
		if len(f.DeviceKeys) > 0 {
			stored, err := v.DeviceKeys(c.UserID, c.DeviceID)
			if err != nil {
				return err
			}
			changedKeys = stored == nil || !bytes.Equal(stored.Keys, f.DeviceKeys)
		}
		verdict, err := s.commitFact(r.Context(), facts.MustEncode(englog.KindKeysUploaded, f))
		if err != nil {
			return err
		}
		if err := verdictError(verdict); err != nil {
			return err
		}
		if changedKeys {
			s.AnnounceDevices(r.Context(), c.UserID, []string{c.DeviceID}, false)
		}
	}
	counts, err := s.view().OneTimeKeyCounts(c.UserID, c.DeviceID)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]any{"one_time_key_counts": counts})
	return nil
}

func (s *Service) query(w http.ResponseWriter, r *http.Request, c Caller) error {
	var req struct {
		DeviceKeys map[string][]string `json:"device_keys"`
		Timeout    *int64              `json:"timeout"`
	}
	if err := s.d.ReadJSON(r, &req); err != nil {
		return err
	}
	if req.DeviceKeys == nil {
		return missingParam("device_keys is required")
	}
	if len(req.DeviceKeys) > maxQueryUsers {
		return errorf(http.StatusRequestEntityTooLarge, "M_TOO_LARGE", "At most %d users can be queried at once", maxQueryUsers)
	}
	resp := map[string]any{}
	devices := map[string]map[string]json.RawMessage{}
	master, selfSigning, userSigning := map[string]json.RawMessage{}, map[string]json.RawMessage{}, map[string]json.RawMessage{}
	remote := map[string]map[string][]string{}
	for _, user := range slices.Sorted(maps.Keys(req.DeviceKeys)) {
		server := serverOf(user)
		if server == "" {
			continue // not a user ID: no such user, no failure
		}
		if server != s.d.ServerName {
			if ok, err := s.remoteFromCopy(user, req.DeviceKeys[user], c.UserID, devices, master, selfSigning); err != nil {
				return err
			} else if ok {
				continue
			}
			if remote[server] == nil {
				remote[server] = map[string][]string{}
			}
			remote[server][user] = req.DeviceKeys[user]
			continue
		}
		devs, err := s.localDeviceKeys(user, req.DeviceKeys[user], c.UserID)
		if err != nil {
			return err
		}
		devices[user] = devs
		cs, err := s.view().QueryCrossSigning(user, visibleTo(user, c.UserID))
		if err != nil {
			return err
		}
		if cs.Master != nil {
			master[user] = cs.Master
		}
		if cs.SelfSigning != nil {
			selfSigning[user] = cs.SelfSigning
		}
		if cs.UserSigning != nil && user == c.UserID {
			userSigning[user] = cs.UserSigning
		}
	}
	failures, err := s.queryRemote(r.Context(), c.UserID, remote, timeoutOf(req.Timeout), devices, master, selfSigning)
	if err != nil {
		return err
	}
	resp["device_keys"] = devices
	resp["failures"] = failures
	resp["master_keys"] = master
	resp["self_signing_keys"] = selfSigning
	resp["user_signing_keys"] = userSigning
	writeJSON(w, http.StatusOK, resp)
	return nil
}

// localDeviceKeys returns the identity keys of a local user's devices
// (all of them when wanted is empty) as requester may see them.
func (s *Service) localDeviceKeys(user string, wanted []string, requester string) (map[string]json.RawMessage, error) {
	av := s.d.Accounts()
	return s.view().QueryDevices(user, wanted, visibleTo(user, requester), func(dev string) (string, error) {
		d, err := av.Device(user, dev)
		if err != nil || d == nil {
			return "", err
		}
		return d.DisplayName, nil
	})
}

// visibleTo: the signatures the owner added (cross-signing their own
// devices and keys) and those of the requester (their user-signing key
// on the owner's master key).
func visibleTo(owner, requester string) e2ee.Visible {
	return func(signer string) bool { return signer == owner || signer == requester }
}

func (s *Service) claim(w http.ResponseWriter, r *http.Request, c Caller) error {
	var req struct {
		OneTimeKeys map[string]map[string]string `json:"one_time_keys"`
		Timeout     *int64                       `json:"timeout"`
	}
	if err := s.d.ReadJSON(r, &req); err != nil {
		return err
	}
	if req.OneTimeKeys == nil {
		return missingParam("one_time_keys is required")
	}
	n := 0
	for _, devs := range req.OneTimeKeys {
		n += len(devs)
	}
	if n > maxClaimDevices {
		return errorf(http.StatusRequestEntityTooLarge, "M_TOO_LARGE", "At most %d keys can be claimed at once; this request asks for %d", maxClaimDevices, n)
	}
	f := facts.KeysClaimed{Claimer: c.UserID, Claims: map[string]map[string]string{}}
	remote := map[string]map[string]map[string]string{}
	for user, devs := range req.OneTimeKeys {
		server := serverOf(user)
		if server == "" || len(devs) == 0 {
			continue
		}
		if server != s.d.ServerName {
			if remote[server] == nil {
				remote[server] = map[string]map[string]string{}
			}
			remote[server][user] = devs
			continue
		}
		for dev, alg := range devs {
			if alg == "" {
				return invalidParam("The algorithm for %s device %s is empty", user, dev)
			}
		}
		f.Claims[user] = devs
	}
	claimed := map[string]map[string]map[string]json.RawMessage{}
	if len(f.Claims) > 0 {
		verdict, err := s.commitFact(r.Context(), facts.MustEncode(englog.KindKeysClaimed, f))
		if err != nil {
			return err
		}
		if verdict.Claimed != nil {
			claimed = verdict.Claimed
		}
	}
	failures := s.claimRemote(r.Context(), remote, timeoutOf(req.Timeout), claimed)
	writeJSON(w, http.StatusOK, map[string]any{"one_time_keys": claimed, "failures": failures})
	return nil
}

func (s *Service) changes(w http.ResponseWriter, r *http.Request, c Caller) error {
	q := r.URL.Query()
	if q.Get("from") == "" {
		return missingParam("from is required")
	}
	from, err := s.d.ParseToken(q.Get("from"))
	if err != nil {
		return err
	}
	to := uint64(1) << 62 // no upper bound
	if t := q.Get("to"); t != "" {
		if to, err = s.d.ParseToken(t); err != nil {
			return err
		}
	}
	changed, left, err := s.DeviceLists(c.UserID, from, to, nil)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]any{"changed": changed, "left": left})
	return nil
}

// queryRemote asks each server for its users' keys and merges what it
// says about its own users (never about others'), with the signatures
// requester made of their master keys.
func (s *Service) queryRemote(ctx context.Context, requester string, byServer map[string]map[string][]string, timeout time.Duration,
	devices map[string]map[string]json.RawMessage, master, selfSigning map[string]json.RawMessage) (map[string]any, error) {
	if len(byServer) == 0 {
		return map[string]any{}, nil
	}
	if s.d.Remote == nil {
		return noFederation(byServer), nil
	}
	answers, failures := askServers(ctx, byServer, timeout, s.d.Remote.QueryKeys)
	for server, raw := range answers {
		var a struct {
			DeviceKeys      map[string]map[string]json.RawMessage `json:"device_keys"`
			MasterKeys      map[string]json.RawMessage            `json:"master_keys"`
			SelfSigningKeys map[string]json.RawMessage            `json:"self_signing_keys"`
		}
		if err := json.Unmarshal(raw, &a); err != nil {
			failures[server] = failure(fmt.Errorf("%s answered user/keys/query with something else: %v", server, err))
			continue
		}
		for user := range byServer[server] {
			if d := a.DeviceKeys[user]; d != nil {
				devices[user] = d
			}
			if k := a.MasterKeys[user]; k != nil {
				signed, err := s.view().WithRemoteSignatures(requester, user, k)
				if err != nil {
					return nil, err
				}
				master[user] = signed
			}
			if k := a.SelfSigningKeys[user]; k != nil {
				selfSigning[user] = k
			}
		}
	}
	return failures, nil
}

// claimRemote claims one-time keys of remote users from their servers.
func (s *Service) claimRemote(ctx context.Context, byServer map[string]map[string]map[string]string, timeout time.Duration,
	claimed map[string]map[string]map[string]json.RawMessage) map[string]any {
	if len(byServer) == 0 {
		return map[string]any{}
	}
	if s.d.Remote == nil {
		return noFederation(byServer)
	}
	answers, failures := askServers(ctx, byServer, timeout, s.d.Remote.ClaimKeys)
	for server, raw := range answers {
		var a struct {
			OneTimeKeys map[string]map[string]map[string]json.RawMessage `json:"one_time_keys"`
		}
		if err := json.Unmarshal(raw, &a); err != nil {
			failures[server] = failure(fmt.Errorf("%s answered user/keys/claim with something else: %v", server, err))
			continue
		}
		for user := range byServer[server] {
			if k := a.OneTimeKeys[user]; k != nil {
				claimed[user] = k
			}
		}
	}
	return failures
}

func noFederation[Q any](byServer map[string]Q) map[string]any {
	out := map[string]any{}
	for server := range byServer {
		out[server] = map[string]any{"status": 503, "message": "This server does not federate"}
	}
	return out
}
