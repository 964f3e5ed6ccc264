package api

import (
	"encoding/json"
	"net/http"

	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/projections"
)

func (s *Server) directoryRoutes() {
	s.client("GET", "/publicRooms", s.publicRooms)
	s.client("GET", "/directory/list/room/{roomId}", s.getRoomVisibility)
	s.client("PUT", "/directory/list/room/{roomId}", s.authed(s.putRoomVisibility))
	s.handle("POST", "/_synapse/admin/v1/registration_tokens/new", s.authed(s.newRegistrationToken))
}

func (s *Server) publicRooms(w http.ResponseWriter, r *http.Request) error {
	if !s.cfg.AllowPublicRoomsWithoutAuth {
		if _, err := s.authenticate(r); err != nil {
			return err
		}
	}
	v := s.roomsView()
	ids, err := v.PublicRooms()
	if err != nil {
		return err
	}
	chunk := []map[string]any{}
	for _, id := range ids {
		entry := map[string]any{"room_id": id, "world_readable": false, "guest_can_join": false}
		str := func(typ, field, out string) {
			if e, err := v.StateEvent(id, typ, ""); err == nil && e != nil {
				var c map[string]any
				_ = json.Unmarshal(headOf(e).Content, &c)
				if val, ok := c[field].(string); ok && val != "" {
					entry[out] = val
				}
			}
		}
		str("m.room.name", "name", "name")
		str("m.room.topic", "topic", "topic")
		str("m.room.canonical_alias", "alias", "canonical_alias")
		str("m.room.avatar", "url", "avatar_url")
		str("m.room.join_rules", "join_rule", "join_rule")
		str("m.room.history_visibility", "history_visibility", "hv")
		entry["world_readable"] = entry["hv"] == "world_readable"
		delete(entry, "hv")
		sum, err := s.roomSummary(v, id, "")
		if err != nil {
			return err
		}
		entry["num_joined_members"] = sum["m.joined_member_count"]
		chunk = append(chunk, entry)
	}
	writeJSON(w, http.StatusOK, map[string]any{"chunk": chunk, "total_room_count_estimate": len(chunk)})
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

// newRegistrationToken is Synapse's admin API for registration tokens.
func (s *Server) newRegistrationToken(w http.ResponseWriter, r *http.Request, sess *session) error {
	if !sess.Admin {
		return errForbidden("You are not a server admin")
	}
	var req struct {
		Token       string `json:"token"`
		UsesAllowed *int   `json:"uses_allowed"`
		ExpiryTime  int64  `json:"expiry_time"`
		Length      int    `json:"length"`
	}
	if err := readJSON(r, &req); err != nil {
		return err
	}
	if req.Token == "" {
		n := req.Length
		if n <= 0 || n > 64 {
			n = 16
		}
		req.Token = randomString(n)[:n]
	}
	if t, err := s.accountsView().RegistrationToken(req.Token); err != nil {
		return err
	} else if t != nil {
		return errInvalidParam("Registration token %s already exists", req.Token)
	}
	if _, err := s.commit(r.Context(), []*projections.Handle{s.accountsH}, facts.MustEncode(englog.KindRegistrationToken, facts.RegistrationToken{
		Op: facts.RegistrationTokenCreate, Token: req.Token, UsesAllowed: req.UsesAllowed, ExpiryTime: req.ExpiryTime})); err != nil {
		return err
	}
	out := map[string]any{"token": req.Token, "uses_allowed": req.UsesAllowed, "pending": 0, "completed": 0, "expiry_time": nil}
	if req.ExpiryTime != 0 {
		out["expiry_time"] = req.ExpiryTime
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}
