package roomwrite

import (
	"testing"
	"time"

	"github.com/engram-hs/engram/stateres"
)

// A chain started right after a client read its clock dates its events
// after that reading, even within the same millisecond: a
// /timestamp_to_event search backwards from the reading must not find
// them. Truncating to the millisecond fails this on nearly every try.
func TestEventsAreDatedAfterAnEarlierClockReading(t *testing.T) {
	r := newRig(t)
	version, _ := stateres.Version("11")
	room := r.createRoom(t, user("alice"), "11")
	for i := 0; i < 200; i++ {
		before := time.Now()
		if before.UnixNano()%int64(time.Millisecond) == 0 {
			continue // on a millisecond's edge both roundings agree
		}
		fresh, err := r.w.NewRoom(version, "!clock:"+testServer)
		if err != nil {
			t.Fatal(err)
		}
		extended, err := r.w.Extend(room)
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range []*Builder{fresh, extended} {
			if b.Now() <= before.UnixMilli() {
				t.Fatalf("try %d: a chain started after the clock read %d ms is dated %d", i, before.UnixMilli(), b.Now())
			}
		}
	}
}
