package api

import (
	"encoding/json"

	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
)

// EDUOutbound queues EDUs for other servers: the entry it returns is
// appended with the local EDU entry, so a local typing notification,
// read receipt or presence change reaches the servers concerned once it
// is recorded (federation's outbound queue; cmd/engram installs it with
// SetEDUOutbound). Unset: this server does not federate.
type EDUOutbound interface {
	Proposal(destinations []string, items ...facts.OutboundItem) (englog.Proposal, bool, error)
}

// SetEDUOutbound installs the outbound EDU queue; call it before the
// server serves requests.
func (s *Server) SetEDUOutbound(o EDUOutbound) { s.eduOut = o }

// roomEDU is the outbound entry of an EDU about roomID, for the servers
// of its joined members other than ours (none when not federating).
func (s *Server) roomEDU(roomID, eduType string, content any) []englog.Proposal {
	if s.eduOut == nil {
		return nil
	}
	servers, err := s.roomsView().ServersInRoom(roomID, s.cfg.ServerName)
	if err != nil {
		s.logger.Warn().Err(err).Str("room", roomID).Msg("listing the servers of a room for an outbound EDU failed; the EDU stays local")
		return nil
	}
	return s.eduProposal(servers, eduType, content)
}

func (s *Server) eduProposal(servers []string, eduType string, content any) []englog.Proposal {
	b, err := json.Marshal(content)
	if err != nil {
		return nil
	}
	p, ok, err := s.eduOut.Proposal(servers, facts.OutboundItem{EDU: &facts.OutboundEDU{Type: eduType, Content: b}})
	if err != nil || !ok {
		return nil
	}
	return []englog.Proposal{p}
}

// typingEDU is m.typing (server-server API, "Typing Notifications").
func (s *Server) typingEDU(roomID, userID string, typing bool) []englog.Proposal {
	return s.roomEDU(roomID, "m.typing", map[string]any{"room_id": roomID, "user_id": userID, "typing": typing})
}

// receiptEDU is m.receipt for a public read receipt (private receipts
// and read markers stay local).
func (s *Server) receiptEDU(roomID, userID, eventID, typ, thread string, ts int64) []englog.Proposal {
	if typ != "m.read" {
		return nil
	}
	data := map[string]any{"ts": ts}
	if thread != "" {
		data["thread_id"] = thread
	}
	return s.roomEDU(roomID, "m.receipt", map[string]any{roomID: map[string]any{"m.read": map[string]any{
		userID: map[string]any{"event_ids": []string{eventID}, "data": data}}}})
}

// presenceEDU is m.presence for the servers sharing a room with userID.
func (s *Server) presenceEDU(userID, presence string, statusMsg *string) []englog.Proposal {
	if s.eduOut == nil {
		return nil
	}
	v := s.roomsView()
	ms, err := v.Memberships(userID)
	if err != nil {
		return nil
	}
	seen := map[string]bool{}
	var servers []string
	for _, m := range ms {
		if m.Membership != "join" {
			continue
		}
		srvs, err := v.ServersInRoom(m.RoomID, s.cfg.ServerName)
		if err != nil {
			return nil
		}
		for _, srv := range srvs {
			if !seen[srv] {
				seen[srv] = true
				servers = append(servers, srv)
			}
		}
	}
	push := map[string]any{"user_id": userID, "presence": presence, "last_active_ago": 0, "currently_active": presence == "online"}
	if statusMsg != nil {
		push["status_msg"] = *statusMsg
	}
	return s.eduProposal(servers, "m.presence", map[string]any{"push": []any{push}})
}
