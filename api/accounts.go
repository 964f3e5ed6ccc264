package api

import (
	"context"
	"crypto/hmac"
	"crypto/sha1"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"strings"

	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/projections"
	"github.com/engram-hs/engram/projections/accounts"
	"golang.org/x/crypto/bcrypt"
)

// Refreshable access tokens live this long (Synapse's default).
const refreshableTokenLifetimeMS = 5 * 60 * 1000

func (s *Server) accountRoutes() {
	s.client("GET", "/register/available", s.registerAvailable)
	s.client("POST", "/register", s.register)
	s.handle("GET", "/_matrix/client/v1/register/m.login.registration_token/validity", s.registrationTokenValidity)
	s.handle("GET", "/_synapse/admin/v1/register", s.adminRegisterNonce)
	s.handle("POST", "/_synapse/admin/v1/register", s.adminRegister)
	s.client("GET", "/login", s.loginFlows)
	s.client("POST", "/login", s.login)
	s.client("POST", "/refresh", s.refresh)
	s.client("POST", "/logout", s.authed(s.logout))
	s.client("POST", "/logout/all", s.authed(s.logoutAll))
	s.client("GET", "/account/whoami", s.authed(s.whoami))
	s.client("POST", "/account/password", s.authed(s.changePassword))
	s.client("POST", "/account/deactivate", s.authed(s.deactivate))
	s.client("GET", "/devices", s.authed(s.listDevices))
	s.client("GET", "/devices/{deviceId}", s.authed(s.getDevice))
	s.client("PUT", "/devices/{deviceId}", s.authed(s.updateDevice))
	s.client("DELETE", "/devices/{deviceId}", s.authed(s.deleteDevice))
	s.client("POST", "/delete_devices", s.authed(s.deleteDevices))
	s.client("GET", "/profile/{userId}", s.getProfile)
	s.client("GET", "/profile/{userId}/{field}", s.getProfileField)
	s.client("PUT", "/profile/{userId}/{field}", s.authed(s.setProfileField))
}

func (s *Server) hashPassword(pw string) (string, error) {
	cost := s.cfg.BcryptCost
	if cost == 0 {
		cost = 12
	}
	h, err := bcrypt.GenerateFromPassword([]byte(pw), cost)
	if err != nil {
		if err == bcrypt.ErrPasswordTooLong {
			return "", errInvalidParam("Password is longer than 72 bytes")
		}
		return "", err
	}
	// Synapse writes the $2b$ form; the algorithm is the same as $2a$.
	return strings.Replace(string(h), "$2a$", "$2b$", 1), nil
}

func checkPassword(hash, pw string) bool {
	return hash != "" && bcrypt.CompareHashAndPassword([]byte(hash), []byte(pw)) == nil
}

// validLocalpart: the user ID grammar (appendices: "User Identifiers").
func validLocalpart(l string) bool {
	if l == "" {
		return false
	}
	for _, c := range l {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || strings.ContainsRune("._=-/+", c)) {
			return false
		}
	}
	return true
}

// userIDFor turns a localpart or a full user ID into a local user ID, or ""
// when it names another server.
func (s *Server) userIDFor(name string) string {
	if strings.HasPrefix(name, "@") {
		local, server, ok := strings.Cut(name[1:], ":")
		if !ok || server != s.cfg.ServerName {
			return ""
		}
		return "@" + strings.ToLower(local) + ":" + s.cfg.ServerName
	}
	return "@" + strings.ToLower(name) + ":" + s.cfg.ServerName
}

func (s *Server) checkNewUsername(localpart string) (string, error) {
	if !validLocalpart(localpart) {
		return "", merr(http.StatusBadRequest, "M_INVALID_USERNAME", "User ID may contain only a-z, 0-9, and ._=-/+")
	}
	userID := "@" + localpart + ":" + s.cfg.ServerName
	if len(userID) > 255 {
		return "", merr(http.StatusBadRequest, "M_INVALID_USERNAME", "User ID is longer than 255 bytes")
	}
	acc, err := s.accountsView().Account(userID)
	if err != nil {
		return "", err
	}
	if acc != nil {
		return "", merr(http.StatusBadRequest, "M_USER_IN_USE", "User ID already taken")
	}
	return userID, nil
}

