package api

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"net/http"
	"time"

	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/projections"
	"github.com/engram-hs/engram/projections/rooms"
	"github.com/engram-hs/engram/stateres"
	"github.com/engram-hs/engram/stateres/auth"
)

// maxPrevEvents bounds the forward extremities a new event references.
const maxPrevEvents = 10

// stateOverlay is the state events are built and authorised against: the
// room's current state from the projection, overlaid with events built in
// this request but not yet committed (createRoom builds a whole batch).
type stateOverlay struct {
	base    func(typ, stateKey string) stateres.PDU
	overlay map[stateres.StateKeyTuple]stateres.PDU
}

func (o *stateOverlay) StateEvent(typ, stateKey string) stateres.PDU {
	if ev, ok := o.overlay[stateres.StateKeyTuple{Type: typ, StateKey: stateKey}]; ok {
		return ev
	}
	if o.base == nil {
		return nil
	}
	return o.base(typ, stateKey)
}

func (o *stateOverlay) add(ev stateres.PDU) {
	if sk := ev.StateKey(); sk != nil {
		if o.overlay == nil {
			o.overlay = map[stateres.StateKeyTuple]stateres.PDU{}
		}
		o.overlay[stateres.StateKeyTuple{Type: ev.Type(), StateKey: *sk}] = ev
	}
}

// roomBuilder builds a chain of events in one room: each event's prev event
// is the one before, and each is authorised against the state the previous
// ones produced. Callers hold the room lock.
type roomBuilder struct {
	s       *Server
	version *stateres.RoomVersion
	roomID  string
	state   *stateOverlay
	prev    []stateres.PDU
	built   []*stateres.Event
	now     int64
}

func (s *Server) newRoomBuilder(roomID string) (*roomBuilder, error) {
	rs, err := loadRoomState(s.roomsView(), roomID)
	if err != nil {
		return nil, err
	}
	return s.builderOn(rs), nil
}

// builderOn starts a chain of events on a room's state; rs is only read.
func (s *Server) builderOn(rs *roomState) *roomBuilder {
	return &roomBuilder{s: s, version: rs.version, roomID: rs.roomID, state: &stateOverlay{base: rs.StateEvent}, prev: rs.prevEvents(), now: nowMS()}
}

// add builds, signs and authorises one event; an unauthorised event is
// M_FORBIDDEN and nothing is kept.
func (b *roomBuilder) add(proto stateres.ProtoEvent) (*stateres.Event, error) {
	proto.RoomID = b.roomID
	if proto.OriginServerTS == 0 {
		proto.OriginServerTS = b.now
	}
	if proto.Content == nil {
		proto.Content = json.RawMessage("{}")
	}
	ev, err := stateres.BuildEvent(b.version, &proto, b.state, b.prev, b.s.cfg.ServerName, b.s.cfg.SigningKeyID, b.s.cfg.SigningKey)
	if err != nil {
		if errors.Is(err, stateres.ErrInvalidEvent) {
			return nil, errBadJSON("%v", err)
		}
		return nil, err
	}
	if len(ev.JSON()) > 65536 {
		return nil, merr(http.StatusRequestEntityTooLarge, "M_TOO_LARGE", "Event is larger than 65536 bytes")
	}
	if err := auth.Check(ev, auth.StateFunc(b.state.StateEvent)); err != nil {
		var rej *auth.Rejection
		if errors.As(err, &rej) {
			return nil, errForbidden("%s", rej.Reason)
		}
		return nil, errForbidden("%v", err)
	}
	b.state.add(ev)
	b.prev = []stateres.PDU{ev}
	b.built = append(b.built, ev)
	return ev, nil
}

// proposals turns the built events into log proposals; txn (may be nil)
// is recorded on the last one.
func (b *roomBuilder) proposals(txn *facts.TxnRef) []englog.Proposal {
	props := make([]englog.Proposal, len(b.built))
	for i, ev := range b.built {
		f := facts.PDU{RoomVersion: b.version.ID, Event: ev.JSON(), EventID: ev.EventID()}
		if i == len(b.built)-1 {
			f.Txn = txn
		}
		props[i] = facts.MustEncode(englog.KindPDU, f)
	}
	return props
}

