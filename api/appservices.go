package api

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/engram-hs/engram/api/appservice"
	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/projections"
	"github.com/engram-hs/engram/projections/accounts"
	asproj "github.com/engram-hs/engram/projections/appservice"
	"github.com/engram-hs/engram/projections/rooms"
)

// Application services (spec: "Application Service API"; the package
// api/appservice holds the registrations and delivery). This file wires
// them into the client-server API: the as_token as a credential, user and
// device masquerading, registration and login of their users, the
// exclusivity of their namespaces, timestamp massaging and ping.

func (s *Server) appserviceRoutes() {
	s.handle("POST", "/_matrix/client/v1/appservice/{appserviceId}/ping", s.appservicePing)
}

// appserviceSession authenticates a request made with an as_token: as
// the user named by ?user_id= (default: the appservice's sender), on the
// device named by ?device_id= if any.
func (s *Server) appserviceSession(r *http.Request, reg *appservice.Registration) (*session, error) {
	q := r.URL.Query()
	userID := reg.Sender()
	if u := q.Get("user_id"); u != "" {
		userID = u
	}
	if !reg.OwnsUser(userID) {
		return nil, errForbidden("Application service cannot masquerade as %s: it is not in its user namespaces", userID)
	}
	acc, err := s.accountsView().Account(userID)
	if err != nil {
		return nil, err
	}
	if acc == nil && userID == reg.Sender() {
		// The sender exists as soon as the registration does (spec:
		// sender_localpart); it is recorded on its first use.
		if acc, err = s.registerAppserviceUser(r.Context(), reg, userID); err != nil {
			return nil, err
		}
	}
	if acc == nil {
		return nil, errForbidden("Application service has not registered %s; register it first with m.login.application_service", userID)
	}
	if acc.Deactivated {
		return nil, errForbidden("%s has been deactivated", userID)
	}
	deviceID := q.Get("device_id")
	if deviceID != "" {
		dev, err := s.accountsView().Device(userID, deviceID)
		if err != nil {
			return nil, err
		}
		if dev == nil {
			return nil, merr(http.StatusBadRequest, "M_UNKNOWN_DEVICE", "Device %s does not belong to %s", deviceID, userID)
		}
	}
	if ri := reqInfoFrom(r); ri != nil {
		ri.user = userID
	}
	return &session{UserID: userID, DeviceID: deviceID, Admin: acc.Admin, Appservice: reg,
		Suspended: acc.Suspended, ShadowBanned: acc.ShadowBanned}, nil
}

// registerAppserviceUser records a passwordless account for an
// appservice's user (its sender, on first use).
func (s *Server) registerAppserviceUser(ctx context.Context, reg *appservice.Registration, userID string) (*accounts.Account, error) {
	unlock := s.locks.Lock("register")
	defer unlock()
	acc, err := s.accountsView().Account(userID)
	if err != nil || acc != nil {
		return acc, err
	}
	regID := randomString(12)
	if err := s.commitRegistration(ctx, userID, regID, false, []englog.Proposal{appserviceAccount(reg, userID, regID)}); err != nil {
		return nil, err
	}
	return s.accountsView().Account(userID)
}

func appserviceAccount(reg *appservice.Registration, userID, regID string) englog.Proposal {
	return facts.MustEncode(englog.KindAccountRegistered, facts.AccountRegistered{
		UserID: userID, DisplayName: localpart(userID), Registration: regID, Appservice: reg.ID,
	})
}

// registerAppservice is POST /register with m.login.application_service:
// no flows, no password, any user of the appservice's namespaces, even
// when registration is closed (spec: "Server admin style permissions").
func (s *Server) registerAppservice(w http.ResponseWriter, r *http.Request, req *registerRequest) error {
	reg, err := s.appserviceCaller(r)
	if err != nil {
		return err
	}
	if req.Username == "" {
		return errMissingParam("username is required")
	}
	userID := s.userIDFor(req.Username)
	if userID == "" {
		return merr(http.StatusBadRequest, "M_INVALID_USERNAME", "%s is not a user of this server", req.Username)
	}
	if !reg.OwnsUser(userID) {
		return merr(http.StatusBadRequest, "M_EXCLUSIVE", "%s is not in the application service's user namespaces", userID)
	}
	if err := checkDeviceID(req.DeviceID); err != nil {
		return err
	}
	unlock := s.locks.Lock("register")
	defer unlock()
	if _, err := s.checkNewUsername(localpart(userID)); err != nil {
		return err
	}
	regID := randomString(12)
	props := []englog.Proposal{appserviceAccount(reg, userID, regID)}
	res := loginResult{UserID: userID, HomeServer: s.cfg.ServerName}
	if !req.InhibitLogin {
		var more []englog.Proposal
		res, more = s.newSession(r, userID, req.DeviceID, req.InitialDeviceDisplayName, req.RefreshToken, regID)
		props = append(props, more...)
	}
	if err := s.commitRegistration(r.Context(), userID, regID, false, props); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, res)
	return nil
}

