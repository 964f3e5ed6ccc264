package federation

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/engram-hs/engram/federation/receive"
	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/projections/rooms"
	"github.com/engram-hs/engram/roomwrite"
	"github.com/engram-hs/engram/stateres"
	"github.com/engram-hs/engram/stateres/auth"
)

// The room endpoints of the server-server API: transactions, event and
// state reads, backfill, and the make/send handshakes of joins, leaves
// and knocks. Received PDUs go through federation/receive; reads come
// from the rooms projection's state at every event.

// Transaction limits (server-server API, "Transactions").
const (
	maxTxnPDUs = 50
	maxTxnEDUs = 100
)

// typingTimeout is how long a remote user's typing notification lasts
// (servers send a new one to extend it).
const typingTimeout = 30_000

func (s *Server) roomRoutes() {
	if s.deps.Rooms == nil || s.deps.Log == nil || s.deps.Keys == nil {
		return
	}
	s.SetServerACL(s.serverACLAllows)
	s.HandleAuthed("PUT /_matrix/federation/v1/send/{txnID}", s.send)
	s.HandleAuthed("GET /_matrix/federation/v1/event/{eventID}", s.getEvent)
	s.HandleAuthed("GET /_matrix/federation/v1/state/{roomID}", s.getState)
	s.HandleAuthed("GET /_matrix/federation/v1/state_ids/{roomID}", s.getStateIDs)
	s.HandleAuthed("GET /_matrix/federation/v1/event_auth/{roomID}/{eventID}", s.getEventAuth)
	s.HandleAuthed("GET /_matrix/federation/v1/backfill/{roomID}", s.backfill)
	s.HandleAuthed("POST /_matrix/federation/v1/get_missing_events/{roomID}", s.missingEvents)
	s.HandleAuthed("GET /_matrix/federation/v1/make_join/{roomID}/{userID}", s.makeMembership("join"))
	s.HandleAuthed("PUT /_matrix/federation/v2/send_join/{roomID}/{eventID}", s.sendJoin(false))
	// v1 answers are [200, body] (deprecated, still sent by older servers).
	s.HandleAuthed("PUT /_matrix/federation/v1/send_join/{roomID}/{eventID}", s.sendJoin(true))
	s.HandleAuthed("PUT /_matrix/federation/v1/send_leave/{roomID}/{eventID}", s.sendMembershipV1("leave"))
	s.HandleAuthed("GET /_matrix/federation/v1/make_leave/{roomID}/{userID}", s.makeMembership("leave"))
	s.HandleAuthed("PUT /_matrix/federation/v2/send_leave/{roomID}/{eventID}", s.sendMembership("leave"))
	s.HandleAuthed("GET /_matrix/federation/v1/make_knock/{roomID}/{userID}", s.makeMembership("knock"))
	s.HandleAuthed("PUT /_matrix/federation/v1/send_knock/{roomID}/{eventID}", s.sendMembership("knock"))
	s.inviteRoutes()
}

// view reads the rooms projection through the write path's event cache
// (state and auth chain answers read the same events again and again).
func (s *Server) view() rooms.View { return s.deps.Rooms.View() }

// View makes the Server the receiver's receive.Local.
func (s *Server) View() rooms.View { return s.view() }

// receiver is the inbound PDU pipeline, built on first use.
func (s *Server) receiver() *receive.Receiver {
	s.recvOnce.Do(func() {
		var p receive.Peer = noPeer{}
		if s.deps.Client != nil {
			p = peer{c: s.deps.Client}
		}
		s.recv = &receive.Receiver{Local: s, Verify: s.deps.Keys, Peer: p, Append: s.appendPDUs}
	})
	return s.recv
}

// appendPDUs records the receiver's decisions through the room write
// path (roomwrite.Writer.Receive), which returns once the rooms
// projection folded them.
func (s *Server) appendPDUs(ctx context.Context, entries []facts.PDU) error {
	_, err := s.deps.Rooms.Receive(ctx, entries)
	return err
}

// noPeer is the receiver's peer when no outbound client is configured:
// every fetch fails, so gaps are rejected rather than filled.
type noPeer struct{}

var errNoClient = errors.New("federation: no outbound client configured")

func (noPeer) MissingEvents(context.Context, string, string, []string, []string, int) ([]json.RawMessage, error) {
	return nil, errNoClient
}
func (noPeer) StateIDs(context.Context, string, string, string) ([]string, []string, error) {
	return nil, nil, errNoClient
}
func (noPeer) Event(context.Context, string, string) (json.RawMessage, error) {
	return nil, errNoClient
}

