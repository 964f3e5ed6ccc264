package receive

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/projections/rooms"
	"github.com/engram-hs/engram/stateres"
)

// ErrNoRoom is Backfill's answer when there is no room for the events
// between the gap's neighbours (two backfilled runs meet).
var ErrNoRoom = errors.New("no place left in the timeline before the gap")

// Backfill decides on PDUs origin sent in answer to /backfill, to fill the
// gap in the room's history just before the timeline entry gap (an event
// whose prev_events this server does not hold). Each event goes through
// the same checks as any other (format, signatures, hashes, its auth
// events, the state before it, fetching that state from origin where its
// own prev_events are missing too), except the soft-fail check: history is
// not judged by today's state. The accepted ones are recorded with their
// place just before gap, oldest first (facts.PDU.Backfill); they change
// neither the current state nor the forward extremities. It returns the
// verdicts of the events not held yet, in input order, and how many were
// placed in the timeline.
func (r *Receiver) Backfill(ctx context.Context, origin, roomID string, gap rooms.TimelineEntry, pdus []json.RawMessage) ([]Verdict, int, error) {
	lock := r.roomLock(roomID)
	lock.Lock()
	defer lock.Unlock()
	view := r.view()
	room, err := view.Room(roomID)
	if err != nil || room == nil {
		return nil, 0, err
	}
	version, ok := stateres.Version(room.Version)
	if !ok {
		return nil, 0, fmt.Errorf("room %s has the unknown version %s", roomID, room.Version)
	}
	region, lo, hi, err := placeBefore(view, roomID, gap)
	if err != nil {
		return nil, 0, err
	}
	d, err := newDecider(view, version, roomID)
	if err != nil {
		return nil, 0, err
	}
	d.historical = true
	u := &run{r: r, d: d, origin: origin, fetched: map[string]*candidate{}}
	cands, errs := parseAndVerifyEach(ctx, r.Verify, version, roomID, pdus)
	var keep []*candidate
	seen := map[string]bool{}
	for i, c := range cands {
		if errs[i] != nil || c == nil || seen[c.ev.EventID()] {
			continue // malformed or unverifiable history is left out, not recorded
		}
		seen[c.ev.EventID()] = true
		if e, err := view.Event(c.ev.EventID()); err != nil {
			return nil, 0, err
		} else if e != nil && (!e.Outlier || e.Rejected != "") {
			continue // held already (in the DAG, or refused)
		}
		keep = append(keep, c)
	}
	var verdicts []Verdict
	for _, i := range topoOrder(keep) {
		c := keep[i]
		if err := u.prepare(ctx, c, false); err != nil {
			return nil, 0, err
		}
		if len(u.missingPrevs(c.ev)) > 0 {
			// The state before it could not be had from origin now: a
			// transient failure, not the event's fault; left for later.
			continue
		}
		verdicts = append(verdicts, d.decide(c))
	}
	// Places, oldest first, just below hi.
	placed := 0
	for _, e := range d.entries {
		if e.Rejected == "" && !e.Outlier && !e.SoftFailed {
			placed++
		}
	}
	if placed == 0 {
		if len(d.entries) > 0 {
			return verdicts, 0, r.Append(ctx, d.entries)
		}
		return verdicts, 0, nil
	}
	if hi-lo-1 < uint64(placed) {
		return nil, 0, ErrNoRoom
	}
	seq := hi - uint64(placed)
	for i := range d.entries {
		e := &d.entries[i]
		if e.Rejected == "" && !e.Outlier && !e.SoftFailed {
			e.Backfill = &facts.TimelinePlace{After: region, Seq: seq}
			seq++
		}
	}
	return verdicts, placed, r.Append(ctx, d.entries)
}

// placeBefore is where history goes that precedes the timeline entry gap:
// after offset region, with a Seq strictly between lo and hi. Before an
// event that arrived at offset P that is after offset P-1 (after what is
// there already: older history); before a historical event, below its Seq
// and above the entry before it.
func placeBefore(view rooms.View, roomID string, gap rooms.TimelineEntry) (region, lo, hi uint64, err error) {
	if gap.Seq == 0 {
		if gap.Offset == 0 {
			return 0, 0, 0, ErrNoRoom
		}
		region, hi = gap.Offset-1, rooms.PosEnd
	} else {
		region, hi = gap.Offset, gap.Seq
	}
	prev, err := view.Page(roomID, gap.Before(), false, 1, rooms.Pos{})
	if err != nil {
		return 0, 0, 0, err
	}
	if len(prev) == 1 && prev[0].Offset == region && prev[0].Seq > 0 {
		lo = prev[0].Seq
	}
	return region, lo, hi, nil
}
