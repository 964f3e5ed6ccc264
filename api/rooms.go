package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"maps"
	"net/http"
	"slices"
	"strings"
	"unicode"

	"github.com/engram-hs/engram/internal/mxerr"
	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/projections"
	"github.com/engram-hs/engram/projections/rooms"
	"github.com/engram-hs/engram/roomwrite"
	"github.com/engram-hs/engram/stateres"
	"github.com/engram-hs/engram/stateres/auth"
	"github.com/engram-hs/engram/stateres/canonicaljson"
)

func (s *Server) roomRoutes() {
	s.client("POST", "/createRoom", s.authed(s.createRoom))
	s.client("POST", "/join/{roomIdOrAlias}", s.authed(s.joinByIDOrAlias))
	s.client("POST", "/rooms/{roomId}/join", s.authed(s.joinRoom))
	s.client("POST", "/rooms/{roomId}/invite", s.authed(s.invite))
	s.client("POST", "/rooms/{roomId}/leave", s.authed(s.leave))
	s.client("POST", "/rooms/{roomId}/kick", s.authed(s.kick))
	s.client("POST", "/rooms/{roomId}/ban", s.authed(s.ban))
	s.client("POST", "/rooms/{roomId}/unban", s.authed(s.unban))
	s.client("POST", "/rooms/{roomId}/forget", s.authed(s.forget))
	s.client("GET", "/joined_rooms", s.authed(s.joinedRooms))
	s.client("GET", "/rooms/{roomId}/members", s.authed(s.members))
	s.client("GET", "/rooms/{roomId}/joined_members", s.authed(s.joinedMembers))
	s.client("GET", "/rooms/{roomId}/state", s.authed(s.getState))
	s.client("GET", "/rooms/{roomId}/state/{eventType}", s.authed(s.getStateEvent))
	s.client("GET", "/rooms/{roomId}/state/{eventType}/{stateKey...}", s.authed(s.getStateEvent))
	s.client("PUT", "/rooms/{roomId}/state/{eventType}", s.authed(s.putState))
	s.client("PUT", "/rooms/{roomId}/state/{eventType}/{stateKey...}", s.authed(s.putState))
	s.client("PUT", "/rooms/{roomId}/send/{eventType}/{txnId}", s.authed(s.send))
	s.client("PUT", "/rooms/{roomId}/redact/{eventId}/{txnId}", s.authed(s.redactEvent))
	s.client("GET", "/rooms/{roomId}/event/{eventId}", s.authed(s.getEvent))
	s.client("GET", "/rooms/{roomId}/messages", s.authed(s.messages))
	s.client("GET", "/rooms/{roomId}/context/{eventId}", s.authed(s.eventContext))
	s.client("GET", "/directory/room/{roomAlias}", s.getAlias)
	s.client("PUT", "/directory/room/{roomAlias}", s.authed(s.putAlias))
	s.client("DELETE", "/directory/room/{roomAlias}", s.authed(s.deleteAlias))
	s.client("GET", "/rooms/{roomId}/aliases", s.authed(s.roomAliases))
}

func strptr(s string) *string { return &s }