// send is PUT /send/{txnID}: each PDU gets its own result; EDUs are
// recorded as facts.
func (s *Server) send(w http.ResponseWriter, r *http.Request, origin string) error {
	var txn struct {
		Origin string            `json:"origin"`
		PDUs   []json.RawMessage `json:"pdus"`
		EDUs   []json.RawMessage `json:"edus"`
	}
	if err := json.NewDecoder(r.Body).Decode(&txn); err != nil {
		return Errorf(http.StatusBadRequest, "M_NOT_JSON", "The transaction is not JSON: %v", err)
	}
	if len(txn.PDUs) > maxTxnPDUs || len(txn.EDUs) > maxTxnEDUs {
		return Errorf(http.StatusBadRequest, "M_BAD_JSON", "A transaction holds at most %d PDUs and %d EDUs (this one: %d and %d)", maxTxnPDUs, maxTxnEDUs, len(txn.PDUs), len(txn.EDUs))
	}
	if txn.Origin != "" && txn.Origin != origin {
		return Errorf(http.StatusBadRequest, "M_BAD_JSON", "The transaction's origin %s is not the server that signed the request (%s)", txn.Origin, origin)
	}
	key := origin + "\x00" + r.PathValue("txnID")
	if cached, ok := s.txns.get(key); ok {
		writeJSON(w, http.StatusOK, cached) // a retry of a transaction already processed
		return nil
	}
	results := map[string]any{}
	// PDUs of rooms whose server ACL bans origin are refused one by one.
	var allowed []json.RawMessage
	for _, raw := range txn.PDUs {
		var head pduHead
		_ = json.Unmarshal(raw, &head)
		if head.RoomID != "" {
			if err := s.CheckServerACL(r, head.RoomID, origin); err != nil {
				if id := eventIDOf(s.view(), head.RoomID, raw); id != "" {
					results[id] = map[string]string{"error": err.Error()}
				}
				continue
			}
		}
		if id, handled, err := s.outOfBandLeave(r.Context(), raw, head); err != nil {
			return err
		} else if handled {
			results[id] = map[string]any{}
			continue
		}
		allowed = append(allowed, raw)
	}
	verdicts, err := s.receiver().Transaction(r.Context(), origin, allowed)
	if err != nil {
		return err
	}
	for _, v := range verdicts {
		if v.EventID == "" {
			continue
		}
		if v.Dropped || v.Outcome != receive.Accepted {
			outcome := v.Outcome.String()
			if v.Dropped {
				outcome = "dropped"
			}
			s.logger.Info().Str("origin", origin).Str("event_id", v.EventID).Str("outcome", outcome).Str("reason", v.Reason).
				Msg("received PDU not accepted")
		}
		// A PDU that fails the authorization rules was processed: it is
		// recorded as rejected, and the sender learns nothing it could
		// act on (the spec: no error means "processed successfully"), as
		// other servers answer too. One that was not recorded, or whose
		// signatures do not verify, is an error the sender should see.
		switch {
		case v.Dropped || v.BadSignature:
			results[v.EventID] = map[string]string{"error": v.Reason}
		default:
			results[v.EventID] = map[string]any{}
		}
	}
	if err := s.recordEDUs(r.Context(), r, origin, txn.EDUs); err != nil {
		return err
	}
	resp := map[string]any{"pdus": results}
	s.txns.put(key, resp)
	writeJSON(w, http.StatusOK, resp)
	return nil
}

// pduHead is what send reads of each received PDU before the receiver
// parses it in full (decoded once per PDU).
type pduHead struct {
	RoomID   string  `json:"room_id"`
	Type     string  `json:"type"`
	StateKey *string `json:"state_key"`
}

// outOfBandLeave records a leave (or ban) of a local user invited to a
// room this server does not hold, sent by the inviter: the invite
// rescinded. The room's
// servers send it here because it is about our user, but the receiver
// drops events of rooms not held; like the invite before it, the leave
// is checked as far as it can be without the room (signatures, content
// hash) and recorded as an outlier, so the user's membership becomes
// leave and /sync shows the room left. handled is false for any other
// PDU, which goes to the receiver.
func (s *Server) outOfBandLeave(ctx context.Context, raw json.RawMessage, head pduHead) (eventID string, handled bool, err error) {
	if head.Type != stateres.MRoomMember || head.StateKey == nil || domainOf(*head.StateKey) != s.cfg.ServerName {
		return "", false, nil
	}
	v := s.view()
	if room, err := v.Room(head.RoomID); err != nil || room != nil {
		return "", false, err
	}
	m, err := v.Membership(*head.StateKey, head.RoomID)
	if err != nil || m == nil || m.Membership != "invite" {
		return "", false, err
	}
	prev, err := v.Event(m.EventID)
	if err != nil || prev == nil {
		return "", false, err
	}
	version, ok := stateres.Version(prev.Version)
	if !ok {
		return "", false, nil
	}
	ev, err := stateres.ParseEvent(version, raw)
	if err != nil {
		return "", false, nil
	}
	if ms := membershipOf(ev.JSON()); ms != "leave" && ms != "ban" {
		return "", false, nil
	}
	if invite, err := prev.PDU(); err != nil || invite.Sender() != ev.Sender() {
		// Only the inviter rescinds out of band: this server cannot
		// check anyone else's power in a room it does not hold.
		return "", false, nil
	}
	if s.deps.Keys.VerifyEvent(ctx, ev) != nil || ev.CheckContentHash() != nil {
		return "", false, nil // the receiver answers it (dropped: room not held)
	}
	if _, err := s.deps.Rooms.Receive(ctx, []facts.PDU{{RoomVersion: version.ID, Event: ev.JSON(), EventID: ev.EventID(), Outlier: true}}); err != nil {
		return "", false, err
	}
	return ev.EventID(), true, nil
}

