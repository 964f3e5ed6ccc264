package federation

import (
	"encoding/json"
	"testing"
)

// headByUnmarshal is how RoomDelivery read an event's routing fields
// before it used the member reader: the oracle headOf must agree with.
func headByUnmarshal(event []byte) (eventHead, bool) {
	var head struct {
		RoomID   string  `json:"room_id"`
		Type     string  `json:"type"`
		StateKey *string `json:"state_key"`
	}
	if json.Unmarshal(event, &head) != nil {
		return eventHead{}, false
	}
	h := eventHead{roomID: head.RoomID, typ: head.Type}
	if head.StateKey != nil {
		h.stateKey, h.hasStateKey = *head.StateKey, true
	}
	if h.typ == "m.room.member" {
		h.membership = membershipOf(event)
	}
	return h, true
}

// TestHeadOfMatchesUnmarshal: the member reader gives RoomDelivery the
// room, type, state key and membership json.Unmarshal gave, for events
// with escapes, nested look-alike keys, a null state key, and for input
// that is not an event.
func TestHeadOfMatchesUnmarshal(t *testing.T) {
	for _, ev := range []string{
		`{"content":{"body":"hi","room_id":"!nested:x"},"room_id":"!r:x","sender":"@a:x","type":"m.room.message"}`,
		`{"content":{"membership":"leave"},"room_id":"!r:x","sender":"@a:x","state_key":"@bob:remote.test","type":"m.room.member"}`,
		`{"content":{"membership":"invite"},"room_id":"!r:x","state_key":"@bob:remote.test","type":"m.room.member"}`,
		`{"content":{"membership":"ban","reason":"\"membership\":\"invite\""},"room_id":"!r:x","state_key":"@b\\u00e9b:r\u00e9mote.test","type":"m.room.member"}`,
		`{"content":{},"room_id":"!r:x","state_key":"","type":"m.room.topic"}`,
		`{"content":{},"room_id":"!r:x","state_key":null,"type":"m.room.member"}`,
		`{"content":{"membership":5},"room_id":"!r:x","state_key":"@c:y","type":"m.room.member"}`,
		`{"content":{},"type":"m.room.create","state_key":""}`,
		`{"room_id":"!r\\\\x:y","type":"m.\\"q"}`,
		`[1,2]`,
		`{"room_id":`,
	} {
		want, wantOK := headByUnmarshal([]byte(ev))
		got, ok := headOf([]byte(ev))
		if ok != wantOK || (ok && got != want) {
			t.Errorf("%s:\n got %+v %v\nwant %+v %v", ev, got, ok, want, wantOK)
		}
	}
}

// BenchmarkRoomDeliveryHead: reading one local message's routing fields,
// member reader against json.Unmarshal, per event sent.
func BenchmarkRoomDeliveryHead(b *testing.B) {
	ev := []byte(`{"auth_events":["$DCvKMSfJqNJtJw1q6BapdcEVT3P5HsqyHU8RyDb6krw","$t2ekcd7ZKJk5Vm9jtGTXx0xl8JS6d9pvgkkBQ8CcQIM","$V7BoRrjXjoKVkSd4p2WCdyU_2ne9eaGyOJA2ApjzPGU"],"content":{"body":"a typical message of moderate length, with some unicode: héllo wörld","msgtype":"m.text"},"depth":1234,"hashes":{"sha256":"kTmBTGvsMdHYo/7fKVbpZl0XEfTlBTp64Dqnlz8ry5Q"},"origin_server_ts":1764886400000,"prev_events":["$mNvVTRWWNo2y8XKnqRvxmj5ozfh2JRgn2zSSHPlKUOM"],"room_id":"!yYbI2rDuUPEt4vrd0VEKy0lpNThbqmJ9G7mLqyOSr44","sender":"@user42:bench.test","signatures":{"bench.test":{"ed25519:a":"6k7d/y0Lb6MTLdeAWkQP87k9H4GZY4QtwK79frVjTYPCiRkr23RvDRBCbNGIKclS48rJbrvQ6CZ9YFGf5hOQBw"}},"type":"m.room.message"}`)
	b.Run("member-reader", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, ok := headOf(ev); !ok {
				b.Fatal("not an event")
			}
		}
	})
	b.Run("unmarshal", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, ok := headByUnmarshal(ev); !ok {
				b.Fatal("not an event")
			}
		}
	})
}