func (s *Server) registerAvailable(w http.ResponseWriter, r *http.Request) error {
	name := r.URL.Query().Get("username")
	if name == "" {
		return errMissingParam("username is required")
	}
	if _, err := s.checkNewUsername(name); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]bool{"available": true})
	return nil
}

// loginResult is what register and login answer after creating a session.
type loginResult struct {
	UserID       string `json:"user_id"`
	AccessToken  string `json:"access_token,omitempty"`
	DeviceID     string `json:"device_id,omitempty"`
	HomeServer   string `json:"home_server,omitempty"`
	ExpiresInMS  int64  `json:"expires_in_ms,omitempty"`
	RefreshToken string `json:"refresh_token,omitempty"`
}

// checkDeviceID refuses client-chosen device IDs that could not be stored
// safely: projections separate key parts with NUL, and logs and clients
// print them.
func checkDeviceID(id string) error {
	if len(id) > 255 {
		return merr(http.StatusBadRequest, "M_INVALID_PARAM", "device_id is longer than 255 bytes")
	}
	for _, c := range id {
		if c < 0x20 || c == 0x7f {
			return merr(http.StatusBadRequest, "M_INVALID_PARAM", "device_id contains a control character")
		}
	}
	return nil
}

// newSession decides a device and token pair for userID and returns the
// proposals that record them. registration is set when the session comes
// with a new account: it is valid only if that registration wins.
func (s *Server) newSession(r *http.Request, userID, deviceID, displayName string, refreshable bool, registration string) (loginResult, []englog.Proposal) {
	if deviceID == "" {
		deviceID = newDeviceID()
	}
	res := loginResult{UserID: userID, DeviceID: deviceID, AccessToken: newAccessToken(), HomeServer: s.cfg.ServerName}
	issued := facts.AccessTokenIssued{UserID: userID, DeviceID: deviceID, TokenSHA256: hashToken(res.AccessToken), Registration: registration}
	if refreshable {
		res.RefreshToken = newRefreshToken()
		res.ExpiresInMS = refreshableTokenLifetimeMS
		issued.RefreshSHA256 = hashToken(res.RefreshToken)
		issued.ExpiresAt = nowMS() + refreshableTokenLifetimeMS
	}
	return res, []englog.Proposal{
		facts.MustEncode(englog.KindDeviceAdded, facts.DeviceAdded{UserID: userID, DeviceID: deviceID, DisplayName: displayName, IP: clientIP(r), Registration: registration}),
		facts.MustEncode(englog.KindAccessTokenIssued, issued),
	}
}

// clientIP is the client's address: through a trusted proxy, the one it
// forwarded (ratelimits.go).
func clientIP(r *http.Request) string {
	if ri := reqInfoFrom(r); ri != nil && ri.ip != "" {
		return ri.ip
	}
	host := r.RemoteAddr
	if i := strings.LastIndexByte(host, ':'); i >= 0 {
		host = host[:i]
	}
	return strings.Trim(host, "[]")
}

// registerRequest is the body of POST /register.
type registerRequest struct {
	Type                     string          `json:"type"` // m.login.application_service, for appservices
	Username                 string          `json:"username"`
	Password                 string          `json:"password"`
	DeviceID                 string          `json:"device_id"`
	InitialDeviceDisplayName string          `json:"initial_device_display_name"`
	InhibitLogin             bool            `json:"inhibit_login"`
	RefreshToken             bool            `json:"refresh_token"`
	Auth                     json.RawMessage `json:"auth"`
}

