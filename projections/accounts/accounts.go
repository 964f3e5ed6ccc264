// Package accounts folds accounts, devices, access tokens, profiles and
// registration tokens out of the log: "who may act, with which token".
package accounts

import (
	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/projections"
)

// Key prefixes. Each record kind has its own one-byte prefix followed by
// 0x00-separated parts, so range scans over one user's devices or tokens
// are a single iterator.
const (
	pAccount      = 'u' // u user -> Account
	pToken        = 't' // t tokenhash -> Session
	pRefresh      = 'r' // r refreshhash -> Session (of the refresh token)
	pDevice       = 'd' // d user 0 device -> Device
	pDevTok       = 'k' // k user 0 device 0 hash -> "t" or "r"
	pProfile      = 'p' // p user -> Profile
	pRegToken     = 'g' // g token -> RegToken
	pRegistration = 'R' // R registrationID -> userID (registrations that won)
	pRateLimit    = 'o' // o user -> RateLimit (an admin's override_ratelimit)
	pErased       = 'e' // e user -> nil: deactivated with erase, not reactivated since
	sep           = 0
	tokAccess     = "t"
	tokRefresh    = "r"
)

// Account is one user.
type Account struct {
	UserID       string `json:"user_id"`
	PasswordHash string `json:"password_hash,omitempty"`
	Admin        bool   `json:"admin,omitempty"`
	Guest        bool   `json:"guest,omitempty"`
	Deactivated  bool   `json:"deactivated,omitempty"`
	// Moderation by a server admin (facts.UserModerated).
	Locked       bool  `json:"locked,omitempty"`
	Suspended    bool  `json:"suspended,omitempty"`
	ShadowBanned bool  `json:"shadow_banned,omitempty"`
	CreatedTS    int64 `json:"created_ts"`
	// Registration is the ID of the registration that created the account
	// (facts.AccountRegistered.Registration): the first in the log.
	Registration string `json:"registration,omitempty"`
	// Appservice is the id of the application service that registered
	// the user (m.login.application_service); empty for everyone else.
	Appservice string `json:"appservice_id,omitempty"`
}

// Session is what a token (access or refresh) stands for.
type Session struct {
	UserID    string `json:"user_id"`
	DeviceID  string `json:"device_id"`
	ExpiresAt int64  `json:"expires_at,omitempty"`
	// Pair is the hash of the other token of the pair (the refresh token of
	// an access token, and vice versa).
	Pair string `json:"pair,omitempty"`
}

// Device is one device of a user.
type Device struct {
	DeviceID    string `json:"device_id"`
	DisplayName string `json:"display_name,omitempty"`
	LastSeenIP  string `json:"last_seen_ip,omitempty"`
	LastSeenTS  int64  `json:"last_seen_ts,omitempty"`
}

// Profile is a user's global profile.
type Profile struct {
	DisplayName *string `json:"displayname,omitempty"`
	AvatarURL   *string `json:"avatar_url,omitempty"`
}

// RegToken is a registration token's state.
type RegToken struct {
	Token       string `json:"token"`
	UsesAllowed *int   `json:"uses_allowed"`
	Completed   int    `json:"completed"`
	ExpiryTime  int64  `json:"expiry_time,omitempty"`
}

// RateLimit is a user's own message rate limit, set by an admin; zero
// and zero mean not limited.
type RateLimit struct {
	MessagesPerSecond float64 `json:"messages_per_second"`
	BurstCount        int     `json:"burst_count"`
}

// Projection is the accounts read model.
type Projection struct{ cache *Cache }

// New returns the projection to register on the engine.
func New() *Projection { return &Projection{cache: newCache()} }

func (*Projection) Name() string { return "accounts" }

// Version 3: a login naming an existing device revokes its old tokens,
// and a refresh token is spent by its first use in the log. Version 4:
// the e keys (erased users).
func (*Projection) Version() int { return 4 }

