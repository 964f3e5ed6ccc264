package api

import (
	"encoding/json"
	"net/http"
	"strconv"
	"strings"

	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/projections"
)

// Typing notifications last at most this long, whatever the client asks.
const maxTypingTimeoutMS = 120_000

func (s *Server) userdataRoutes() {
	s.client("GET", "/user/{userId}/account_data/{type}", s.authed(s.getAccountData))
	s.client("PUT", "/user/{userId}/account_data/{type}", s.authed(s.putAccountData))
	s.client("GET", "/user/{userId}/rooms/{roomId}/account_data/{type}", s.authed(s.getAccountData))
	s.client("PUT", "/user/{userId}/rooms/{roomId}/account_data/{type}", s.authed(s.putAccountData))
	s.client("POST", "/user/{userId}/filter", s.authed(s.postFilter))
	s.client("GET", "/user/{userId}/filter/{filterId}", s.authed(s.getFilter))
	s.client("PUT", "/rooms/{roomId}/typing/{userId}", s.authed(s.typing))
	s.client("POST", "/rooms/{roomId}/receipt/{receiptType}/{eventId}", s.authed(s.receipt))
	s.client("POST", "/rooms/{roomId}/read_markers", s.authed(s.readMarkers))
	s.client("GET", "/presence/{userId}/status", s.authed(s.getPresence))
	s.client("PUT", "/presence/{userId}/status", s.authed(s.putPresence))
}

func ownUser(r *http.Request, sess *session) error {
	if r.PathValue("userId") != sess.UserID {
		return errForbidden("You may only access your own data")
	}
	return nil
}

func (s *Server) getAccountData(w http.ResponseWriter, r *http.Request, sess *session) error {
	if err := ownUser(r, sess); err != nil {
		return err
	}
	rec, err := s.userdataView().AccountData(sess.UserID, r.PathValue("roomId"), r.PathValue("type"))
	if err != nil {
		return err
	}
	if rec == nil {
		return errNotFound("Account data not found")
	}
	writeJSON(w, http.StatusOK, rec.Content)
	return nil
}

func (s *Server) putAccountData(w http.ResponseWriter, r *http.Request, sess *session) error {
	if err := ownUser(r, sess); err != nil {
		return err
	}
	roomID := r.PathValue("roomId")
	if roomID != "" && !strings.HasPrefix(roomID, "!") {
		return errInvalidParam("room ID must start with '!'")
	}
	typ := r.PathValue("type")
	if typ == "m.fully_read" || typ == "m.push_rules" {
		return merr(http.StatusBadRequest, "M_BAD_JSON", "%s cannot be set through account data", typ)
	}
	content, err := readContent(r)
	if err != nil {
		return err
	}
	if _, err := s.commit(r.Context(), []*projections.Handle{s.userdataH}, facts.MustEncode(englog.KindAccountDataSet, facts.AccountDataSet{UserID: sess.UserID, RoomID: roomID, Type: typ, Content: content})); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, struct{}{})
	return nil
}

func (s *Server) postFilter(w http.ResponseWriter, r *http.Request, sess *session) error {
	if err := ownUser(r, sess); err != nil {
		return err
	}
	var f syncFilter
	raw, err := readContent(r)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(raw, &f); err != nil {
		return errBadJSON("Invalid filter: %v", err)
	}
	if err := f.validate(); err != nil {
		return err
	}
	offs, err := s.commit(r.Context(), []*projections.Handle{s.userdataH}, facts.MustEncode(englog.KindFilterStored, facts.FilterStored{UserID: sess.UserID, Filter: raw}))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]string{"filter_id": strconv.FormatUint(offs[0], 10)})
	return nil
}

