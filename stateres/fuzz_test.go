package stateres

import (
	"bytes"
	"testing"
)

// FuzzParseEvent: ParseEvent never panics, and whatever it accepts survives
// parse(serialise(x)) == x, with the redacted form parsing too.
func FuzzParseEvent(f *testing.F) {
	f.Add("10", []byte(v4Message))
	f.Add("1", []byte(`{"auth_events":[["$a:x",{"sha256":"h"}]],"content":{},"depth":1,"event_id":"$e:x","hashes":{"sha256":"x"},"origin":"x","origin_server_ts":1,"prev_events":[],"room_id":"!r:x","sender":"@u:x","signatures":{},"type":"m.room.redaction","redacts":"$t:x"}`))
	f.Add("12", []byte(`{"auth_events":[],"content":{"room_version":"12"},"depth":1,"hashes":{"sha256":"x"},"origin_server_ts":1,"prev_events":[],"sender":"@c:x","signatures":{},"state_key":"","type":"m.room.create"}`))
	f.Add("11", []byte(`{"auth_events":[],"content":{"membership":"join","third_party_invite":{"signed":{"a":1}}},"depth":1,"hashes":{"sha256":"x"},"origin_server_ts":1,"prev_events":[],"room_id":"!r","sender":"@c:x","signatures":{},"state_key":"@c:x","type":"m.room.member"}`))
	f.Fuzz(func(t *testing.T, versionID string, raw []byte) {
		v, ok := Version(versionID)
		if !ok {
			return
		}
		ev, err := ParseEvent(v, raw)
		if err != nil {
			return
		}
		again, err := ParseEvent(v, ev.JSON())
		if err != nil {
			t.Fatalf("accepted event does not reparse: %v\n%s", err, ev.JSON())
		}
		if !bytes.Equal(again.JSON(), ev.JSON()) || again.EventID() != ev.EventID() || again.RoomID() != ev.RoomID() ||
			again.Type() != ev.Type() || again.Sender() != ev.Sender() || again.Depth() != ev.Depth() || again.Redacts() != ev.Redacts() {
			t.Fatalf("round trip changed the event:\n%s\n%s", ev.JSON(), again.JSON())
		}
		red := ev.Redacted()
		if red.EventID() != ev.EventID() {
			t.Fatalf("redaction changed the event ID: %s -> %s", ev.EventID(), red.EventID())
		}
		if !bytes.Equal(red.Redacted().JSON(), red.JSON()) {
			t.Fatalf("redaction is not idempotent:\n%s\n%s", red.JSON(), red.Redacted().JSON())
		}
	})
}