func (s *Server) register(w http.ResponseWriter, r *http.Request) error {
	var req registerRequest
	if err := readJSON(r, &req); err != nil {
		return err
	}
	if req.Type == "m.login.application_service" {
		return s.registerAppservice(w, r, &req)
	}
	guest := r.URL.Query().Get("kind") == "guest"
	if guest {
		if !s.cfg.AllowGuestAccess {
			return merr(http.StatusForbidden, "M_GUEST_ACCESS_FORBIDDEN", "Guest access is disabled on this server")
		}
	} else if !s.cfg.EnableRegistration {
		return errForbidden("Registration is disabled on this server")
	}
	localpart := strings.ToLower(req.Username)
	if guest || localpart == "" {
		localpart = strings.ToLower(newDeviceID()) // random, unguessable
	}
	if req.Username != "" && !guest {
		userID, err := s.checkNewUsername(localpart)
		if err != nil {
			return err
		}
		if err := s.exclusiveUser(userID, nil); err != nil {
			return err
		}
	}
	var usedToken string
	if !guest {
		flows := [][]string{{"m.login.dummy"}}
		if s.cfg.RegistrationRequiresToken {
			flows = [][]string{{"m.login.registration_token"}}
		}
		err := s.uia.check(req.Auth, flows, func(stage string, a *authDict) error {
			if stage == "m.login.registration_token" {
				if err := s.validRegistrationToken(a.Token); err != nil {
					return err
				}
				usedToken = a.Token
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	// Hash before taking the lock: bcrypt takes ~250 ms and the lock
	// serialises every registration.
	hash := ""
	if req.Password != "" {
		var err error
		if hash, err = s.hashPassword(req.Password); err != nil {
			return err
		}
	}
	unlock := s.locks.Lock("register")
	defer unlock()
	userID, err := s.checkNewUsername(localpart)
	if err != nil {
		return err
	}
	reg := randomString(12)
	props := []englog.Proposal{facts.MustEncode(englog.KindAccountRegistered, facts.AccountRegistered{
		UserID: userID, PasswordHash: hash, Guest: guest, DisplayName: localpart, Registration: reg, RegistrationToken: usedToken,
	})}
	res := loginResult{UserID: userID, HomeServer: s.cfg.ServerName}
	if !req.InhibitLogin {
		if err := checkDeviceID(req.DeviceID); err != nil {
			return err
		}
		var more []englog.Proposal
		res, more = s.newSession(r, userID, req.DeviceID, req.InitialDeviceDisplayName, req.RefreshToken, reg)
		props = append(props, more...)
	}
	if err := s.commitRegistration(r.Context(), userID, reg, usedToken != "", props); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, res)
	return nil
}

// commitRegistration appends a registration and reports M_USER_IN_USE
// when another registration of the same user ID came first in the log
// (another API node decided it concurrently): the accounts projection then
// refused ours, with its device and tokens.
//
// With a registration token (withToken), no account at all means the
// fold refused the token: it was used up or expired by a registration
// that came first in the log (projections/accounts useRegistrationToken).
func (s *Server) commitRegistration(ctx context.Context, userID, reg string, withToken bool, props []englog.Proposal) error {
	if _, err := s.commit(ctx, []*projections.Handle{s.accountsH}, props...); err != nil {
		return err
	}
	acc, err := s.accountsView().Account(userID)
	if err != nil {
		return err
	}
	if acc == nil && withToken {
		return merr(http.StatusUnauthorized, "M_FORBIDDEN", "Invalid registration token")
	}
	if acc == nil || acc.Registration != reg {
		return merr(http.StatusBadRequest, "M_USER_IN_USE", "User ID already taken")
	}
	return nil
}

func (s *Server) validRegistrationToken(tok string) error {
	t, err := s.accountsView().RegistrationToken(tok)
	if err != nil {
		return err
	}
	if t == nil || (t.ExpiryTime != 0 && t.ExpiryTime <= nowMS()) || (t.UsesAllowed != nil && t.Completed >= *t.UsesAllowed) {
		return merr(http.StatusUnauthorized, "M_FORBIDDEN", "Invalid registration token")
	}
	return nil
}

func (s *Server) registrationTokenValidity(w http.ResponseWriter, r *http.Request) error {
	tok := r.URL.Query().Get("token")
	if tok == "" {
		return errMissingParam("token is required")
	}
	writeJSON(w, http.StatusOK, map[string]bool{"valid": s.validRegistrationToken(tok) == nil})
	return nil
}

func (s *Server) adminRegisterNonce(w http.ResponseWriter, r *http.Request) error {
	if s.cfg.RegistrationSharedSecret == "" {
		return merr(http.StatusBadRequest, "M_UNKNOWN", "Shared secret registration is not enabled; set registration_shared_secret in the config")
	}
	writeJSON(w, http.StatusOK, map[string]string{"nonce": s.nonces.issue()})
	return nil
}

// adminRegister is Synapse's shared-secret registration: the MAC is
// HMAC-SHA1(secret, nonce 0 username 0 password 0 "admin"|"notadmin"
// [0 user_type]) in hex.
func (s *Server) adminRegister(w http.ResponseWriter, r *http.Request) error {
	if s.cfg.RegistrationSharedSecret == "" {
		return merr(http.StatusBadRequest, "M_UNKNOWN", "Shared secret registration is not enabled; set registration_shared_secret in the config")
	}
	var req struct {
		Nonce       string  `json:"nonce"`
		Username    string  `json:"username"`
		Password    string  `json:"password"`
		Admin       bool    `json:"admin"`
		UserType    *string `json:"user_type"`
		DisplayName string  `json:"displayname"`
		MAC         string  `json:"mac"`
	}
	if err := readJSON(r, &req); err != nil {
		return err
	}
	if req.Nonce == "" || req.Username == "" || req.MAC == "" {
		return errMissingParam("nonce, username and mac are required")
	}
	if !s.nonces.consume(req.Nonce) {
		return merr(http.StatusBadRequest, "M_UNKNOWN", "unrecognised nonce")
	}
	mac := hmac.New(sha1.New, []byte(s.cfg.RegistrationSharedSecret))
	mac.Write([]byte(req.Nonce + "\x00" + req.Username + "\x00" + req.Password + "\x00"))
	if req.Admin {
		mac.Write([]byte("admin"))
	} else {
		mac.Write([]byte("notadmin"))
	}
	if req.UserType != nil {
		mac.Write([]byte("\x00" + *req.UserType))
	}
	want := mac.Sum(nil)
	got, err := hex.DecodeString(req.MAC)
	if err != nil || !hmac.Equal(want, got) {
		return errForbidden("HMAC incorrect")
	}
	hash, err := s.hashPassword(req.Password) // before the lock, as in register
	if err != nil {
		return err
	}
	unlock := s.locks.Lock("register")
	defer unlock()
	userID, err := s.checkNewUsername(strings.ToLower(req.Username))
	if err != nil {
		return err
	}
	dn := req.DisplayName
	if dn == "" {
		dn = strings.ToLower(req.Username)
	}
	reg := randomString(12)
	props := []englog.Proposal{facts.MustEncode(englog.KindAccountRegistered, facts.AccountRegistered{UserID: userID, PasswordHash: hash, Admin: req.Admin, DisplayName: dn, Registration: reg})}
	res, more := s.newSession(r, userID, "", "", false, reg)
	if err := s.commitRegistration(r.Context(), userID, reg, false, append(props, more...)); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, res)
	return nil
}

func (s *Server) loginFlows(w http.ResponseWriter, r *http.Request) error {
	flows := []map[string]any{{"type": "m.login.password"}}
	if len(s.cfg.Appservices.All()) > 0 {
		flows = append(flows, map[string]any{"type": "m.login.application_service"})
	}
	writeJSON(w, http.StatusOK, map[string]any{"flows": flows})
	return nil
}

// passwordUser resolves the user a password login or UIA stage names.
func (s *Server) passwordUser(a *authDict) string {
	name := a.User
	if a.Identifier != nil {
		if a.Identifier.Type != "m.id.user" {
			return ""
		}
		name = a.Identifier.User
	}
	return s.userIDFor(name)
}

func (s *Server) login(w http.ResponseWriter, r *http.Request) error {
	var req struct {
		authDict
		DeviceID                 string `json:"device_id"`
		InitialDeviceDisplayName string `json:"initial_device_display_name"`
		RefreshToken             bool   `json:"refresh_token"`
	}
	if err := readJSON(r, &req); err != nil {
		return err
	}
	if req.Type == "m.login.application_service" {
		return s.loginAppservice(w, r, &req.authDict, req.DeviceID, req.InitialDeviceDisplayName, req.RefreshToken)
	}
	if req.Type != "m.login.password" {
		return merr(http.StatusBadRequest, "M_UNKNOWN", "Login type %q is not supported", req.Type)
	}
	if req.Identifier != nil && req.Identifier.Type != "m.id.user" {
		return merr(http.StatusBadRequest, "M_UNKNOWN", "Identifier type %q is not supported", req.Identifier.Type)
	}
	userID := s.passwordUser(&req.authDict)
	if userID == "" {
		return errForbidden("Invalid username or password")
	}
	acc, err := s.accountsView().Account(userID)
	if err != nil {
		return err
	}
	if acc == nil || acc.Deactivated || !checkPassword(acc.PasswordHash, req.Password) {
		if acc != nil && acc.Deactivated {
			return merr(http.StatusForbidden, "M_USER_DEACTIVATED", "This account has been deactivated")
		}
		return errForbidden("Invalid username or password")
	}
	if err := checkDeviceID(req.DeviceID); err != nil {
		return err
	}
	res, props := s.newSession(r, userID, req.DeviceID, req.InitialDeviceDisplayName, req.RefreshToken, "")
	if _, err := s.commit(r.Context(), []*projections.Handle{s.accountsH}, props...); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, res)
	return nil
}

func (s *Server) refresh(w http.ResponseWriter, r *http.Request) error {
	var req struct {
		RefreshToken string `json:"refresh_token"`
	}
	if err := readJSON(r, &req); err != nil {
		return err
	}
	if req.RefreshToken == "" {
		return errMissingParam("refresh_token is required")
	}
	old := hashToken(req.RefreshToken)
	sess, err := s.accountsView().RefreshSession(old)
	if err != nil {
		return err
	}
	if sess == nil {
		return merr(http.StatusUnauthorized, "M_UNKNOWN_TOKEN", "Unknown refresh token").With("soft_logout", false)
	}
	access, refresh := newAccessToken(), newRefreshToken()
	issued := facts.AccessTokenIssued{
		UserID: sess.UserID, DeviceID: sess.DeviceID, TokenSHA256: hashToken(access),
		ExpiresAt: nowMS() + refreshableTokenLifetimeMS, RefreshSHA256: hashToken(refresh), Replaces: old,
	}
	if _, err := s.commit(r.Context(), []*projections.Handle{s.accountsH}, facts.MustEncode(englog.KindAccessTokenIssued, issued)); err != nil {
		return err
	}
	// A concurrent refresh of the same token may have come first in the
	// log; the projection then refused this pair.
	if got, err := s.accountsView().Session(issued.TokenSHA256); err != nil {
		return err
	} else if got == nil {
		return merr(http.StatusUnauthorized, "M_UNKNOWN_TOKEN", "Refresh token already used").With("soft_logout", false)
	}
	writeJSON(w, http.StatusOK, map[string]any{"access_token": access, "refresh_token": refresh, "expires_in_ms": refreshableTokenLifetimeMS})
	return nil
}

func (s *Server) removeDevices(ctx context.Context, userID string, ids []string) error {
	withKeys, err := s.keys.DevicesWithKeys(userID, ids)
	if err != nil {
		return err
	}
	if _, err := s.commit(ctx, []*projections.Handle{s.accountsH, s.keys.Handle()}, facts.MustEncode(englog.KindDeviceRemoved, facts.DeviceRemoved{UserID: userID, DeviceIDs: ids})); err != nil {
		return err
	}
	if len(withKeys) > 0 {
		s.keys.AnnounceDevices(ctx, userID, withKeys, true) // other servers forget them
	}
	return nil
}

// logout invalidates the token and, per the spec, deletes its device.
func (s *Server) logout(w http.ResponseWriter, r *http.Request, sess *session) error {
	if err := s.removeDevices(r.Context(), sess.UserID, []string{sess.DeviceID}); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, struct{}{})
	return nil
}

