// Package rooms folds room events out of the log: "events by ID, each
// room's timeline, current state and members, each user's memberships,
// transaction IDs, and the alias directory".
//
// The stream position of an event is the log offset of the entry that
// carried it, so timelines, sync tokens and pagination tokens are all log
// offsets.
package rooms

import (
	"encoding/binary"
	"encoding/json"

	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/projections"
	"github.com/engram-hs/engram/stateres"
)

// Key prefixes; parts are separated by 0x00 and offsets are 8 bytes big
// endian so that keys sort by stream position.
const (
	pEvent      = 'e' // e eventID -> Event
	pTimeline   = 't' // t room 0 offset -> eventID
	pState      = 's' // s room 0 type 0 stateKey -> eventID
	pRoom       = 'R' // R room -> Room
	pMember     = 'm' // m user 0 room -> Membership
	pTxn        = 'x' // x user 0 device 0 txn -> eventID
	pPendingRed = 'p' // p targetID 0 redactionID -> "" (redaction seen before its target)
	pForgotten  = 'F' // F user 0 room -> ""
	pAlias      = 'a' // a alias -> AliasRecord
	pRoomAlias  = 'A' // A room 0 alias -> ""
	pPublic     = 'P' // P room -> "" (published in the room directory)
	pStateHist  = 'h' // h room 0 type 0 stateKey 0 offset -> eventID (every state change)
	pNotif      = 'n' // n room 0 scope 0 offset -> cumulative count (8 bytes) of notifying events
	pHighlight  = 'g' // g room 0 user 0 scope 0 offset -> cumulative count of events mentioning user
	pLastNotif  = 'l' // l room 0 sender -> offset of the sender's last notifying event
	pThread     = 'T' // T room 0 rootID -> "" (threads with notifying events)
	sep         = 0
)

// Notification scopes: every notifying event counts in ScopeAll and in
// either ScopeMain or its thread's root event ID.
const (
	ScopeAll  = "*"
	ScopeMain = "main"
)

// Event is a stored room event.
type Event struct {
	EventID string `json:"event_id"`
	RoomID  string `json:"room_id"`
	Offset  uint64 `json:"offset"`
	// JSON is the PDU as stored, redacted in place once a redaction
	// applies to it.
	JSON json.RawMessage `json:"json"`
	// Rejected/SoftFailed events are stored (for auth chains and
	// federation) but never in a timeline or in current state.
	Rejected   string        `json:"rejected,omitempty"`
	SoftFailed bool          `json:"soft_failed,omitempty"`
	Outlier    bool          `json:"outlier,omitempty"`
	Txn        *facts.TxnRef `json:"txn,omitempty"`
	RedactedBy string        `json:"redacted_by,omitempty"`
	Replaces   string        `json:"replaces,omitempty"` // the state event this one replaced
	Version    string        `json:"room_version"`
}

// Room is what the projection knows about a room as a whole.
type Room struct {
	RoomID  string `json:"room_id"`
	Version string `json:"room_version"`
	Creator string `json:"creator"`
	// Extremities are the forward extremities: the prev_events of the
	// next local event.
	Extremities []string `json:"extremities"`
}

// Membership is one user's current membership of one room.
type Membership struct {
	RoomID     string `json:"room_id"`
	Membership string `json:"membership"`
	EventID    string `json:"event_id"`
	Offset     uint64 `json:"offset"`
}

// AliasRecord maps an alias to its room.
type AliasRecord struct {
	RoomID  string `json:"room_id"`
	Creator string `json:"creator"`
}

// Projection is the rooms read model.
type Projection struct {
	onCommit func(offset uint64)
}

// New returns the projection; onCommit (may be nil) is called after each
// committed batch with its last offset, to wake long-polls.
func New(onCommit func(offset uint64)) *Projection { return &Projection{onCommit: onCommit} }

func (*Projection) Name() string { return "rooms" }
func (*Projection) Version() int { return 2 }

