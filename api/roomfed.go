package api

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"time"

	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/projections/rooms"
	"github.com/engram-hs/engram/stateres"
	"github.com/engram-hs/engram/stateres/canonicaljson"
)

// RoomFederation carries local users' room actions to other servers.
// cmd/engram wires the federation server (federation.Server); without it
// this server acts only in rooms it already holds.
type RoomFederation interface {
	// JoinRoom joins the local userID to a room this server is not in,
	// through the first of servers that lets it, with extra added to
	// the join's content; it returns once the join is folded.
	JoinRoom(ctx context.Context, roomID string, servers []string, userID string, extra map[string]any) error
	// KnockRoom knocks for the local userID on a room this server does
	// not hold, through the first of servers that lets it, with extra
	// added to the knock's content; it returns once the knock is folded.
	KnockRoom(ctx context.Context, roomID string, servers []string, userID string, extra map[string]any) error
	// Invite has the invitee's server sign an invite built here and
	// returns the event with both signatures.
	Invite(ctx context.Context, ev *stateres.Event, strippedState []json.RawMessage) (*stateres.Event, error)
	// LeaveRoom leaves a room this server does not hold (rejecting an
	// invite, rescinding a knock) through the first of servers that
	// answers; it returns once the leave is folded.
	LeaveRoom(ctx context.Context, roomID string, servers []string, userID string) error
	// Backfill fetches the history before the timeline entry gap, whose
	// event names the missing prev_events this server does not hold,
	// from the room's other servers, and records what passes the checks
	// just before gap; it returns how many events it placed.
	Backfill(ctx context.Context, roomID string, gap rooms.TimelineEntry, missing []string) (int, error)
	// TimestampToEvent asks the room's other servers for the event
	// closest to ts in direction dir ("f" or "b"); found is false when
	// none had one.
	TimestampToEvent(ctx context.Context, roomID string, ts int64, dir string) (eventID string, originTS int64, found bool, err error)
}

// SetRoomFederation installs the federation side of room actions (the
// federation server is built after the API, which registers the rooms
// projection it reads).
func (s *Server) SetRoomFederation(f RoomFederation) { s.roomFed = f }

// joinServers lists the servers to try for a remote join: the client's
// via (and deprecated server_name) parameters, the alias's servers, then
// when none of those names one, the room ID's server (rooms before v12
// name their creator's server).
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
	if _, d, ok := strings.Cut(roomID, ":"); ok && len(out) == 0 {
		// Only when nothing else names a server: the client's list is
		// what it asked for (a restricted join through a server that
		// cannot authorise it fails, rather than going elsewhere).
		add(d)
	}
	return out
}

// namesServers reports whether the client named servers to join
// through (via, or the deprecated server_name).
func namesServers(r *http.Request) bool {
	q := r.URL.Query()
	return len(q["via"]) > 0 || len(q["server_name"]) > 0
}

// leftRoom reports whether this server holds the room but none of its
// users is joined any more: its copy of the room stopped at the last
// leave, so a join goes through a server still in the room (make_join),
// not onto the stale state here.
func (s *Server) leftRoom(roomID string) bool {
	if s.roomFed == nil {
		return false
	}
	joined, err := s.roomsView().MemberIDs(roomID, "join")
	if err != nil {
		return false
	}
	resident := false
	for _, u := range joined {
		if domainOf(u) == s.cfg.ServerName {
			return false
		}
		resident = true
	}
	return resident
}