func (s *Server) logoutAll(w http.ResponseWriter, r *http.Request, sess *session) error {
	devs, err := s.accountsView().Devices(sess.UserID)
	if err != nil {
		return err
	}
	ids := []string{sess.DeviceID}
	for _, d := range devs {
		if d.DeviceID != sess.DeviceID {
			ids = append(ids, d.DeviceID)
		}
	}
	if err := s.removeDevices(r.Context(), sess.UserID, ids); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, struct{}{})
	return nil
}

func (s *Server) whoami(w http.ResponseWriter, r *http.Request, sess *session) error {
	writeJSON(w, http.StatusOK, map[string]any{"user_id": sess.UserID, "device_id": sess.DeviceID, "is_guest": sess.Guest})
	return nil
}

// deviceUIA is passwordUIA for deleting devices and replacing
// cross-signing keys, which appservices may do without it (spec:
// "Device management", "Cross-signing" under appservice extensions).
func (s *Server) deviceUIA(raw json.RawMessage, sess *session) error {
	if sess.Appservice != nil {
		return nil
	}
	return s.passwordUIA(raw, sess)
}

// passwordUIA requires the m.login.password stage for the caller's own
// account.
func (s *Server) passwordUIA(raw json.RawMessage, sess *session) error {
	return s.uia.check(raw, [][]string{{"m.login.password"}}, func(stage string, a *authDict) error {
		user := s.passwordUser(a)
		acc, err := s.accountsView().Account(user)
		if err != nil {
			return err
		}
		if user == "" || acc == nil || !checkPassword(acc.PasswordHash, a.Password) {
			return errForbidden("Invalid username or password")
		}
		if user != sess.UserID {
			// Authenticated, but as someone else: a final 403, not
			// another challenge (spec: the user must match the
			// requester).
			return uiaRefused{errForbidden("You authenticated as %s, not as %s", user, sess.UserID)}
		}
		return nil
	})
}

