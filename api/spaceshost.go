package api

import (
	"context"
	"encoding/json"
	"errors"
	"strings"

	"github.com/engram-hs/engram/api/spaces"
	"github.com/engram-hs/engram/projections/rooms"
)

// /hierarchy and /room_summary are api/spaces'; this file wires them to
// the rest of the API and, through Remote, to other servers.

type spacesHost struct{ host }

// hierarchyRemote is the federation client's /hierarchy request
// (federation.Remote implements it).
type hierarchyRemote interface {
	Hierarchy(ctx context.Context, server, roomID string, suggestedOnly bool) (json.RawMessage, error)
}

func (h spacesHost) Rooms() rooms.View { return h.s.roomsView() }

func (h spacesHost) ResolveAlias(ctx context.Context, alias string) (string, []string, error) {
	roomID, err := h.s.resolveRoom(alias)
	if err == nil {
		return roomID, nil, nil
	}
	if domainOf(alias) == h.s.cfg.ServerName || h.s.remote == nil || !strings.HasPrefix(alias, "#") {
		return "", nil, err
	}
	server := domainOf(alias)
	roomID, servers, err := h.s.remote.QueryDirectory(ctx, server, alias)
	if err != nil {
		return "", nil, remoteErr(server, err)
	}
	return roomID, servers, nil
}

var errNoFederation = errors.New("this server does not federate")

func (h spacesHost) RemoteHierarchy(ctx context.Context, server, roomID string, suggestedOnly bool) (*spaces.RemoteAnswer, error) {
	rh, ok := h.s.remote.(hierarchyRemote)
	if h.s.remote == nil || !ok {
		return nil, errNoFederation
	}
	raw, err := rh.Hierarchy(ctx, server, roomID, suggestedOnly)
	if err != nil {
		return nil, err
	}
	var ans spaces.RemoteAnswer
	if err := json.Unmarshal(raw, &ans); err != nil {
		return nil, err
	}
	return &ans, nil
}
