package federation

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"

	"github.com/engram-hs/engram/projections/rooms"
)

// Spaces over federation (server-server API, "Spaces"): GET
// /_matrix/federation/v1/hierarchy/{roomId} served from the rooms
// projection (rooms.View.Summary and SpaceChildren, as the client API's
// /hierarchy uses them), and Remote.Hierarchy, which the client API calls
// for rooms this server is not in.

func (s *Server) hierarchyRoutes() {
	s.HandleAuthed("GET /_matrix/federation/v1/hierarchy/{roomId}", s.hierarchy)
}

// hierarchyRoom is a room of the answer: its summary and, for a space,
// its children as stripped state with origin_server_ts.
type hierarchyRoom struct {
	rooms.RoomSummary
	ChildrenState []map[string]any `json:"children_state"`
}

// serverMayView says whether origin may see a room's summary: anyone may
// see a peekable room; a server with members in the room may see it; a
// restricted room is shown to a server with members in one of its allowed
// rooms (spec: the requesting server filters further for its user).
func serverMayView(v rooms.View, sum *rooms.RoomSummary, origin string) (bool, error) {
	if sum.Peekable() {
		return true, nil
	}
	in := func(roomID string) (bool, error) { return v.HasJoinedMember(roomID, origin) }
	if ok, err := in(sum.RoomID); err != nil || ok {
		return ok, err
	}
	if sum.Restricted() {
		for _, id := range sum.AllowedRoomIDs {
			if ok, err := in(id); err != nil || ok {
				return ok, err
			}
		}
	}
	return false, nil
}

func (s *Server) hierarchy(w http.ResponseWriter, r *http.Request, origin string) error {
	roomID := r.PathValue("roomId")
	suggestedOnly := false
	switch r.URL.Query().Get("suggested_only") {
	case "", "false":
	case "true":
		suggestedOnly = true
	default:
		return errInvalidParam("suggested_only must be true or false")
	}
	v, err := s.roomsView()
	if err != nil {
		return err
	}
	sum, err := v.Summary(roomID)
	if err != nil {
		return err
	}
	if sum == nil {
		return errNotFound("Unknown room %s", roomID)
	}
	if ok, err := serverMayView(v, sum, origin); err != nil {
		return err
	} else if !ok {
		return errNotFound("Unknown room %s", roomID)
	}
	room := hierarchyRoom{RoomSummary: *sum, ChildrenState: []map[string]any{}}
	children := []rooms.RoomSummary{}
	inaccessible := []string{}
	if sum.RoomType == "m.space" {
		cs, err := v.SpaceChildren(roomID)
		if err != nil {
			return err
		}
		for _, c := range cs {
			if suggestedOnly && !c.Suggested {
				continue
			}
			room.ChildrenState = append(room.ChildrenState, c.Stripped())
			cSum, err := v.Summary(c.RoomID)
			if err != nil {
				return err
			}
			if cSum == nil {
				continue // unknown here: the requester asks its via servers
			}
			if ok, err := serverMayView(v, cSum, origin); err != nil {
				return err
			} else if !ok {
				inaccessible = append(inaccessible, c.RoomID)
				continue
			}
			children = append(children, *cSum)
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{"room": room, "children": children, "inaccessible_children": inaccessible})
	return nil
}

// Hierarchy is GET /_matrix/federation/v1/hierarchy/{roomID} on server.
func (rm *Remote) Hierarchy(ctx context.Context, server, roomID string, suggestedOnly bool) (json.RawMessage, error) {
	q := url.Values{}
	if suggestedOnly {
		q.Set("suggested_only", "true")
	}
	var out json.RawMessage
	if err := rm.get(ctx, server, "/_matrix/federation/v1/hierarchy/"+url.PathEscape(roomID), q, &out); err != nil {
		return nil, err
	}
	return out, nil
}
