package api

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
)

// Remote is how the client API asks other servers, over federation, for
// what a local user wants from them. cmd/engram wires federation's client
// into it (api and federation do not import each other); nil means this
// server does not federate, and such requests are refused.
//
// Errors that carry a remote Matrix error implement
// MatrixError() (status int, errcode, message string); api passes those
// on to the client.
type Remote interface {
	// QueryProfile asks server for userID's profile (field "" for all),
	// the answer of GET /_matrix/federation/v1/query/profile.
	QueryProfile(ctx context.Context, server, userID, field string) (map[string]any, error)
	// QueryDirectory resolves a room alias on its server.
	QueryDirectory(ctx context.Context, server, alias string) (roomID string, servers []string, err error)
	// PublicRooms lists server's published rooms: GET with limit and
	// since when filter is nil, else POST with them and the filter.
	PublicRooms(ctx context.Context, server string, limit int, since string, filter json.RawMessage) (json.RawMessage, error)
}

// remoteErr turns a failed federation request into the client's answer:
// the remote Matrix error when there is one, 502 otherwise.
func remoteErr(server string, err error) error {
	var me interface {
		MatrixError() (int, string, string)
	}
	if errors.As(err, &me) {
		status, code, msg := me.MatrixError()
		if code != "" && status >= 400 && status < 500 {
			return merr(status, code, "%s", msg)
		}
	}
	if errors.Is(err, context.Canceled) {
		return err
	}
	return merr(http.StatusBadGateway, "M_UNKNOWN", "Could not reach %s: %v", server, err)
}

// domainOf returns the server name of a user ID or room alias.
func domainOf(id string) string {
	_, d, _ := strings.Cut(id, ":")
	return d
}

func (s *Server) remoteProfile(ctx context.Context, userID, field string) (map[string]any, error) {
	server := domainOf(userID)
	if s.remote == nil || server == "" {
		return nil, errNotFound("Profile not found")
	}
	p, err := s.remote.QueryProfile(ctx, server, userID, field)
	if err != nil {
		return nil, remoteErr(server, err)
	}
	return p, nil
}

func (s *Server) remoteAlias(ctx context.Context, alias string) (map[string]any, error) {
	server := domainOf(alias)
	if s.remote == nil || server == "" {
		return nil, errNotFound("Room alias %s not found", alias)
	}
	roomID, servers, err := s.remote.QueryDirectory(ctx, server, alias)
	if err != nil {
		return nil, remoteErr(server, err)
	}
	if servers == nil {
		servers = []string{}
	}
	return map[string]any{"room_id": roomID, "servers": servers}, nil
}

func (s *Server) remotePublicRooms(ctx context.Context, q publicRoomsQuery) (any, error) {
	if s.remote == nil {
		return nil, errInvalidParam("This server does not federate: it cannot list the room directory of %s", q.Server)
	}
	var filter json.RawMessage
	if q.Search != "" || q.RoomTypes != nil {
		f := map[string]any{}
		if q.Search != "" {
			f["generic_search_term"] = q.Search
		}
		if q.RoomTypes != nil {
			f["room_types"] = q.RoomTypes
		}
		filter, _ = json.Marshal(f)
	}
	out, err := s.remote.PublicRooms(ctx, q.Server, q.Limit, q.Since, filter)
	if err != nil {
		return nil, remoteErr(q.Server, err)
	}
	return out, nil
}