func mustJSON(v any) json.RawMessage {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

// roomIDParam validates the {roomId} path parameter.
func roomIDParam(r *http.Request) (string, error) {
	id := r.PathValue("roomId")
	if !strings.HasPrefix(id, "!") {
		return "", errInvalidParam("room ID must start with '!'")
	}
	setRoom(r, id)
	return id, nil
}

type createRoomReq struct {
	Visibility                string            `json:"visibility"`
	RoomAliasName             string            `json:"room_alias_name"`
	Name                      *string           `json:"name"`
	Topic                     *string           `json:"topic"`
	Invite                    []string          `json:"invite"`
	RoomVersion               string            `json:"room_version"`
	CreationContent           map[string]any    `json:"creation_content"`
	InitialState              []initialStateEvt `json:"initial_state"`
	Preset                    string            `json:"preset"`
	IsDirect                  bool              `json:"is_direct"`
	PowerLevelContentOverride map[string]any    `json:"power_level_content_override"`
}

// checkCreateRoom validates a createRoom request and returns its room
// version, preset and the full alias ("" for none).
func (s *Server) checkCreateRoom(req *createRoomReq) (version *stateres.RoomVersion, preset, alias string, err error) {
	verID := req.RoomVersion
	if verID == "" {
		verID = s.cfg.DefaultRoomVersion
	}
	version, ok := stateres.Version(verID)
	if !ok {
		return nil, "", "", merr(http.StatusBadRequest, "M_UNSUPPORTED_ROOM_VERSION", "Room version %q is not supported", verID)
	}
	preset = req.Preset
	if preset == "" {
		preset = "private_chat"
		if req.Visibility == "public" {
			preset = "public_chat"
		}
	}
	switch preset {
	case "private_chat", "public_chat", "trusted_private_chat":
	default:
		return nil, "", "", errInvalidParam("Unknown preset %q", preset)
	}
	if req.Visibility != "" && req.Visibility != "public" && req.Visibility != "private" {
		return nil, "", "", errInvalidParam("visibility must be public or private")
	}
	for _, u := range req.Invite {
		if !strings.HasPrefix(u, "@") || !strings.Contains(u, ":") {
			return nil, "", "", errInvalidParam("Invalid user ID %q in invite", u)
		}
	}
	if version.PrivilegedCreators {
		if err := creatorsRequest(req, preset); err != nil {
			return nil, "", "", err
		}
	}
	if req.RoomAliasName != "" {
		if strings.ContainsAny(req.RoomAliasName, ":# ") {
			return nil, "", "", errInvalidParam("room_alias_name must be a localpart without ':' or '#'")
		}
		alias = "#" + req.RoomAliasName + ":" + s.cfg.ServerName
	}
	return version, preset, alias, nil
}

// creatorsRequest checks creation_content.additional_creators of a room
// version with privileged creators (400 M_BAD_JSON unless an array of
// user IDs) and, for trusted_private_chat, adds the invitees to it
// (spec: createRoom, creation_content). The power levels may not name a
// creator (400 M_INVALID_ROOM_STATE): their level is fixed.
func creatorsRequest(req *createRoomReq, preset string) error {
	var creators []string
	if raw, ok := req.CreationContent["additional_creators"]; ok {
		list, ok := raw.([]any)
		if !ok {
			return errBadJSON("creation_content.additional_creators must be an array of user IDs")
		}
		for _, u := range list {
			s, ok := u.(string)
			if !ok || !validUserID(s) {
				return errBadJSON("creation_content.additional_creators: %v is not a valid user ID", u)
			}
			creators = append(creators, s)
		}
	}
	if preset == "trusted_private_chat" {
		for _, u := range req.Invite {
			if !slices.Contains(creators, u) {
				creators = append(creators, u)
			}
		}
		if len(creators) > 0 {
			cc := maps.Clone(req.CreationContent)
			if cc == nil {
				cc = map[string]any{}
			}
			cc["additional_creators"] = creators
			req.CreationContent = cc
		}
	}
	if users, ok := req.PowerLevelContentOverride["users"].(map[string]any); ok {
		for u := range users {
			if slices.Contains(creators, u) {
				return merr(http.StatusBadRequest, "M_INVALID_ROOM_STATE", "power_level_content_override.users names %s, a room creator, whose level is fixed", u)
			}
		}
	}
	return nil
}

// validUserID checks the user ID grammar loosely, as for historical user
// IDs: "@", a non-empty localpart, ":", a server name, at most 255 bytes.
func validUserID(u string) bool {
	local, server, ok := strings.Cut(strings.TrimPrefix(u, "@"), ":")
	return strings.HasPrefix(u, "@") && ok && local != "" && len(u) <= 255 && validServerName(server)
}

// initialPowerLevels is a new room's power levels content: the creator
// (before v12, where creators need no level) and, in a trusted private
// chat, the invitees at 100; the request's override on top.
func initialPowerLevels(version *stateres.RoomVersion, preset, creator string, req *createRoomReq) map[string]any {
	users := map[string]any{}
	if !version.PrivilegedCreators {
		users[creator] = 100
	}
	if preset == "trusted_private_chat" && !version.PrivilegedCreators {
		// From v12 the invitees are additional creators instead
		// (creatorsRequest), whose level is not in users.
		for _, u := range req.Invite {
			users[u] = 100
		}
	}
	tombstone := 100
	if version.PrivilegedCreators {
		// Upgrading is above state_default from v12 (spec: createRoom).
		tombstone = 150
	}
	invitePL := 0
	if preset == "public_chat" {
		invitePL = 50
	}
	pl := map[string]any{
		"users": users, "users_default": 0,
		"events": map[string]any{
			"m.room.name": 50, "m.room.power_levels": 100, "m.room.history_visibility": 100,
			"m.room.canonical_alias": 50, "m.room.avatar": 50, "m.room.tombstone": tombstone,
			"m.room.server_acl": 100, "m.room.encryption": 100,
		},
		"events_default": 0, "state_default": 50, "ban": 50, "kick": 50, "redact": 50,
		"invite": invitePL, "notifications": map[string]any{"room": 50},
	}
	maps.Copy(pl, req.PowerLevelContentOverride)
	return pl
}

// presetState is the preset's state events (join rules, history
// visibility, guest access) that initial_state does not override.
func presetState(preset string, initial []initialStateEvt) []stateres.ProtoEvent {
	joinRule, guest := "invite", "can_join"
	if preset == "public_chat" {
		joinRule, guest = "public", "forbidden"
	}
	events := []stateres.ProtoEvent{
		{Type: stateres.MRoomJoinRules, Content: mustJSON(map[string]string{"join_rule": joinRule})},
		{Type: stateres.MRoomHistoryVisibility, Content: mustJSON(map[string]string{"history_visibility": "shared"})},
	}
	if guest == "can_join" {
		events = append(events, stateres.ProtoEvent{Type: "m.room.guest_access", Content: mustJSON(map[string]string{"guest_access": "can_join"})})
	}
	overridden := map[stateres.StateKeyTuple]bool{}
	for _, is := range initial {
		overridden[stateres.StateKeyTuple{Type: is.Type, StateKey: is.StateKey}] = true
	}
	return slices.DeleteFunc(events, func(p stateres.ProtoEvent) bool { return overridden[stateres.StateKeyTuple{Type: p.Type}] })
}

type initialStateEvt struct {
	Type     string          `json:"type"`
	StateKey string          `json:"state_key"`
	Content  json.RawMessage `json:"content"`
}

// createRoom builds the room's first events in the spec's order (create,
// the creator's join, power levels, canonical alias, the preset's state,
// initial_state, name, topic, invites) and appends them with the alias
// and directory listing in one append: a room is created entirely or not
// at all.
func (s *Server) createRoom(w http.ResponseWriter, r *http.Request, sess *session) error {
	var req createRoomReq
	if err := readJSON(r, &req); err != nil {
		return err
	}
	version, preset, alias, err := s.checkCreateRoom(&req)
	if err != nil {
		return err
	}
	if alias != "" {
		if err := s.exclusiveAlias(alias, sess); err != nil {
			return err
		}
		defer s.locks.Lock("alias:" + alias)()
		if a, err := s.roomsView().Alias(alias); err != nil {
			return err
		} else if a != nil {
			return merr(http.StatusBadRequest, "M_ROOM_IN_USE", "Room alias %s is already taken", alias)
		}
	}
	b, roomID, err := s.startRoom(version, req.CreationContent, sess.UserID)
	if err != nil {
		return invalidRoomState(err)
	}
	setRoom(r, roomID)
	if err := s.addInitialState(b, version, preset, alias, &req, sess.UserID); err != nil {
		return invalidRoomState(err)
	}
	inviteContent := map[string]any{"membership": "invite"}
	if req.IsDirect {
		inviteContent["is_direct"] = true
	}
	var remoteInvites []string // invited over federation once the room exists
	for _, u := range req.Invite {
		if !strings.HasSuffix(u, ":"+s.cfg.ServerName) {
			remoteInvites = append(remoteInvites, u)
			continue
		}
		if _, err := b.Add(stateres.ProtoEvent{Type: stateres.MRoomMember, StateKey: strptr(u), Sender: sess.UserID, Content: mustJSON(inviteContent)}); err != nil {
			return invalidRoomState(err)
		}
	}

	props := b.Proposals(nil)
	if alias != "" {
		props = append(props, facts.MustEncode(englog.KindAliasSet, facts.AliasSet{Alias: alias, RoomID: roomID, Creator: sess.UserID}))
	}
	if req.Visibility == "public" {
		props = append(props, facts.MustEncode(englog.KindRoomVisibilitySet, facts.RoomVisibilitySet{RoomID: roomID, Visibility: "public"}))
	}
	if _, err := s.roomWrite.Commit(r.Context(), props...); err != nil {
		return err
	}
	if alias != "" {
		if err := s.aliasVerdict(alias, roomID, sess.UserID); err != nil {
			// Another claim of the alias came first in the log: the room
			// exists, without the alias; the client learns it lost.
			s.logger.Info().Str("room", roomID).Str("alias", alias).Msg("createRoom: the alias was claimed concurrently; the room was created without it")
			return merr(http.StatusBadRequest, "M_ROOM_IN_USE", "Room alias %s is already taken", alias)
		}
	}
	// A remote invitee's server must sign the invite (/invite), as for a
	// later /invite; a refusal is the client's answer, as in Synapse, and
	// the room stays created with the invites that went through.
	for _, u := range remoteInvites {
		if err := s.inviteRemote(r.Context(), sess.UserID, roomID, u, mustJSON(inviteContent)); err != nil {
			s.logger.Info().Err(err).Str("room", roomID).Str("invitee", u).Msg("createRoom: the remote invite failed; the room was created without it")
			return err
		}
	}
	// A room created as another's successor (a manual upgrade, with
	// creation_content.predecessor): the creator's rules for the old room
	// come along.
	s.carryPushRules(r.Context(), sess.UserID, roomID)
	writeJSON(w, http.StatusOK, map[string]string{"room_id": roomID})
	return nil
}

// invalidRoomState turns the auth rules' refusal of one of a new room's
// own events (403) into createRoom's answer for it: the initial state the
// request implies is invalid (spec: 400 M_INVALID_ROOM_STATE).
func invalidRoomState(err error) error {
	var me *mxerr.Error
	if errors.As(err, &me) && me.Status == http.StatusForbidden {
		return merr(http.StatusBadRequest, "M_INVALID_ROOM_STATE", "The initial state of the room is invalid: %s", me.Msg)
	}
	return err
}

// startRoom starts a new room with its create event and returns its
// builder and ID. From v12 the room ID is derived from the create event;
// before, we choose it.
func (s *Server) startRoom(version *stateres.RoomVersion, creationContent map[string]any, creator string) (*roomwrite.Builder, string, error) {
	roomID := ""
	if !version.RoomIDFromCreate {
		roomID = "!" + randomString(12) + ":" + s.cfg.ServerName
	}
	createContent := map[string]any{}
	maps.Copy(createContent, creationContent)
	createContent["room_version"] = version.ID
	if !version.V11Semantics {
		createContent["creator"] = creator
	}
	b, err := s.roomWrite.NewRoom(version, roomID)
	if err != nil {
		return nil, "", err
	}
	createEv, err := b.Add(stateres.ProtoEvent{Type: stateres.MRoomCreate, StateKey: strptr(""), Sender: creator, Content: mustJSON(createContent), RoomID: roomID})
	if err != nil {
		return nil, "", err
	}
	return b, createEv.RoomID(), nil
}

// addInitialState adds the events createRoom sends after the create
// event, in the spec's order: the creator's join, power levels, the
// canonical alias, the preset's state, initial_state, name and topic.
func (s *Server) addInitialState(b *roomwrite.Builder, version *stateres.RoomVersion, preset, alias string, req *createRoomReq, creator string) error {
	add := func(typ, stateKey string, content json.RawMessage) error {
		_, err := b.Add(stateres.ProtoEvent{Type: typ, StateKey: strptr(stateKey), Sender: creator, Content: content})
		return err
	}
	member, err := s.memberContent(creator, "join", "")
	if err != nil {
		return err
	}
	if err := add(stateres.MRoomMember, creator, member); err != nil {
		return err
	}
	if err := add(stateres.MRoomPowerLevels, "", mustJSON(initialPowerLevels(version, preset, creator, req))); err != nil {
		return err
	}
	if alias != "" {
		if err := add("m.room.canonical_alias", "", mustJSON(map[string]any{"alias": alias})); err != nil {
			return err
		}
	}
	for _, p := range presetState(preset, req.InitialState) {
		if err := add(p.Type, "", p.Content); err != nil {
			return err
		}
	}
	for _, is := range req.InitialState {
		if is.Type == "" {
			return errBadJSON("initial_state events need a type")
		}
		if is.Type == stateres.MRoomCreate || is.Type == stateres.MRoomMember || is.Type == stateres.MRoomPowerLevels {
			continue // these come from the dedicated parameters
		}
		if err := add(is.Type, is.StateKey, is.Content); err != nil {
			return err
		}
	}
	if req.Name != nil {
		if err := add("m.room.name", "", mustJSON(map[string]string{"name": *req.Name})); err != nil {
			return err
		}
	}
	if req.Topic != nil {
		if err := add("m.room.topic", "", topicContent(*req.Topic)); err != nil {
			return err
		}
	}
	return nil
}

// resolveRoom turns a room ID or alias into a room ID.
func (s *Server) resolveRoom(idOrAlias string) (string, error) {
	if strings.HasPrefix(idOrAlias, "!") {
		return idOrAlias, nil
	}
	if !strings.HasPrefix(idOrAlias, "#") {
		return "", errInvalidParam("%q is neither a room ID nor a room alias", idOrAlias)
	}
	a, err := s.roomsView().Alias(idOrAlias)
	if err != nil {
		return "", err
	}
	if a == nil {
		return "", errNotFound("Room alias %s not found", idOrAlias)
	}
	return a.RoomID, nil
}

// resolveRoomAsking is resolveRoom, except that an unknown alias in an
// appservice's namespace is asked of the appservice, which may create it
// (spec: "Querying").
func (s *Server) resolveRoomAsking(ctx context.Context, idOrAlias string) (string, error) {
	id, err := s.resolveRoom(idOrAlias)
	var me *mxerr.Error
	if err != nil && errors.As(err, &me) && me.Status == http.StatusNotFound {
		if asked, qerr := s.queryAppserviceAlias(ctx, idOrAlias); qerr != nil || asked != "" {
			return asked, qerr
		}
	}
	return id, err
}

func (s *Server) joinByIDOrAlias(w http.ResponseWriter, r *http.Request, sess *session) error {
	idOrAlias := r.PathValue("roomIdOrAlias")
	roomID, err := s.resolveRoomAsking(r.Context(), idOrAlias)
	var servers []string
	if err != nil && strings.HasPrefix(idOrAlias, "#") && domainOf(idOrAlias) != s.cfg.ServerName && s.remote != nil {
		// A remote alias: its server says which room and where to join.
		server := domainOf(idOrAlias)
		if roomID, servers, err = s.remote.QueryDirectory(r.Context(), server, idOrAlias); err != nil {
			return remoteErr(server, err)
		}
	}
	if err != nil {
		return err
	}
	setRoom(r, roomID)
	return s.ownMembershipVia(w, r, sess, roomID, "join", servers)
}

func (s *Server) joinRoom(w http.ResponseWriter, r *http.Request, sess *session) error {
	roomID, err := roomIDParam(r)
	if err != nil {
		return err
	}
	return s.ownMembership(w, r, sess, roomID, "join")
}

func (s *Server) memberContent(userID, membership, reason string) (json.RawMessage, error) {
	c := map[string]any{"membership": membership}
	if reason != "" {
		c["reason"] = reason
	}
	if membership == "join" || membership == "invite" || membership == "knock" {
		p, err := s.accountsView().Profile(userID)
		if err != nil {
			return nil, err
		}
		if p.DisplayName != nil {
			c["displayname"] = *p.DisplayName
		}
		if p.AvatarURL != nil {
			c["avatar_url"] = *p.AvatarURL
		}
	}
	return mustJSON(c), nil
}

// withCustomKeys adds the keys of a /join or /knock body that the server
// does not set itself to the membership content: clients keep their own
// keys in their membership event. The keys with meaning in the protocol
// (membership, profile, the restricted-join authoriser, third-party
// invites) stay the server's.
func withCustomKeys(content json.RawMessage, body map[string]json.RawMessage) json.RawMessage {
	var c map[string]json.RawMessage
	if json.Unmarshal(content, &c) != nil {
		return content
	}
	for k, v := range body {
		switch k {
		case "membership", "displayname", "avatar_url", "reason", "join_authorised_via_users_server", "third_party_invite", "third_party_signed", "is_direct":
			continue
		}
		c[k] = v
	}
	return mustJSON(c)
}

// ownMembership sends the requester's own join or knock into a room this
// server knows, with the reason from the body. Joining is idempotent: an
// already joined user sends nothing.
func (s *Server) ownMembership(w http.ResponseWriter, r *http.Request, sess *session, roomID, membership string) error {
	return s.ownMembershipVia(w, r, sess, roomID, membership, nil)
}

// ownMembershipVia is ownMembership with the servers a remote alias named
// to join through.
func (s *Server) ownMembershipVia(w http.ResponseWriter, r *http.Request, sess *session, roomID, membership string, servers []string) error {
	setRoom(r, roomID)
	var body map[string]json.RawMessage
	if err := readJSON(r, &body); err != nil {
		return err
	}
	var req struct {
		Reason string `json:"reason"`
	}
	if err := json.Unmarshal(mustJSON(body), &req); err != nil {
		return errBadJSON("reason must be a string")
	}
	memberContent := func() (json.RawMessage, error) {
		c, err := s.memberContent(sess.UserID, membership, req.Reason)
		if err != nil {
			return nil, err
		}
		return withCustomKeys(c, body), nil
	}
	room, err := s.roomsView().Room(roomID)
	if err != nil {
		return err
	}
	if membership == "join" && (room == nil || s.leftRoom(roomID)) {
		content, err := memberContent()
		if err != nil {
			return err
		}
		named := len(servers) > 0 || namesServers(r)
		servers = append(servers, s.inviterServers(sess.UserID, roomID)...)
		if !named {
			// The servers of this server's stale copy only when neither
			// the client nor an alias names any: the client's list is
			// what it asked to join through (a restricted join through
			// a server that cannot authorise it fails, rather than
			// going elsewhere).
			servers = append(servers, s.residentServers(roomID)...)
		}
		var extra map[string]any
		_ = json.Unmarshal(content, &extra)
		if err := s.joinRemote(r, sess, roomID, servers, extra); err != nil {
			return err
		}
		s.keys.AnnounceJoin(r.Context(), sess.UserID, roomID)
		s.carryPushRules(r.Context(), sess.UserID, roomID)
		writeJSON(w, http.StatusOK, map[string]string{"room_id": roomID})
		return nil
	}
	if membership == "knock" && (room == nil || s.leftRoom(roomID)) {
		content, err := memberContent()
		if err != nil {
			return err
		}
		var extra map[string]any
		_ = json.Unmarshal(content, &extra)
		if err := s.knockRemote(r, sess, roomID, extra); err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, map[string]string{"room_id": roomID})
		return nil
	}
	if room == nil {
		return errNotFound("Room %s is not known to this server", roomID)
	}
	switch membership {
	case "knock":
		if v, ok := stateres.Version(room.Version); !ok || !v.Knocking {
			return errForbidden("Room %s has version %s, which does not support knocking (versions 7 and later do)", roomID, room.Version)
		}
	case "join":
		m, err := s.roomsView().Membership(sess.UserID, roomID)
		if err != nil {
			return err
		}
		if m != nil && m.Membership == "join" {
			writeJSON(w, http.StatusOK, map[string]string{"room_id": roomID})
			return nil
		}
	}
	content, err := memberContent()
	if err != nil {
		return err
	}
	_, err = s.roomWrite.Send(r.Context(), stateres.ProtoEvent{Type: stateres.MRoomMember, StateKey: strptr(sess.UserID), Sender: sess.UserID, Content: content, RoomID: roomID}, nil)
	var me *mxerr.Error
	if membership == "join" && s.roomFed != nil && errors.As(err, &me) && me.Code == roomwrite.ErrUnableToGrantJoin {
		// A restricted room where no user of this server may invite: a
		// server of the room that has one authorises the join (make_join).
		var extra map[string]any
		_ = json.Unmarshal(content, &extra)
		err = s.joinRemote(r, sess, roomID, append(servers, s.residentServers(roomID)...), extra)
	}
	if err != nil {
		return err
	}
	if membership == "join" {
		s.keys.AnnounceJoin(r.Context(), sess.UserID, roomID)
		s.carryPushRules(r.Context(), sess.UserID, roomID)
	}
	writeJSON(w, http.StatusOK, map[string]string{"room_id": roomID})
	return nil
}

