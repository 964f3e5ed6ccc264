package api

import (
	"net/http"

	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/projections"
)

func (s *Server) directoryRoutes() {
	s.client("GET", "/publicRooms", s.publicRooms)
	s.client("GET", "/directory/list/room/{roomId}", s.getRoomVisibility)
	s.client("PUT", "/directory/list/room/{roomId}", s.authed(s.putRoomVisibility))
}

// publicRooms is GET /publicRooms: the same listing as POST, with limit,
// since and server from the query string.
func (s *Server) publicRooms(w http.ResponseWriter, r *http.Request) error {
	if !s.cfg.AllowPublicRoomsWithoutAuth {
		if _, err := s.authenticate(r); err != nil {
			return err
		}
	}
	q, err := publicRoomsQueryFromURL(r)
	if err != nil {
		return err
	}
	out, err := s.listPublicRooms(r.Context(), q)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (s *Server) getRoomVisibility(w http.ResponseWriter, r *http.Request) error {
	roomID, err := roomIDParam(r)
	if err != nil {
		return err
	}
	if room, err := s.roomsView().Room(roomID); err != nil {
		return err
	} else if room == nil {
		return errNotFound("Unknown room %s", roomID)
	}
	pub, err := s.roomsView().Public(roomID)
	if err != nil {
		return err
	}
	vis := "private"
	if pub {
		vis = "public"
	}
	writeJSON(w, http.StatusOK, map[string]string{"visibility": vis})
	return nil
}

func (s *Server) putRoomVisibility(w http.ResponseWriter, r *http.Request, sess *session) error {
	roomID, err := roomIDParam(r)
	if err != nil {
		return err
	}
	var req struct {
		Visibility string `json:"visibility"`
	}
	if err := readJSON(r, &req); err != nil {
		return err
	}
	if req.Visibility != "public" && req.Visibility != "private" {
		return errInvalidParam("visibility must be public or private")
	}
	if room, err := s.roomsView().Room(roomID); err != nil {
		return err
	} else if room == nil {
		return errNotFound("Unknown room %s", roomID)
	}
	if !sess.Admin {
		if ok, err := s.hasPower(roomID, sess.UserID, "state:m.room.canonical_alias"); err != nil {
			return err
		} else if !ok {
			return errForbidden("You may not change the directory visibility of this room")
		}
	}
	if _, err := s.commit(r.Context(), []*projections.Handle{s.roomsH}, facts.MustEncode(englog.KindRoomVisibilitySet, facts.RoomVisibilitySet{RoomID: roomID, Visibility: req.Visibility})); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, struct{}{})
	return nil
}