func (s *Server) changePassword(w http.ResponseWriter, r *http.Request, sess *session) error {
	var req struct {
		NewPassword   string          `json:"new_password"`
		LogoutDevices *bool           `json:"logout_devices"`
		Auth          json.RawMessage `json:"auth"`
	}
	if err := readJSON(r, &req); err != nil {
		return err
	}
	if err := s.passwordUIA(req.Auth, sess); err != nil {
		return err
	}
	if req.NewPassword == "" {
		return errMissingParam("new_password is required")
	}
	hash, err := s.hashPassword(req.NewPassword)
	if err != nil {
		return err
	}
	logout := req.LogoutDevices == nil || *req.LogoutDevices
	if _, err := s.commit(r.Context(), []*projections.Handle{s.accountsH}, facts.MustEncode(englog.KindPasswordChanged, facts.PasswordChanged{
		UserID: sess.UserID, PasswordHash: hash, LogoutDevices: logout, KeepDeviceID: sess.DeviceID,
	})); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, struct{}{})
	return nil
}

func (s *Server) deactivate(w http.ResponseWriter, r *http.Request, sess *session) error {
	var req struct {
		Auth  json.RawMessage `json:"auth"`
		Erase bool            `json:"erase"`
	}
	if err := readJSON(r, &req); err != nil {
		return err
	}
	if err := s.passwordUIA(req.Auth, sess); err != nil {
		return err
	}
	if err := s.leaveAllRooms(r.Context(), sess.UserID); err != nil {
		return err
	}
	props := []englog.Proposal{facts.MustEncode(englog.KindAccountDeactivated, facts.AccountDeactivated{UserID: sess.UserID, Erase: req.Erase})}
	if req.Erase {
		// The same erasure as the admin API's deactivation with erase.
		p, n, err := s.admin.UserErasure(sess.UserID)
		if err != nil {
			return err
		}
		if n > 0 {
			props = append(props, p)
		}
	}
	if _, err := s.commit(r.Context(), []*projections.Handle{s.accountsH}, props...); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]string{"id_server_unbind_result": "no-support"})
	return nil
}