// membershipChange sends an m.room.member event about target.
func (s *Server) membershipChange(w http.ResponseWriter, r *http.Request, sess *session, membership string, targetFromBody bool) error {
	roomID, err := roomIDParam(r)
	if err != nil {
		return err
	}
	var req struct {
		UserID string `json:"user_id"`
		Reason string `json:"reason"`
	}
	if err := readJSON(r, &req); err != nil {
		return err
	}
	target := sess.UserID
	if targetFromBody {
		if req.UserID == "" {
			return errMissingParam("user_id is required")
		}
		target = req.UserID
	}
	if membership == "invite" && !strings.HasSuffix(target, ":"+s.cfg.ServerName) {
		content, err := s.memberContent(target, membership, req.Reason)
		if err != nil {
			return err
		}
		if err := s.inviteRemote(r.Context(), sess.UserID, roomID, target, content); err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, struct{}{})
		return nil
	}
	if membership == "invite" {
		acc, err := s.accountsView().Account(target)
		if err != nil {
			return err
		}
		if acc == nil {
			return errNotFound("Unknown user %s", target)
		}
	}
	if membership == "leave" && strings.HasSuffix(r.URL.Path, "/kick") {
		// A kick (unban is a leave by another user too): only of someone in the room (joined, invited or
		// knocking); kicking a user who is not there, or left, is refused
		// as Synapse does, rather than recording a leave over a leave.
		m, err := s.roomsView().Membership(target, roomID)
		if err != nil {
			return err
		}
		if m == nil || (m.Membership != "join" && m.Membership != "invite" && m.Membership != "knock") {
			return errForbidden("%s is not in the room", target)
		}
	}
	content, err := s.memberContent(target, membership, req.Reason)
	if err != nil {
		return err
	}
	if _, err := s.roomWrite.Send(r.Context(), stateres.ProtoEvent{Type: stateres.MRoomMember, StateKey: strptr(target), Sender: sess.UserID, Content: content, RoomID: roomID}, nil); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, struct{}{})
	return nil
}