// eventIDOf is the event ID of a raw PDU of a known room ("" when it does
// not parse).
func eventIDOf(v rooms.View, roomID string, raw json.RawMessage) string {
	room, err := v.Room(roomID)
	if err != nil || room == nil {
		return ""
	}
	ver, ok := stateres.Version(room.Version)
	if !ok {
		return ""
	}
	ev, err := stateres.ParseEvent(ver, raw)
	if err != nil {
		return ""
	}
	return ev.EventID()
}

// recordEDUs records the EDUs a transaction carried that this server
// keeps: typing, receipts, presence and to-device messages of origin's
// users in rooms origin is allowed in. Others are ignored (the spec lets
// a server ignore EDUs it does not know).
func (s *Server) recordEDUs(ctx context.Context, r *http.Request, origin string, edus []json.RawMessage) error {
	var props []englog.Proposal
	add := func(kind englog.Kind, v any) {
		if p, err := facts.Encode(kind, v); err == nil {
			props = append(props, p)
		}
	}
	ownUser := func(u string) bool { return domainOf(u) == origin }
	roomOK := func(roomID string) bool { return s.CheckServerACL(r, roomID, origin) == nil }
	now := s.cfg.Now().UnixMilli()
	devices, devicesRecorded := newDeviceListTxn(), false
	for _, raw := range edus {
		var edu struct {
			Type    string          `json:"edu_type"`
			Content json.RawMessage `json:"content"`
		}
		if json.Unmarshal(raw, &edu) != nil {
			continue
		}
		switch edu.Type {
		case "m.typing":
			var c struct {
				RoomID string `json:"room_id"`
				UserID string `json:"user_id"`
				Typing bool   `json:"typing"`
			}
			if json.Unmarshal(edu.Content, &c) != nil || !ownUser(c.UserID) || !roomOK(c.RoomID) {
				continue
			}
			content, _ := json.Marshal(facts.TypingContent{RoomID: c.RoomID, UserID: c.UserID, Typing: c.Typing, ExpiresAt: now + typingTimeout})
			add(englog.KindEDU, facts.EDU{Type: facts.EDUTyping, Origin: origin, Content: content})
		case "m.receipt":
			var c map[string]map[string]map[string]struct {
				EventIDs []string `json:"event_ids"`
				Data     struct {
					TS       int64  `json:"ts"`
					ThreadID string `json:"thread_id"`
				} `json:"data"`
			}
			if json.Unmarshal(edu.Content, &c) != nil {
				continue
			}
			for roomID, byType := range c {
				if !roomOK(roomID) {
					continue
				}
				for rtype, byUser := range byType {
					if rtype != "m.read" {
						continue // private receipts are never federated
					}
					for userID, rc := range byUser {
						if !ownUser(userID) {
							continue
						}
						for _, id := range rc.EventIDs {
							content, _ := json.Marshal(facts.ReceiptContent{RoomID: roomID, UserID: userID, EventID: id, ReceiptType: rtype, ThreadID: rc.Data.ThreadID, TS: rc.Data.TS})
							add(englog.KindEDU, facts.EDU{Type: facts.EDUReceipt, Origin: origin, Content: content})
						}
					}
				}
			}
		case "m.presence":
			var c struct {
				Push []struct {
					UserID    string  `json:"user_id"`
					Presence  string  `json:"presence"`
					StatusMsg *string `json:"status_msg"`
				} `json:"push"`
			}
			if json.Unmarshal(edu.Content, &c) != nil {
				continue
			}
			for _, p := range c.Push {
				switch p.Presence {
				case "online", "offline", "unavailable":
				default:
					continue
				}
				if !ownUser(p.UserID) {
					continue
				}
				content, _ := json.Marshal(facts.PresenceContent{UserID: p.UserID, Presence: p.Presence, StatusMsg: p.StatusMsg})
				add(englog.KindEDU, facts.EDU{Type: facts.EDUPresence, Origin: origin, Content: content})
			}
		case "m.device_list_update", "m.signing_key_update":
			// Recorded for the e2ee projection: it keeps a copy of the
			// user's device list, and local users sharing a room with the
			// user see them in device_lists.changed. An update the copy
			// cannot follow is preceded by the whole list (devicelists.go).
			var c struct {
				UserID string `json:"user_id"`
			}
			if json.Unmarshal(edu.Content, &c) != nil || !ownUser(c.UserID) {
				continue
			}
			if edu.Type == "m.device_list_update" {
				if p, ok := s.resyncFor(ctx, origin, edu.Content, devices); ok {
					props = append(props, p)
				}
			}
			add(englog.KindEDU, facts.EDU{Type: edu.Type, Origin: origin, Content: edu.Content})
			devicesRecorded = true
		case "m.direct_to_device":
			var c struct {
				Sender   string                                `json:"sender"`
				Type     string                                `json:"type"`
				Messages map[string]map[string]json.RawMessage `json:"messages"`
			}
			if json.Unmarshal(edu.Content, &c) != nil || !ownUser(c.Sender) || c.Type == "" {
				continue
			}
			for userID, byDevice := range c.Messages {
				if domainOf(userID) != s.cfg.ServerName {
					continue
				}
				add(englog.KindToDeviceSent, facts.ToDeviceSent{Sender: c.Sender, Type: c.Type, UserID: userID, Messages: byDevice})
			}
		}
	}
	if len(props) == 0 {
		return nil
	}
	offs, err := s.deps.Log.Append(ctx, props...)
	if err != nil || !devicesRecorded || s.deps.E2EE == nil {
		return err
	}
	// The origin's next transaction is judged against the copy these
	// updates leave: wait until it is folded.
	return s.deps.E2EE.WaitApplied(ctx, offs[len(offs)-1])
}

