package admin

import (
	"bytes"
	"encoding/json"

	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/stateres"
)

// Purges erase. A room deleted with purge and a purged history are
// recorded (facts.RoomDeleted, facts.HistoryPurged: what clients no longer
// see) and, in the same batch, an erase entry (englog.EraseProposal)
// names the log entries whose content goes: the log rewrites them as
// tombstones on every node, every projection is folded again from the
// rewritten log, and the old bytes are removed from the disk
// (log/erase.go, log/eraser.go). Which entries go is decided here, from
// the log as it is, before anything is recorded.

// eraseScanPage is how many log entries a scan reads at a time.
const eraseScanPage = 2048

// pduHead is what the choice of entries to erase reads of an event.
type pduHead struct {
	RoomID   string  `json:"room_id"`
	Type     string  `json:"type"`
	StateKey *string `json:"state_key"`
	Sender   string  `json:"sender"`
}

// entriesWhere returns the offsets, up to upTo, of the entries that
// mention needle and that pick takes, reading the whole log.
func (a *API) entriesWhere(upTo uint64, needle string, pick func(englog.Entry) bool) ([]uint64, error) {
	n := []byte(needle)
	var offs []uint64
	for from := uint64(1); from <= upTo; {
		es, err := a.host.Log().Read(from, int(min(eraseScanPage, upTo-from+1)))
		if err != nil {
			return nil, err
		}
		if len(es) == 0 {
			break
		}
		for _, e := range es {
			if bytes.Contains(e.Payload, n) && pick(e) {
				offs = append(offs, e.Offset)
			}
		}
		from = es[len(es)-1].Offset + 1
	}
	return offs, nil
}

// roomEntries returns the offsets, up to upTo, of the room's events (PDU
// entries) for which keep says false. The whole log is read: a room's
// events are not only those of its timeline (outliers of a join's auth
// chain, rejected and soft-failed events, an invite received before the
// join).
func (a *API) roomEntries(roomID string, upTo uint64, keep func(pduHead) bool) ([]uint64, error) {
	return a.entriesWhere(upTo, roomID, func(e englog.Entry) bool {
		if e.Kind != englog.KindPDU {
			return false
		}
		var p facts.PDU
		if facts.Decode(e, &p) != nil {
			return false // not folded either: nothing of it is served
		}
		var h pduHead
		return json.Unmarshal(p.Event, &h) == nil && h.RoomID == roomID && !keep(h)
	})
}

// UserErasure is the erasure of a deactivation with erase, by an admin
// or by the user's own /account/deactivate (api), so both erase the same: the
// profiles the user set (display names, avatars), which the deactivation
// only clears from the accounts projection. Their messages stay, and so
// do the member events that carried their profile into rooms.
func (a *API) UserErasure(userID string) (englog.Proposal, int, error) {
	offs, err := a.entriesWhere(a.host.Log().LastOffset(), userID, func(e englog.Entry) bool {
		var p facts.ProfileSet
		return e.Kind == englog.KindProfileSet && facts.Decode(e, &p) == nil && p.UserID == userID
	})
	if err != nil {
		return englog.Proposal{}, 0, err
	}
	return englog.EraseProposal("user_erased", userID, offs), len(offs), nil
}

// purgeRoomEntries is the erasure of a room deleted with purge: every
// event of the room but the leaves this deletion sent (leaveIDs), which
// carry nothing of what was said and which the room's other servers must
// still receive.
func (a *API) purgeRoomEntries(roomID, deleteID string, leaveOffsets map[uint64]bool) (englog.Proposal, int, error) {
	offs, err := a.roomEntries(roomID, a.host.Log().LastOffset(), func(pduHead) bool { return false })
	if err != nil {
		return englog.Proposal{}, 0, err
	}
	kept := offs[:0]
	for _, o := range offs {
		if !leaveOffsets[o] {
			kept = append(kept, o)
		}
	}
	return englog.EraseProposal("room_deleted", deleteID, kept), len(kept), nil
}

// purgeHistoryEntries is the erasure of a history purge, as Synapse's
// purge_history deletes: the room's non-state events up to upTo, but not
// redactions (an erased redaction would bring back what it redacted in a
// kept event), and events of local users only with deleteLocal (other
// servers cannot give them back).
func (a *API) purgeHistoryEntries(roomID, purgeID string, upTo uint64, deleteLocal bool) (englog.Proposal, int, error) {
	offs, err := a.roomEntries(roomID, upTo, func(h pduHead) bool {
		return h.StateKey != nil || h.Type == stateres.MRoomRedaction || !deleteLocal && a.isLocal(h.Sender)
	})
	if err != nil {
		return englog.Proposal{}, 0, err
	}
	return englog.EraseProposal("history_purged", purgeID, offs), len(offs), nil
}
