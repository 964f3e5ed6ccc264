package api

import (
	"testing"

	"github.com/engram-hs/engram/projections/userdata"
)

// Presence is derived at read time from the recorded timestamps and the
// reader's clock: online while active, unavailable when idle over five
// minutes, offline when no sync was seen for longer than a long-poll
// plus the recording interval, and an explicit offline stays offline.
func TestDerivedPresenceIdleAndOffline(t *testing.T) {
	const t0 = int64(1_700_000_000_000)
	minute := int64(60_000)
	cases := []struct {
		name       string
		p          *userdata.Presence
		now        int64
		want       string
		wantActive bool
	}{
		{"never seen", nil, t0, "offline", false},
		{"just active", &userdata.Presence{Presence: "online", LastActiveTS: t0, LastSyncTS: t0}, t0 + minute, "online", true},
		{"idle but syncing", &userdata.Presence{Presence: "online", LastActiveTS: t0, LastSyncTS: t0 + 5*minute}, t0 + 5*minute + 1, "unavailable", false},
		{"idle exactly five minutes", &userdata.Presence{Presence: "online", LastActiveTS: t0, LastSyncTS: t0 + 5*minute}, t0 + 5*minute, "online", true},
		{"no sync for over six minutes", &userdata.Presence{Presence: "online", LastActiveTS: t0, LastSyncTS: t0}, t0 + 6*minute + 1, "offline", false},
		{"sent without syncing", &userdata.Presence{Presence: "online", LastActiveTS: t0 + 3*minute}, t0 + 4*minute, "online", true},
		{"set unavailable", &userdata.Presence{Presence: "unavailable", LastActiveTS: t0, LastSyncTS: t0}, t0 + minute, "unavailable", false},
		{"set offline", &userdata.Presence{Presence: "offline", LastActiveTS: t0, LastSyncTS: t0}, t0, "offline", false},
	}
	for _, c := range cases {
		got, active := derivedPresence(c.p, c.now)
		if got != c.want || active != c.wantActive {
			t.Errorf("%s: got %s (currently_active %v), want %s (%v)", c.name, got, active, c.want, c.wantActive)
		}
		content := presenceContent(c.p, c.now)
		if content["presence"] != c.want || content["currently_active"] != c.wantActive {
			t.Errorf("%s: content %v disagrees with derivedPresence", c.name, content)
		}
		if c.p != nil && content["last_active_ago"] != c.now-c.p.LastActiveTS {
			t.Errorf("%s: last_active_ago %v, want %d", c.name, content["last_active_ago"], c.now-c.p.LastActiveTS)
		}
	}
}

// A /sync records presence when others' view changes (first sync,
// another presence, back after being offline), quietly at most once a
// minute otherwise, and nothing in between.
func TestSyncPresenceRecordedAtMostOnceAMinute(t *testing.T) {
	const t0 = int64(1_700_000_000_000)
	online := &userdata.Presence{Presence: "online", LastActiveTS: t0, LastSyncTS: t0}
	cases := []struct {
		name       string
		p          *userdata.Presence
		sp         string
		now        int64
		wantRecord bool
		wantQuiet  bool
	}{
		{"first sync", nil, "online", t0, true, false},
		{"seconds later", online, "online", t0 + 30_000, false, true},
		{"a minute later", online, "online", t0 + 60_000, true, true},
		{"idle user keeps syncing: stays idle", online, "online", t0 + 10*60_000 - 1, true, true},
		{"back after being offline", &userdata.Presence{Presence: "online", LastActiveTS: t0, LastSyncTS: t0}, "online", t0 + 7*60_000, true, false},
		{"client reports idle", online, "unavailable", t0 + 1000, true, false},
	}
	for _, c := range cases {
		if c.name == "idle user keeps syncing: stays idle" {
			c.p = &userdata.Presence{Presence: "online", LastActiveTS: t0, LastSyncTS: c.now - 60_000}
		}
		f, ok := syncPresenceFact(c.p, "@u:x", c.sp, c.now)
		if ok != c.wantRecord || (ok && f.Quiet != c.wantQuiet) {
			t.Errorf("%s: record %v quiet %v, want %v %v", c.name, ok, f.Quiet, c.wantRecord, c.wantQuiet)
		}
	}
}