func domainOf(id string) string {
	_, d, _ := strings.Cut(id, ":")
	return d
}

// inRoom reports whether origin may read the room: one of its users is
// joined to it now, or the room is world-readable.
func (s *Server) inRoom(v rooms.View, roomID, origin string) (bool, error) {
	if joined, err := v.HasJoinedMember(roomID, origin); err != nil || joined {
		return joined, err
	}
	hv, err := v.StateEvent(roomID, stateres.MRoomHistoryVisibility, "")
	if err != nil || hv == nil {
		return false, err
	}
	p, err := hv.PDU()
	if err != nil {
		return false, nil
	}
	var c struct {
		HistoryVisibility string `json:"history_visibility"`
	}
	_ = json.Unmarshal(p.Content(), &c)
	return c.HistoryVisibility == "world_readable", nil
}

// readableRoom checks that the room exists here, origin passes its server
// ACL and may read it.
func (s *Server) readableRoom(r *http.Request, v rooms.View, roomID, origin string) (*rooms.Room, error) {
	room, err := v.Room(roomID)
	if err != nil {
		return nil, err
	}
	if room == nil {
		return nil, Errorf(http.StatusNotFound, "M_NOT_FOUND", "This server is not in room %s", roomID)
	}
	if err := s.CheckServerACL(r, roomID, origin); err != nil {
		return nil, err
	}
	ok, err := s.inRoom(v, roomID, origin)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, Errorf(http.StatusForbidden, "M_FORBIDDEN", "Server %s is not in room %s", origin, roomID)
	}
	return room, nil
}

// storedPDU is an event of the room as served: its JSON (redacted when a
// redaction applies); rejected events are not served.
func storedPDU(v rooms.View, roomID, id string) (json.RawMessage, error) {
	e, err := v.Event(id)
	if err != nil {
		return nil, err
	}
	if e == nil || e.Rejected != "" || (roomID != "" && e.RoomID != roomID) {
		return nil, Errorf(http.StatusNotFound, "M_NOT_FOUND", "Event %s is not known here", id)
	}
	return e.JSON, nil
}

func (s *Server) getEvent(w http.ResponseWriter, r *http.Request, origin string) error {
	v := s.view()
	id := r.PathValue("eventID")
	e, err := v.Event(id)
	if err != nil {
		return err
	}
	if e == nil || e.Rejected != "" {
		return Errorf(http.StatusNotFound, "M_NOT_FOUND", "Event %s is not known here", id)
	}
	if _, err := s.readableRoom(r, v, e.RoomID, origin); err != nil {
		return err
	}
	p, err := e.PDU()
	if err != nil {
		return err
	}
	pdu, err := servedPDU(v, p, origin)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]any{"origin": s.cfg.ServerName, "origin_server_ts": s.cfg.Now().UnixMilli(), "pdus": []json.RawMessage{pdu}})
	return nil
}

// stateAt is the state before eventID (the spec's "state at the event")
// with the auth chain of its events.
func (s *Server) stateAt(r *http.Request, origin string) (v rooms.View, stateIDs, chainIDs []string, err error) {
	v = s.view()
	roomID, eventID := r.PathValue("roomID"), r.URL.Query().Get("event_id")
	if eventID == "" {
		return v, nil, nil, Errorf(http.StatusBadRequest, "M_MISSING_PARAM", "event_id is required")
	}
	if _, err := s.readableRoom(r, v, roomID, origin); err != nil {
		return v, nil, nil, err
	}
	st, ok, err := v.StateIDsBefore(eventID)
	if err != nil {
		return v, nil, nil, err
	}
	if e, _ := v.Event(eventID); !ok || e == nil || e.RoomID != roomID {
		return v, nil, nil, Errorf(http.StatusNotFound, "M_NOT_FOUND", "This server has no state at event %s in %s", eventID, roomID)
	}
	if err := requireVisible(v, eventID, origin); err != nil {
		return v, nil, nil, err
	}
	for _, id := range st {
		stateIDs = append(stateIDs, id)
	}
	sort.Strings(stateIDs)
	chainIDs, err = v.AuthChain(stateIDs)
	return v, stateIDs, chainIDs, err
}

