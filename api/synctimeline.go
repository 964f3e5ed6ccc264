package api

import (
	"github.com/engram-hs/engram/api/synccache"
	"github.com/engram-hs/engram/projections/rooms"
	"github.com/engram-hs/engram/stateres"
)

// timelineWindowSize is how many of a room's newest events its shared
// window keeps: more than a default timeline (10, and one more to tell
// whether it was cut), so most builds read nothing older.
const timelineWindowSize = 32

// timelineWindow is a room's newest stream events (as page reads them:
// no backfilled history), oldest first, as the rooms projection had them
// when the window was read or last extended. Every member's build of the
// room takes its timeline from it, with the member's filter and
// visibility applied to each event: under load the same events were read
// from the projection for each of a busy room's members (page and walk
// were ~38% of the builds' time with 300 syncers in rooms of 200,
// bench/README.md, 2026-12-07, syncers2).
type timelineWindow struct {
	evs   []*rooms.Event
	whole bool // evs begin at the room's first stream event
	size  int  // bytes held, as cachedState sizes events
}

// syncTimeline is page(v, roomID, upper, false, limit, bound, tf, vis)
// for a sync build: the room's events at or before upper and after
// bound that the filter lets through and the reader may see, newest
// first, at most limit, taken from the room's window and read from the
// projection only beyond it.
func (s *Server) syncTimeline(v rooms.View, roomID string, upper uint64, limit int, bound uint64, tf *roomEventFilter, vis *visibility, uncached bool) ([]*rooms.Event, error) {
	if uncached || limit == 0 {
		evs, _, _, err := s.page(v, roomID, upper, false, limit, bound, tf, vis)
		return evs, err
	}
	w, err := s.timelineWindow(v, roomID)
	if err != nil {
		return nil, err
	}
	purged, err := s.adminState().PurgedUpTo(roomID)
	if err != nil {
		return nil, err
	}
	var evs []*rooms.Event
	for i := len(w.evs) - 1; i >= 0; i-- {
		e := w.evs[i]
		if e.Offset > upper {
			continue // folded after this build's position
		}
		if e.Offset <= bound {
			return evs, nil
		}
		if err := s.keepEvent(&evs, e, rooms.TimelineEntry{Offset: e.Offset, EventID: e.EventID}, purged, tf, vis); err != nil {
			return nil, err
		}
		if len(evs) == limit {
			return evs, nil
		}
	}
	if w.whole {
		return evs, nil
	}
	from := upper
	if len(w.evs) > 0 {
		from = min(from, w.evs[0].Offset-1)
	}
	older, _, _, err := s.page(v, roomID, from, false, limit-len(evs), bound, tf, vis)
	return append(evs, older...), err
}

// timelineWindow is the room's window as of its last event (Clock's
// EventsChangedAt): a window of an older position is extended by the
// events after its newest, read once for all the members, and read
// again whole after a redaction (which changes an event it holds) or
// when more arrived than it keeps.
func (s *Server) timelineWindow(v rooms.View, roomID string) (*timelineWindow, error) {
	roomAt, _ := s.eventsChangedAt(roomID)
	got, err := s.syncCache.parts.GetIf(synccache.PartKey{Kind: "timeline", Room: roomID}, roomAt, nil, func(old any) (any, int, bool, error) {
		prev, _ := old.(*timelineWindow)
		w, err := s.readTimelineWindow(v, roomID, prev)
		if err != nil {
			return nil, 0, false, err
		}
		return w, w.size, true, nil
	})
	if err != nil {
		return nil, err
	}
	return got.(*timelineWindow), nil
}

// readTimelineWindow reads the room's window: prev extended by the events
// after its newest when that suffices, else the newest events whole. An
// entry without a record (a purge erased it, or corruption) ends the
// window: the build reads from there on as page does.
func (s *Server) readTimelineWindow(v rooms.View, roomID string, prev *timelineWindow) (*timelineWindow, error) {
	if prev != nil && len(prev.evs) > 0 {
		tl, err := v.Timeline(roomID, prev.evs[len(prev.evs)-1].Offset, true, timelineWindowSize+1, 0)
		if err != nil {
			return nil, err
		}
		if len(tl) <= timelineWindowSize {
			added, ok, err := readAppended(v, tl)
			if err != nil {
				return nil, err
			}
			if ok {
				evs := append(append(make([]*rooms.Event, 0, len(prev.evs)+len(added)), prev.evs...), added...)
				whole := prev.whole
				if cut := len(evs) - timelineWindowSize; cut > 0 {
					evs, whole = evs[cut:], false
				}
				return newTimelineWindow(evs, whole), nil
			}
		}
	}
	tl, err := v.Timeline(roomID, ^uint64(0), false, timelineWindowSize+1, 0)
	if err != nil {
		return nil, err
	}
	whole := len(tl) <= timelineWindowSize
	if !whole {
		tl = tl[:timelineWindowSize]
	}
	evs := make([]*rooms.Event, len(tl))
	for i, te := range tl {
		e, err := v.Event(te.EventID)
		if err != nil {
			return nil, err
		}
		if e == nil {
			evs, whole = evs[len(tl)-i:], false
			break
		}
		evs[len(tl)-1-i] = e
	}
	return newTimelineWindow(evs, whole), nil
}

// readAppended reads the events of timeline entries (oldest first) to
// append to a window; not ok when one is a redaction (an event the
// window holds may have changed) or has no record: the window is then
// read whole.
func readAppended(v rooms.View, tl []rooms.TimelineEntry) ([]*rooms.Event, bool, error) {
	out := make([]*rooms.Event, 0, len(tl))
	for _, te := range tl {
		e, err := v.Event(te.EventID)
		if err != nil || e == nil {
			return nil, false, err
		}
		if h, err := decodeHead(e); err != nil {
			return nil, false, err
		} else if h.Type == stateres.MRoomRedaction {
			return nil, false, nil
		}
		out = append(out, e)
	}
	return out, true, nil
}

func newTimelineWindow(evs []*rooms.Event, whole bool) *timelineWindow {
	size := 64 + 8*len(evs)
	for _, e := range evs {
		size += len(e.EventID) + len(e.RoomID) + len(e.JSON) + 256
	}
	return &timelineWindow{evs: evs, whole: whole, size: size}
}
