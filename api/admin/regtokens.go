package admin

import (
	"crypto/rand"
	"encoding/json"
	"net/http"
	"strings"

	"github.com/engram-hs/engram/internal/mxerr"
	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/projections/accounts"
)

// Registration tokens (Synapse's admin API; the spec's
// m.login.registration_token stage spends them).

func (a *API) regTokenEndpoints() []endpoint {
	return []endpoint{
		{"GET", "/v1/registration_tokens", a.listRegTokens},
		{"POST", "/v1/registration_tokens/new", a.newRegToken},
		{"GET", "/v1/registration_tokens/{token}", a.getRegToken},
		{"PUT", "/v1/registration_tokens/{token}", a.updateRegToken},
		{"DELETE", "/v1/registration_tokens/{token}", a.deleteRegToken},
	}
}

func regTokenJSON(t *accounts.RegToken) map[string]any {
	out := map[string]any{"token": t.Token, "uses_allowed": t.UsesAllowed, "pending": 0, "completed": t.Completed, "expiry_time": nil}
	if t.ExpiryTime != 0 {
		out["expiry_time"] = t.ExpiryTime
	}
	return out
}

// regTokenValid: not expired and not used up (Synapse's "valid").
func (a *API) regTokenValid(t *accounts.RegToken) bool {
	return (t.ExpiryTime == 0 || t.ExpiryTime > a.now().UnixMilli()) && (t.UsesAllowed == nil || t.Completed < *t.UsesAllowed)
}

func (a *API) listRegTokens(w http.ResponseWriter, r *http.Request, c Caller) error {
	valid, err := queryBool(r, "valid")
	if err != nil {
		return err
	}
	all, err := a.host.Accounts().RegistrationTokens()
	if err != nil {
		return err
	}
	out := []map[string]any{}
	for i := range all {
		if valid != nil && a.regTokenValid(&all[i]) != *valid {
			continue
		}
		out = append(out, regTokenJSON(&all[i]))
	}
	writeJSON(w, http.StatusOK, map[string]any{"registration_tokens": out})
	return nil
}

func (a *API) regToken(r *http.Request) (*accounts.RegToken, error) {
	t, err := a.host.Accounts().RegistrationToken(r.PathValue("token"))
	if err != nil {
		return nil, err
	}
	if t == nil {
		return nil, mxerr.NotFound("No such registration token: %s", r.PathValue("token"))
	}
	return t, nil
}

func (a *API) getRegToken(w http.ResponseWriter, r *http.Request, c Caller) error {
	t, err := a.regToken(r)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, regTokenJSON(t))
	return nil
}

// validToken: Synapse allows up to 64 of A-Z a-z 0-9 . _ ~ -.
func validToken(t string) bool {
	if t == "" || len(t) > 64 {
		return false
	}
	for _, c := range t {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune("._~-", c)) {
			return false
		}
	}
	return true
}

const tokenAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._~-"

func (a *API) newRegToken(w http.ResponseWriter, r *http.Request, c Caller) error {
	var req struct {
		Token       *string `json:"token"`
		UsesAllowed *int    `json:"uses_allowed"`
		ExpiryTime  *int64  `json:"expiry_time"`
		Length      *int    `json:"length"`
	}
	if err := readJSON(r, &req); err != nil {
		return err
	}
	tok := ""
	if req.Token != nil {
		if !validToken(*req.Token) {
			return mxerr.InvalidParam("token must consist only of characters matched by the regex [A-Za-z0-9._~-] and be at most 64 characters long")
		}
		tok = *req.Token
	} else {
		n := 16
		if req.Length != nil {
			if *req.Length <= 0 || *req.Length > 64 {
				return mxerr.InvalidParam("length must be an integer between 1 and 64")
			}
			n = *req.Length
		}
		raw := make([]byte, n)
		_, _ = rand.Read(raw)
		b := make([]byte, n)
		for i := range b {
			b[i] = tokenAlphabet[int(raw[i])%len(tokenAlphabet)]
		}
		tok = string(b)
	}
	if req.UsesAllowed != nil && *req.UsesAllowed < 0 {
		return mxerr.InvalidParam("uses_allowed must be a non-negative integer or null")
	}
	var expiry int64
	if req.ExpiryTime != nil {
		if *req.ExpiryTime < a.now().UnixMilli() {
			return mxerr.InvalidParam("expiry_time must not be in the past")
		}
		expiry = *req.ExpiryTime
	}
	if t, err := a.host.Accounts().RegistrationToken(tok); err != nil {
		return err
	} else if t != nil {
		return mxerr.InvalidParam("Token already exists")
	}
	f := facts.RegistrationToken{Op: facts.RegistrationTokenCreate, Token: tok, UsesAllowed: req.UsesAllowed, ExpiryTime: expiry}
	if err := a.commit(r.Context(), c, "new_registration_token", tok, map[string]any{"uses_allowed": req.UsesAllowed, "expiry_time": req.ExpiryTime},
		facts.MustEncode(englog.KindRegistrationToken, f)); err != nil {
		return err
	}
	t, err := a.host.Accounts().RegistrationToken(tok)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, regTokenJSON(t))
	return nil
}

func (a *API) updateRegToken(w http.ResponseWriter, r *http.Request, c Caller) error {
	var req map[string]json.RawMessage
	if err := readJSON(r, &req); err != nil {
		return err
	}
	if _, err := a.regToken(r); err != nil {
		return err
	}
	f := facts.RegistrationToken{Op: facts.RegistrationTokenUpdate, Token: r.PathValue("token")}
	changes := map[string]any{}
	if raw, ok := req["uses_allowed"]; ok {
		f.SetUsesAllowed = true
		if string(raw) != "null" {
			var n int
			if err := json.Unmarshal(raw, &n); err != nil || n < 0 {
				return mxerr.InvalidParam("uses_allowed must be a non-negative integer or null")
			}
			f.UsesAllowed = &n
		}
		changes["uses_allowed"] = f.UsesAllowed
	}
	if raw, ok := req["expiry_time"]; ok {
		f.SetExpiryTime = true
		if string(raw) != "null" {
			if err := json.Unmarshal(raw, &f.ExpiryTime); err != nil || f.ExpiryTime < a.now().UnixMilli() {
				return mxerr.InvalidParam("expiry_time must be an integer not in the past, or null")
			}
		}
		changes["expiry_time"] = f.ExpiryTime
	}
	if len(changes) > 0 {
		if err := a.commit(r.Context(), c, "update_registration_token", f.Token, changes, facts.MustEncode(englog.KindRegistrationToken, f)); err != nil {
			return err
		}
	}
	t, err := a.regToken(r)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, regTokenJSON(t))
	return nil
}

func (a *API) deleteRegToken(w http.ResponseWriter, r *http.Request, c Caller) error {
	t, err := a.regToken(r)
	if err != nil {
		return err
	}
	if err := a.commit(r.Context(), c, "delete_registration_token", t.Token, nil,
		facts.MustEncode(englog.KindRegistrationToken, facts.RegistrationToken{Op: facts.RegistrationTokenDelete, Token: t.Token})); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, struct{}{})
	return nil
}
