package federation

import (
	"encoding/json"
	"sort"

	"github.com/engram-hs/engram/federation/queue"
	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/projections/rooms"
	"github.com/engram-hs/engram/stateres"
	"github.com/engram-hs/engram/stateres/canonicaljson"
)

// RoomDelivery queues this server's room events for the rooms' other
// servers: those with a joined member before the event, and the server
// of any user a membership event is about (a kick or a ban reaches the
// user's server even though it is not in the room). An invite is not
// pushed to the invitee's server: /invite gave it the event already, and
// a server with no joined member cannot fetch the event's history
// (get_missing_events answers it 403), so Dendrite, pushed the invite
// while its user's join was under way, rejected it and then the room. It is
// the roomwrite.Outbound that cmd/engram installs: the delivery entry is
// appended with the events.
func RoomDelivery(q *queue.Queue) func(view rooms.View, events []facts.PDU, at []int, total int) ([]englog.Proposal, error) {
	return func(view rooms.View, events []facts.PDU, at []int, total int) ([]englog.Proposal, error) {
		type roomItems struct {
			dests map[string]bool
			at    []int
		}
		byRoom := map[string]*roomItems{}
		var order []string
		for i, f := range events {
			head, ok := headOf(f.Event)
			if !ok || head.roomID == "" {
				continue
			}
			ri := byRoom[head.roomID]
			if ri == nil {
				ri = &roomItems{dests: map[string]bool{}}
				byRoom[head.roomID] = ri
				order = append(order, head.roomID)
				// Other servers only (this one is never a destination):
				// a room of local users costs no membership reads, which
				// per send grew with the room's members.
				servers, err := view.JoinedServers(head.roomID, q.ServerName())
				if err != nil {
					return nil, err
				}
				for _, d := range servers {
					ri.dests[d] = true
				}
			}
			if head.typ == stateres.MRoomMember && head.hasStateKey && head.membership != "invite" {
				ri.dests[domainOf(head.stateKey)] = true
			}
			ri.at = append(ri.at, at[i])
		}
		var out []englog.Proposal
		for _, roomID := range order {
			ri := byRoom[roomID]
			var dests []string
			for d := range ri.dests {
				dests = append(dests, d)
			}
			sort.Strings(dests)
			pos := total + len(out)
			items := make([]facts.OutboundItem, len(ri.at))
			for k, a := range ri.at {
				items[k] = facts.OutboundItem{Back: uint64(pos - a)}
			}
			p, ok, err := q.Proposal(dests, items...)
			if err != nil {
				return nil, err
			}
			if ok {
				out = append(out, p)
			}
		}
		return out, nil
	}
}

// eventHead is what RoomDelivery routes an event by.
type eventHead struct {
	roomID, typ, stateKey string
	hasStateKey           bool
	membership            string // content.membership of an m.room.member event
}

// headOf reads an event's routing fields from its canonical JSON (the log
// holds events canonical) with the member reader, not json.Unmarshal: a
// delivery is decided for every local event sent, and only these few
// fields of it are wanted. ok is false for JSON that is not an object.
func headOf(event []byte) (h eventHead, ok bool) {
	var content []byte
	err := canonicaljson.ObjectEach(event, func(key, value []byte) error {
		var err error
		switch string(key) {
		case `"room_id"`:
			h.roomID, err = unquoteString(value)
		case `"type"`:
			h.typ, err = unquoteString(value)
		case `"state_key"`:
			h.stateKey, err = unquoteString(value)
			h.hasStateKey = err == nil && value[0] == '"'
		case `"content"`:
			content = value
		}
		return err
	})
	if err != nil {
		return eventHead{}, false
	}
	if h.typ == stateres.MRoomMember && len(content) > 0 && content[0] == '{' {
		if m := canonicaljson.Get(content, "membership"); len(m) > 0 && m[0] == '"' {
			h.membership, _ = canonicaljson.Unquote(m)
		}
	}
	return h, true
}

// unquoteString is a JSON string's value, "" for any other JSON value (as
// json.Unmarshal into a string field left it).
func unquoteString(v []byte) (string, error) {
	if len(v) == 0 || v[0] != '"' {
		return "", nil
	}
	return canonicaljson.Unquote(v)
}

// membershipOf is a membership event's content.membership.
func membershipOf(event json.RawMessage) string {
	var m struct {
		Content struct {
			Membership string `json:"membership"`
		} `json:"content"`
	}
	_ = json.Unmarshal(event, &m)
	return m.Content.Membership
}