func (s *Server) invite(w http.ResponseWriter, r *http.Request, sess *session) error {
	return s.membershipChange(w, r, sess, "invite", true)
}
func (s *Server) leave(w http.ResponseWriter, r *http.Request, sess *session) error {
	roomID, err := roomIDParam(r)
	if err != nil {
		return err
	}
	if m, err := s.roomsView().Membership(sess.UserID, roomID); err != nil {
		return err
	} else if m == nil {
		return errForbidden("You are not in room %s", roomID)
	} else if m.Membership == "leave" || m.Membership == "ban" {
		writeJSON(w, http.StatusOK, struct{}{}) // already out: leaving again changes nothing
		return nil
	} else if m.Membership == "invite" || m.Membership == "knock" {
		// The invite to one's server notices room cannot be rejected
		// (Synapse's rule): notices must reach the user. Leaving after
		// joining is allowed; the next notice invites them again.
		if notices, err := s.adminState().NoticesRoom(sess.UserID); err != nil {
			return err
		} else if m.Membership == "invite" && notices == roomID {
			return mxerr.New(http.StatusForbidden, "M_CANNOT_LEAVE_SERVER_NOTICE_ROOM", "You cannot reject the invite to your server notices room; join it to read the notices")
		}
		if room, err := s.roomsView().Room(roomID); err != nil {
			return err
		} else if room == nil {
			if err := s.leaveRemote(r, sess, roomID); err != nil {
				return err
			}
			writeJSON(w, http.StatusOK, struct{}{})
			return nil
		}
	}
	return s.membershipChange(w, r, sess, "leave", false)
}
func (s *Server) kick(w http.ResponseWriter, r *http.Request, sess *session) error {
	return s.membershipChange(w, r, sess, "leave", true)
}
func (s *Server) ban(w http.ResponseWriter, r *http.Request, sess *session) error {
	return s.membershipChange(w, r, sess, "ban", true)
}
func (s *Server) unban(w http.ResponseWriter, r *http.Request, sess *session) error {
	return s.membershipChange(w, r, sess, "leave", true)
}