// loginAppservice is POST /login with m.login.application_service: a
// session for one of the appservice's users, without a password.
func (s *Server) loginAppservice(w http.ResponseWriter, r *http.Request, a *authDict, deviceID, displayName string, refreshable bool) error {
	reg, err := s.appserviceCaller(r)
	if err != nil {
		return err
	}
	userID := s.passwordUser(a)
	if userID == "" || !reg.OwnsUser(userID) {
		return merr(http.StatusBadRequest, "M_EXCLUSIVE", "The user is not in the application service's user namespaces")
	}
	acc, err := s.accountsView().Account(userID)
	if err != nil {
		return err
	}
	if acc == nil {
		return errForbidden("%s is not registered", userID)
	}
	if acc.Deactivated {
		return merr(http.StatusForbidden, "M_USER_DEACTIVATED", "This account has been deactivated")
	}
	if err := checkDeviceID(deviceID); err != nil {
		return err
	}
	res, props := s.newSession(r, userID, deviceID, displayName, refreshable, "")
	if _, err := s.commit(r.Context(), []*projections.Handle{s.accountsH}, props...); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, res)
	return nil
}

// appserviceCaller is the appservice whose as_token the request carries,
// with the errors the spec gives m.login.application_service without one.
func (s *Server) appserviceCaller(r *http.Request) (*appservice.Registration, error) {
	tok := bearerToken(r)
	if tok == "" {
		return nil, merr(http.StatusUnauthorized, "M_MISSING_TOKEN", "m.login.application_service needs the appservice's as_token")
	}
	reg := s.cfg.Appservices.ByToken(tok)
	if reg == nil {
		return nil, merr(http.StatusUnauthorized, "M_UNKNOWN_TOKEN", "Unrecognised application service token")
	}
	return reg, nil
}

// exclusiveUser refuses userID to anyone but the appservice that holds it
// in an exclusive namespace.
func (s *Server) exclusiveUser(userID string, caller *appservice.Registration) error {
	if owner := s.cfg.Appservices.ExclusiveUser(userID); owner != nil && owner != caller {
		return merr(http.StatusBadRequest, "M_EXCLUSIVE", "%s is reserved by an application service", userID)
	}
	return nil
}

// exclusiveAlias: the same for room aliases. An appservice may manage
// every alias of its namespaces.
func (s *Server) exclusiveAlias(alias string, sess *session) error {
	if owner := s.cfg.Appservices.ExclusiveAlias(alias); owner != nil && owner != sess.Appservice {
		return merr(http.StatusBadRequest, "M_EXCLUSIVE", "Room alias %s is reserved by an application service", alias)
	}
	return nil
}

// queryAppserviceAlias asks the appservices interested in an unknown
// local alias to create it (spec: "Querying"); the room ID once one did.
func (s *Server) queryAppserviceAlias(ctx context.Context, alias string) (string, error) {
	for _, reg := range s.cfg.Appservices.All() {
		if !reg.InterestedInAlias(alias) || !reg.QueryAlias(ctx, s.asClient, alias) {
			continue
		}
		a, err := s.roomsView().Alias(alias)
		if err != nil {
			return "", err
		}
		if a != nil {
			return a.RoomID, nil
		}
	}
	return "", nil
}

// appserviceTS is the origin_server_ts an appservice asked for with ?ts=
// (spec: "Timestamp massaging"); 0 for everyone else, meaning now.
func appserviceTS(r *http.Request, sess *session) (int64, error) {
	v := r.URL.Query().Get("ts")
	if v == "" || sess.Appservice == nil {
		return 0, nil
	}
	ts, err := strconv.ParseInt(v, 10, 64)
	// origin_server_ts is a non-negative integer within canonical JSON's
	// range (spec: "Canonical JSON").
	if err != nil || ts < 0 || ts > 1<<53-1 {
		return 0, errInvalidParam("ts must be a timestamp in milliseconds")
	}
	return ts, nil
}

