package auth

import (
	"slices"
	"testing"
)

// From v11 the creator is the create event's sender, which is not in its
// content: two PDUs claiming one event ID with one content but different
// senders (an unverified ID, as the cache's comment warns) must not share
// parsed power levels.
func TestPowerLevelsCacheKeysOnCreateSender(t *testing.T) {
	for _, version := range []string{"11", "12"} {
		v := mustVersion(t, version)
		create := func(sender string) *fakeEvent {
			return &fakeEvent{id: "$create", room: "!r:x", typ: "m.room.create", sender: sender, stateKey: sk(""),
				content: []byte(`{"room_version":"` + version + `"}`), v: v}
		}
		pl := &fakeEvent{id: "$pl", room: "!r:x", typ: "m.room.power_levels", sender: "@alice:x", stateKey: sk(""),
			content: []byte(`{"users":{}}`), v: v}
		if got := ParsePowerLevels(v, create("@alice:x"), pl).Creators(); !slices.Equal(got, []string{"@alice:x"}) {
			t.Fatalf("v%s: creators %v, want alice", version, got)
		}
		if got := ParsePowerLevels(v, create("@mallory:x"), pl).Creators(); !slices.Equal(got, []string{"@mallory:x"}) {
			t.Fatalf("v%s: a create event sent by mallory under the same ID and content gave creators %v (cached from alice's)", version, got)
		}
	}
}