func (s *Server) forget(w http.ResponseWriter, r *http.Request, sess *session) error {
	roomID, err := roomIDParam(r)
	if err != nil {
		return err
	}
	m, err := s.roomsView().Membership(sess.UserID, roomID)
	if err != nil {
		return err
	}
	if m == nil {
		return errNotFound("You have never been in room %s", roomID)
	}
	if m.Membership == "join" || m.Membership == "invite" || m.Membership == "knock" {
		return merr(http.StatusBadRequest, "M_UNKNOWN", "Leave room %s before forgetting it", roomID)
	}
	if _, err := s.commit(r.Context(), []*projections.Handle{s.roomsH}, facts.MustEncode(englog.KindRoomForgotten, facts.RoomForgotten{UserID: sess.UserID, RoomID: roomID})); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, struct{}{})
	return nil
}

func (s *Server) joinedRooms(w http.ResponseWriter, r *http.Request, sess *session) error {
	ms, err := s.roomsView().Memberships(sess.UserID)
	if err != nil {
		return err
	}
	ids := []string{}
	for _, m := range ms {
		if m.Membership == "join" {
			ids = append(ids, m.RoomID)
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{"joined_rooms": ids})
	return nil
}

// stateBound checks the caller may read the room's state and returns the
// timeline position it is read before: now for members, the leave for a
// user who left (spec: the state when they left).
func (s *Server) stateBound(roomID, userID string) (uint64, error) {
	membership, offset, err := s.requireMember(roomID, userID, true)
	if err != nil {
		return 0, err
	}
	if membership != "join" {
		return offset + 1, nil
	}
	return ^uint64(0), nil
}

// requireMember checks the caller may read the room: joined now, or
// (when allowLeft) ever a member. It returns the membership.
func (s *Server) requireMember(roomID, userID string, allowLeft bool) (string, uint64, error) {
	v := s.roomsView()
	m, err := v.Membership(userID, roomID)
	if err != nil {
		return "", 0, err
	}
	if m, err = s.unlessForgotten(v, m, userID, roomID); err != nil {
		return "", 0, err
	}
	if m == nil || (m.Membership != "join" && !(allowLeft && (m.Membership == "leave" || m.Membership == "ban"))) {
		return "", 0, errForbidden("You are not a member of room %s", roomID)
	}
	return m.Membership, m.Offset, nil
}

func (s *Server) members(w http.ResponseWriter, r *http.Request, sess *session) error {
	roomID, err := roomIDParam(r)
	if err != nil {
		return err
	}
	before, err := s.stateBound(roomID, sess.UserID)
	if err != nil {
		return err
	}
	q := r.URL.Query()
	if at := q.Get("at"); at != "" {
		// A /sync or pagination token: the members as of that point,
		// which includes the event at the token's position.
		pos, err := s.parseOffsetToken(at)
		if err != nil {
			return err
		}
		before = min(before, pos+1)
	}
	v := s.roomsView()
	evs, err := v.StateBefore(roomID, stateres.MRoomMember, before)
	if err != nil {
		return err
	}
	chunk := []map[string]any{}
	for _, e := range evs {
		var c struct {
			Membership string `json:"membership"`
		}
		var pdu struct {
			Content json.RawMessage `json:"content"`
		}
		_ = json.Unmarshal(e.JSON, &pdu)
		_ = json.Unmarshal(pdu.Content, &c)
		if m := q.Get("membership"); m != "" && c.Membership != m {
			continue
		}
		if nm := q.Get("not_membership"); nm != "" && c.Membership == nm {
			continue
		}
		chunk = append(chunk, s.clientEvent(v, e, sess, true))
	}
	writeJSON(w, http.StatusOK, map[string]any{"chunk": chunk})
	return nil
}

func (s *Server) joinedMembers(w http.ResponseWriter, r *http.Request, sess *session) error {
	roomID, err := roomIDParam(r)
	if err != nil {
		return err
	}
	if _, _, err := s.requireMember(roomID, sess.UserID, false); err != nil {
		return err
	}
	evs, err := s.roomsView().State(roomID, stateres.MRoomMember)
	if err != nil {
		return err
	}
	joined := map[string]any{}
	for _, e := range evs {
		var pdu struct {
			StateKey string `json:"state_key"`
			Content  struct {
				Membership  string  `json:"membership"`
				DisplayName *string `json:"displayname"`
				AvatarURL   *string `json:"avatar_url"`
			} `json:"content"`
		}
		_ = json.Unmarshal(e.JSON, &pdu)
		if pdu.Content.Membership == "join" {
			// Both keys always, null when the member has none (what
			// clients of a mature homeserver rely on).
			joined[pdu.StateKey] = map[string]any{"display_name": pdu.Content.DisplayName, "avatar_url": pdu.Content.AvatarURL}
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{"joined": joined})
	return nil
}

func (s *Server) getState(w http.ResponseWriter, r *http.Request, sess *session) error {
	roomID, err := roomIDParam(r)
	if err != nil {
		return err
	}
	before, err := s.stateBound(roomID, sess.UserID)
	if err != nil {
		return err
	}
	v := s.roomsView()
	evs, err := v.StateBefore(roomID, "", before)
	if err != nil {
		return err
	}
	out := make([]map[string]any, 0, len(evs))
	for _, e := range evs {
		out = append(out, s.clientEvent(v, e, sess, true))
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (s *Server) getStateEvent(w http.ResponseWriter, r *http.Request, sess *session) error {
	roomID, err := roomIDParam(r)
	if err != nil {
		return err
	}
	before, err := s.stateBound(roomID, sess.UserID)
	if err != nil {
		return err
	}
	v := s.roomsView()
	id, err := v.StateAt(roomID, r.PathValue("eventType"), r.PathValue("stateKey"), before)
	if err != nil {
		return err
	}
	var e *rooms.Event
	if id != "" {
		if e, err = v.Event(id); err != nil {
			return err
		}
	}
	if e == nil {
		return errNotFound("Event not found")
	}
	if r.URL.Query().Get("format") == "event" {
		writeJSON(w, http.StatusOK, s.clientEvent(v, e, sess, true))
		return nil
	}
	var pdu struct {
		Content json.RawMessage `json:"content"`
	}
	_ = json.Unmarshal(e.JSON, &pdu)
	writeJSON(w, http.StatusOK, pdu.Content)
	return nil
}

func readContent(r *http.Request) (json.RawMessage, error) {
	body, err := readBody(r)
	if err != nil {
		return nil, err
	}
	// The usual body (an object of integers and strings, no key twice)
	// takes one canonicalising pass, and the event builder's own pass over
	// canonical bytes changes nothing: strict canonical JSON is what every
	// room version makes of it. Anything else (floats, a key twice, not
	// JSON) takes the decoding that gives its error or its last-key-wins
	// object, as before.
	if c, err := canonicaljson.Canonicalize(body, true); err == nil && c[0] == '{' {
		return c, nil
	}
	var obj map[string]json.RawMessage
	if err := decodeJSON(body, &obj); err != nil {
		return nil, err
	}
	return mustJSON(obj), nil
}

func (s *Server) putState(w http.ResponseWriter, r *http.Request, sess *session) error {
	roomID, err := roomIDParam(r)
	if err != nil {
		return err
	}
	content, err := readContent(r)
	if err != nil {
		return err
	}
	typ := r.PathValue("eventType")
	if typ == "m.room.canonical_alias" && r.PathValue("stateKey") == "" {
		if err := s.checkCanonicalAlias(r.Context(), roomID, content); err != nil {
			return err
		}
	}
	if typ == stateres.MRoomCreate {
		return errBadJSON("A room has one m.room.create event, sent when it was created; upgrade the room to change its version or creators")
	}
	if typ == stateres.MRoomPowerLevels && r.PathValue("stateKey") == "" {
		if err := s.checkCreatorsNotInUsers(roomID, content); err != nil {
			return err
		}
	}
	if typ != stateres.MRoomMember {
		if id, err := s.sameState(roomID, typ, r.PathValue("stateKey"), sess.UserID, content); err != nil || id != "" {
			if err == nil {
				writeJSON(w, http.StatusOK, map[string]string{"event_id": id})
			}
			return err
		}
	}
	ts, err := appserviceTS(r, sess)
	if err != nil {
		return err
	}
	id, err := s.roomWrite.Send(r.Context(), stateres.ProtoEvent{Type: typ, StateKey: strptr(r.PathValue("stateKey")), Sender: sess.UserID, Content: content, RoomID: roomID, OriginServerTS: ts}, nil)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]string{"event_id": id})
	return nil
}

// checkCreatorsNotInUsers refuses power levels that name a creator of a
// room whose creators are privileged (v12): their level is fixed, so the
// request is malformed (400) rather than merely unauthorised.
func (s *Server) checkCreatorsNotInUsers(roomID string, content json.RawMessage) error {
	v := s.roomsView()
	room, err := v.Room(roomID)
	if err != nil || room == nil {
		return err
	}
	version, ok := stateres.Version(room.Version)
	if !ok || !version.PrivilegedCreators {
		return nil
	}
	create, err := v.StatePDU(roomID, stateres.MRoomCreate, "")
	if err != nil || create == nil {
		return err
	}
	var c struct {
		Users map[string]json.RawMessage `json:"users"`
	}
	if json.Unmarshal(content, &c) != nil {
		return nil // the auth rules judge malformed power levels
	}
	for _, u := range auth.ParsePowerLevels(version, create, nil).Creators() {
		if _, named := c.Users[u]; named {
			return errBadJSON("users names %s, a creator of the room, whose power level is fixed", u)
		}
	}
	return nil
}

// sameState returns the current state event (typ, stateKey) when sender
// sent it with this very content, else "": setting state again to what it
// is answers the event that set it and sends nothing (as Synapse does;
// clients retry state changes). Membership events are always sent, since
// a repeated join or leave means something.
func (s *Server) sameState(roomID, typ, stateKey, sender string, content json.RawMessage) (string, error) {
	cur, err := s.roomsView().StateEvent(roomID, typ, stateKey)
	if err != nil || cur == nil {
		return "", err
	}
	h := headOf(cur)
	if h.Sender != sender || cur.RedactedBy != "" {
		return "", nil
	}
	a, err := canonicaljson.Canonicalize(h.Content, false)
	if err != nil {
		return "", nil
	}
	b, err := canonicaljson.Canonicalize(content, false)
	if err != nil || !bytes.Equal(a, b) {
		return "", nil
	}
	return cur.EventID, nil
}

func (s *Server) send(w http.ResponseWriter, r *http.Request, sess *session) error {
	roomID, err := roomIDParam(r)
	if err != nil {
		return err
	}
	content, err := readContent(r)
	if err != nil {
		return err
	}
	typ := r.PathValue("eventType")
	if typ == stateres.MRoomRedaction {
		return errInvalidParam("Use the /redact endpoint to redact events")
	}
	txn := &facts.TxnRef{UserID: sess.UserID, DeviceID: sess.DeviceID, TxnID: r.PathValue("txnId")}
	// Sending is pro-active: the activity record (at most one a minute)
	// rides in the same commit.
	ts, err := appserviceTS(r, sess)
	if err != nil {
		return err
	}
	id, err := s.roomWrite.Send(r.Context(), stateres.ProtoEvent{Type: typ, Sender: sess.UserID, Content: content, RoomID: roomID, OriginServerTS: ts}, txn, s.activityFacts(sess.UserID)...)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]string{"event_id": id})
	return nil
}