func (s *Server) getStateIDs(w http.ResponseWriter, r *http.Request, origin string) error {
	_, stateIDs, chainIDs, err := s.stateAt(r, origin)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]any{"pdu_ids": orEmpty(stateIDs), "auth_chain_ids": orEmpty(chainIDs)})
	return nil
}

func (s *Server) getState(w http.ResponseWriter, r *http.Request, origin string) error {
	v, stateIDs, chainIDs, err := s.stateAt(r, origin)
	if err != nil {
		return err
	}
	pdus, err := loadPDUs(v, stateIDs)
	if err != nil {
		return err
	}
	chain, err := loadPDUs(v, chainIDs)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]any{"pdus": pdus, "auth_chain": chain})
	return nil
}

func (s *Server) getEventAuth(w http.ResponseWriter, r *http.Request, origin string) error {
	v := s.view()
	roomID, eventID := r.PathValue("roomID"), r.PathValue("eventID")
	room, err := s.readableRoom(r, v, roomID, origin)
	if err != nil {
		return err
	}
	if _, err := storedPDU(v, roomID, eventID); err != nil {
		return err
	}
	if err := requireVisible(v, eventID, origin); err != nil {
		return err
	}
	ids, err := v.AuthChain([]string{eventID})
	if err != nil {
		return err
	}
	// Where the room ID is the create event's ID (v12), events do not list
	// the create event in auth_events: their room_id implies it (rooms/v12,
	// "The m.room.create event MUST NOT be selected for auth_events"). It
	// is still one of their auth events, so the chain holds it.
	if version, ok := stateres.Version(room.Version); ok && version.RoomIDFromCreate {
		if createID := "$" + strings.TrimPrefix(roomID, "!"); createID != eventID && !slices.Contains(ids, createID) {
			ids = append(ids, createID)
		}
	}
	chain, err := loadPDUs(v, ids)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]any{"auth_chain": chain})
	return nil
}

func loadPDUs(v rooms.View, ids []string) ([]json.RawMessage, error) {
	out := make([]json.RawMessage, 0, len(ids))
	for _, id := range ids {
		e, err := v.Event(id)
		if err != nil {
			return nil, err
		}
		if e != nil {
			out = append(out, e.JSON)
		}
	}
	return out, nil
}

