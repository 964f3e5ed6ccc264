package api

import (
	"context"
	"net/http"
	"strings"
)

// RoomFederation carries local users' room actions to other servers.
// cmd/engram wires the federation server (federation.Server); without it
// this server acts only in rooms it already holds.
type RoomFederation interface {
	// JoinRoom joins the local userID to a room this server is not in,
	// through the first of servers that lets it, with extra added to
	// the join's content; it returns once the join is folded.
	JoinRoom(ctx context.Context, roomID string, servers []string, userID string, extra map[string]any) error
}

// SetRoomFederation installs the federation side of room actions (the
// federation server is built after the API, which registers the rooms
// projection it reads).
func (s *Server) SetRoomFederation(f RoomFederation) { s.roomFed = f }

// joinServers lists the servers to try for a remote join: the client's
// via (and deprecated server_name) parameters, the alias's servers, then
// the room ID's server (rooms before v12 name their creator's server).
func joinServers(r *http.Request, roomID string, fromAlias []string) []string {
	q := r.URL.Query()
	var out []string
	seen := map[string]bool{}
	add := func(s string) {
		if s != "" && !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	for _, v := range q["via"] {
		add(v)
	}
	for _, v := range q["server_name"] {
		add(v)
	}
	for _, v := range fromAlias {
		add(v)
	}
	if _, d, ok := strings.Cut(roomID, ":"); ok {
		add(d)
	}
	return out
}

// joinRemote joins a room this server does not hold, over federation.
func (s *Server) joinRemote(r *http.Request, sess *session, roomID string, fromAlias []string, content map[string]any) error {
	if s.roomFed == nil {
		return errNotFound("Room %s is not known to this server, and it does not federate", roomID)
	}
	servers := joinServers(r, roomID, fromAlias)
	if err := s.roomFed.JoinRoom(r.Context(), roomID, servers, sess.UserID, content); err != nil {
		return remoteErr(strings.Join(servers, ", "), err)
	}
	return nil
}