func (s *Server) redactEvent(w http.ResponseWriter, r *http.Request, sess *session) error {
	roomID, err := roomIDParam(r)
	if err != nil {
		return err
	}
	var req struct {
		Reason string `json:"reason"`
	}
	if err := readJSON(r, &req); err != nil {
		return err
	}
	targetID := r.PathValue("eventId")
	target, err := s.roomsView().Event(targetID)
	if err != nil {
		return err
	}
	if target != nil && target.RoomID != roomID {
		return errNotFound("Event not found")
	}
	own := false
	if target != nil {
		tp, err := target.PDU()
		if err != nil {
			return err
		}
		own = tp.Sender() == sess.UserID
	}
	// From room v3 on the auth rules accept any redaction; the server
	// applies one only from the original sender or a user with the redact
	// level, so it refuses the others here (spec: m.room.redaction). A
	// user with the redact level may redact an event this server has not
	// seen (another server's, not received yet): the redaction waits for
	// it wherever it arrives.
	if target == nil {
		if ok, err := s.hasPower(roomID, sess.UserID, "redact"); err != nil {
			return err
		} else if !ok {
			return errNotFound("Event not found")
		}
	} else if !own {
		if ok, err := s.hasPower(roomID, sess.UserID, "redact"); err != nil {
			return err
		} else if !ok {
			return errForbidden("You may only redact your own events without the redact power level")
		}
	}
	content := map[string]any{}
	if req.Reason != "" {
		content["reason"] = req.Reason
	}
	txn := &facts.TxnRef{UserID: sess.UserID, DeviceID: sess.DeviceID, TxnID: r.PathValue("txnId")}
	id, err := s.roomWrite.Send(r.Context(), stateres.ProtoEvent{Type: stateres.MRoomRedaction, Sender: sess.UserID, Content: mustJSON(content), Redacts: targetID, RoomID: roomID}, txn)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]string{"event_id": id})
	return nil
}

