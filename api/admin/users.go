package admin

import (
	"context"
	"crypto/rand"
	"net/http"
	"sort"
	"strconv"
	"strings"

	"github.com/engram-hs/engram/internal/mxerr"
	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/projections/accounts"
)

func (a *API) userEndpoints() []endpoint {
	return []endpoint{
		{"GET", "/v2/users", a.listUsers},
		{"GET", "/v2/users/{userId}", a.getUser},
		{"PUT", "/v2/users/{userId}", a.putUser},
		{"GET", "/v1/whois/{userId}", a.whois},
		{"POST", "/v1/reset_password/{userId}", a.resetPassword},
		{"POST", "/v1/deactivate/{userId}", a.deactivate},
		{"POST", "/v1/users/{userId}/shadow_ban", a.shadowBan(true)},
		{"DELETE", "/v1/users/{userId}/shadow_ban", a.shadowBan(false)},
		{"GET", "/v1/users/{userId}/joined_rooms", a.joinedRooms},
		{"GET", "/v2/users/{userId}/devices", a.listDevices},
		{"GET", "/v2/users/{userId}/devices/{deviceId}", a.getDevice},
		{"PUT", "/v2/users/{userId}/devices/{deviceId}", a.putDevice},
		{"DELETE", "/v2/users/{userId}/devices/{deviceId}", a.deleteDevice},
		{"POST", "/v2/users/{userId}/delete_devices", a.deleteDevices},
		{"GET", "/v1/users/{userId}/override_ratelimit", a.getRatelimit},
		{"POST", "/v1/users/{userId}/override_ratelimit", a.setRatelimit},
		{"DELETE", "/v1/users/{userId}/override_ratelimit", a.deleteRatelimit},
		{"GET", "/v1/users/{userId}/admin", a.getAdmin},
		{"PUT", "/v1/users/{userId}/admin", a.putAdmin},
		{"PUT", "/v1/suspend/{userId}", a.synapseSuspend},
		// Spec v1.18 account moderation (MSC4323).
		{"GET", "/_matrix/client/v1/admin/lock/{userId}", a.getFlag("locked")},
		{"PUT", "/_matrix/client/v1/admin/lock/{userId}", a.putFlag("locked")},
		{"GET", "/_matrix/client/v1/admin/suspend/{userId}", a.getFlag("suspended")},
		{"PUT", "/_matrix/client/v1/admin/suspend/{userId}", a.putFlag("suspended")},
	}
}

// userJSON is a user in Synapse's "Query User Account" shape.
func (a *API) userJSON(acc *accounts.Account) (map[string]any, error) {
	v := a.host.Accounts()
	p, err := v.Profile(acc.UserID)
	if err != nil {
		return nil, err
	}
	devs, err := v.Devices(acc.UserID)
	if err != nil {
		return nil, err
	}
	erased, err := v.Erased(acc.UserID)
	if err != nil {
		return nil, err
	}
	var lastSeen any
	for _, d := range devs {
		if ls, ok := lastSeen.(int64); d.LastSeenTS != 0 && (!ok || d.LastSeenTS > ls) {
			lastSeen = d.LastSeenTS
		}
	}
	var dn, av any
	if p.DisplayName != nil {
		dn = *p.DisplayName
	}
	if p.AvatarURL != nil {
		av = *p.AvatarURL
	}
	return map[string]any{
		"name": acc.UserID, "displayname": dn, "avatar_url": av,
		"threepids": []any{}, "external_ids": []any{},
		"is_guest": acc.Guest, "admin": acc.Admin, "deactivated": acc.Deactivated,
		"erased":        erased,
		"shadow_banned": acc.ShadowBanned, "locked": acc.Locked, "suspended": acc.Suspended,
		"approved": true, "creation_ts": acc.CreatedTS / 1000, // Synapse: seconds
		"appservice_id": nil, "consent_server_notice_sent": nil, "consent_version": nil,
		"consent_ts": nil, "user_type": nil, "last_seen_ts": lastSeen,
	}, nil
}