// AfterCommit wakes waiters.
func (p *Projection) AfterCommit(entries []englog.Entry) {
	if p.onCommit != nil && len(entries) > 0 {
		p.onCommit(entries[len(entries)-1].Offset)
	}
}

func offsetKey(prefix byte, room string, off uint64) []byte {
	k := projections.Key(prefix, room)
	k = append(k, sep)
	return binary.BigEndian.AppendUint64(k, off)
}

// Apply folds a batch.
func (p *Projection) Apply(w projections.Writer, entries []englog.Entry) error {
	for _, e := range entries {
		var err error
		switch e.Kind {
		case englog.KindPDU:
			err = p.applyPDU(w, e)
		case englog.KindRoomForgotten:
			var f facts.RoomForgotten
			if err = facts.Decode(e, &f); err == nil {
				err = w.Set(projections.Key(pForgotten, f.UserID, f.RoomID), nil)
			}
		case englog.KindAliasSet:
			var f facts.AliasSet
			if err = facts.Decode(e, &f); err == nil {
				if err = projections.PutJSON(w, projections.Key(pAlias, f.Alias), AliasRecord{RoomID: f.RoomID, Creator: f.Creator}); err == nil {
					err = w.Set(projections.Key(pRoomAlias, f.RoomID, f.Alias), nil)
				}
			}
		case englog.KindAliasRemoved:
			var f facts.AliasRemoved
			if err = facts.Decode(e, &f); err == nil {
				var a *AliasRecord
				if a, err = projections.GetJSON[AliasRecord](w, projections.Key(pAlias, f.Alias)); err == nil && a != nil {
					if err = w.Delete(projections.Key(pAlias, f.Alias)); err == nil {
						err = w.Delete(projections.Key(pRoomAlias, a.RoomID, f.Alias))
					}
				}
			}
		case englog.KindRoomVisibilitySet:
			var f facts.RoomVisibilitySet
			if err = facts.Decode(e, &f); err == nil {
				if f.Visibility == "public" {
					err = w.Set(projections.Key(pPublic, f.RoomID), nil)
				} else {
					err = w.Delete(projections.Key(pPublic, f.RoomID))
				}
			}
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func (p *Projection) applyPDU(w projections.Writer, e englog.Entry) error {
	var f facts.PDU
	if err := facts.Decode(e, &f); err != nil {
		return err
	}
	version, ok := stateres.Version(f.RoomVersion)
	if !ok {
		// Recorded as is: an unknown version cannot be folded, which is a
		// fact about this build, not the log; skip rather than stop.
		return nil
	}
	ev, err := stateres.ParseEvent(version, f.Event)
	if err != nil {
		return nil // malformed PDUs were refused before proposing; never fold them
	}
	id := ev.EventID()
	if old, err := projections.GetJSON[Event](w, projections.Key(pEvent, id)); err != nil || (old != nil && old.Rejected == "" && !old.Outlier) {
		return err // already folded: duplicates are no-ops
	}
	rec := Event{EventID: id, RoomID: ev.RoomID(), Offset: e.Offset, JSON: ev.JSON(), Rejected: f.Rejected,
		SoftFailed: f.SoftFailed, Outlier: f.Outlier, Txn: f.Txn, Version: version.ID}
	inDAG := f.Rejected == "" && !f.SoftFailed && !f.Outlier
	roomID := ev.RoomID()

	if inDAG {
		if ev.Type() == stateres.MRoomCreate && ev.StateKey() != nil && *ev.StateKey() == "" {
			if err := projections.PutJSON(w, projections.Key(pRoom, roomID), Room{RoomID: roomID, Version: version.ID, Creator: ev.Sender()}); err != nil {
				return err
			}
		}
		room, err := projections.GetJSON[Room](w, projections.Key(pRoom, roomID))
		if err != nil {
			return err
		}
		if room == nil {
			// An event of a room whose create event we have not folded:
			// keep it as an outlier until federation backfills.
			rec.Outlier, inDAG = true, false
		} else {
			room.Extremities = advanceExtremities(room.Extremities, ev)
			if err := projections.PutJSON(w, projections.Key(pRoom, roomID), room); err != nil {
				return err
			}
		}
	}
	if inDAG {
		if err := w.Set(offsetKey(pTimeline, roomID, e.Offset), []byte(id)); err != nil {
			return err
		}
		if sk := ev.StateKey(); sk != nil {
			sKey := projections.Key(pState, roomID, ev.Type(), *sk)
			if prev, ok, err := w.Get(sKey); err != nil {
				return err
			} else if ok {
				rec.Replaces = string(prev)
			}
			if err := w.Set(sKey, []byte(id)); err != nil {
				return err
			}
			hKey := binary.BigEndian.AppendUint64(append(projections.Key(pStateHist, roomID, ev.Type(), *sk), sep), e.Offset)
			if err := w.Set(hKey, []byte(id)); err != nil {
				return err
			}
			if ev.Type() == stateres.MRoomMember {
				if err := p.applyMembership(w, ev, *sk, e.Offset); err != nil {
					return err
				}
			}
		}
		if err := countNotification(w, ev, e.Offset); err != nil {
			return err
		}
		if f.Txn != nil {
			if err := w.Set(projections.Key(pTxn, f.Txn.UserID, f.Txn.DeviceID, f.Txn.TxnID), []byte(id)); err != nil {
				return err
			}
		}
	}
	if err := projections.PutJSON(w, projections.Key(pEvent, id), rec); err != nil {
		return err
	}
	if !inDAG {
		return nil
	}
	if ev.Type() == stateres.MRoomRedaction && ev.Redacts() != "" {
		if err := redact(w, ev.Redacts(), id, roomID); err != nil {
			return err
		}
	}
	// A redaction that arrived before this event applies now.
	lower := append(projections.Key(pPendingRed, id), sep)
	it := w.Iter(lower, projections.PrefixEnd(lower))
	var pending []string
	for ok := it.First(); ok; ok = it.Next() {
		pending = append(pending, string(it.Key()[len(lower):]))
	}
	if err := it.Close(); err != nil {
		return err
	}
	for _, rid := range pending {
		if err := redact(w, id, rid, roomID); err != nil {
			return err
		}
	}
	if len(pending) > 0 {
		return w.DeleteRange(lower, projections.PrefixEnd(lower))
	}
	return nil
}

func (p *Projection) applyMembership(w projections.Writer, ev stateres.PDU, userID string, off uint64) error {
	var c struct {
		Membership string `json:"membership"`
	}
	_ = json.Unmarshal(ev.Content(), &c)
	if c.Membership == "join" || c.Membership == "invite" || c.Membership == "knock" {
		if err := w.Delete(projections.Key(pForgotten, userID, ev.RoomID())); err != nil {
			return err
		}
	}
	return projections.PutJSON(w, projections.Key(pMember, userID, ev.RoomID()), Membership{RoomID: ev.RoomID(), Membership: c.Membership, EventID: ev.EventID(), Offset: off})
}

// redact replaces the target's JSON by its redacted form, if the target is
// in the same room; a target not seen yet is remembered.
func redact(w projections.Writer, targetID, redactionID, roomID string) error {
	t, err := projections.GetJSON[Event](w, projections.Key(pEvent, targetID))
	if err != nil {
		return err
	}
	if t == nil {
		return w.Set(append(append(projections.Key(pPendingRed, targetID), sep), redactionID...), nil)
	}
	if t.RoomID != roomID || t.RedactedBy != "" {
		return nil
	}
	v, ok := stateres.Version(t.Version)
	if !ok {
		return nil
	}
	red, err := stateres.Redact(v, t.JSON)
	if err != nil {
		return nil // an unredactable stored event stays as is
	}
	t.JSON, t.RedactedBy = red, redactionID
	return projections.PutJSON(w, projections.Key(pEvent, targetID), t)
}

// advanceExtremities: the new event replaces the extremities it references.
func advanceExtremities(ext []string, ev stateres.PDU) []string {
	prev := map[string]bool{}
	for _, p := range ev.PrevEventIDs() {
		prev[p] = true
	}
	out := ext[:0:0]
	for _, x := range ext {
		if !prev[x] {
			out = append(out, x)
		}
	}
	return append(out, ev.EventID())
}

// notifyingContent is what countNotification reads of an event.
type notifyingContent struct {
	MsgType   string `json:"msgtype"`
	RelatesTo *struct {
		RelType string `json:"rel_type"`
		EventID string `json:"event_id"`
	} `json:"m.relates_to"`
	Mentions *struct {
		UserIDs []string `json:"user_ids"`
	} `json:"m.mentions"`
}

// countNotification maintains the cumulative counters behind
// unread_notifications. An event notifies when the default push rules
// would make it notify: a message (not a notice, not an edit), an
// encrypted event, a sticker, a call invite or a poll; it highlights the
// users its m.mentions names. Push-rule evaluation per user can refine
// this later; the counters are a pure function of the events.
func countNotification(w projections.Writer, ev stateres.PDU, off uint64) error {
	if ev.StateKey() != nil {
		return nil
	}
	var c notifyingContent
	_ = json.Unmarshal(ev.Content(), &c)
	switch ev.Type() {
	case "m.room.message":
		if c.MsgType == "m.notice" || (c.RelatesTo != nil && c.RelatesTo.RelType == "m.replace") {
			return nil
		}
	case "m.room.encrypted", "m.sticker", "m.call.invite", "m.poll.start":
	default:
		return nil
	}
	roomID := ev.RoomID()
	scope := ScopeMain
	if c.RelatesTo != nil && c.RelatesTo.RelType == "m.thread" && c.RelatesTo.EventID != "" {
		scope = c.RelatesTo.EventID
		if err := w.Set(projections.Key(pThread, roomID, scope), nil); err != nil {
			return err
		}
	}
	for _, sc := range []string{ScopeAll, scope} {
		if err := bump(w, projections.Key(pNotif, roomID, sc), off); err != nil {
			return err
		}
	}
	if err := w.Set(projections.Key(pLastNotif, roomID, ev.Sender()), binary.BigEndian.AppendUint64(nil, off)); err != nil {
		return err
	}
	if c.Mentions != nil {
		seen := map[string]bool{ev.Sender(): true}
		for _, u := range c.Mentions.UserIDs {
			if seen[u] {
				continue
			}
			seen[u] = true
			for _, sc := range []string{ScopeAll, scope} {
				if err := bump(w, projections.Key(pHighlight, roomID, u, sc), off); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// bump appends the next cumulative count under prefix at offset off.
func bump(w projections.Writer, prefix []byte, off uint64) error {
	n, err := cumulative(w, prefix, off)
	if err != nil {
		return err
	}
	k := binary.BigEndian.AppendUint64(append(prefix, sep), off)
	return w.Set(k, binary.BigEndian.AppendUint64(nil, n+1))
}

// cumulative is the count stored under prefix at the newest offset <= off
// (0 when none).
func cumulative(r projections.Reader, prefix []byte, off uint64) (uint64, error) {
	lower := append(append([]byte(nil), prefix...), sep)
	it := r.Iter(lower, projections.PrefixEnd(lower))
	var n uint64
	upper := binary.BigEndian.AppendUint64(append([]byte(nil), lower...), off)
	if off == ^uint64(0) {
		if it.Last() {
			n = binary.BigEndian.Uint64(it.Value())
		}
	} else if it.SeekLT(append(upper, 0)) {
		n = binary.BigEndian.Uint64(it.Value())
	}
	return n, it.Close()
}
