package api

import (
	"encoding/json"
	"time"

	"github.com/engram-hs/engram/projections/rooms"
	"github.com/engram-hs/engram/stateres"
)

// clientEvent formats a stored event for clients (spec: ClientEvent). When
// forDevice is the sending device, unsigned.transaction_id is included.
func (s *Server) clientEvent(v rooms.View, rec *rooms.Event, sess *session, withRoomID bool) map[string]any {
	return s.formatClientEvent(v, rec, sess, withRoomID, true)
}

// membershipAt is unsigned.membership (spec v1.11): the reader's
// membership just after the event (its own change included), "leave"
// before they had any.
func membershipAt(v rooms.View, rec *rooms.Event, userID string) (string, error) {
	id, err := v.StateAt(rec.RoomID, stateres.MRoomMember, userID, rec.Offset+1)
	if err != nil || id == "" {
		return "leave", err
	}
	e := rec
	if id != rec.EventID {
		if e, err = v.Event(id); err != nil || e == nil {
			return "leave", err
		}
	}
	return membershipValue(headOf(e).Content), nil
}

// membershipValue is the membership of m.room.member content, "leave"
// when it has none.
func membershipValue(content json.RawMessage) string {
	var c struct {
		Membership string `json:"membership"`
	}
	if json.Unmarshal(content, &c) != nil || c.Membership == "" {
		return "leave"
	}
	return c.Membership
}

// formatClientEvent is clientEvent, with bundled aggregations
// (unsigned.m.relations) when bundle is set.
func (s *Server) formatClientEvent(v rooms.View, rec *rooms.Event, sess *session, withRoomID, bundle bool) map[string]any {
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
	} else if string(pdu["type"]) == `"m.room.redaction"` {
		// From room version 11, redacts moved into the content; clients
		// still read the top-level key (spec: m.room.redaction, "for
		// backwards compatibility"), so both are served.
		var c struct {
			Redacts json.RawMessage `json:"redacts"`
		}
		if json.Unmarshal(pdu["content"], &c) == nil && c.Redacts != nil {
			out["redacts"] = c.Redacts
		}
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
	if sess != nil {
		if m, err := membershipAt(v, rec, sess.UserID); err == nil {
			unsigned["membership"] = m
		}
	}
	if rec.Replaces != "" {
		unsigned["replaces_state"] = rec.Replaces
		if prev, err := v.Event(rec.Replaces); err == nil && prev != nil {
			var pp map[string]json.RawMessage
			if json.Unmarshal(prev.JSON, &pp) == nil && pp["content"] != nil {
				unsigned["prev_content"] = pp["content"]
				// Who set the replaced state (Synapse's prev_sender):
				// clients show "invited by" on the join that follows.
				if pp["sender"] != nil {
					unsigned["prev_sender"] = pp["sender"]
				}
			}
		}
	}
	if rec.RedactedBy != "" {
		if red, err := v.Event(rec.RedactedBy); err == nil && red != nil {
			unsigned["redacted_because"] = s.clientEvent(v, red, nil, true)
		}
	}
	if bundle && rec.RedactedBy == "" {
		s.relationsAsOfRooms()
		if rel := s.bundledRelations(v, rec, sess); rel != nil {
			unsigned["m.relations"] = rel
		}
	}
	out["unsigned"] = unsigned
	return out
}
