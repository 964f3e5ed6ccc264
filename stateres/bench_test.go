package stateres

import (
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"testing"
	"time"
)

// report prints one JSON line per figure, as the project's benchmark
// tooling expects.
func report(b *testing.B, name string, ops int, elapsed time.Duration) {
	b.Helper()
	if elapsed <= 0 || ops == 0 {
		return
	}
	line, _ := json.Marshal(map[string]any{"benchmark": name, "ops_per_sec": float64(ops) / elapsed.Seconds(), "ops": ops})
	fmt.Println(string(line))
}

func benchEvent(b *testing.B) (*RoomVersion, *Event, ed25519.PrivateKey) {
	b.Helper()
	key := specKey(b)
	v := mustVersion(b, "12")
	state, last := buildRoom(b, v, key)
	ev, err := BuildEvent(v, &ProtoEvent{Type: "m.room.message", Sender: "@alice:origin.test", RoomID: last.RoomID(), OriginServerTS: 5000,
		Content: json.RawMessage(`{"msgtype":"m.text","body":"a typical message of moderate length, with some unicode: héllo wörld 😀"}`)},
		state, []PDU{last}, "origin.test", "ed25519:k", key)
	if err != nil {
		b.Fatal(err)
	}
	return v, ev, key
}

func BenchmarkSignEvent(b *testing.B) {
	v, ev, key := benchEvent(b)
	b.ReportAllocs()
	n := 0
	start := time.Now()
	for b.Loop() {
		if _, err := hashAndSign(v, ev.JSON(), "origin.test", "ed25519:k", key); err != nil {
			b.Fatal(err)
		}
		n++
	}
	report(b, "events_signed", n, time.Since(start))
}

func BenchmarkVerifyEvent(b *testing.B) {
	_, ev, key := benchEvent(b)
	pub := key.Public().(ed25519.PublicKey)
	lookup := func(string, string) (ed25519.PublicKey, bool) { return pub, true }
	b.ReportAllocs()
	n := 0
	start := time.Now()
	for b.Loop() {
		if err := VerifyEventSignatures(ev, lookup); err != nil {
			b.Fatal(err)
		}
		n++
	}
	report(b, "events_verified", n, time.Since(start))
}

func BenchmarkParseEvent(b *testing.B) {
	v, ev, _ := benchEvent(b)
	raw := ev.JSON()
	b.SetBytes(int64(len(raw)))
	b.ReportAllocs()
	n := 0
	start := time.Now()
	for b.Loop() {
		if _, err := ParseEvent(v, raw); err != nil {
			b.Fatal(err)
		}
		n++
	}
	report(b, "events_parsed", n, time.Since(start))
}