func orEmpty(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// walkBack lists events reachable from start through prev_events
// (breadth first, start included when includeStart), skipping stop and
// anything not stored or rejected, up to limit.
func walkBack(v rooms.View, roomID string, start []string, includeStart bool, stop map[string]bool, limit int) ([]*stateres.Event, error) {
	seen := map[string]bool{}
	var queue []string
	if includeStart {
		queue = slices.Clone(start)
	} else {
		for _, id := range start {
			seen[id] = true
			e, err := v.Event(id)
			if err != nil {
				return nil, err
			}
			if e == nil {
				continue
			}
			p, err := e.PDU()
			if err != nil {
				continue
			}
			queue = append(queue, p.PrevEventIDs()...)
		}
	}
	var out []*stateres.Event
	for len(queue) > 0 && len(out) < limit {
		id := queue[0]
		queue = queue[1:]
		if seen[id] || stop[id] {
			continue
		}
		seen[id] = true
		e, err := v.Event(id)
		if err != nil {
			return nil, err
		}
		if e == nil || e.Rejected != "" || e.RoomID != roomID {
			continue
		}
		p, err := e.PDU()
		if err != nil {
			continue
		}
		out = append(out, p)
		queue = append(queue, p.PrevEventIDs()...)
	}
	return out, nil
}

func (s *Server) backfill(w http.ResponseWriter, r *http.Request, origin string) error {
	v := s.view()
	roomID := r.PathValue("roomID")
	if _, err := s.readableRoom(r, v, roomID, origin); err != nil {
		return err
	}
	q := r.URL.Query()
	limit, _ := strconv.Atoi(q.Get("limit"))
	if limit <= 0 {
		limit = 10
	}
	limit = min(limit, 100)
	evs, err := walkBack(v, roomID, q["v"], true, nil, limit)
	if err != nil {
		return err
	}
	pdus := make([]json.RawMessage, len(evs))
	for i, ev := range evs {
		if pdus[i], err = servedPDU(v, ev, origin); err != nil {
			return err
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{"origin": s.cfg.ServerName, "origin_server_ts": s.cfg.Now().UnixMilli(), "pdus": pdus})
	return nil
}

func (s *Server) missingEvents(w http.ResponseWriter, r *http.Request, origin string) error {
	v := s.view()
	roomID := r.PathValue("roomID")
	if _, err := s.readableRoom(r, v, roomID, origin); err != nil {
		return err
	}
	var req struct {
		Earliest []string `json:"earliest_events"`
		Latest   []string `json:"latest_events"`
		Limit    int      `json:"limit"`
		MinDepth int64    `json:"min_depth"`
	}
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		return Errorf(http.StatusBadRequest, "M_NOT_JSON", "The body is not JSON: %v", err)
	}
	if req.Limit <= 0 {
		req.Limit = 10
	}
	req.Limit = min(req.Limit, 100)
	stop := map[string]bool{}
	for _, id := range req.Earliest {
		stop[id] = true
	}
	evs, err := walkBack(v, roomID, req.Latest, false, stop, req.Limit)
	if err != nil {
		return err
	}
	sort.SliceStable(evs, func(i, j int) bool { return evs[i].Depth() < evs[j].Depth() })
	pdus := make([]json.RawMessage, 0, len(evs))
	for _, ev := range evs {
		if ev.Depth() >= req.MinDepth {
			pdu, err := servedPDU(v, ev, origin)
			if err != nil {
				return err
			}
			pdus = append(pdus, pdu)
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{"events": pdus})
	return nil
}

// makeMembership answers make_join, make_leave and make_knock: a template
// of the membership event on top of the room's forward extremities,
// checked against the current state first.
func (s *Server) makeMembership(membership string) AuthedFunc {
	return func(w http.ResponseWriter, r *http.Request, origin string) error {
		v := s.view()
		roomID, userID := r.PathValue("roomID"), r.PathValue("userID")
		if domainOf(userID) != origin {
			return Errorf(http.StatusForbidden, "M_FORBIDDEN", "%s cannot act for %s", origin, userID)
		}
		room, err := v.Room(roomID)
		if err != nil {
			return err
		}
		if room == nil {
			return Errorf(http.StatusNotFound, "M_NOT_FOUND", "This server is not in room %s", roomID)
		}
		if err := s.CheckServerACL(r, roomID, origin); err != nil {
			return err
		}
		version, ok := stateres.Version(room.Version)
		if !ok {
			return Errorf(http.StatusBadRequest, "M_UNSUPPORTED_ROOM_VERSION", "Room %s has version %s, which this server does not know", roomID, room.Version)
		}
		incompatible := func(msg string) error {
			// The spec's error carries the room's version.
			writeJSON(w, http.StatusBadRequest, map[string]string{"errcode": "M_INCOMPATIBLE_ROOM_VERSION", "error": msg, "room_version": room.Version})
			return nil
		}
		if membership != "leave" {
			if vers := r.URL.Query()["ver"]; !slices.Contains(vers, room.Version) && !(len(vers) == 0 && room.Version == "1") {
				return incompatible(fmt.Sprintf("Room %s has version %s, which your server did not say it supports", roomID, room.Version))
			}
		}
		if membership == "knock" && !version.Knocking {
			return incompatible("Room version " + room.Version + " does not support knocking")
		}
		content := map[string]any{"membership": membership}
		cur, err := v.CurrentStateIDs(roomID)
		if err != nil {
			return err
		}
		lookup := v.LookupIn(cur)
		if membership == "join" {
			via, err := roomwrite.JoinAuthoriser(v, version, s.cfg.ServerName, roomID, userID, lookup)
			if err != nil {
				return err
			}
			if via != "" {
				content["join_authorised_via_users_server"] = via
			}
		}
		ev, err := s.buildOnCurrent(v, version, room, userID, membership, content, lookup)
		if err != nil {
			return err
		}
		if err := auth.Check(ev, auth.StateFunc(lookup)); err != nil {
			return Errorf(http.StatusForbidden, "M_FORBIDDEN", "The %s of %s is not allowed: %v", membership, userID, err)
		}
		tmpl, err := stateres.Template(ev)
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, map[string]any{"event": tmpl, "room_version": room.Version})
		return nil
	}
}

// buildOnCurrent builds (and signs with this server's key, which the
// template drops) a membership event on the forward extremities.
func (s *Server) buildOnCurrent(v rooms.View, version *stateres.RoomVersion, room *rooms.Room, userID, membership string, content map[string]any, lookup func(typ, sk string) stateres.PDU) (*stateres.Event, error) {
	var prevs []stateres.PDU
	for _, id := range room.Extremities {
		if len(prevs) == stateres.MaxPrevEvents {
			break
		}
		e, err := v.Event(id)
		if err != nil {
			return nil, err
		}
		if e == nil {
			continue
		}
		p, err := e.PDU()
		if err != nil {
			return nil, err
		}
		prevs = append(prevs, p)
	}
	raw, _ := json.Marshal(content)
	sk := userID
	proto := &stateres.ProtoEvent{Type: stateres.MRoomMember, StateKey: &sk, Sender: userID, Content: raw, RoomID: room.RoomID, OriginServerTS: s.cfg.Now().UnixMilli()}
	return stateres.BuildEvent(version, proto, stateLookup(lookup), prevs, s.cfg.ServerName, s.cfg.Key.ID, s.cfg.Key.Private)
}

type stateLookup func(typ, sk string) stateres.PDU

func (f stateLookup) StateEvent(typ, sk string) stateres.PDU { return f(typ, sk) }

// receiveMembership checks a membership event a remote server completed
// from our template and runs it through the receiver.
func (s *Server) receiveMembership(r *http.Request, origin, membership string) (rooms.View, *stateres.Event, error) {
	v := s.view()
	roomID, eventID := r.PathValue("roomID"), r.PathValue("eventID")
	room, err := v.Room(roomID)
	if err != nil {
		return v, nil, err
	}
	if room == nil {
		return v, nil, Errorf(http.StatusNotFound, "M_NOT_FOUND", "This server is not in room %s", roomID)
	}
	if err := s.CheckServerACL(r, roomID, origin); err != nil {
		return v, nil, err
	}
	version, ok := stateres.Version(room.Version)
	if !ok {
		return v, nil, Errorf(http.StatusBadRequest, "M_UNSUPPORTED_ROOM_VERSION", "Room version %s is not known here", room.Version)
	}
	var raw json.RawMessage
	if err := json.NewDecoder(r.Body).Decode(&raw); err != nil {
		return v, nil, Errorf(http.StatusBadRequest, "M_NOT_JSON", "The body is not JSON: %v", err)
	}
	ev, err := stateres.ParseEvent(version, raw)
	if err != nil {
		return v, nil, Errorf(http.StatusBadRequest, "M_BAD_JSON", "The event does not parse: %v", err)
	}
	if ev.EventID() != eventID || ev.RoomID() != roomID || ev.Type() != stateres.MRoomMember || ev.StateKey() == nil || *ev.StateKey() != ev.Sender() || domainOf(ev.Sender()) != origin {
		return v, nil, Errorf(http.StatusBadRequest, "M_BAD_JSON", "The event must be %s's own m.room.member event %s in %s", origin, eventID, roomID)
	}
	var c struct {
		Membership string `json:"membership"`
		Via        string `json:"join_authorised_via_users_server"`
	}
	_ = json.Unmarshal(ev.Content(), &c)
	if c.Membership != membership {
		return v, nil, Errorf(http.StatusBadRequest, "M_BAD_JSON", "The event's membership is %q, not %q", c.Membership, membership)
	}
	if c.Via != "" && domainOf(c.Via) == s.cfg.ServerName && version.RestrictedJoins {
		// We authorise the restricted join: our signature is part of it.
		if ev, err = stateres.SignEvent(ev, s.cfg.ServerName, s.cfg.Key.ID, s.cfg.Key.Private); err != nil {
			return v, nil, err
		}
	}
	if membership == "join" {
		s.trackJoiner(r.Context(), origin, ev.Sender(), roomID)
	}
	verdicts, err := s.receiver().Room(r.Context(), origin, roomID, []json.RawMessage{ev.JSON()})
	if err != nil {
		return v, nil, err
	}
	vd := verdicts[0]
	if vd.Dropped || vd.Outcome == receive.Rejected || vd.Outcome == receive.SoftFailed {
		return v, nil, Errorf(http.StatusForbidden, "M_FORBIDDEN", "The %s was refused: %s", membership, vd.Reason)
	}
	s.passOn(r.Context(), roomID, origin, ev.EventID())
	return s.view(), ev, nil
}

// passOn queues a membership event a remote server sent us through
// send_join, send_leave or send_knock for the room's other servers: the
// resident server distributes it (the sender does not know who else is
// in the room).
func (s *Server) passOn(ctx context.Context, roomID, origin, eventID string) {
	if s.deps.Deliver == nil {
		return
	}
	v := s.view()
	e, err := v.Event(eventID)
	if err != nil || e == nil {
		return
	}
	servers, err := v.ServersInRoom(roomID, "")
	if err != nil {
		s.logger.Warn().Err(err).Str("room", roomID).Msg("listing the servers of a room to pass a membership on failed")
		return
	}
	var dests []string
	for _, srv := range servers {
		if srv != origin {
			dests = append(dests, srv)
		}
	}
	if err := s.deps.Deliver(ctx, dests, facts.OutboundItem{Offset: e.Offset}); err != nil {
		s.logger.Warn().Err(err).Str("room", roomID).Str("event_id", eventID).Msg("queueing a membership for the room's other servers failed")
	}
}

func (s *Server) sendJoin(v1 bool) AuthedFunc {
	return func(w http.ResponseWriter, r *http.Request, origin string) error {
		resp, err := s.sendJoinResponse(r, origin)
		if err != nil {
			return err
		}
		if v1 {
			writeJSON(w, http.StatusOK, []any{200, resp})
		} else {
			writeJSON(w, http.StatusOK, resp)
		}
		return nil
	}
}

// sendMembershipV1 is send_leave v1: the v2 answer in a [200, body] pair.
func (s *Server) sendMembershipV1(membership string) AuthedFunc {
	return func(w http.ResponseWriter, r *http.Request, origin string) error {
		if _, _, err := s.receiveMembership(r, origin, membership); err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, []any{200, map[string]any{}})
		return nil
	}
}