// residentServers are the servers of the room's joined members as this
// server last saw them.
func (s *Server) residentServers(roomID string) []string {
	servers, err := s.roomsView().ServersInRoom(roomID, "")
	if err != nil {
		return nil
	}
	return servers
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

// knockRemote knocks on a room this server does not hold, over
// federation, through the client's via/server_name or the room's server.
func (s *Server) knockRemote(r *http.Request, sess *session, roomID string, content map[string]any) error {
	if s.roomFed == nil {
		return errNotFound("Room %s is not known to this server, and it does not federate", roomID)
	}
	servers := joinServers(r, roomID, nil)
	if err := s.roomFed.KnockRoom(r.Context(), roomID, servers, sess.UserID, content); err != nil {
		return remoteErr(strings.Join(servers, ", "), err)
	}
	return nil
}

// inviteRemote invites a user of another server: the invite is built
// and authorised here, signed by the invitee's server (which records it
// for the invitee), then sent into the room (and so to the room's other
// servers and the invitee's).
func (s *Server) inviteRemote(ctx context.Context, sender, roomID, target string, content json.RawMessage) error {
	if s.roomFed == nil {
		return errForbidden("This server does not federate: it cannot invite %s", target)
	}
	defer s.roomWrite.Lock(roomID)()
	b, err := s.roomWrite.Extend(roomID)
	if err != nil {
		return err
	}
	ev, err := b.Add(stateres.ProtoEvent{Type: stateres.MRoomMember, StateKey: &target, Sender: sender, Content: content})
	if err != nil {
		return err
	}
	signed, err := s.roomFed.Invite(ctx, ev, inviteRoomState(s.roomsView(), roomID, sender))
	if err != nil {
		return remoteErr(domainOf(target), err)
	}
	_, err = s.roomWrite.Commit(ctx, facts.MustEncode(englog.KindPDU, facts.PDU{RoomVersion: b.Version().ID, Event: signed.JSON(), EventID: signed.EventID()}))
	return err
}

// inviteRoomState is the state sent with an invite over federation: what
// the invitee's client shows before joining. Since spec v1.16 (MSC4311)
// its entries are PDUs formatted for the room's version, which the
// invitee's server can check (signatures, same room), and the create
// event is always among them.
func inviteRoomState(v rooms.View, roomID, sender string) []json.RawMessage {
	var out []json.RawMessage
	for _, k := range [][2]string{{stateres.MRoomCreate, ""}, {stateres.MRoomJoinRules, ""}, {"m.room.name", ""}, {"m.room.avatar", ""},
		{"m.room.canonical_alias", ""}, {"m.room.encryption", ""}, {"m.room.topic", ""}, {stateres.MRoomMember, sender}} {
		e, err := v.StateEvent(roomID, k[0], k[1])
		if err != nil || e == nil {
			continue
		}
		out = append(out, append(json.RawMessage(nil), e.JSON...))
	}
	return out
}

// strippedCreate is the create event as an invitee's or knocker's client
// sees it in stripped state: complete (MSC4311, spec v1.16), with its ID,
// room and timestamp, so a client can tell the room's version, type and
// creators and when it was made.
func strippedCreate(e *rooms.Event) map[string]any {
	out := stripped(e)
	out["event_id"], out["room_id"] = e.EventID, e.RoomID
	if ts := canonicaljson.Get(e.JSON, "origin_server_ts"); len(ts) > 0 {
		out["origin_server_ts"] = json.RawMessage(ts)
	}
	return out
}

// remoteStrippedState is what an invitee sees of a room this server does
// not hold: the stripped state the inviting server sent with the invite
// (recorded in its unsigned), and the invite.
func remoteStrippedState(v rooms.View, m rooms.Membership) (map[string]any, error) {
	evs := []any{}
	inv, err := v.Event(m.EventID)
	if err != nil || inv == nil {
		return map[string]any{"events": evs}, err
	}
	if u := canonicaljson.Get(inv.JSON, "unsigned"); len(u) > 0 {
		var us struct {
			InviteRoomState []json.RawMessage `json:"invite_room_state"`
		}
		if json.Unmarshal(u, &us) == nil {
			for _, e := range us.InviteRoomState {
				if c := clientStripped(e); c != nil {
					evs = append(evs, c)
				}
			}
		}
	}
	evs = append(evs, stripped(inv))
	return map[string]any{"events": evs}, nil
}

// clientStripped is one entry of the stripped state another server sent
// (PDUs since spec v1.16, stripped events before) as this server's own
// stripped state shows it: type, state_key, sender and content, and for
// the create event also its ID, room and timestamp when present; nil for
// an entry that is not an event object.
func clientStripped(raw json.RawMessage) map[string]any {
	var e map[string]json.RawMessage
	if json.Unmarshal(raw, &e) != nil || e["type"] == nil {
		return nil
	}
	keep := []string{"type", "state_key", "sender", "content"}
	var typ string
	if json.Unmarshal(e["type"], &typ) == nil && typ == stateres.MRoomCreate {
		keep = append(keep, "event_id", "room_id", "origin_server_ts")
	}
	out := map[string]any{}
	for _, k := range keep {
		if v, ok := e[k]; ok {
			out[k] = v
		}
	}
	return out
}

// inviterServers is the server of whoever invited userID to a room this
// server does not hold: where to join through.
func (s *Server) inviterServers(userID, roomID string) []string {
	v := s.roomsView()
	m, err := v.Membership(userID, roomID)
	if err != nil || m == nil || (m.Membership != "invite" && m.Membership != "knock") {
		return nil
	}
	if m.Membership == "knock" {
		// A knock is the user's own event: rescind it through the
		// room's server.
		return []string{domainOf(roomID)}
	}
	e, err := v.Event(m.EventID)
	if err != nil || e == nil {
		return nil
	}
	return []string{domainOf(headOf(e).Sender)}
}

// leaveRemote rejects an invite to (or rescinds a knock on) a room this
// server does not hold: the leave goes through the server of the invite
// or knock.
func (s *Server) leaveRemote(r *http.Request, sess *session, roomID string) error {
	if s.roomFed == nil {
		return errNotFound("Room %s is not known to this server, and it does not federate", roomID)
	}
	servers := s.inviterServers(sess.UserID, roomID)
	if err := s.roomFed.LeaveRoom(r.Context(), roomID, servers, sess.UserID); err != nil {
		return remoteErr(strings.Join(servers, ", "), err)
	}
	return nil
}

// backfillTimeout bounds the time one /messages request spends filling a
// gap: a reader waits for history, not for a dead server.
const backfillTimeout = 20 * time.Second

// fillGap fills the gap in a room's history just before the timeline
// entry te (event e), when its event names prev_events this server does
// not hold in the room's DAG: rest is what the walk reads next (an event
// there is held). It reports whether history was placed before te.
func (s *Server) fillGap(ctx context.Context, v rooms.View, roomID string, te rooms.TimelineEntry, e *rooms.Event, rest []rooms.TimelineEntry) (bool, error) {
	p, err := e.PDU()
	if err != nil {
		return false, err
	}
	var missing []string
	for _, id := range p.PrevEventIDs() {
		if len(rest) > 0 && rest[0].EventID == id {
			continue
		}
		pe, err := v.Event(id)
		if err != nil {
			return false, err
		}
		if pe == nil || (pe.Outlier && pe.Rejected == "") {
			missing = append(missing, id)
		}
	}
	if len(missing) == 0 {
		return false, nil
	}
	bctx, cancel := context.WithTimeout(ctx, backfillTimeout)
	defer cancel()
	n, err := s.roomFed.Backfill(bctx, roomID, te, missing)
	if err != nil {
		if ctx.Err() != nil {
			return false, ctx.Err()
		}
		s.logger.Warn().Err(err).Str("room_id", roomID).Str("event_id", e.EventID).Msg("could not backfill the room's history before this event; a reader paging there asks again after a minute")
		return false, nil
	}
	return n > 0, nil
}
