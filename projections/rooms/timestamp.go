package rooms

import "encoding/json"

// EventAtTimestamp finds the event of a room closest to ts in one
// direction (the spec's timestamp_to_event, for clients and for other
// servers): forward, the earliest event with an origin_server_ts at or
// after ts; backwards, the latest at or before it. origin_server_ts is the
// sender's claim and is not ordered along the timeline, so every entry up
// to bound is read, backfilled history included. Ties keep the first
// event in timeline order going forwards and the last going backwards.
// visible says which events the asker may see (an entry with a Seq is
// backfilled history); ok is false when none fits.
func (v View) EventAtTimestamp(roomID string, ts int64, forward bool, bound Pos, visible func(TimelineEntry, *Event) (bool, error)) (best TimelineEntry, bestTS int64, ok bool, err error) {
	const batch = 500
	from := Pos{}
	for {
		entries, err := v.Page(roomID, from, true, batch, bound)
		if err != nil {
			return best, 0, false, err
		}
		for _, te := range entries {
			from = te.At()
			e, err := v.Event(te.EventID)
			if err != nil {
				return best, 0, false, err
			}
			if e == nil || e.Rejected != "" {
				continue
			}
			if see, err := visible(te, e); err != nil {
				return best, 0, false, err
			} else if !see {
				continue
			}
			var h struct {
				TS int64 `json:"origin_server_ts"`
			}
			_ = json.Unmarshal(e.JSON, &h)
			if forward && h.TS >= ts && (!ok || h.TS < bestTS) ||
				!forward && h.TS <= ts && (!ok || h.TS >= bestTS) {
				best, bestTS, ok = te, h.TS, true
			}
		}
		if len(entries) < batch {
			return best, bestTS, ok, nil
		}
	}
}
