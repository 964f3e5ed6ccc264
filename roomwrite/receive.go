package roomwrite

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
)

// Receive records PDUs another server sent, each with the verdict the
// federation receiver reached before calling it (facts.PDU Rejected,
// SoftFailed, Outlier, StateBefore: decide, then record). It is the
// federation half of the one write path, next to Send:
//   - under the lock of every room the entries touch (taken in sorted
//     order, so two calls never deadlock), so a local Send never builds
//     on a view of the room that misses them, and its state cache is
//     dropped before the lock is released;
//   - appended as one unit, on the leader only, and waited for until the
//     rooms projection has folded them, so the receiver checks the next
//     PDU of the room against them;
//   - never handed to Outbound: delivering a remote event onwards is the
//     resident server's explicit decision (send_join's pass-on), not a
//     side effect of recording it.
//
// An entry without an event or a room version is this server's bug (the
// receiver sets both) and fails the whole call before anything is
// appended. An entry may lack an event ID (a malformed PDU recorded as
// rejected) and a room_id (the create event of room versions that derive
// the room ID from it, and malformed PDUs): it is locked under the room
// its ID names, or none, as it changes no room's state.
func (w *Writer) Receive(ctx context.Context, entries []facts.PDU) ([]uint64, error) {
	if len(entries) == 0 {
		return nil, nil
	}
	if err := w.leader(); err != nil {
		return nil, err
	}
	roomIDs := make([]string, 0, 1)
	props := make([]englog.Proposal, len(entries))
	for i, e := range entries {
		var head struct {
			RoomID string `json:"room_id"`
		}
		if len(e.Event) == 0 || e.RoomVersion == "" {
			return nil, fmt.Errorf("roomwrite: received entry %d (event %q) lacks its event JSON or room version", i, e.EventID)
		}
		_ = json.Unmarshal(e.Event, &head)
		if head.RoomID == "" && strings.HasPrefix(e.EventID, "$") {
			// Room versions 12 on: the create event's hash is the room ID.
			head.RoomID = "!" + e.EventID[1:]
		}
		if head.RoomID != "" && !slices.Contains(roomIDs, head.RoomID) {
			roomIDs = append(roomIDs, head.RoomID)
		}
		p, err := facts.Encode(englog.KindPDU, e)
		if err != nil {
			return nil, fmt.Errorf("roomwrite: encode received event %s: %w", e.EventID, err)
		}
		props[i] = p
	}
	slices.Sort(roomIDs)
	for _, id := range roomIDs {
		unlock := w.locks.Lock(id)
		defer unlock()
	}
	// Whatever happens below, the rooms may have moved: cached state is
	// read afresh by the next Send (it would notice ChangedAt anyway;
	// dropping it frees the memory of a room that changed under it).
	defer func() {
		for _, id := range roomIDs {
			w.states.drop(id)
		}
	}()
	return w.appendAndWait(ctx, props)
}
