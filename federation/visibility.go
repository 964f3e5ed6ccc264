package federation

import (
	"encoding/json"
	"net/http"

	"github.com/engram-hs/engram/projections/rooms"
	"github.com/engram-hs/engram/stateres"
)

// History visibility towards other servers (spec, client-server API
// "History visibility", applied to a server as to the set of its users):
// an event is visible to a server when, in the state after the event,
// the room's m.room.history_visibility is world_readable or shared (the
// default), or it is invited and one of the server's users is invited or
// joined, or it is joined and one of them is joined. The state after the
// event counts, so a server sees its own user's join.
//
// /event, /backfill and /get_missing_events serve an event the server
// may not see redacted (its DAG position and auth data, never its
// content), as a resident server must still let it fill gaps; /state,
// /state_ids and /event_auth at such an event are refused.

// eventVisibleTo reports whether origin may see event id of the room.
func eventVisibleTo(v rooms.View, id, origin string) (bool, error) {
	st, ok, err := v.StateIDsAfter(id)
	if err != nil || !ok {
		return false, err
	}
	visibility := "shared"
	if hv := st[stateres.StateKeyTuple{Type: stateres.MRoomHistoryVisibility}]; hv != "" {
		e, err := v.Event(hv)
		if err != nil {
			return false, err
		}
		if e != nil {
			if p, err := e.PDU(); err == nil {
				var c struct {
					HistoryVisibility string `json:"history_visibility"`
				}
				if json.Unmarshal(p.Content(), &c) == nil && c.HistoryVisibility != "" {
					visibility = c.HistoryVisibility
				}
			}
		}
	}
	var allowed []string
	switch visibility {
	case "invited":
		allowed = []string{"join", "invite"}
	case "joined":
		allowed = []string{"join"}
	default: // world_readable, shared, and values the spec does not know (treated as shared, like Synapse)
		return true, nil
	}
	for k, mid := range st {
		if k.Type != stateres.MRoomMember || domainOf(k.StateKey) != origin {
			continue
		}
		e, err := v.Event(mid)
		if err != nil {
			return false, err
		}
		if e == nil {
			continue
		}
		p, err := e.PDU()
		if err != nil {
			continue
		}
		var c struct {
			Membership string `json:"membership"`
		}
		_ = json.Unmarshal(p.Content(), &c)
		for _, m := range allowed {
			if c.Membership == m {
				return true, nil
			}
		}
	}
	return false, nil
}

// servedPDU is ev as origin may see it: whole, or redacted.
func servedPDU(v rooms.View, ev *stateres.Event, origin string) (json.RawMessage, error) {
	ok, err := eventVisibleTo(v, ev.EventID(), origin)
	if err != nil {
		return nil, err
	}
	if ok {
		return ev.JSON(), nil
	}
	return ev.Redacted().JSON(), nil
}

// requireVisible refuses a state read at an event origin may not see.
func requireVisible(v rooms.View, id, origin string) error {
	ok, err := eventVisibleTo(v, id, origin)
	if err != nil {
		return err
	}
	if !ok {
		return Errorf(http.StatusForbidden, "M_FORBIDDEN", "Server %s may not see the room's state at %s (history visibility)", origin, id)
	}
	return nil
}