func (s *Server) sendJoinResponse(r *http.Request, origin string) (map[string]any, error) {
	v, ev, err := s.receiveMembership(r, origin, "join")
	if err != nil {
		return nil, err
	}
	st, ok, err := v.StateIDsBefore(ev.EventID())
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("federation: the join %s has no state after it was accepted", ev.EventID())
	}
	ids := make([]string, 0, len(st))
	for _, id := range st {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	chainIDs, err := v.AuthChain(ids)
	if err != nil {
		return nil, err
	}
	state, err := loadPDUs(v, ids)
	if err != nil {
		return nil, err
	}
	chain, err := loadPDUs(v, chainIDs)
	if err != nil {
		return nil, err
	}
	servers := map[string]bool{s.cfg.ServerName: true}
	joined, err := v.MemberIDs(r.PathValue("roomID"), "join")
	if err != nil {
		return nil, err
	}
	for _, u := range joined {
		servers[domainOf(u)] = true
	}
	list := make([]string, 0, len(servers))
	for sv := range servers {
		list = append(list, sv)
	}
	sort.Strings(list)
	return map[string]any{
		"origin": s.cfg.ServerName, "state": state, "auth_chain": chain, "event": json.RawMessage(ev.JSON()),
		"members_omitted": false, "servers_in_room": list,
	}, nil
}