// listUsers is GET /v2/users: Synapse's "List Accounts".
func (a *API) listUsers(w http.ResponseWriter, r *http.Request, c Caller) error {
	from, err := queryInt(r, "from", 0)
	if err != nil {
		return err
	}
	limit, err := queryInt(r, "limit", 100)
	if err != nil {
		return err
	}
	q := r.URL.Query()
	guests, err := queryBool(r, "guests")
	if err != nil {
		return err
	}
	deactivated, err := queryBool(r, "deactivated")
	if err != nil {
		return err
	}
	admins, err := queryBool(r, "admins")
	if err != nil {
		return err
	}
	locked, err := queryBool(r, "locked")
	if err != nil {
		return err
	}
	orderBy := q.Get("order_by")
	if orderBy == "" {
		orderBy = "name"
	}
	switch orderBy {
	case "name", "is_guest", "admin", "user_type", "deactivated", "shadow_banned", "displayname", "avatar_url", "creation_ts", "last_seen_ts", "locked":
	default:
		return mxerr.New(http.StatusBadRequest, "M_INVALID_PARAM", "Unknown value for order_by: %q", orderBy)
	}
	dir := q.Get("dir")
	if dir != "" && dir != "f" && dir != "b" {
		return mxerr.InvalidParam("Unknown direction: %q (use f or b)", dir)
	}
	all, err := a.host.Accounts().Accounts()
	if err != nil {
		return err
	}
	userIDFilter, name := q.Get("user_id"), strings.ToLower(q.Get("name"))
	var users []map[string]any
	for i := range all {
		acc := &all[i]
		switch {
		case guests != nil && !*guests && acc.Guest,
			(deactivated == nil || !*deactivated) && acc.Deactivated,
			(locked == nil || !*locked) && acc.Locked,
			admins != nil && *admins != acc.Admin,
			userIDFilter != "" && !strings.Contains(strings.ToLower(acc.UserID), strings.ToLower(userIDFilter)):
			continue
		}
		u, err := a.userJSON(acc)
		if err != nil {
			return err
		}
		if name != "" {
			dn, _ := u["displayname"].(string)
			if !strings.Contains(strings.ToLower(acc.UserID), name) && !strings.Contains(strings.ToLower(dn), name) {
				continue
			}
		}
		users = append(users, u)
	}
	sort.SliceStable(users, func(i, j int) bool {
		less, equal := compareField(users[i][orderBy], users[j][orderBy])
		if equal {
			return users[i]["name"].(string) < users[j]["name"].(string)
		}
		return less
	})
	if dir == "b" {
		for i, j := 0, len(users)-1; i < j; i, j = i+1, j-1 {
			users[i], users[j] = users[j], users[i]
		}
	}
	total := len(users)
	page := []map[string]any{}
	if from < total {
		end := min(total, from+limit)
		page = users[from:end]
	}
	out := map[string]any{"users": page, "total": total}
	if from+limit < total {
		out["next_token"] = strconv.Itoa(from + limit)
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

// compareField orders the values of one field of two listed items: nil
// first, then by value.
func compareField(x, y any) (less, equal bool) {
	if x == nil || y == nil {
		return x == nil && y != nil, x == nil && y == nil
	}
	switch xv := x.(type) {
	case string:
		yv, _ := y.(string)
		return xv < yv, xv == yv
	case bool:
		yv, _ := y.(bool)
		return !xv && yv, xv == yv
	case int64:
		yv, _ := y.(int64)
		return xv < yv, xv == yv
	case int:
		yv, _ := y.(int)
		return xv < yv, xv == yv
	}
	return false, true
}

func (a *API) getUser(w http.ResponseWriter, r *http.Request, c Caller) error {
	acc, err := a.localUser(r.PathValue("userId"))
	if err != nil {
		return err
	}
	u, err := a.userJSON(acc)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, u)
	return nil
}

// putUser is PUT /v2/users/{userId}: create the user, or change the
// fields the body names.
func (a *API) putUser(w http.ResponseWriter, r *http.Request, c Caller) error {
	userID := r.PathValue("userId")
	if !a.isLocal(userID) {
		return mxerr.InvalidParam("This endpoint can only be used with local users")
	}
	var req struct {
		Password      *string `json:"password"`
		LogoutDevices *bool   `json:"logout_devices"`
		DisplayName   *string `json:"displayname"`
		AvatarURL     *string `json:"avatar_url"`
		Admin         *bool   `json:"admin"`
		Deactivated   *bool   `json:"deactivated"`
		Locked        *bool   `json:"locked"`
		UserType      *string `json:"user_type"`
	}
	if err := readJSON(r, &req); err != nil {
		return err
	}
	if req.UserType != nil && *req.UserType != "" {
		return mxerr.InvalidParam("Invalid user type: Engram has no special user types")
	}
	hash := ""
	if req.Password != nil {
		if *req.Password == "" || len(*req.Password) > 512 {
			return mxerr.InvalidParam("Invalid password")
		}
		var err error
		if hash, err = a.host.HashPassword(*req.Password); err != nil {
			return err
		}
	}
	acc, err := a.host.Accounts().Account(userID)
	if err != nil {
		return err
	}
	status := http.StatusOK
	changes := map[string]any{}
	if acc == nil {
		if err := a.createUser(r, c, userID, hash, req.Admin != nil && *req.Admin, req.DisplayName); err != nil {
			return err
		}
		status = http.StatusCreated
		if acc, err = a.host.Accounts().Account(userID); err != nil || acc == nil {
			return mxerr.New(http.StatusBadRequest, "M_USER_IN_USE", "User ID already taken")
		}
		req.Password, req.Admin, req.DisplayName = nil, nil, nil // done by the creation
	}
	var props []englog.Proposal
	if req.Deactivated != nil && !*req.Deactivated && acc.Deactivated {
		if hash == "" {
			return mxerr.MissingParam("Must provide a password to re-activate an account.")
		}
		props = append(props, facts.MustEncode(englog.KindAccountReactivated, facts.AccountReactivated{UserID: userID, PasswordHash: hash}))
		changes["deactivated"], changes["password"] = false, "changed"
		req.Password = nil
	}
	if req.Password != nil {
		logout := req.LogoutDevices == nil || *req.LogoutDevices
		props = append(props, facts.MustEncode(englog.KindPasswordChanged, facts.PasswordChanged{UserID: userID, PasswordHash: hash, LogoutDevices: logout}))
		changes["password"] = "changed"
	}
	if req.Admin != nil && *req.Admin != acc.Admin {
		if !*req.Admin && userID == c.UserID {
			return mxerr.New(http.StatusBadRequest, "M_UNKNOWN", "You may not demote yourself.")
		}
		props = append(props, facts.MustEncode(englog.KindUserAdminSet, facts.UserAdminSet{UserID: userID, Admin: *req.Admin}))
		changes["admin"] = *req.Admin
	}
	if req.Locked != nil && *req.Locked != acc.Locked {
		props = append(props, facts.MustEncode(englog.KindUserModerated, facts.UserModerated{UserID: userID, Locked: req.Locked}))
		changes["locked"] = *req.Locked
	}
	profileChanged := false
	if req.DisplayName != nil || req.AvatarURL != nil {
		props = append(props, facts.MustEncode(englog.KindProfileSet, facts.ProfileSet{UserID: userID, DisplayName: req.DisplayName, AvatarURL: req.AvatarURL}))
		if req.DisplayName != nil {
			changes["displayname"] = *req.DisplayName
		}
		if req.AvatarURL != nil {
			changes["avatar_url"] = *req.AvatarURL
		}
		profileChanged = true
	}
	deactivate := req.Deactivated != nil && *req.Deactivated && !acc.Deactivated
	if len(props) > 0 {
		if err := a.commit(r.Context(), c, "modify_user", userID, changes, props...); err != nil {
			return err
		}
	}
	if profileChanged && !deactivate {
		if err := a.host.PropagateProfile(r.Context(), userID); err != nil {
			return err
		}
	}
	if deactivate {
		if err := a.deactivateUser(r, c, userID, false); err != nil {
			return err
		}
	}
	acc, err = a.host.Accounts().Account(userID)
	if err != nil {
		return err
	}
	u, err := a.userJSON(acc)
	if err != nil {
		return err
	}
	writeJSON(w, status, u)
	return nil
}

// createUser registers a user for PUT /v2/users. As with every
// registration, the first AccountRegistered of a user ID in the log wins.
func (a *API) createUser(r *http.Request, c Caller, userID, hash string, admin bool, displayName *string) error {
	local := strings.TrimPrefix(userID[:strings.IndexByte(userID, ':')], "@")
	for _, ch := range local {
		if !(ch >= 'a' && ch <= 'z' || ch >= '0' && ch <= '9' || strings.ContainsRune("._=-/+", ch)) {
			return mxerr.New(http.StatusBadRequest, "M_INVALID_USERNAME", "User ID may contain only a-z, 0-9, and ._=-/+")
		}
	}
	if local == "" || len(userID) > 255 {
		return mxerr.New(http.StatusBadRequest, "M_INVALID_USERNAME", "Invalid user ID")
	}
	dn := local
	if displayName != nil {
		dn = *displayName
	}
	reg := randomID()
	changes := map[string]any{"created": true, "admin": admin, "displayname": dn}
	if hash != "" {
		changes["password"] = "set"
	}
	err := a.commit(r.Context(), c, "create_user", userID, changes,
		facts.MustEncode(englog.KindAccountRegistered, facts.AccountRegistered{UserID: userID, PasswordHash: hash, Admin: admin, DisplayName: dn, Registration: reg}))
	if err != nil {
		return err
	}
	acc, err := a.host.Accounts().Account(userID)
	if err != nil {
		return err
	}
	if acc == nil || acc.Registration != reg {
		return mxerr.New(http.StatusBadRequest, "M_USER_IN_USE", "User ID already taken")
	}
	return nil
}

// randomID is a new random ID (128 bits, base32: A-Z and 2-7) for the IDs
// an admin gets back: purge and delete IDs, registration markers. An
// operator passes these on command lines (synadm history purge-status ID),
// so none may start with "-", which base64url's alphabet allowed.
func randomID() string { return rand.Text() }

func (a *API) whois(w http.ResponseWriter, r *http.Request, c Caller) error {
	userID := r.PathValue("userId")
	if !a.isLocal(userID) {
		return mxerr.InvalidParam("Can only whois a local user")
	}
	devs, err := a.host.Accounts().Devices(userID)
	if err != nil {
		return err
	}
	out := map[string]any{}
	for _, d := range devs {
		out[d.DeviceID] = map[string]any{"sessions": []any{map[string]any{"connections": []any{
			map[string]any{"ip": d.LastSeenIP, "last_seen": d.LastSeenTS, "user_agent": ""},
		}}}}
	}
	writeJSON(w, http.StatusOK, map[string]any{"user_id": userID, "devices": out})
	return nil
}

func (a *API) resetPassword(w http.ResponseWriter, r *http.Request, c Caller) error {
	userID := r.PathValue("userId")
	var req struct {
		NewPassword   string `json:"new_password"`
		LogoutDevices *bool  `json:"logout_devices"`
	}
	if err := readJSON(r, &req); err != nil {
		return err
	}
	if req.NewPassword == "" {
		return mxerr.MissingParam("new_password is required")
	}
	acc, err := a.localUser(userID)
	if err != nil {
		return err
	}
	if acc.Deactivated {
		return mxerr.New(http.StatusBadRequest, "M_UNKNOWN", "The user is deactivated; reactivate it with PUT /_synapse/admin/v2/users/%s and a password", userID)
	}
	hash, err := a.host.HashPassword(req.NewPassword)
	if err != nil {
		return err
	}
	logout := req.LogoutDevices == nil || *req.LogoutDevices
	if err := a.commit(r.Context(), c, "reset_password", userID, map[string]any{"password": "changed", "logout_devices": logout},
		facts.MustEncode(englog.KindPasswordChanged, facts.PasswordChanged{UserID: userID, PasswordHash: hash, LogoutDevices: logout})); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, struct{}{})
	return nil
}

