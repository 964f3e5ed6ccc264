package api

import (
	"net/http"
	"strings"

	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/projections"
	"github.com/engram-hs/engram/projections/reports"
)

// Reporting content (spec: report_content.yaml): events, rooms and users.
// Each report is a ReportFiled fact; the reports projection keeps them for
// the admin API.

func (s *Server) reportRoutes() {
	s.client("POST", "/rooms/{roomId}/report/{eventId}", s.authed(s.reportEvent))
	s.client("POST", "/rooms/{roomId}/report", s.authed(s.reportRoom))
	s.client("POST", "/users/{userId}/report", s.authed(s.reportUser))
}

// Reports reads the filed reports (for the admin API).
func (s *Server) Reports() reports.View { return reports.NewView(s.reportsH.Reader()) }

// fileReport records a report and waits until the reports projection has
// it, so an admin listing right after sees it.
func (s *Server) fileReport(w http.ResponseWriter, r *http.Request, f facts.ReportFiled) error {
	if _, err := s.commit(r.Context(), []*projections.Handle{s.reportsH}, facts.MustEncode(englog.KindReportFiled, f)); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, struct{}{})
	return nil
}

func (s *Server) reportEvent(w http.ResponseWriter, r *http.Request, sess *session) error {
	roomID, err := roomIDParam(r)
	if err != nil {
		return err
	}
	var req struct {
		Reason string `json:"reason"`
		// score was removed from the spec (v1.13) but older clients still
		// send it; it is kept when it is in the range those clients used.
		Score *int `json:"score"`
	}
	if err := readJSON(r, &req); err != nil {
		return err
	}
	if req.Score != nil && (*req.Score < -100 || *req.Score > 0) {
		return errInvalidParam("score must be between -100 and 0")
	}
	// The spec answers 404 alike for a missing event and for a room the
	// reporter is not joined to, so reports cannot probe rooms.
	notFound := errNotFound("The event was not found or you are not joined to the room where it is")
	m, err := s.roomsView().Membership(sess.UserID, roomID)
	if err != nil {
		return err
	}
	if m == nil || m.Membership != "join" {
		return notFound
	}
	eventID := r.PathValue("eventId")
	e, err := s.roomsView().Event(eventID)
	if err != nil {
		return err
	}
	upper, vis, err := s.readAccess(roomID, sess.UserID)
	if err != nil {
		return err
	}
	if !visibleIn(e, roomID, upper, vis) {
		return notFound
	}
	return s.fileReport(w, r, facts.ReportFiled{UserID: sess.UserID, RoomID: roomID, EventID: eventID, Reason: req.Reason, Score: req.Score})
}

func (s *Server) reportRoom(w http.ResponseWriter, r *http.Request, sess *session) error {
	roomID, err := roomIDParam(r)
	if err != nil {
		return err
	}
	var req struct {
		Reason *string `json:"reason"`
	}
	if err := readJSON(r, &req); err != nil {
		return err
	}
	if req.Reason == nil {
		return errMissingParam("reason is required (it may be blank)")
	}
	if room, err := s.roomsView().Room(roomID); err != nil {
		return err
	} else if room == nil {
		return errNotFound("The room was not found.")
	}
	return s.fileReport(w, r, facts.ReportFiled{UserID: sess.UserID, RoomID: roomID, Reason: *req.Reason})
}

func (s *Server) reportUser(w http.ResponseWriter, r *http.Request, sess *session) error {
	target := r.PathValue("userId")
	if !strings.HasPrefix(target, "@") || !strings.Contains(target, ":") {
		return errInvalidParam("%q is not a user ID", target)
	}
	var req struct {
		Reason *string `json:"reason"`
	}
	if err := readJSON(r, &req); err != nil {
		return err
	}
	if req.Reason == nil {
		return errMissingParam("reason is required (it may be blank)")
	}
	// Local users must exist; a remote user cannot be checked without
	// federation, so a well-formed remote ID is accepted.
	if strings.HasSuffix(target, ":"+s.cfg.ServerName) {
		acc, err := s.accountsView().Account(target)
		if err != nil {
			return err
		}
		if acc == nil {
			return errNotFound("The user was not found.")
		}
	}
	return s.fileReport(w, r, facts.ReportFiled{UserID: sess.UserID, TargetUserID: target, Reason: *req.Reason})
}
