package roomwrite

import (
	"bytes"
	"context"
	"reflect"
	"testing"

	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/projections/rooms"
	"github.com/engram-hs/engram/stateres"
)

// A sent event is in the parsed-event cache before anyone reads it, and
// what the cache serves is what the log holds: the same JSON and the same
// parsed event as a view without the cache reads from the log. Once
// redacted, the event is served redacted, not from the cache.
func TestSentEventsAreCachedAsTheLogHoldsThem(t *testing.T) {
	for _, ver := range []string{"1", "10", "12"} {
		t.Run("v"+ver, func(t *testing.T) {
			r := newRig(t)
			ctx := context.Background()
			alice := user("alice")
			room := r.createRoom(t, alice, ver)
			id, err := r.w.Send(ctx, stateres.ProtoEvent{Type: "m.room.message", Sender: alice, RoomID: room,
				Content: mustJSON(map[string]string{"msgtype": "m.text", "body": "cached <&> \u2028 é"})}, &facts.TxnRef{UserID: alice, DeviceID: "D", TxnID: "t1"})
			if err != nil {
				t.Fatal(err)
			}
			fromLog := func() *rooms.Event {
				t.Helper()
				e, err := rooms.NewView(r.w.Handle().Reader(), r.node).Event(id)
				if err != nil || e == nil {
					t.Fatalf("event %s from the log: %v, %v", id, e, err)
				}
				return e
			}
			hits, misses := r.w.EventCacheStats()
			got, err := r.w.View().Event(id)
			if err != nil || got == nil {
				t.Fatalf("event %s: %v, %v", id, got, err)
			}
			if h, m := r.w.EventCacheStats(); h != hits+1 || m != misses {
				t.Fatalf("the first read of a sent event: %d hits, %d misses, want %d, %d", h, m, hits+1, misses)
			}
			want := fromLog()
			if !bytes.Equal(got.JSON, want.JSON) {
				t.Fatalf("cached JSON %s, the log's %s", got.JSON, want.JSON)
			}
			gp, err := got.PDU()
			if err != nil {
				t.Fatal(err)
			}
			wp, err := want.PDU()
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(gp, wp) {
				t.Fatalf("cached event %+v, parsed from the log %+v", gp, wp)
			}

			if _, err := r.w.Send(ctx, stateres.ProtoEvent{Type: stateres.MRoomRedaction, Sender: alice, RoomID: room, Redacts: id,
				Content: mustJSON(map[string]string{})}, nil); err != nil {
				t.Fatal(err)
			}
			got, err = r.w.View().Event(id)
			if err != nil || got == nil {
				t.Fatalf("redacted event %s: %v, %v", id, got, err)
			}
			if want := fromLog(); got.RedactedBy == "" || !bytes.Equal(got.JSON, want.JSON) || bytes.Contains(got.JSON, []byte("cached")) {
				t.Fatalf("redacted event served as %s (redacted by %q), the log's %s", got.JSON, got.RedactedBy, want.JSON)
			}
		})
	}
}