func (a *API) deactivate(w http.ResponseWriter, r *http.Request, c Caller) error {
	userID := r.PathValue("userId")
	var req struct {
		Erase bool `json:"erase"`
	}
	if err := readJSON(r, &req); err != nil {
		return err
	}
	if _, err := a.localUser(userID); err != nil {
		return err
	}
	if err := a.deactivateUser(r, c, userID, req.Erase); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]string{"id_server_unbind_result": "success"})
	return nil
}

// deactivateUser leaves every room through the room write path, then
// records the deactivation (devices and tokens go with it); with erase,
// the user's profiles are erased from the log too (erase.go).
func (a *API) deactivateUser(r *http.Request, c Caller, userID string, erase bool) error {
	if err := a.host.LeaveAllRooms(r.Context(), userID); err != nil {
		return err
	}
	changes := map[string]any{"deactivated": true, "erase": erase}
	props := []englog.Proposal{facts.MustEncode(englog.KindAccountDeactivated, facts.AccountDeactivated{UserID: userID, Erase: erase})}
	if erase {
		p, n, err := a.UserErasure(userID)
		if err != nil {
			return err
		}
		if n > 0 {
			props = append(props, p)
			changes["erased_entries"] = n
		}
	}
	return a.commit(r.Context(), c, "deactivate", userID, changes, props...)
}