func (s *Server) getEvent(w http.ResponseWriter, r *http.Request, sess *session) error {
	ve, err := s.visibleEvent(r, sess)
	var me *matrixError
	if errors.As(err, &me) && me.Status == http.StatusForbidden {
		// Not a member of a room that is not world-readable: the event is
		// not found for them (spec: 404 when the user lacks permission).
		return errNotFound("Event not found")
	}
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, s.clientEvent(ve.view, ve.event, sess, true))
	return nil
}

// eventInRoom is what the endpoints about one event of a room start
// from (visibleEvent).
type eventInRoom struct {
	roomID string
	event  *rooms.Event
	upper  uint64      // the newest offset the user may read
	vis    *visibility // what the user may see of the room's history
	view   rooms.View
}

// visibleEvent is the preamble of the endpoints about one event of a
// room ({roomId}, {eventId}): the room ID checked, the user's read
// access, the event read, and its visibility. An event the user may not
// see is indistinguishable from a missing one (spec: 404 when the user
// lacks permission to see it).
func (s *Server) visibleEvent(r *http.Request, sess *session) (*eventInRoom, error) {
	roomID, err := roomIDParam(r)
	if err != nil {
		return nil, err
	}
	upper, vis, err := s.readAccess(roomID, sess.UserID)
	if err != nil {
		return nil, err
	}
	v := s.roomsView()
	e, err := v.Event(r.PathValue("eventId"))
	if err != nil {
		return nil, err
	}
	if !visibleIn(e, roomID, upper, vis) {
		return nil, errNotFound("Event not found")
	}
	return &eventInRoom{roomID: roomID, event: e, upper: upper, vis: vis, view: v}, nil
}

func (s *Server) getAlias(w http.ResponseWriter, r *http.Request) error {
	alias := r.PathValue("roomAlias")
	if domainOf(alias) != s.cfg.ServerName {
		out, err := s.remoteAlias(r.Context(), alias)
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, out)
		return nil
	}
	roomID, err := s.resolveRoomAsking(r.Context(), alias)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]any{"room_id": roomID, "servers": []string{s.cfg.ServerName}})
	return nil
}

func (s *Server) putAlias(w http.ResponseWriter, r *http.Request, sess *session) error {
	alias := r.PathValue("roomAlias")
	// Whitespace is refused too: the grammar allows it, but an alias
	// nobody can type or tell apart is not one to hand out.
	if !validAlias(alias) || domainOf(alias) != s.cfg.ServerName || strings.IndexFunc(alias, unicode.IsSpace) >= 0 {
		return errInvalidParam("Alias must be #localpart:%s, at most 255 bytes, without NUL or whitespace", s.cfg.ServerName)
	}
	var req struct {
		RoomID string `json:"room_id"`
	}
	if err := readJSON(r, &req); err != nil {
		return err
	}
	if room, err := s.roomsView().Room(req.RoomID); err != nil {
		return err
	} else if room == nil {
		return errNotFound("Unknown room %s", req.RoomID)
	}
	if err := s.exclusiveAlias(alias, sess); err != nil {
		return err
	}
	defer s.locks.Lock("alias:" + alias)()
	if a, err := s.roomsView().Alias(alias); err != nil {
		return err
	} else if a != nil {
		return merr(http.StatusConflict, "M_UNKNOWN", "Room alias %s already exists", alias)
	}
	if _, err := s.commit(r.Context(), []*projections.Handle{s.roomsH}, facts.MustEncode(englog.KindAliasSet, facts.AliasSet{Alias: alias, RoomID: req.RoomID, Creator: sess.UserID})); err != nil {
		return err
	}
	if err := s.aliasVerdict(alias, req.RoomID, sess.UserID); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, struct{}{})
	return nil
}

