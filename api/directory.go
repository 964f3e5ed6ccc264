package api

import (
	"context"
	"encoding/json"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

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

// validAlias checks the room alias grammar (spec appendices, "Room
// Aliases"): "#", a localpart without ':' or NUL, ":", a server name, at
// most 255 bytes in all.
func validAlias(alias string) bool {
	local, server, ok := strings.Cut(strings.TrimPrefix(alias, "#"), ":")
	return strings.HasPrefix(alias, "#") && ok && len(alias) <= 255 &&
		utf8.ValidString(local) && !strings.ContainsRune(local, 0) && validServerName(server)
}

// validServerName checks the server name grammar (spec appendices,
// "Server Name"): a DNS name, an IPv4 address or a bracketed IPv6
// address, then an optional port.
func validServerName(name string) bool {
	host, port := name, ""
	if strings.HasPrefix(name, "[") {
		end := strings.IndexByte(name, ']')
		if end < 0 {
			return false
		}
		host, port = name[1:end], strings.TrimPrefix(name[end+1:], ":")
		if name[end+1:] != "" && !strings.HasPrefix(name[end+1:], ":") {
			return false
		}
		if ip, err := netip.ParseAddr(host); err != nil || !ip.Is6() {
			return false
		}
	} else if h, p, ok := strings.Cut(name, ":"); ok {
		host, port = h, p
		if port == "" {
			return false
		}
	}
	if port != "" {
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 || len(port) > 5 {
			return false
		}
	}
	if strings.HasPrefix(name, "[") {
		return true
	}
	if host == "" || len(host) > 255 {
		return false
	}
	for _, c := range host {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.') {
			return false
		}
	}
	return true
}

// checkCanonicalAlias refuses an m.room.canonical_alias event whose
// aliases are malformed (400 M_INVALID_PARAM) or do not point to the room
// (400 M_BAD_ALIAS), as PUT /rooms/{roomId}/state asks. The main alias is
// checked whenever it is set; of alt_aliases only those the current event
// does not already list, so that a since deleted alias does not block
// every later change.
func (s *Server) checkCanonicalAlias(ctx context.Context, roomID string, content json.RawMessage) error {
	var c struct {
		Alias      *json.RawMessage `json:"alias"`
		AltAliases *json.RawMessage `json:"alt_aliases"`
	}
	if err := json.Unmarshal(content, &c); err != nil {
		return errBadJSON("m.room.canonical_alias content: %v", err)
	}
	var alias string
	if c.Alias != nil && string(*c.Alias) != "null" {
		if err := json.Unmarshal(*c.Alias, &alias); err != nil {
			return errInvalidParam("m.room.canonical_alias alias must be a string")
		}
	}
	var alt []string
	if c.AltAliases != nil && string(*c.AltAliases) != "null" {
		if err := json.Unmarshal(*c.AltAliases, &alt); err != nil {
			return errInvalidParam("m.room.canonical_alias alt_aliases must be an array of strings")
		}
	}
	var check []string
	if alias != "" {
		check = append(check, alias)
	}
	var old struct {
		AltAliases []string `json:"alt_aliases"`
	}
	if cur, err := s.roomsView().StateEvent(roomID, "m.room.canonical_alias", ""); err != nil {
		return err
	} else if cur != nil {
		_ = json.Unmarshal(headOf(cur).Content, &old)
	}
	for _, a := range alt {
		if !slices.Contains(old.AltAliases, a) {
			check = append(check, a)
		}
	}
	for _, a := range check {
		if !validAlias(a) {
			return errInvalidParam("%q is not a valid room alias", a)
		}
	}
	for _, a := range check {
		var target string
		if domainOf(a) == s.cfg.ServerName {
			rec, err := s.roomsView().Alias(a)
			if err != nil {
				return err
			}
			if rec != nil {
				target = rec.RoomID
			}
		} else if out, err := s.remoteAlias(ctx, a); err == nil {
			target, _ = out["room_id"].(string)
		}
		if target != roomID {
			return merr(http.StatusBadRequest, "M_BAD_ALIAS", "The alias %s does not point to room %s", a, roomID)
		}
	}
	return nil
}