func (a *API) shadowBan(ban bool) adminHandler {
	return func(w http.ResponseWriter, r *http.Request, c Caller) error {
		userID := r.PathValue("userId")
		if _, err := a.localUser(userID); err != nil {
			return err
		}
		if err := a.commit(r.Context(), c, "shadow_ban", userID, map[string]any{"shadow_banned": ban},
			facts.MustEncode(englog.KindUserModerated, facts.UserModerated{UserID: userID, ShadowBanned: boolPtr(ban)})); err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, struct{}{})
		return nil
	}
}

func (a *API) joinedRooms(w http.ResponseWriter, r *http.Request, c Caller) error {
	userID := r.PathValue("userId")
	ms, err := a.host.Rooms().Memberships(userID)
	if err != nil {
		return err
	}
	ids := []string{}
	for _, m := range ms {
		if m.Membership == "join" {
			ids = append(ids, m.RoomID)
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{"joined_rooms": ids, "total": len(ids)})
	return nil
}

func deviceJSON(userID string, d accounts.Device) map[string]any {
	m := map[string]any{"device_id": d.DeviceID, "user_id": userID, "display_name": nil,
		"last_seen_ip": nil, "last_seen_ts": nil, "last_seen_user_agent": nil}
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

func (a *API) listDevices(w http.ResponseWriter, r *http.Request, c Caller) error {
	userID := r.PathValue("userId")
	if _, err := a.localUser(userID); err != nil {
		return err
	}
	devs, err := a.host.Accounts().Devices(userID)
	if err != nil {
		return err
	}
	out := []map[string]any{}
	for _, d := range devs {
		out = append(out, deviceJSON(userID, d))
	}
	writeJSON(w, http.StatusOK, map[string]any{"devices": out, "total": len(out)})
	return nil
}

func (a *API) device(r *http.Request) (string, *accounts.Device, error) {
	userID := r.PathValue("userId")
	if _, err := a.localUser(userID); err != nil {
		return "", nil, err
	}
	d, err := a.host.Accounts().Device(userID, r.PathValue("deviceId"))
	if err != nil {
		return "", nil, err
	}
	if d == nil {
		return "", nil, mxerr.NotFound("Device not found")
	}
	return userID, d, nil
}

func (a *API) getDevice(w http.ResponseWriter, r *http.Request, c Caller) error {
	userID, d, err := a.device(r)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, deviceJSON(userID, *d))
	return nil
}

func (a *API) putDevice(w http.ResponseWriter, r *http.Request, c Caller) error {
	var req struct {
		DisplayName *string `json:"display_name"`
	}
	if err := readJSON(r, &req); err != nil {
		return err
	}
	userID, d, err := a.device(r)
	if err != nil {
		return err
	}
	if req.DisplayName != nil {
		if err := a.commit(r.Context(), c, "update_device", userID, map[string]any{"device_id": d.DeviceID, "display_name": *req.DisplayName},
			facts.MustEncode(englog.KindDeviceUpdated, facts.DeviceUpdated{UserID: userID, DeviceID: d.DeviceID, DisplayName: req.DisplayName})); err != nil {
			return err
		}
		// The name is part of the device's keys as other servers see them.
		withKeys, err := a.host.DevicesWithKeys(userID, []string{d.DeviceID})
		if err != nil {
			return err
		}
		a.host.AnnounceDevices(r.Context(), userID, withKeys, false)
	}
	writeJSON(w, http.StatusOK, struct{}{})
	return nil
}

func (a *API) deleteDevice(w http.ResponseWriter, r *http.Request, c Caller) error {
	userID := r.PathValue("userId")
	if _, err := a.localUser(userID); err != nil {
		return err
	}
	// Synapse answers 200 for a device that does not exist.
	if err := a.removeDevices(r.Context(), c, userID, []string{r.PathValue("deviceId")}); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, struct{}{})
	return nil
}

