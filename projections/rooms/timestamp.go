package rooms

import (
	"encoding/binary"
	"math"

	"github.com/engram-hs/engram/projections"
)

// The timestamp index (o records) holds every timeline entry, backfilled
// history included, keyed by its event's origin_server_ts and then by its
// place in the timeline: o room 0 ts offset [seq] -> eventID. The place is
// the timeline key's own suffix, so entries sharing a timestamp sort in
// timeline order.

// tsPrefix is the start of a room's index.
func tsPrefix(room string) []byte {
	return append(projections.Key(pTimeTS, room), sep)
}

// tsBytes orders signed timestamps as unsigned bytes.
func tsBytes(k []byte, ts int64) []byte {
	return binary.BigEndian.AppendUint64(k, uint64(ts)^(1<<63))
}

// tsKey is the index key of the timeline entry at timelineKey (a pTimeline
// key of the same room) whose event has origin_server_ts ts.
func tsKey(room string, ts int64, timelineKey []byte) []byte {
	k := tsBytes(tsPrefix(room), ts)
	return append(k, timelineKey[len(projections.Key(pTimeline, room))+1:]...)
}

// EventAtTimestamp finds the event of a room closest to ts in one
// direction (the spec's timestamp_to_event, for clients and for other
// servers): forward, the earliest event with an origin_server_ts at or
// after ts; backwards, the latest at or before it. origin_server_ts is the
// sender's claim and is not ordered along the timeline, so the search
// seeks the timestamp index rather than the timeline, and reads only the
// candidates nearest ts, stepping over entries past bound and events the
// asker may not see. Ties keep the first event in timeline order going
// forwards and the last going backwards. visible says which events the
// asker may see (an entry with a Seq is backfilled history); ok is false
// when none fits.
func (v View) EventAtTimestamp(roomID string, ts int64, forward bool, bound Pos, visible func(TimelineEntry, *Event) (bool, error)) (best TimelineEntry, bestTS int64, ok bool, err error) {
	lower := tsPrefix(roomID)
	upper := projections.PrefixEnd(lower)
	it := v.r.Iter(lower, upper)
	var found bool
	if forward {
		found = it.SeekGE(tsBytes(tsPrefix(roomID), ts))
	} else if ts == math.MaxInt64 {
		found = it.Last()
	} else {
		found = it.SeekLT(tsBytes(tsPrefix(roomID), ts+1))
	}
	for ; found && err == nil && !ok; found = next(it, forward) {
		k := it.Key()[len(lower):]
		if len(k) < 16 {
			continue
		}
		te := TimelineEntry{Offset: binary.BigEndian.Uint64(k[8:16]), EventID: string(it.Value())}
		if len(k) >= 24 {
			te.Seq = binary.BigEndian.Uint64(k[16:24])
		}
		if te.after(bound) {
			continue
		}
		var e *Event
		if e, err = v.Event(te.EventID); err != nil || e == nil || e.Rejected != "" {
			continue
		}
		var see bool
		if see, err = visible(te, e); err == nil && see {
			best, bestTS, ok = te, int64(binary.BigEndian.Uint64(k[:8])^(1<<63)), true
		}
	}
	if cerr := it.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return TimelineEntry{}, 0, false, err
	}
	return best, bestTS, ok, nil
}

func next(it projections.Iterator, forward bool) bool {
	if forward {
		return it.Next()
	}
	return it.Prev()
}