// ReadsVersion: versions 2 and 3 have the same records (2 only kept
// tokens that 3 refuses; 3 lacks the erased users, whose messages are
// then shown as before until 4 serves), so they serve while version 4 is
// rebuilt.
func (*Projection) ReadsVersion(stored int) bool { return stored == 2 || stored == 3 }

// Apply folds a batch of entries.
func (p *Projection) Apply(w projections.Writer, entries []englog.Entry) error {
	for _, e := range entries {
		if err := p.apply(w, e); err != nil {
			return err
		}
	}
	return nil
}

// apply decodes an entry and folds it with the function of its kind;
// kinds of other projections change nothing.
func (p *Projection) apply(w projections.Writer, e englog.Entry) error {
	switch e.Kind {
	case englog.KindAccountRegistered:
		var f facts.AccountRegistered
		if err := facts.Decode(e, &f); err != nil {
			return err
		}
		return applyAccountRegistered(w, e, f)
	case englog.KindPasswordChanged:
		var f facts.PasswordChanged
		if err := facts.Decode(e, &f); err != nil {
			return err
		}
		return applyPasswordChanged(w, f)
	case englog.KindAccountDeactivated:
		var f facts.AccountDeactivated
		if err := facts.Decode(e, &f); err != nil {
			return err
		}
		return applyAccountDeactivated(w, f)
	case englog.KindUserAdminSet:
		var f facts.UserAdminSet
		if err := facts.Decode(e, &f); err != nil {
			return err
		}
		return applyUserAdminSet(w, f)
	case englog.KindUserModerated:
		var f facts.UserModerated
		if err := facts.Decode(e, &f); err != nil {
			return err
		}
		return applyUserModerated(w, f)
	case englog.KindAccountReactivated:
		var f facts.AccountReactivated
		if err := facts.Decode(e, &f); err != nil {
			return err
		}
		return applyAccountReactivated(w, f)
	case englog.KindRatelimitOverride:
		var f facts.RatelimitOverride
		if err := facts.Decode(e, &f); err != nil {
			return err
		}
		return applyRatelimitOverride(w, f)
	case englog.KindProfileSet:
		var f facts.ProfileSet
		if err := facts.Decode(e, &f); err != nil {
			return err
		}
		return applyProfileSet(w, f)
	case englog.KindDeviceAdded:
		var f facts.DeviceAdded
		if err := facts.Decode(e, &f); err != nil {
			return err
		}
		return applyDeviceAdded(w, e, f)
	case englog.KindDeviceUpdated:
		var f facts.DeviceUpdated
		if err := facts.Decode(e, &f); err != nil {
			return err
		}
		return applyDeviceUpdated(w, f)
	case englog.KindDeviceRemoved:
		var f facts.DeviceRemoved
		if err := facts.Decode(e, &f); err != nil {
			return err
		}
		return applyDeviceRemoved(w, f)
	case englog.KindAccessTokenIssued:
		var f facts.AccessTokenIssued
		if err := facts.Decode(e, &f); err != nil {
			return err
		}
		return applyAccessTokenIssued(w, f)
	case englog.KindAccessTokenRevoked:
		var f facts.AccessTokenRevoked
		if err := facts.Decode(e, &f); err != nil {
			return err
		}
		return applyAccessTokenRevoked(w, f)
	case englog.KindRegistrationToken:
		var f facts.RegistrationToken
		if err := facts.Decode(e, &f); err != nil {
			return err
		}
		return applyRegistrationToken(w, f)
	}
	return nil
}