// removeDevices removes a user's devices; other servers forget those
// that had keys (read before the removal drops them).
func (a *API) removeDevices(ctx context.Context, c Caller, userID string, ids []string) error {
	withKeys, err := a.host.DevicesWithKeys(userID, ids)
	if err != nil {
		return err
	}
	if err := a.commit(ctx, c, "delete_devices", userID, map[string]any{"devices": ids},
		facts.MustEncode(englog.KindDeviceRemoved, facts.DeviceRemoved{UserID: userID, DeviceIDs: ids})); err != nil {
		return err
	}
	a.host.AnnounceDevices(ctx, userID, withKeys, true)
	return nil
}

func (a *API) deleteDevices(w http.ResponseWriter, r *http.Request, c Caller) error {
	userID := r.PathValue("userId")
	var req struct {
		Devices []string `json:"devices"`
	}
	if err := readJSON(r, &req); err != nil {
		return err
	}
	if req.Devices == nil {
		return mxerr.MissingParam("devices is required")
	}
	if _, err := a.localUser(userID); err != nil {
		return err
	}
	if err := a.removeDevices(r.Context(), c, userID, req.Devices); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, struct{}{})
	return nil
}

func (a *API) getRatelimit(w http.ResponseWriter, r *http.Request, c Caller) error {
	userID := r.PathValue("userId")
	if _, err := a.localUser(userID); err != nil {
		return err
	}
	rl, err := a.host.Accounts().RateLimit(userID)
	if err != nil {
		return err
	}
	if rl == nil {
		writeJSON(w, http.StatusOK, struct{}{})
		return nil
	}
	writeJSON(w, http.StatusOK, map[string]any{"messages_per_second": rl.MessagesPerSecond, "burst_count": rl.BurstCount})
	return nil
}

