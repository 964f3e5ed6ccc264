package rooms

import (
	"cmp"
	"encoding/json"
	"slices"

	"github.com/engram-hs/engram/stateres"
)

// Room summaries and space children (spec: client-server-api "Spaces",
// GET /hierarchy and GET /room_summary; server-server API "Spaces"),
// shared by the client API (api/spaces) and federation's /hierarchy.

// RoomSummary is the spec's RoomSummary object.
type RoomSummary struct {
	PublicRoom
	AllowedRoomIDs []string `json:"allowed_room_ids,omitempty"`
	Encryption     string   `json:"encryption,omitempty"`
	RoomVersion    string   `json:"room_version,omitempty"`
}

// Peekable says whether anyone may see the summary: the join rule is
// public, knock or knock_restricted, or history is world_readable (spec:
// the rooms /hierarchy and /room_summary show to anyone).
func (s *RoomSummary) Peekable() bool {
	switch s.JoinRule {
	case "public", "knock", "knock_restricted":
		return true
	}
	return s.WorldReadable
}

// Restricted says whether members of AllowedRoomIDs may join.
func (s *RoomSummary) Restricted() bool {
	return s.JoinRule == "restricted" || s.JoinRule == "knock_restricted"
}

// Summary describes a room from its current state; nil when the room is
// unknown here.
func (v View) Summary(roomID string) (*RoomSummary, error) {
	p, err := v.PublicRoomEntry(roomID)
	if err != nil || p == nil {
		return nil, err
	}
	s := &RoomSummary{PublicRoom: *p}
	if room, err := v.Room(roomID); err != nil {
		return nil, err
	} else if room != nil {
		s.RoomVersion = room.Version
	}
	var enc struct {
		Algorithm string `json:"algorithm"`
	}
	if _, err := v.stateContent(roomID, "m.room.encryption", "", &enc); err != nil {
		return nil, err
	}
	s.Encryption = enc.Algorithm
	if s.Restricted() {
		var jr struct {
			Allow []struct {
				Type   string `json:"type"`
				RoomID string `json:"room_id"`
			} `json:"allow"`
		}
		if _, err := v.stateContent(roomID, stateres.MRoomJoinRules, "", &jr); err != nil {
			return nil, err
		}
		for _, a := range jr.Allow {
			if a.Type == "m.room_membership" && a.RoomID != "" && !slices.Contains(s.AllowedRoomIDs, a.RoomID) {
				s.AllowedRoomIDs = append(s.AllowedRoomIDs, a.RoomID)
			}
		}
	}
	return s, nil
}

// SpaceChild is one valid m.space.child event of a space.
type SpaceChild struct {
	RoomID         string
	Sender         string
	OriginServerTS int64
	Content        json.RawMessage
	Via            []string
	Order          string
	Suggested      bool
}

// Stripped is the child as children_state shows it: a stripped state
// event with origin_server_ts.
func (c SpaceChild) Stripped() map[string]any {
	return map[string]any{"type": "m.space.child", "state_key": c.RoomID, "content": c.Content,
		"sender": c.Sender, "origin_server_ts": c.OriginServerTS}
}

// SpaceChildren are the valid children of a room (an m.space.child whose
// via is a non-empty list of strings; spec: others are ignored), in the
// spec's order: by order (only when a string of at most 50 printable
// ASCII characters), those with one first, then by origin_server_ts, then
// by room ID.
func (v View) SpaceChildren(roomID string) ([]SpaceChild, error) {
	evs, err := v.State(roomID, "m.space.child")
	if err != nil {
		return nil, err
	}
	var out []SpaceChild
	for _, e := range evs {
		var h struct {
			StateKey       string          `json:"state_key"`
			Sender         string          `json:"sender"`
			OriginServerTS int64           `json:"origin_server_ts"`
			Content        json.RawMessage `json:"content"`
		}
		if json.Unmarshal(e.JSON, &h) != nil || h.StateKey == "" {
			continue
		}
		var c struct {
			Via       []any `json:"via"`
			Order     any   `json:"order"`
			Suggested any   `json:"suggested"`
		}
		if json.Unmarshal(h.Content, &c) != nil || len(c.Via) == 0 {
			continue
		}
		child := SpaceChild{RoomID: h.StateKey, Sender: h.Sender, OriginServerTS: h.OriginServerTS, Content: h.Content}
		valid := true
		for _, x := range c.Via {
			s, ok := x.(string)
			if !ok || s == "" {
				valid = false
				break
			}
			child.Via = append(child.Via, s)
		}
		if !valid {
			continue
		}
		if o, ok := c.Order.(string); ok && validOrder(o) {
			child.Order = o
		}
		child.Suggested = c.Suggested == true
		out = append(out, child)
	}
	slices.SortFunc(out, func(a, b SpaceChild) int {
		if (a.Order == "") != (b.Order == "") {
			if a.Order != "" {
				return -1
			}
			return 1
		}
		return cmp.Or(cmp.Compare(a.Order, b.Order), cmp.Compare(a.OriginServerTS, b.OriginServerTS), cmp.Compare(a.RoomID, b.RoomID))
	})
	return out, nil
}

func validOrder(o string) bool {
	if len(o) == 0 || len(o) > 50 {
		return false
	}
	for i := 0; i < len(o); i++ {
		if o[i] < 0x20 || o[i] > 0x7e {
			return false
		}
	}
	return true
}