// appservicePing is POST /_matrix/client/v1/appservice/{appserviceId}/ping.
func (s *Server) appservicePing(w http.ResponseWriter, r *http.Request) error {
	reg, err := s.appserviceCaller(r)
	if err != nil {
		return err
	}
	if reg.ID != r.PathValue("appserviceId") {
		return errForbidden("This as_token belongs to another application service")
	}
	var req struct {
		TransactionID string `json:"transaction_id"`
	}
	if err := readJSON(r, &req); err != nil {
		return err
	}
	if !reg.Pushes() {
		return merr(http.StatusBadRequest, "M_URL_NOT_SET", "The application service's registration has no url")
	}
	ctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
	defer cancel()
	took, err := reg.Ping(ctx, s.asClient, req.TransactionID)
	var pe *appservice.PingError
	if errors.As(err, &pe) {
		e := merr(pe.HTTPStatus, pe.ErrCode, "%s", pe.Error())
		if pe.ErrCode == "M_BAD_STATUS" {
			e = e.With("status", pe.Status).With("body", pe.Body)
		}
		return e
	}
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]int64{"duration_ms": took.Milliseconds()})
	return nil
}

// StartAppservices delivers each configured appservice's transactions
// until Close. leader says whether this node delivers (nil: always).
func (s *Server) StartAppservices(leader func() bool) error {
	ctx, cancel := context.WithCancel(context.Background())
	go func() { <-s.closed; cancel() }()
	for _, reg := range s.cfg.Appservices.All() {
		if !reg.Pushes() {
			continue
		}
		d, err := appservice.NewDeliverer(appservice.Config{
			Registration: reg, ServerName: s.cfg.ServerName, Log: s.log, Leader: leader, Client: s.asClient, Logger: s.logger,
			Cursor: func() (uint64, bool, error) {
				c, err := asproj.NewView(s.appserviceH.Reader()).Cursor(reg.ID)
				if err != nil || c == nil {
					return 0, false, err
				}
				return c.Through, true, nil
			},
			Events: func(entries []englog.Entry) ([]appservice.Event, error) { return s.appserviceEvents(ctx, entries) },
			Rooms:  appserviceRooms{s.roomsView},
			Record: func(ctx context.Context, f facts.AppserviceDelivered) error {
				_, err := s.commit(ctx, []*projections.Handle{s.appserviceH}, facts.MustEncode(englog.KindAppserviceDelivered, f))
				return err
			},
		})
		if err != nil {
			return err
		}
		go d.Run(ctx)
	}
	return nil
}

// appserviceEvents turns log entries into the room events of the
// timeline, once the rooms projection has folded them (it decides which
// were rejected or soft-failed).
func (s *Server) appserviceEvents(ctx context.Context, entries []englog.Entry) ([]appservice.Event, error) {
	if err := s.roomsH.WaitApplied(ctx, entries[len(entries)-1].Offset); err != nil {
		return nil, err
	}
	v := s.roomsView()
	var out []appservice.Event
	for _, e := range entries {
		if e.Kind != englog.KindPDU {
			continue
		}
		var f facts.PDU
		if err := facts.Decode(e, &f); err != nil {
			return nil, err
		}
		if f.Rejected != "" || f.EventID == "" {
			continue
		}
		rec, err := v.Event(f.EventID)
		if err != nil {
			return nil, err
		}
		if rec == nil || rec.Offset != e.Offset || rec.Rejected != "" || rec.SoftFailed || rec.Outlier {
			continue
		}
		pdu, err := rec.PDU()
		if err != nil {
			return nil, err
		}
		out = append(out, appservice.Event{Offset: e.Offset, RoomID: rec.RoomID, Sender: pdu.Sender(), Type: pdu.Type(), StateKey: pdu.StateKey(),
			Client: s.formatClientEvent(v, rec, nil, true, false)})
	}
	return out, nil
}

// appserviceRooms reads membership and aliases for interest.
type appserviceRooms struct{ view func() rooms.View }

func (a appserviceRooms) JoinedMembers(roomID string) ([]string, error) {
	return a.view().MemberIDs(roomID, "join")
}
func (a appserviceRooms) Aliases(roomID string) ([]string, error) { return a.view().Aliases(roomID) }

// localpart is the part of a user ID between "@" and ":".
func localpart(userID string) string {
	l, _, _ := strings.Cut(strings.TrimPrefix(userID, "@"), ":")
	return l
}