func (a *API) setRatelimit(w http.ResponseWriter, r *http.Request, c Caller) error {
	userID := r.PathValue("userId")
	var req struct {
		MessagesPerSecond *float64 `json:"messages_per_second"`
		BurstCount        *int     `json:"burst_count"`
	}
	if err := readJSON(r, &req); err != nil {
		return err
	}
	if _, err := a.localUser(userID); err != nil {
		return err
	}
	f := facts.RatelimitOverride{UserID: userID}
	if req.MessagesPerSecond != nil {
		if *req.MessagesPerSecond < 0 {
			return mxerr.InvalidParam("messages_per_second must be a positive number")
		}
		f.MessagesPerSecond = *req.MessagesPerSecond
	}
	if req.BurstCount != nil {
		if *req.BurstCount < 0 {
			return mxerr.InvalidParam("burst_count must be a positive integer")
		}
		f.BurstCount = *req.BurstCount
	}
	if err := a.commit(r.Context(), c, "override_ratelimit", userID, map[string]any{"messages_per_second": f.MessagesPerSecond, "burst_count": f.BurstCount},
		facts.MustEncode(englog.KindRatelimitOverride, f)); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]any{"messages_per_second": f.MessagesPerSecond, "burst_count": f.BurstCount})
	return nil
}

func (a *API) deleteRatelimit(w http.ResponseWriter, r *http.Request, c Caller) error {
	userID := r.PathValue("userId")
	if _, err := a.localUser(userID); err != nil {
		return err
	}
	if err := a.commit(r.Context(), c, "override_ratelimit", userID, map[string]any{"deleted": true},
		facts.MustEncode(englog.KindRatelimitOverride, facts.RatelimitOverride{UserID: userID, Delete: true})); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, struct{}{})
	return nil
}

