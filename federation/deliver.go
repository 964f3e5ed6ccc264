package federation

import (
	"encoding/json"
	"sort"

	"github.com/engram-hs/engram/federation/queue"
	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/projections/rooms"
	"github.com/engram-hs/engram/stateres"
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
			var head struct {
				RoomID   string  `json:"room_id"`
				Type     string  `json:"type"`
				StateKey *string `json:"state_key"`
			}
			if json.Unmarshal(f.Event, &head) != nil || head.RoomID == "" {
				continue
			}
			ri := byRoom[head.RoomID]
			if ri == nil {
				ri = &roomItems{dests: map[string]bool{}}
				byRoom[head.RoomID] = ri
				order = append(order, head.RoomID)
				// Other servers only (this one is never a destination):
				// a room of local users costs no membership reads, which
				// per send grew with the room's members.
				servers, err := view.JoinedServers(head.RoomID, q.ServerName())
				if err != nil {
					return nil, err
				}
				for _, d := range servers {
					ri.dests[d] = true
				}
			}
			if head.Type == stateres.MRoomMember && head.StateKey != nil && membershipOf(f.Event) != "invite" {
				ri.dests[domainOf(*head.StateKey)] = true
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