// validate refuses filters naming rooms or senders by something that is not
// a room ID or a user ID: such a filter could never match, so storing it
// would hide the client's mistake.
func (f *syncFilter) validate() error {
	if err := checkIDs("room.rooms", f.Room.Rooms, "!"); err != nil {
		return err
	}
	if err := checkIDs("room.not_rooms", f.Room.NotRooms, "!"); err != nil {
		return err
	}
	for name, ef := range map[string]*roomEventFilter{
		"account_data": f.AccountData, "presence": f.Presence,
		"room.timeline": f.Room.Timeline, "room.state": f.Room.State,
		"room.ephemeral": f.Room.Ephemeral, "room.account_data": f.Room.AccountData,
	} {
		if ef == nil {
			continue
		}
		for _, c := range []struct {
			field, sigil string
			ids          []string
		}{
			{"rooms", "!", ef.Rooms}, {"not_rooms", "!", ef.NotRooms},
			{"senders", "@", ef.Senders}, {"not_senders", "@", ef.NotSenders},
		} {
			if err := checkIDs(name+"."+c.field, c.ids, c.sigil); err != nil {
				return err
			}
		}
	}
	return nil
}

// checkIDs requires every entry to look like sigil + opaque part + ":" + server.
func checkIDs(field string, ids []string, sigil string) error {
	for _, id := range ids {
		local, server, ok := strings.Cut(strings.TrimPrefix(id, sigil), ":")
		if !strings.HasPrefix(id, sigil) || !ok || local == "" || server == "" || len(id) > 255 {
			return errInvalidParam("%s: %q is not a valid %s", field, id, map[string]string{"!": "room ID", "@": "user ID"}[sigil])
		}
	}
	return nil
}

func (s *Server) getFilter(w http.ResponseWriter, r *http.Request, sess *session) error {
	if err := ownUser(r, sess); err != nil {
		return err
	}
	f, err := s.userdataView().Filter(sess.UserID, r.PathValue("filterId"))
	if err != nil {
		return err
	}
	if f == nil {
		return errNotFound("Filter not found")
	}
	writeJSON(w, http.StatusOK, f)
	return nil
}

func (s *Server) typing(w http.ResponseWriter, r *http.Request, sess *session) error {
	roomID, err := roomIDParam(r)
	if err != nil {
		return err
	}
	if err := ownUser(r, sess); err != nil {
		return err
	}
	var req struct {
		Typing  *bool `json:"typing"`
		Timeout int64 `json:"timeout"`
	}
	if err := readJSON(r, &req); err != nil {
		return err
	}
	if req.Typing == nil {
		return errMissingParam("typing is required")
	}
	if _, _, err := s.requireMember(roomID, sess.UserID, false); err != nil {
		return err
	}
	timeout := min(max(req.Timeout, 0), maxTypingTimeoutMS)
	if timeout == 0 {
		timeout = 30_000
	}
	c := facts.TypingContent{RoomID: roomID, UserID: sess.UserID, Typing: *req.Typing}
	if c.Typing {
		c.ExpiresAt = nowMS() + timeout
	}
	props := append([]englog.Proposal{facts.MustEncode(englog.KindEDU, facts.EDU{Type: facts.EDUTyping, Origin: s.cfg.ServerName, Content: mustJSON(c)})}, s.typingEDU(roomID, sess.UserID, c.Typing)...)
	if _, err := s.commit(r.Context(), []*projections.Handle{s.userdataH}, props...); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, struct{}{})
	return nil
}

func (s *Server) receiptProposal(roomID, userID, eventID, typ, thread string) englog.Proposal {
	if typ == "m.fully_read" {
		return facts.MustEncode(englog.KindAccountDataSet, facts.AccountDataSet{UserID: userID, RoomID: roomID, Type: "m.fully_read", Content: mustJSON(map[string]string{"event_id": eventID})})
	}
	return facts.MustEncode(englog.KindEDU, facts.EDU{Type: facts.EDUReceipt, Origin: s.cfg.ServerName, Content: mustJSON(facts.ReceiptContent{
		RoomID: roomID, UserID: userID, EventID: eventID, ReceiptType: typ, ThreadID: thread, TS: nowMS()})})
}