// getAdmin and putAdmin are Synapse's "Get/Change whether a user is a
// server administrator".
func (a *API) getAdmin(w http.ResponseWriter, r *http.Request, c Caller) error {
	acc, err := a.localUser(r.PathValue("userId"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]bool{"admin": acc.Admin})
	return nil
}

func (a *API) putAdmin(w http.ResponseWriter, r *http.Request, c Caller) error {
	userID := r.PathValue("userId")
	var req struct {
		Admin *bool `json:"admin"`
	}
	if err := readJSON(r, &req); err != nil {
		return err
	}
	if req.Admin == nil {
		return mxerr.MissingParam("Missing 'admin' key in body")
	}
	if _, err := a.localUser(userID); err != nil {
		return err
	}
	if !*req.Admin && userID == c.UserID {
		return mxerr.New(http.StatusBadRequest, "M_UNKNOWN", "You may not demote yourself.")
	}
	if err := a.commit(r.Context(), c, "set_admin", userID, map[string]any{"admin": *req.Admin},
		facts.MustEncode(englog.KindUserAdminSet, facts.UserAdminSet{UserID: userID, Admin: *req.Admin})); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, struct{}{})
	return nil
}

// moderate checks a lock or suspension target as the spec asks: local (400
// M_INVALID_PARAM), existing and active (404), not an admin (403).
func (a *API) moderationTarget(r *http.Request, c Caller, changing bool) (*accounts.Account, error) {
	userID := r.PathValue("userId")
	if !a.isLocal(userID) {
		return nil, mxerr.InvalidParam("User does not belong to the local server.")
	}
	acc, err := a.host.Accounts().Account(userID)
	if err != nil {
		return nil, err
	}
	if acc == nil || acc.Deactivated {
		return nil, mxerr.NotFound("User not found.")
	}
	if changing && (acc.Admin || userID == c.UserID) {
		return nil, mxerr.Forbidden("Server administrators cannot be locked or suspended.")
	}
	return acc, nil
}

func (a *API) getFlag(flag string) adminHandler {
	return func(w http.ResponseWriter, r *http.Request, c Caller) error {
		acc, err := a.moderationTarget(r, c, false)
		if err != nil {
			return err
		}
		v := acc.Locked
		if flag == "suspended" {
			v = acc.Suspended
		}
		writeJSON(w, http.StatusOK, map[string]bool{flag: v})
		return nil
	}
}

func (a *API) putFlag(flag string) adminHandler {
	return func(w http.ResponseWriter, r *http.Request, c Caller) error {
		var req map[string]*bool
		if err := readJSON(r, &req); err != nil {
			return err
		}
		v := req[flag]
		if v == nil {
			return mxerr.MissingParam("%s (a boolean) is required", flag)
		}
		acc, err := a.moderationTarget(r, c, true)
		if err != nil {
			return err
		}
		if err := a.setFlag(r, c, acc.UserID, flag, *v); err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, map[string]bool{flag: *v})
		return nil
	}
}

func (a *API) setFlag(r *http.Request, c Caller, userID, flag string, v bool) error {
	f := facts.UserModerated{UserID: userID}
	action := "lock"
	if flag == "suspended" {
		f.Suspended, action = &v, "suspend"
	} else {
		f.Locked = &v
	}
	return a.commit(r.Context(), c, action, userID, map[string]any{flag: v}, facts.MustEncode(englog.KindUserModerated, f))
}

// synapseSuspend is Synapse's PUT /_synapse/admin/v1/suspend/{userId}.
func (a *API) synapseSuspend(w http.ResponseWriter, r *http.Request, c Caller) error {
	var req struct {
		Suspend *bool `json:"suspend"`
	}
	if err := readJSON(r, &req); err != nil {
		return err
	}
	if req.Suspend == nil {
		return mxerr.MissingParam("suspend (a boolean) is required")
	}
	acc, err := a.moderationTarget(r, c, true)
	if err != nil {
		return err
	}
	if err := a.setFlag(r, c, acc.UserID, "suspended", *req.Suspend); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]bool{"user_" + acc.UserID + "_suspended": *req.Suspend})
	return nil
}