func deviceJSON(d accounts.Device) map[string]any {
	m := map[string]any{"device_id": d.DeviceID}
	if d.DisplayName != "" {
		m["display_name"] = d.DisplayName
	}
	if d.LastSeenIP != "" {
		m["last_seen_ip"] = d.LastSeenIP
	}
	if d.LastSeenTS != 0 {
		m["last_seen_ts"] = d.LastSeenTS
	}
	return m
}

func (s *Server) listDevices(w http.ResponseWriter, r *http.Request, sess *session) error {
	devs, err := s.accountsView().Devices(sess.UserID)
	if err != nil {
		return err
	}
	out := make([]map[string]any, 0, len(devs))
	for _, d := range devs {
		out = append(out, deviceJSON(d))
	}
	writeJSON(w, http.StatusOK, map[string]any{"devices": out})
	return nil
}

func (s *Server) getDevice(w http.ResponseWriter, r *http.Request, sess *session) error {
	d, err := s.accountsView().Device(sess.UserID, r.PathValue("deviceId"))
	if err != nil {
		return err
	}
	if d == nil {
		return errNotFound("Unknown device")
	}
	writeJSON(w, http.StatusOK, deviceJSON(*d))
	return nil
}

func (s *Server) updateDevice(w http.ResponseWriter, r *http.Request, sess *session) error {
	var req struct {
		DisplayName *string `json:"display_name"`
	}
	if err := readJSON(r, &req); err != nil {
		return err
	}
	id := r.PathValue("deviceId")
	d, err := s.accountsView().Device(sess.UserID, id)
	if err != nil {
		return err
	}
	if d == nil && sess.Appservice != nil {
		// Appservices create their users' devices this way (spec:
		// "Device management"), without logging in.
		if err := checkDeviceID(id); err != nil {
			return err
		}
		name := ""
		if req.DisplayName != nil {
			name = *req.DisplayName
		}
		if _, err := s.commit(r.Context(), []*projections.Handle{s.accountsH}, facts.MustEncode(englog.KindDeviceAdded, facts.DeviceAdded{UserID: sess.UserID, DeviceID: id, DisplayName: name, IP: clientIP(r)})); err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, struct{}{})
		return nil
	}
	if d == nil {
		return errNotFound("Unknown device")
	}
	if req.DisplayName != nil {
		if _, err := s.commit(r.Context(), []*projections.Handle{s.accountsH}, facts.MustEncode(englog.KindDeviceUpdated, facts.DeviceUpdated{UserID: sess.UserID, DeviceID: id, DisplayName: req.DisplayName})); err != nil {
			return err
		}
		// The display name is part of the device's keys as other servers
		// see them (device_display_name): news for them when it has keys.
		withKeys, err := s.keys.DevicesWithKeys(sess.UserID, []string{id})
		if err != nil {
			return err
		}
		if len(withKeys) > 0 {
			s.keys.AnnounceDevices(r.Context(), sess.UserID, withKeys, false)
		}
	}
	writeJSON(w, http.StatusOK, struct{}{})
	return nil
}

