package federation

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"strings"

	"github.com/engram-hs/engram/projections/accounts"
	"github.com/engram-hs/engram/projections/openid"
	"github.com/engram-hs/engram/projections/rooms"
)

// queryRoutes registers the query endpoints (server-server API,
// "Querying for information", "Published Room Directory"). They read the
// accounts and rooms projections api registered.
func (s *Server) queryRoutes() {
	s.HandleAuthed("GET /_matrix/federation/v1/query/profile", s.queryProfile)
	s.HandleAuthed("GET /_matrix/federation/v1/query/directory", s.queryDirectory)
	s.HandleAuthed("GET /_matrix/federation/v1/publicRooms", s.getPublicRooms)
	s.HandleAuthed("POST /_matrix/federation/v1/publicRooms", s.postPublicRooms)
	// Called by third parties (integration managers), not servers: no
	// X-Matrix.
	s.Handle("GET /_matrix/federation/v1/openid/userinfo", s.openIDUserInfo)
}

// openIDUserInfo exchanges an OpenID token for the user it was issued to
// (server-server API, "OpenID").
func (s *Server) openIDUserInfo(w http.ResponseWriter, r *http.Request) {
	tok := r.URL.Query().Get("access_token")
	if tok == "" {
		writeError(w, Errorf(http.StatusUnauthorized, "M_MISSING_TOKEN", "access_token is required"))
		return
	}
	if s.deps.OpenID == nil {
		writeError(w, Errorf(http.StatusUnauthorized, "M_UNKNOWN_TOKEN", "Access token unknown or expired"))
		return
	}
	sum := sha256.Sum256([]byte(tok))
	t, err := openid.NewView(s.deps.OpenID.Reader()).Token(hex.EncodeToString(sum[:]))
	if err != nil {
		writeError(w, err)
		return
	}
	if t == nil || t.ExpiresAt <= s.cfg.Now().UnixMilli() {
		writeError(w, Errorf(http.StatusUnauthorized, "M_UNKNOWN_TOKEN", "Access token unknown or expired"))
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"sub": t.UserID})
}

func errNotFound(format string, args ...any) *Error {
	return Errorf(http.StatusNotFound, "M_NOT_FOUND", format, args...)
}

func errInvalidParam(format string, args ...any) *Error {
	return Errorf(http.StatusBadRequest, "M_INVALID_PARAM", format, args...)
}

func (s *Server) roomsView() (rooms.View, error) {
	if s.deps.Rooms == nil {
		return rooms.View{}, Errorf(http.StatusNotImplemented, "M_UNRECOGNIZED", "Rooms are not served here")
	}
	return s.deps.Rooms.View(), nil
}

// queryProfile answers a local user's profile, or one field of it.
func (s *Server) queryProfile(w http.ResponseWriter, r *http.Request, origin string) error {
	userID := r.URL.Query().Get("user_id")
	field := r.URL.Query().Get("field")
	if userID == "" {
		return Errorf(http.StatusBadRequest, "M_MISSING_PARAM", "user_id is required")
	}
	if field != "" && field != "displayname" && field != "avatar_url" {
		return errInvalidParam("Unknown profile field %q", field)
	}
	if _, domain, _ := strings.Cut(userID, ":"); domain != s.cfg.ServerName {
		return errInvalidParam("%s is not a user of this server", userID)
	}
	if s.deps.Accounts == nil {
		return errNotFound("Profile not found")
	}
	v := accounts.NewView(s.deps.Accounts.Reader())
	acc, err := v.Account(userID)
	if err != nil {
		return err
	}
	if acc == nil {
		return errNotFound("Profile not found")
	}
	p, err := v.Profile(userID)
	if err != nil {
		return err
	}
	out := map[string]string{}
	if p.DisplayName != nil && (field == "" || field == "displayname") {
		out["displayname"] = *p.DisplayName
	}
	if p.AvatarURL != nil && (field == "" || field == "avatar_url") {
		out["avatar_url"] = *p.AvatarURL
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

// queryDirectory resolves one of our room aliases, with the servers in
// the room (ours first).
func (s *Server) queryDirectory(w http.ResponseWriter, r *http.Request, origin string) error {
	alias := r.URL.Query().Get("room_alias")
	if alias == "" {
		return Errorf(http.StatusBadRequest, "M_MISSING_PARAM", "room_alias is required")
	}
	v, err := s.roomsView()
	if err != nil {
		return err
	}
	a, err := v.Alias(alias)
	if err != nil {
		return err
	}
	if a == nil {
		return errNotFound("Room alias %s not found", alias)
	}
	servers, err := v.ServersInRoom(a.RoomID, s.cfg.ServerName)
	if err != nil {
		return err
	}
	if len(servers) == 0 || servers[0] != s.cfg.ServerName {
		servers = append([]string{s.cfg.ServerName}, servers...)
	}
	writeJSON(w, http.StatusOK, map[string]any{"room_id": a.RoomID, "servers": servers})
	return nil
}

func (s *Server) getPublicRooms(w http.ResponseWriter, r *http.Request, origin string) error {
	qs := r.URL.Query()
	q := rooms.PublicRoomsQuery{Since: qs.Get("since")}
	if l := qs.Get("limit"); l != "" {
		n, err := strconv.Atoi(l)
		if err != nil {
			return errInvalidParam("limit must be an integer")
		}
		q.Limit = n
	}
	if qs.Get("third_party_instance_id") != "" {
		writeJSON(w, http.StatusOK, rooms.PublicRoomsPage{Chunk: []rooms.PublicRoom{}})
		return nil
	}
	return s.publicRooms(w, q)
}

func (s *Server) postPublicRooms(w http.ResponseWriter, r *http.Request, origin string) error {
	var req struct {
		Limit  *int   `json:"limit"`
		Since  string `json:"since"`
		Filter struct {
			GenericSearchTerm string    `json:"generic_search_term"`
			RoomTypes         []*string `json:"room_types"`
		} `json:"filter"`
		IncludeAllNetworks   bool   `json:"include_all_networks"`
		ThirdPartyInstanceID string `json:"third_party_instance_id"`
	}
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		return Errorf(http.StatusBadRequest, "M_BAD_JSON", "The body is not the JSON object expected: %v", err)
	}
	if req.ThirdPartyInstanceID != "" {
		writeJSON(w, http.StatusOK, rooms.PublicRoomsPage{Chunk: []rooms.PublicRoom{}})
		return nil
	}
	q := rooms.PublicRoomsQuery{Since: req.Since, Search: req.Filter.GenericSearchTerm, RoomTypes: req.Filter.RoomTypes}
	if req.Limit != nil {
		q.Limit = *req.Limit
	}
	return s.publicRooms(w, q)
}

func (s *Server) publicRooms(w http.ResponseWriter, q rooms.PublicRoomsQuery) error {
	v, err := s.roomsView()
	if err != nil {
		return err
	}
	page, err := v.PublishedRooms(q)
	if errors.Is(err, rooms.ErrBadSince) {
		return errInvalidParam("Invalid pagination token %q", q.Since)
	}
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, page)
	return nil
}