func (s *Server) receipt(w http.ResponseWriter, r *http.Request, sess *session) error {
	roomID, err := roomIDParam(r)
	if err != nil {
		return err
	}
	typ := r.PathValue("receiptType")
	if typ != "m.read" && typ != "m.read.private" && typ != "m.fully_read" {
		return errInvalidParam("Unknown receipt type %q", typ)
	}
	var req struct {
		ThreadID string `json:"thread_id"`
	}
	if err := readJSON(r, &req); err != nil {
		return err
	}
	if _, _, err := s.requireMember(roomID, sess.UserID, false); err != nil {
		return err
	}
	eventID := r.PathValue("eventId")
	if e, err := s.roomsView().Event(eventID); err != nil {
		return err
	} else if e == nil || e.RoomID != roomID {
		return errNotFound("Event not found")
	}
	props := append([]englog.Proposal{s.receiptProposal(roomID, sess.UserID, eventID, typ, req.ThreadID)}, s.receiptEDU(roomID, sess.UserID, eventID, typ, req.ThreadID, nowMS())...)
	if _, err := s.commit(r.Context(), []*projections.Handle{s.userdataH}, props...); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, struct{}{})
	return nil
}

func (s *Server) readMarkers(w http.ResponseWriter, r *http.Request, sess *session) error {
	roomID, err := roomIDParam(r)
	if err != nil {
		return err
	}
	var req map[string]string
	if err := readJSON(r, &req); err != nil {
		return err
	}
	if _, _, err := s.requireMember(roomID, sess.UserID, false); err != nil {
		return err
	}
	var props []englog.Proposal
	for _, typ := range []string{"m.fully_read", "m.read", "m.read.private"} {
		if id := req[typ]; id != "" {
			props = append(props, s.receiptProposal(roomID, sess.UserID, id, typ, ""))
			props = append(props, s.receiptEDU(roomID, sess.UserID, id, typ, "", nowMS())...)
		}
	}
	if len(props) > 0 {
		if _, err := s.commit(r.Context(), []*projections.Handle{s.userdataH}, props...); err != nil {
			return err
		}
	}
	writeJSON(w, http.StatusOK, struct{}{})
	return nil
}

func (s *Server) getPresence(w http.ResponseWriter, r *http.Request, sess *session) error {
	target := r.PathValue("userId")
	if target != sess.UserID {
		// Presence is published to the users who share a room with its
		// user (spec: presence, security considerations), as /sync does.
		if ok, err := s.shareRoom(sess.UserID, target); err != nil {
			return err
		} else if !ok {
			return errForbidden("You are not allowed to see the presence of %s (you share no room)", target)
		}
	}
	p, err := s.presenceOf(s.userdataView(), target)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, presenceContent(p, nowMS()))
	return nil
}

func (s *Server) putPresence(w http.ResponseWriter, r *http.Request, sess *session) error {
	if err := ownUser(r, sess); err != nil {
		return err
	}
	var req struct {
		Presence  string  `json:"presence"`
		StatusMsg *string `json:"status_msg"`
	}
	if err := readJSON(r, &req); err != nil {
		return err
	}
	switch req.Presence {
	case "online", "offline", "unavailable":
	default:
		return errInvalidParam("presence must be online, offline or unavailable")
	}
	props := append([]englog.Proposal{s.presenceFact(facts.PresenceContent{UserID: sess.UserID, Presence: req.Presence, StatusMsg: req.StatusMsg})}, s.presenceEDU(sess.UserID, req.Presence, req.StatusMsg)...)
	if _, err := s.commit(r.Context(), []*projections.Handle{s.userdataH}, props...); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, struct{}{})
	return nil
}

// shareRoom reports whether both users are joined to one room.
func (s *Server) shareRoom(a, b string) (bool, error) {
	v := s.roomsView()
	ms, err := v.Memberships(a)
	if err != nil {
		return false, err
	}
	for _, m := range ms {
		if m.Membership != "join" {
			continue
		}
		if other, err := v.Membership(b, m.RoomID); err != nil {
			return false, err
		} else if other != nil && other.Membership == "join" {
			return true, nil
		}
	}
	return false, nil
}