func applyAccountRegistered(w projections.Writer, e englog.Entry, f facts.AccountRegistered) error {
	if old, err := projections.GetJSON[Account](w, projections.Key(pAccount, f.UserID)); err != nil || old != nil {
		// The first registration wins; a later one is refused, and so
		// are the device, tokens and token use of its batch (they
		// carry its Registration, which the account does not).
		return err
	}
	if f.RegistrationToken != "" {
		if ok, err := useRegistrationToken(w, f.RegistrationToken, e.Time); err != nil || !ok {
			return err // refused, with its device and tokens, as above
		}
	}
	if err := projections.PutJSON(w, projections.Key(pAccount, f.UserID), Account{UserID: f.UserID, PasswordHash: f.PasswordHash, Admin: f.Admin, Guest: f.Guest, CreatedTS: e.Time, Registration: f.Registration, Appservice: f.Appservice}); err != nil {
		return err
	}
	if f.Registration != "" {
		if err := w.Set(projections.Key(pRegistration, f.Registration), []byte(f.UserID)); err != nil {
			return err
		}
	}
	if f.DisplayName != "" {
		dn := f.DisplayName
		return projections.PutJSON(w, projections.Key(pProfile, f.UserID), Profile{DisplayName: &dn})
	}
	return nil
}

func applyPasswordChanged(w projections.Writer, f facts.PasswordChanged) error {
	a, err := projections.GetJSON[Account](w, projections.Key(pAccount, f.UserID))
	if err != nil || a == nil {
		return err
	}
	a.PasswordHash = f.PasswordHash
	if err := projections.PutJSON(w, projections.Key(pAccount, f.UserID), a); err != nil {
		return err
	}
	if f.LogoutDevices {
		devs, err := listDevices(w, f.UserID)
		if err != nil {
			return err
		}
		for _, d := range devs {
			if d.DeviceID != f.KeepDeviceID {
				if err := removeDevice(w, f.UserID, d.DeviceID); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

func applyAccountDeactivated(w projections.Writer, f facts.AccountDeactivated) error {
	a, err := projections.GetJSON[Account](w, projections.Key(pAccount, f.UserID))
	if err != nil || a == nil {
		return err
	}
	a.Deactivated = true
	a.PasswordHash = ""
	if err := projections.PutJSON(w, projections.Key(pAccount, f.UserID), a); err != nil {
		return err
	}
	devs, err := listDevices(w, f.UserID)
	if err != nil {
		return err
	}
	for _, d := range devs {
		if err := removeDevice(w, f.UserID, d.DeviceID); err != nil {
			return err
		}
	}
	if f.Erase {
		if err := w.Set(projections.Key(pErased, f.UserID), nil); err != nil {
			return err
		}
		return w.Delete(projections.Key(pProfile, f.UserID))
	}
	return nil
}

func applyUserAdminSet(w projections.Writer, f facts.UserAdminSet) error {
	return updateAccount(w, f.UserID, func(a *Account) { a.Admin = f.Admin })
}

func applyUserModerated(w projections.Writer, f facts.UserModerated) error {
	return updateAccount(w, f.UserID, func(a *Account) {
		if f.Locked != nil {
			a.Locked = *f.Locked
		}
		if f.Suspended != nil {
			a.Suspended = *f.Suspended
		}
		if f.ShadowBanned != nil {
			a.ShadowBanned = *f.ShadowBanned
		}
	})
}

func applyAccountReactivated(w projections.Writer, f facts.AccountReactivated) error {
	// A reactivated user is no longer erased: what they send from now on
	// is theirs to show, and what they sent before is shown again (as
	// Synapse does: reactivation clears its erased mark).
	if err := w.Delete(projections.Key(pErased, f.UserID)); err != nil {
		return err
	}
	return updateAccount(w, f.UserID, func(a *Account) { a.Deactivated, a.PasswordHash = false, f.PasswordHash })
}

func applyRatelimitOverride(w projections.Writer, f facts.RatelimitOverride) error {
	if f.Delete {
		return w.Delete(projections.Key(pRateLimit, f.UserID))
	}
	return projections.PutJSON(w, projections.Key(pRateLimit, f.UserID), RateLimit{MessagesPerSecond: f.MessagesPerSecond, BurstCount: f.BurstCount})
}

func applyProfileSet(w projections.Writer, f facts.ProfileSet) error {
	pr, err := projections.GetJSON[Profile](w, projections.Key(pProfile, f.UserID))
	if err != nil {
		return err
	}
	if pr == nil {
		pr = &Profile{}
	}
	if f.DisplayName != nil {
		pr.DisplayName = nilIfEmpty(*f.DisplayName)
	}
	if f.AvatarURL != nil {
		pr.AvatarURL = nilIfEmpty(*f.AvatarURL)
	}
	return projections.PutJSON(w, projections.Key(pProfile, f.UserID), pr)
}

func applyDeviceAdded(w projections.Writer, e englog.Entry, f facts.DeviceAdded) error {
	if refused, err := refusedRegistration(w, f.UserID, f.Registration); err != nil || refused {
		return err
	}
	d, err := projections.GetJSON[Device](w, projections.Key(pDevice, f.UserID, f.DeviceID))
	if err != nil {
		return err
	}
	if d == nil {
		d = &Device{DeviceID: f.DeviceID, DisplayName: f.DisplayName}
	} else {
		// A login naming an existing device takes it over: the spec
		// has the server invalidate the tokens it had, so a token
		// stolen from the device dies with the fresh login.
		if err := removeTokens(w, f.UserID, f.DeviceID); err != nil {
			return err
		}
		if f.DisplayName != "" && d.DisplayName == "" {
			d.DisplayName = f.DisplayName
		}
	}
	d.LastSeenIP, d.LastSeenTS = f.IP, e.Time
	return projections.PutJSON(w, projections.Key(pDevice, f.UserID, f.DeviceID), d)
}

func applyDeviceUpdated(w projections.Writer, f facts.DeviceUpdated) error {
	d, err := projections.GetJSON[Device](w, projections.Key(pDevice, f.UserID, f.DeviceID))
	if err != nil || d == nil {
		return err
	}
	if f.DisplayName != nil {
		d.DisplayName = *f.DisplayName
	}
	return projections.PutJSON(w, projections.Key(pDevice, f.UserID, f.DeviceID), d)
}

func applyDeviceRemoved(w projections.Writer, f facts.DeviceRemoved) error {
	for _, id := range f.DeviceIDs {
		if err := removeDevice(w, f.UserID, id); err != nil {
			return err
		}
	}
	return nil
}

func applyAccessTokenIssued(w projections.Writer, f facts.AccessTokenIssued) error {
	if refused, err := refusedRegistration(w, f.UserID, f.Registration); err != nil || refused {
		return err
	}
	if f.Replaces != "" {
		old, err := projections.GetJSON[Session](w, projections.Key(pRefresh, f.Replaces))
		if err != nil {
			return err
		}
		if old == nil {
			// The refresh token was spent by an earlier entry (a racing
			// or replayed refresh) or revoked: this pair is refused.
			return nil
		}
		if err := deleteToken(w, pRefresh, f.Replaces, old); err != nil {
			return err
		}
		if old.Pair != "" {
			if err := deleteToken(w, pToken, old.Pair, old); err != nil {
				return err
			}
		}
	}
	if err := projections.PutJSON(w, projections.Key(pToken, f.TokenSHA256), Session{UserID: f.UserID, DeviceID: f.DeviceID, ExpiresAt: f.ExpiresAt, Pair: f.RefreshSHA256}); err != nil {
		return err
	}
	if err := w.Set(projections.Key(pDevTok, f.UserID, f.DeviceID, f.TokenSHA256), []byte(tokAccess)); err != nil {
		return err
	}
	if f.RefreshSHA256 != "" {
		if err := projections.PutJSON(w, projections.Key(pRefresh, f.RefreshSHA256), Session{UserID: f.UserID, DeviceID: f.DeviceID, Pair: f.TokenSHA256}); err != nil {
			return err
		}
		return w.Set(projections.Key(pDevTok, f.UserID, f.DeviceID, f.RefreshSHA256), []byte(tokRefresh))
	}
	return nil
}

func applyAccessTokenRevoked(w projections.Writer, f facts.AccessTokenRevoked) error {
	s, err := projections.GetJSON[Session](w, projections.Key(pToken, f.TokenSHA256))
	if err != nil || s == nil {
		return err
	}
	return deleteToken(w, pToken, f.TokenSHA256, s)
}

func applyRegistrationToken(w projections.Writer, f facts.RegistrationToken) error {
	k := projections.Key(pRegToken, f.Token)
	switch f.Op {
	case facts.RegistrationTokenCreate:
		return projections.PutJSON(w, k, RegToken{Token: f.Token, UsesAllowed: f.UsesAllowed, ExpiryTime: f.ExpiryTime})
	case facts.RegistrationTokenUse:
		if f.Registration != "" {
			// Counted only when the registration it was used for won.
			if _, won, err := w.Get(projections.Key(pRegistration, f.Registration)); err != nil || !won {
				return err
			}
		}
		t, err := projections.GetJSON[RegToken](w, k)
		if err != nil || t == nil {
			return err
		}
		t.Completed++
		return projections.PutJSON(w, k, t)
	case facts.RegistrationTokenDelete:
		return w.Delete(k)
	case facts.RegistrationTokenUpdate:
		t, err := projections.GetJSON[RegToken](w, k)
		if err != nil || t == nil {
			return err
		}
		if f.SetUsesAllowed {
			t.UsesAllowed = f.UsesAllowed
		}
		if f.SetExpiryTime {
			t.ExpiryTime = f.ExpiryTime
		}
		return projections.PutJSON(w, k, t)
	}
	return nil
}

// useRegistrationToken counts one use of a registration token by a
// registration, or reports false when the token refuses it.
//
// Invariant: a token is used at most uses_allowed times and never after
// its expiry (at the time of the entry). Enforced here, in log order, so
// concurrent registrations decided on different nodes cannot overdraw it;
// the API's check at the UIA stage is a fast path, and it answers from
// the account read back after the append (api commitRegistration).
func useRegistrationToken(w projections.Writer, token string, at int64) (bool, error) {
	k := projections.Key(pRegToken, token)
	t, err := projections.GetJSON[RegToken](w, k)
	if err != nil || t == nil {
		return false, err
	}
	if (t.ExpiryTime != 0 && t.ExpiryTime <= at) || (t.UsesAllowed != nil && t.Completed >= *t.UsesAllowed) {
		return false, nil
	}
	t.Completed++
	return true, projections.PutJSON(w, k, t)
}

// updateAccount changes an existing account; facts about unknown users
// change nothing.
func updateAccount(w projections.Writer, userID string, change func(*Account)) error {
	a, err := projections.GetJSON[Account](w, projections.Key(pAccount, userID))
	if err != nil || a == nil {
		return err
	}
	change(a)
	return projections.PutJSON(w, projections.Key(pAccount, userID), a)
}

// refusedRegistration reports whether a fact that came with registration
// reg belongs to a registration that lost to an earlier one.
func refusedRegistration(r projections.Reader, userID, reg string) (bool, error) {
	if reg == "" {
		return false, nil
	}
	a, err := projections.GetJSON[Account](r, projections.Key(pAccount, userID))
	if err != nil {
		return false, err
	}
	return a == nil || a.Registration != reg, nil
}

func nilIfEmpty(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

// deleteToken removes a token and its device index entry.
func deleteToken(w projections.Writer, prefix byte, hash string, s *Session) error {
	if err := w.Delete(projections.Key(prefix, hash)); err != nil {
		return err
	}
	return w.Delete(projections.Key(pDevTok, s.UserID, s.DeviceID, hash))
}

// removeDevice deletes a device and every token issued to it.
func removeDevice(w projections.Writer, userID, deviceID string) error {
	if err := removeTokens(w, userID, deviceID); err != nil {
		return err
	}
	return w.Delete(projections.Key(pDevice, userID, deviceID))
}

// removeTokens deletes every access and refresh token issued to a device.
func removeTokens(w projections.Writer, userID, deviceID string) error {
	lower := append(projections.Key(pDevTok, userID, deviceID), sep)
	it := w.Iter(lower, projections.PrefixEnd(lower))
	var toks []struct {
		hash string
		kind byte
	}
	for ok := it.First(); ok; ok = it.Next() {
		toks = append(toks, struct {
			hash string
			kind byte
		}{string(it.Key()[len(lower):]), it.Value()[0]})
	}
	if err := it.Close(); err != nil {
		return err
	}
	for _, t := range toks {
		prefix := byte(pToken)
		if t.kind == tokRefresh[0] {
			prefix = pRefresh
		}
		if err := w.Delete(projections.Key(prefix, t.hash)); err != nil {
			return err
		}
	}
	return w.DeleteRange(lower, projections.PrefixEnd(lower))
}

func listDevices(r projections.Reader, userID string) ([]Device, error) {
	return projections.ListJSON[Device](r, append(projections.Key(pDevice, userID), sep), nil)
}

// View answers queries over a Reader (live or snapshot).
type View struct {
	r     projections.Reader
	cache *Cache // nil: every query reads r (Projection.View sets it)
}

// NewView wraps a reader of this projection's keyspace, without the
// cache (snapshots, tools, other packages' occasional reads).
func NewView(r projections.Reader) View { return View{r: r} }

// Account returns the account, or nil when the user does not exist.
func (v View) Account(userID string) (*Account, error) {
	if v.cache != nil {
		return v.cachedAccount(userID)
	}
	return projections.GetJSON[Account](v.r, projections.Key(pAccount, userID))
}

// Session returns the session of an access token hash, or nil.
func (v View) Session(tokenHash string) (*Session, error) {
	if v.cache != nil {
		return v.cachedSession(tokenHash)
	}
	return projections.GetJSON[Session](v.r, projections.Key(pToken, tokenHash))
}

// RefreshSession returns the session of a refresh token hash, or nil.
func (v View) RefreshSession(hash string) (*Session, error) {
	return projections.GetJSON[Session](v.r, projections.Key(pRefresh, hash))
}

// Device returns one device, or nil.
func (v View) Device(userID, deviceID string) (*Device, error) {
	return projections.GetJSON[Device](v.r, projections.Key(pDevice, userID, deviceID))
}

// Devices lists a user's devices ordered by ID.
func (v View) Devices(userID string) ([]Device, error) { return listDevices(v.r, userID) }

// Profile returns a user's profile (empty when never set).
func (v View) Profile(userID string) (Profile, error) {
	p, err := projections.GetJSON[Profile](v.r, projections.Key(pProfile, userID))
	if err != nil || p == nil {
		return Profile{}, err
	}
	return *p, nil
}

// RegistrationToken returns a registration token's state, or nil.
func (v View) RegistrationToken(token string) (*RegToken, error) {
	return projections.GetJSON[RegToken](v.r, projections.Key(pRegToken, token))
}

// Accounts lists every account in user ID order.
func (v View) Accounts() ([]Account, error) {
	return projections.ListJSON[Account](v.r, []byte{pAccount}, nil)
}

// RateLimit returns the user's own rate limit, or nil when none is set.
func (v View) RateLimit(userID string) (*RateLimit, error) {
	if v.cache != nil {
		return v.cachedRateLimit(userID)
	}
	return projections.GetJSON[RateLimit](v.r, projections.Key(pRateLimit, userID))
}

// Erased reports whether the user was deactivated with erase (and not
// reactivated since).
func (v View) Erased(userID string) (bool, error) {
	_, ok, err := v.r.Get(projections.Key(pErased, userID))
	return ok, err
}

// ErasedUsers lists the users deactivated with erase (and not
// reactivated since), in user ID order.
func (v View) ErasedUsers() ([]string, error) {
	it := v.r.Iter([]byte{pErased}, []byte{pErased + 1})
	var out []string
	for ok := it.First(); ok; ok = it.Next() {
		out = append(out, string(it.Key()[1:]))
	}
	return out, it.Close()
}

// RegistrationTokens lists every registration token in token order.
func (v View) RegistrationTokens() ([]RegToken, error) {
	return projections.ListJSON[RegToken](v.r, []byte{pRegToken}, nil)
}