func (s *Server) deleteDevice(w http.ResponseWriter, r *http.Request, sess *session) error {
	var req struct {
		Auth json.RawMessage `json:"auth"`
	}
	if err := readJSON(r, &req); err != nil {
		return err
	}
	id := r.PathValue("deviceId")
	d, err := s.accountsView().Device(sess.UserID, id)
	if err != nil {
		return err
	}
	if d == nil {
		return errNotFound("Unknown device")
	}
	if err := s.deviceUIA(req.Auth, sess); err != nil {
		return err
	}
	if err := s.removeDevices(r.Context(), sess.UserID, []string{id}); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, struct{}{})
	return nil
}

func (s *Server) deleteDevices(w http.ResponseWriter, r *http.Request, sess *session) error {
	var req struct {
		Devices []string        `json:"devices"`
		Auth    json.RawMessage `json:"auth"`
	}
	if err := readJSON(r, &req); err != nil {
		return err
	}
	if req.Devices == nil {
		return errMissingParam("devices is required")
	}
	if err := s.deviceUIA(req.Auth, sess); err != nil {
		return err
	}
	if err := s.removeDevices(r.Context(), sess.UserID, req.Devices); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, struct{}{})
	return nil
}

func profileJSON(p accounts.Profile) map[string]any {
	m := map[string]any{}
	if p.DisplayName != nil {
		m["displayname"] = *p.DisplayName
	}
	if p.AvatarURL != nil {
		m["avatar_url"] = *p.AvatarURL
	}
	return m
}

