package receive

import (
	"context"
	"encoding/json"
	"testing"
)

// FuzzTransaction feeds arbitrary bytes as a PDU of a transaction to a
// room this server holds: whatever arrives, the receiver answers with a
// verdict (never a server error, never a panic), and what it records the
// rooms projection folds.
func FuzzTransaction(f *testing.F) {
	h := &harness{t: f}
	h.reset(f, "10")
	defer h.close()
	for _, line := range []string{
		`create m.room.create @alice:a.test "" {"creator":"@alice:a.test","room_version":"10"}`,
		`ajoin m.room.member @alice:a.test @alice:a.test {"membership":"join"}`,
		`pl m.room.power_levels @alice:a.test "" {"users":{"@alice:a.test":100},"state_default":50,"events_default":0,"ban":50,"kick":50,"redact":50,"invite":0,"users_default":0}`,
		`jr m.room.join_rules @alice:a.test "" {"join_rule":"public"}`,
	} {
		_, ev := h.define(f, line)
		h.appendLocal(f, ev)
	}
	for _, line := range []string{
		`bjoin m.room.member @bob:b.test @bob:b.test {"membership":"join"}`,
		`m1 m.room.message @bob:b.test - {"body":"hello","msgtype":"m.text"}`,
		`t1 m.room.topic @bob:b.test "" {"topic":"no"}`,
		`x1 m.room.message @bob:b.test - {"body":"tampered","msgtype":"m.text"} forge=hash`,
		`x2 m.room.message @bob:b.test - {"body":"forged","msgtype":"m.text"} forge=sig`,
	} {
		_, ev := h.define(f, line)
		f.Add([]byte(h.raw[ev.EventID()]))
	}
	f.Add([]byte(`{"room_id":"!r:a.test"}`))
	f.Add([]byte(`{"room_id":"!r:a.test","type":"m.room.message","prev_events":["$nope"],"auth_events":[]}`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		vs, err := h.recv.Transaction(context.Background(), "b.test", []json.RawMessage{raw})
		if err != nil {
			t.Fatalf("server error on %q: %v", raw, err)
		}
		if len(vs) != 1 {
			t.Fatalf("%d verdicts for one PDU", len(vs))
		}
	})
}