// sendEvent builds one event in a room under the room lock, authorises it,
// appends it and waits until the rooms projection has it. With a txn it is
// idempotent: a retried transaction returns the first event's ID. The
// room's state comes from s.roomStates (see roomState for why that is
// never stale).
func (s *Server) sendEvent(ctx context.Context, proto stateres.ProtoEvent, txn *facts.TxnRef, extra ...englog.Proposal) (string, error) {
	unlock := s.roomLock.Lock(proto.RoomID)
	defer unlock()
	if txn != nil {
		id, err := s.roomsView().TxnEvent(txn.UserID, txn.DeviceID, txn.TxnID)
		if err != nil || id != "" {
			return id, err
		}
	}
	rs, err := s.roomStates.get(s.roomsView(), proto.RoomID)
	if err != nil {
		return "", err
	}
	b := s.builderOn(rs)
	ev, err := b.add(proto)
	if err != nil {
		return "", err
	}
	offs, err := s.commit(ctx, []*projections.Handle{s.roomsH}, append(b.proposals(txn), extra...)...)
	if err != nil {
		// Appended or not, the room may have moved: read it afresh.
		s.roomStates.drop(proto.RoomID)
		return "", err
	}
	s.roomStates.committed(rs, b.built, offs)
	return ev.EventID(), nil
}

// ensureSigningKey gives tests and first runs a key when none is
// configured; the binary always passes the persistent one.
func ensureSigningKey(cfg *Config) {
	if cfg.SigningKey == nil {
		_, cfg.SigningKey, _ = ed25519.GenerateKey(nil)
		cfg.SigningKeyID = "ed25519:ephemeral"
	}
	if cfg.SigningKeyID == "" {
		cfg.SigningKeyID = "ed25519:auto"
	}
}

// clientEvent formats a stored event for clients (spec: ClientEvent). When
// forDevice is the sending device, unsigned.transaction_id is included.
func (s *Server) clientEvent(v rooms.View, rec *rooms.Event, sess *session, withRoomID bool) map[string]any {
	var pdu map[string]json.RawMessage
	_ = json.Unmarshal(rec.JSON, &pdu)
	out := map[string]any{"event_id": rec.EventID}
	for _, k := range []string{"content", "origin_server_ts", "sender", "type", "state_key"} {
		if raw, ok := pdu[k]; ok {
			out[k] = raw
		}
	}
	if _, ok := out["content"]; !ok {
		out["content"] = json.RawMessage("{}")
	}
	if withRoomID {
		out["room_id"] = rec.RoomID
	}
	if r, ok := pdu["redacts"]; ok {
		out["redacts"] = r
	}
	unsigned := map[string]any{}
	var ts int64
	_ = json.Unmarshal(pdu["origin_server_ts"], &ts)
	if age := time.Now().UnixMilli() - ts; ts > 0 {
		unsigned["age"] = age
	}
	if sess != nil && rec.Txn != nil && rec.Txn.UserID == sess.UserID && rec.Txn.DeviceID == sess.DeviceID {
		unsigned["transaction_id"] = rec.Txn.TxnID
	}
	if rec.Replaces != "" {
		unsigned["replaces_state"] = rec.Replaces
		if prev, err := v.Event(rec.Replaces); err == nil && prev != nil {
			var pp map[string]json.RawMessage
			if json.Unmarshal(prev.JSON, &pp) == nil && pp["content"] != nil {
				unsigned["prev_content"] = pp["content"]
			}
		}
	}
	if rec.RedactedBy != "" {
		if red, err := v.Event(rec.RedactedBy); err == nil && red != nil {
			unsigned["redacted_because"] = s.clientEvent(v, red, nil, true)
		}
	}
	out["unsigned"] = unsigned
	return out
}
