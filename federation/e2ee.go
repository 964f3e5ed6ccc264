package federation

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"slices"

	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/projections/accounts"
	"github.com/engram-hs/engram/projections/e2ee"
)

// The end-to-end encryption endpoints other servers call (server-server
// API, "End-to-End Encryption"): our users' devices and keys, and claims
// of their one-time keys. They read the e2ee projection api registered;
// a claim is a KeysClaimed fact like a local one, so the fold hands each
// one-time key out once whoever asked.

// maxFederationClaim bounds one user/keys/claim, as /keys/claim is.
const maxFederationClaim = 5000

func (s *Server) e2eeRoutes() {
	s.HandleAuthed("GET /_matrix/federation/v1/user/devices/{userId}", s.userDevices)
	s.HandleAuthed("POST /_matrix/federation/v1/user/keys/query", s.userKeysQuery)
	s.HandleAuthed("POST /_matrix/federation/v1/user/keys/claim", s.userKeysClaim)
}

func (s *Server) e2eeView() (e2ee.View, error) {
	if s.deps.E2EE == nil || s.deps.Accounts == nil {
		return e2ee.View{}, Errorf(http.StatusNotImplemented, "M_UNRECOGNIZED", "End-to-end encryption keys are not served here")
	}
	return e2ee.NewView(s.deps.E2EE.Reader()), nil
}

// visibleTo shows a remote server the signatures the owner made and
// those its own users made.
func visibleTo(owner, origin string) e2ee.Visible {
	return func(signer string) bool { return signer == owner || domainOf(signer) == origin }
}

// displayNames gives device display names, or none when they are not
// shown to other servers.
func (s *Server) displayNames(av accounts.View, user string) func(string) (string, error) {
	return func(dev string) (string, error) {
		if !s.cfg.DeviceNamesOverFederation {
			return "", nil
		}
		d, err := av.Device(user, dev)
		if err != nil || d == nil {
			return "", err
		}
		return d.DisplayName, nil
	}
}

func (s *Server) userDevices(w http.ResponseWriter, r *http.Request, origin string) error {
	user := r.PathValue("userId")
	if domainOf(user) != s.cfg.ServerName {
		return errInvalidParam("%s is not a user of this server", user)
	}
	// The answer's stream_id must cover every update already sent: the
	// asker fetches when an update does not follow its copy, and an
	// answer older than that update (the projection not yet at the queued
	// entry) would leave its copy stale. So the view first catches up
	// with the log.
	if s.deps.E2EE != nil && s.deps.Log != nil {
		if err := s.deps.E2EE.WaitApplied(r.Context(), s.deps.Log.LastOffset()); err != nil {
			return err
		}
	}
	v, err := s.e2eeView()
	if err != nil {
		return err
	}
	av := accounts.NewView(s.deps.Accounts.Reader())
	devs, err := v.QueryDevices(user, nil, visibleTo(user, origin), s.displayNames(av, user))
	if err != nil {
		return err
	}
	streamID, err := v.StreamSent(user)
	if err != nil {
		return err
	}
	out := map[string]any{"user_id": user, "stream_id": streamID}
	list := []map[string]any{}
	for _, dev := range slices.Sorted(maps.Keys(devs)) {
		d := map[string]any{"device_id": dev, "keys": devs[dev]}
		if name, err := s.displayNames(av, user)(dev); err != nil {
			return err
		} else if name != "" {
			d["device_display_name"] = name
		}
		list = append(list, d)
	}
	out["devices"] = list
	cs, err := v.QueryCrossSigning(user, visibleTo(user, origin))
	if err != nil {
		return err
	}
	if cs.Master != nil {
		out["master_key"] = cs.Master
	}
	if cs.SelfSigning != nil {
		out["self_signing_key"] = cs.SelfSigning
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func readBody(r *http.Request, v any) error {
	if err := json.NewDecoder(r.Body).Decode(v); err != nil {
		return Errorf(http.StatusBadRequest, "M_BAD_JSON", "The request body is not the expected JSON object: %v", err)
	}
	return nil
}

func (s *Server) userKeysQuery(w http.ResponseWriter, r *http.Request, origin string) error {
	var req struct {
		DeviceKeys map[string][]string `json:"device_keys"`
	}
	if err := readBody(r, &req); err != nil {
		return err
	}
	if req.DeviceKeys == nil {
		return Errorf(http.StatusBadRequest, "M_MISSING_PARAM", "device_keys is required")
	}
	v, err := s.e2eeView()
	if err != nil {
		return err
	}
	av := accounts.NewView(s.deps.Accounts.Reader())
	devices := map[string]map[string]json.RawMessage{}
	master, selfSigning := map[string]json.RawMessage{}, map[string]json.RawMessage{}
	for _, user := range slices.Sorted(maps.Keys(req.DeviceKeys)) {
		if domainOf(user) != s.cfg.ServerName {
			continue // not ours: unknown here, so absent (spec)
		}
		devs, err := v.QueryDevices(user, req.DeviceKeys[user], visibleTo(user, origin), s.displayNames(av, user))
		if err != nil {
			return err
		}
		devices[user] = devs
		cs, err := v.QueryCrossSigning(user, visibleTo(user, origin))
		if err != nil {
			return err
		}
		if cs.Master != nil {
			master[user] = cs.Master
		}
		if cs.SelfSigning != nil {
			selfSigning[user] = cs.SelfSigning
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{"device_keys": devices, "master_keys": master, "self_signing_keys": selfSigning})
	return nil
}

func (s *Server) userKeysClaim(w http.ResponseWriter, r *http.Request, origin string) error {
	var req struct {
		OneTimeKeys map[string]map[string]string `json:"one_time_keys"`
	}
	if err := readBody(r, &req); err != nil {
		return err
	}
	if req.OneTimeKeys == nil {
		return Errorf(http.StatusBadRequest, "M_MISSING_PARAM", "one_time_keys is required")
	}
	if _, err := s.e2eeView(); err != nil {
		return err
	}
	f := facts.KeysClaimed{Claimer: origin, Claims: map[string]map[string]string{}}
	n := 0
	for user, devs := range req.OneTimeKeys {
		if domainOf(user) == s.cfg.ServerName && len(devs) > 0 {
			f.Claims[user] = devs
			n += len(devs)
		}
	}
	if n > maxFederationClaim {
		return Errorf(http.StatusRequestEntityTooLarge, "M_TOO_LARGE", "At most %d keys can be claimed at once; this request asks for %d", maxFederationClaim, n)
	}
	claimed := map[string]map[string]map[string]json.RawMessage{}
	if n > 0 {
		offs, err := s.deps.Log.Append(r.Context(), facts.MustEncode(englog.KindKeysClaimed, f))
		if err != nil {
			if errors.Is(err, englog.ErrNotLeader) {
				return Errorf(http.StatusServiceUnavailable, "M_UNKNOWN", "This server cannot accept writes right now (no cluster leader); retry shortly")
			}
			return err
		}
		if err := s.deps.E2EE.WaitApplied(r.Context(), offs[0]); err != nil {
			return err
		}
		vd, err := e2ee.NewView(s.deps.E2EE.Reader()).Verdict(offs[0])
		if err != nil {
			return err
		}
		if vd == nil {
			return fmt.Errorf("e2ee: no verdict for the claim at offset %d", offs[0])
		}
		if vd.Claimed != nil {
			claimed = vd.Claimed
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{"one_time_keys": claimed})
	return nil
}