func (s *Server) profileOf(userID string) (accounts.Profile, error) {
	acc, err := s.accountsView().Account(userID)
	if err != nil {
		return accounts.Profile{}, err
	}
	if acc == nil {
		return accounts.Profile{}, errNotFound("Profile not found")
	}
	return s.accountsView().Profile(userID)
}

func (s *Server) getProfile(w http.ResponseWriter, r *http.Request) error {
	if userID := r.PathValue("userId"); domainOf(userID) != s.cfg.ServerName {
		p, err := s.remoteProfile(r.Context(), userID, "")
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, p)
		return nil
	}
	p, err := s.profileOf(r.PathValue("userId"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, profileJSON(p))
	return nil
}

func (s *Server) getProfileField(w http.ResponseWriter, r *http.Request) error {
	field := r.PathValue("field")
	if field != "displayname" && field != "avatar_url" {
		return errNotFound("Unknown profile field")
	}
	var m map[string]any
	if userID := r.PathValue("userId"); domainOf(userID) != s.cfg.ServerName {
		rm, err := s.remoteProfile(r.Context(), userID, field)
		if err != nil {
			return err
		}
		m = rm
	} else {
		p, err := s.profileOf(userID)
		if err != nil {
			return err
		}
		m = profileJSON(p)
	}
	if _, ok := m[field]; !ok {
		return errNotFound("Profile field not set")
	}
	writeJSON(w, http.StatusOK, map[string]any{field: m[field]})
	return nil
}

func (s *Server) setProfileField(w http.ResponseWriter, r *http.Request, sess *session) error {
	field := r.PathValue("field")
	if field != "displayname" && field != "avatar_url" {
		return errInvalidParam("Unknown profile field %q", field)
	}
	if r.PathValue("userId") != sess.UserID {
		return errForbidden("You may only change your own profile")
	}
	var req map[string]json.RawMessage
	if err := readJSON(r, &req); err != nil {
		return err
	}
	var val string
	if raw, ok := req[field]; ok && string(raw) != "null" {
		if err := json.Unmarshal(raw, &val); err != nil {
			return errBadJSON("%s must be a string", field)
		}
	}
	f := facts.ProfileSet{UserID: sess.UserID}
	if field == "displayname" {
		f.DisplayName = &val
	} else {
		f.AvatarURL = &val
	}
	if _, err := s.commit(r.Context(), []*projections.Handle{s.accountsH}, facts.MustEncode(englog.KindProfileSet, f)); err != nil {
		return err
	}
	if err := s.propagateProfile(r.Context(), sess.UserID); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, struct{}{})
	return nil
}