// aliasVerdict answers an alias claim from the rooms projection after the
// claim was appended: the fold gives an alias to the first claim in log
// order (rooms.applyAliasSet), so a claim decided concurrently elsewhere
// may have come first.
func (s *Server) aliasVerdict(alias, roomID, userID string) error {
	a, err := s.roomsView().Alias(alias)
	if err != nil {
		return err
	}
	if a == nil || a.RoomID != roomID || a.Creator != userID {
		return merr(http.StatusConflict, "M_UNKNOWN", "Room alias %s already exists", alias)
	}
	return nil
}

func (s *Server) deleteAlias(w http.ResponseWriter, r *http.Request, sess *session) error {
	alias := r.PathValue("roomAlias")
	if domainOf(alias) != s.cfg.ServerName {
		out, err := s.remoteAlias(r.Context(), alias)
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, out)
		return nil
	}
	a, err := s.roomsView().Alias(alias)
	if err != nil {
		return err
	}
	if a == nil {
		return errNotFound("Room alias %s not found", alias)
	}
	if err := s.exclusiveAlias(alias, sess); err != nil {
		return err
	}
	managed := sess.Appservice != nil && sess.Appservice.InterestedInAlias(alias)
	if a.Creator != sess.UserID && !sess.Admin && !managed {
		if ok, err := s.hasPower(a.RoomID, sess.UserID, "state:m.room.canonical_alias"); err != nil {
			return err
		} else if !ok {
			return errForbidden("You may not remove this alias")
		}
	}
	if _, err := s.commit(r.Context(), []*projections.Handle{s.roomsH}, facts.MustEncode(englog.KindAliasRemoved, facts.AliasRemoved{Alias: alias})); err != nil {
		return err
	}
	s.dropCanonicalAlias(r.Context(), a.RoomID, alias, sess.UserID)
	writeJSON(w, http.StatusOK, struct{}{})
	return nil
}

// dropCanonicalAlias takes a deleted alias out of the room's
// m.room.canonical_alias (alias and alt_aliases), sent by the user who
// deleted it. The alias is gone whatever happens here (spec: servers that
// update the event delete the alias even when the user may not update
// it), so a refusal is logged, not answered.
func (s *Server) dropCanonicalAlias(ctx context.Context, roomID, alias, userID string) {
	cur, err := s.roomsView().StateEvent(roomID, "m.room.canonical_alias", "")
	if err != nil || cur == nil {
		return
	}
	var c map[string]json.RawMessage
	if json.Unmarshal(headOf(cur).Content, &c) != nil {
		return
	}
	changed := false
	var main string
	if json.Unmarshal(c["alias"], &main) == nil && main == alias {
		delete(c, "alias")
		changed = true
	}
	var alt []string
	if json.Unmarshal(c["alt_aliases"], &alt) == nil && slices.Contains(alt, alias) {
		alt = slices.DeleteFunc(alt, func(a string) bool { return a == alias })
		if len(alt) == 0 {
			delete(c, "alt_aliases")
		} else {
			c["alt_aliases"] = mustJSON(alt)
		}
		changed = true
	}
	if !changed {
		return
	}
	if _, err := s.roomWrite.Send(ctx, stateres.ProtoEvent{Type: "m.room.canonical_alias", StateKey: strptr(""), Sender: userID, Content: mustJSON(c), RoomID: roomID}, nil); err != nil {
		s.logger.Info().Err(err).Str("room", roomID).Str("alias", alias).Str("user", userID).Msg("deleted alias stays in m.room.canonical_alias: the user may not change it")
	}
}

func (s *Server) roomAliases(w http.ResponseWriter, r *http.Request, sess *session) error {
	roomID, err := roomIDParam(r)
	if err != nil {
		return err
	}
	// Members may list the aliases; so may server admins (as in Synapse:
	// admin tools such as synadm show them).
	if !sess.Admin {
		if _, _, err := s.requireMember(roomID, sess.UserID, false); err != nil {
			return err
		}
	}
	as, err := s.roomsView().Aliases(roomID)
	if err != nil {
		return err
	}
	if as == nil {
		as = []string{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"aliases": as})
	return nil
}

// leaveAllRooms makes a deactivated user leave (or decline) every room.
func (s *Server) leaveAllRooms(ctx context.Context, userID string) error {
	ms, err := s.roomsView().Memberships(userID)
	if err != nil {
		return err
	}
	for _, m := range ms {
		if m.Membership != "join" && m.Membership != "invite" && m.Membership != "knock" {
			continue
		}
		if _, err := s.roomWrite.Send(ctx, stateres.ProtoEvent{Type: stateres.MRoomMember, StateKey: strptr(userID), Sender: userID, Content: mustJSON(map[string]string{"membership": "leave"}), RoomID: m.RoomID}, nil); err != nil {
			s.logger.Warn().Err(err).Str("room", m.RoomID).Str("user", userID).Msg("could not leave room while deactivating")
		}
	}
	return nil
}

// propagateProfile sends a fresh join event with the new profile to every
// joined room, as the spec asks of profile changes.
func (s *Server) propagateProfile(ctx context.Context, userID string) error {
	ms, err := s.roomsView().Memberships(userID)
	if err != nil {
		return err
	}
	for _, m := range ms {
		if m.Membership != "join" {
			continue
		}
		content, err := s.memberContent(userID, "join", "")
		if err != nil {
			return err
		}
		if _, err := s.roomWrite.Send(ctx, stateres.ProtoEvent{Type: stateres.MRoomMember, StateKey: strptr(userID), Sender: userID, Content: content, RoomID: m.RoomID}, nil); err != nil {
			s.logger.Warn().Err(err).Str("room", m.RoomID).Msg("could not update member event after a profile change")
		}
	}
	return nil
}

// knock asks to join a room whose join rule is knock (spec: knocking,
// room versions 7 and later). The auth rules decide; a refused knock is
// M_FORBIDDEN.
func (s *Server) knock(w http.ResponseWriter, r *http.Request, sess *session) error {
	roomID, err := s.resolveRoom(r.PathValue("roomIdOrAlias"))
	if err != nil {
		return err
	}
	return s.ownMembership(w, r, sess, roomID, "knock")
}

// topicContent is an m.room.topic content with the plain topic and its
// rich representation (spec v1.15: m.topic, a list of representations).
func topicContent(topic string) json.RawMessage {
	return mustJSON(map[string]any{
		"topic":   topic,
		"m.topic": map[string]any{"m.text": []map[string]string{{"body": topic, "mimetype": "text/plain"}}},
	})
}