func (s *Server) sendMembership(membership string) AuthedFunc {
	return func(w http.ResponseWriter, r *http.Request, origin string) error {
		v, ev, err := s.receiveMembership(r, origin, membership)
		if err != nil {
			return err
		}
		if membership != "knock" {
			writeJSON(w, http.StatusOK, map[string]any{})
			return nil
		}
		// send_knock answers with the room's stripped state.
		cur, err := v.CurrentStateIDs(ev.RoomID())
		if err != nil {
			return err
		}
		var stripped []map[string]any
		for _, typ := range []string{stateres.MRoomCreate, stateres.MRoomJoinRules, "m.room.name", "m.room.avatar", "m.room.topic", "m.room.canonical_alias", "m.room.encryption"} {
			id := cur[stateres.StateKeyTuple{Type: typ}]
			if id == "" {
				continue
			}
			e, err := v.Event(id)
			if err != nil || e == nil {
				continue
			}
			p, err := e.PDU()
			if err != nil {
				continue
			}
			stripped = append(stripped, map[string]any{"type": p.Type(), "state_key": "", "sender": p.Sender(), "content": json.RawMessage(p.Content())})
		}
		writeJSON(w, http.StatusOK, map[string]any{"knock_room_state": stripped})
		return nil
	}
}

// serverACLAllows applies the room's m.room.server_acl (spec: "Server
// Access Control Lists") to origin; a room without one allows everyone.
func (s *Server) serverACLAllows(_ *http.Request, roomID, origin string) (bool, error) {
	e, err := s.view().StateEvent(roomID, stateres.MRoomServerACL, "")
	if err != nil || e == nil {
		return true, err
	}
	p, err := e.PDU()
	if err != nil {
		return true, nil
	}
	return aclAllows(p.Content(), origin), nil
}

// aclAllows evaluates server ACL content against a server name: the port
// is ignored, IP literals are refused unless allow_ip_literals, a deny
// match refuses, then an allow match is required.
func aclAllows(content []byte, server string) bool {
	var acl struct {
		Allow           []string `json:"allow"`
		Deny            []string `json:"deny"`
		AllowIPLiterals *bool    `json:"allow_ip_literals"`
	}
	if json.Unmarshal(content, &acl) != nil {
		return true
	}
	host := server
	if i := strings.LastIndexByte(host, ':'); i >= 0 && !strings.HasSuffix(host, "]") {
		host = host[:i]
	}
	if acl.AllowIPLiterals != nil && !*acl.AllowIPLiterals {
		h := strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
		if _, err := netip.ParseAddr(h); err == nil {
			return false
		}
	}
	for _, d := range acl.Deny {
		if globMatch(d, host) {
			return false
		}
	}
	for _, a := range acl.Allow {
		if globMatch(a, host) {
			return true
		}
	}
	return false
}

// globMatch matches * (any run) and ? (one character), case-insensitively
// as server names are.
func globMatch(pattern, s string) bool {
	pattern, s = strings.ToLower(pattern), strings.ToLower(s)
	var match func(p, s string) bool
	match = func(p, s string) bool {
		for len(p) > 0 {
			switch p[0] {
			case '*':
				for i := 0; i <= len(s); i++ {
					if match(p[1:], s[i:]) {
						return true
					}
				}
				return false
			case '?':
				if len(s) == 0 {
					return false
				}
			default:
				if len(s) == 0 || s[0] != p[0] {
					return false
				}
			}
			p, s = p[1:], s[1:]
		}
		return len(s) == 0
	}
	return match(pattern, s)
}

// txnCache remembers the answers to recent transactions, so that a retry
// is answered without processing it twice.
type txnCache struct {
	mu       sync.Mutex
	cur, old map[string]map[string]any
}

const txnCacheSize = 1000

func (c *txnCache) get(k string) (map[string]any, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if v, ok := c.cur[k]; ok {
		return v, true
	}
	v, ok := c.old[k]
	return v, ok
}

func (c *txnCache) put(k string, v map[string]any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cur == nil || len(c.cur) >= txnCacheSize {
		c.old, c.cur = c.cur, map[string]map[string]any{}
	}
	c.cur[k] = v
}
