package api

import (
	"encoding/json"
	"fmt"
	"testing"
)

// BenchmarkEncodeSync encodes a response as a syncer in 20 busy rooms gets
// it (10 timeline events of a room each), with encodeSync and with
// json.Marshal, which scans every encoded event again.
func BenchmarkEncodeSync(b *testing.B) {
	join := map[string]any{}
	for r := range 20 {
		events := make([]any, 10)
		for i := range events {
			events[i] = syncEvent(fmt.Sprintf(`{"content":{"body":"%064d","msgtype":"m.text"},"event_id":"$%043d","origin_server_ts":1796654333928,"room_id":"!room%d:localhost","sender":"@bench_s%d:localhost","type":"m.room.message","unsigned":{"age":1234,"membership":"join"}}`, i, i, r, i))
		}
		join[fmt.Sprintf("!room%d:localhost", r)] = map[string]any{
			"timeline":             map[string]any{"events": events, "limited": true, "prev_batch": "t123_456"},
			"state":                map[string]any{"events": []any{}},
			"ephemeral":            map[string]any{"events": []any{}},
			"account_data":         map[string]any{"events": []any{}},
			"unread_notifications": map[string]uint64{"notification_count": 3, "highlight_count": 0},
			"summary":              map[string]any{},
		}
	}
	resp := map[string]any{
		"next_batch": "s123_456",
		"rooms":      map[string]any{"join": join, "invite": map[string]any{}, "leave": map[string]any{}, "knock": map[string]any{}},
		"presence":   map[string]any{"events": []map[string]any{}},
	}
	for _, enc := range []struct {
		name string
		fn   func(map[string]any) ([]byte, error)
	}{{"encodeSync", encodeSync}, {"json.Marshal", func(m map[string]any) ([]byte, error) { return json.Marshal(m) }}} {
		b.Run(enc.name, func(b *testing.B) {
			for b.Loop() {
				if _, err := enc.fn(resp); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
