package api

import (
	"context"
	"io"
	"strings"
	"testing"

	"github.com/rs/zerolog"
	"golang.org/x/crypto/bcrypt"

	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/projections"
	"github.com/engram-hs/engram/projections/userdata"
	"github.com/engram-hs/engram/roomwrite"
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

// A /sync records presence only when others' view changes (first sync,
// another presence, back after being offline); otherwise it is noted in
// memory, and nothing reaches the log.
func TestSyncPresenceRecordedOnlyOnChange(t *testing.T) {
	const t0 = int64(1_700_000_000_000)
	online := &userdata.Presence{Presence: "online", LastActiveTS: t0, LastSyncTS: t0}
	cases := []struct {
		name       string
		p          *userdata.Presence
		sp         string
		now        int64
		wantRecord bool
	}{
		{"first sync", nil, "online", t0, true},
		{"seconds later", online, "online", t0 + 30_000, false},
		{"a minute later", online, "online", t0 + 60_000, false},
		{"idle user keeps syncing: stays idle", &userdata.Presence{Presence: "online", LastActiveTS: t0, LastSyncTS: t0 + 10*60_000 - 60_000}, "online", t0 + 10*60_000, false},
		{"back after being offline", online, "online", t0 + 7*60_000, true},
		{"client reports idle", online, "unavailable", t0 + 1000, true},
	}
	for _, c := range cases {
		if _, ok := syncPresenceFact(c.p, "@u:x", c.sp, c.now); ok != c.wantRecord {
			t.Errorf("%s: record %v, want %v", c.name, ok, c.wantRecord)
		}
	}
}

// TestPresenceLogGrowthPerIdleUserPerDay drives the real /sync and send
// presence code (recordSyncPresence, activityFacts) over a real log and
// userdata projection through a simulated day: one client long-polling
// every 30 s all day, and one user who also sends a message every ten
// minutes for eight hours. Only what others see change reaches the log:
// the first sync, and for the sender each return from idle. It prints
// the growth (bench/README.md quotes it).
func TestPresenceLogGrowthPerIdleUserPerDay(t *testing.T) {
	logger := zerolog.New(io.Discard)
	node, err := englog.Open(englog.Config{Dir: t.TempDir(), Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close()
	eng := projections.NewEngine(node, node.DB(), logger, nil)
	rw, err := roomwrite.New(roomwrite.Config{ServerName: "x", Logger: logger}, node, eng)
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(Config{ServerName: "x", BcryptCost: bcrypt.MinCost}, Deps{Log: node, Engine: eng, Rooms: rw, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	if err := eng.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer eng.Close()
	realNow := nowMS
	defer func() { nowMS = realNow }()
	// The log stamps entries with the real time; the simulated day starts
	// there.
	t0 := realNow()
	clock := t0
	nowMS = func() int64 { return clock }

	idle, sender := "@idle:x", "@sender:x"
	settle := func() {
		if err := s.userdataH.WaitApplied(ctx, node.LastOffset()); err != nil {
			t.Fatal(err)
		}
	}
	start := node.LastOffset()
	var bytes int
	const day = 24 * 60 * 60 * 1000
	sentFacts := 0
	for step := int64(0); step < day; step += 30_000 {
		clock = t0 + step
		s.recordSyncPresence(ctx, idle, "online")
		s.recordSyncPresence(ctx, sender, "online")
		settle()
		if step < 8*60*60*1000 && step%(10*60_000) == 0 {
			props := s.activityFacts(sender)
			sentFacts += len(props)
			if len(props) > 0 {
				if _, err := node.Append(ctx, props...); err != nil {
					t.Fatal(err)
				}
			}
		}
		settle()
	}
	entries, err := node.Read(start+1, 100000)
	if err != nil {
		t.Fatal(err)
	}
	perUser := map[string]int{}
	for _, e := range entries {
		bytes += len(e.Payload)
		for _, u := range []string{idle, sender} {
			if strings.Contains(string(e.Payload), u) {
				perUser[u]++
			}
		}
	}
	t.Logf(`{"bench":"presence_log_growth","workload":"one client syncing every 30 s for 24 h; another also sending every 10 min for 8 h","idle_user_entries_per_day":%d,"sending_user_entries_per_day":%d,"total_bytes":%d}`, perUser[idle], perUser[sender], bytes)
	// The idle user: the first sync, nothing after.
	if perUser[idle] != 1 {
		t.Fatalf("an idle syncing user wrote %d presence entries in a day, want 1 (the first sync)", perUser[idle])
	}
	// The sender is online from the first sync (the first send, at the
	// same moment, changes nothing); five minutes after each send they
	// are idle, and each of the 47 later sends brings them back, which
	// others see.
	if sentFacts != 47 || perUser[sender] != 48 {
		t.Fatalf("the sender's 48 sends added %d presence facts (%d entries in all), want 47 returns from idle (48 with the first sync)", sentFacts, perUser[sender])
	}
	// Their presence as others see it is still right at the end: online
	// for both while syncing, idle since the last send.
	uv := s.userdataView()
	for _, u := range []string{idle, sender} {
		p, err := s.presenceOf(uv, u)
		if err != nil || p == nil {
			t.Fatalf("%s: %v %v", u, p, err)
		}
		if state, _ := derivedPresence(p, clock); state != "unavailable" {
			t.Errorf("%s at the end of the day: %s, want unavailable (syncing, not active)", u, state)
		}
		if got := clock - p.LastSyncTS; got != 0 {
			t.Errorf("%s: last sync %d ms ago, want 0 (the sync just now, from memory)", u, got)
		}
	}
	// Stopping syncing makes them offline without any entry.
	if state, _ := derivedPresence(s.presenceClock.overlay(idle, mustPresence(t, uv, idle)), clock+presenceOfflineAfter.Milliseconds()+1); state != "offline" {
		t.Errorf("after the client stopped: %s, want offline", state)
	}
}

func mustPresence(t *testing.T, uv userdata.View, u string) *userdata.Presence {
	t.Helper()
	p, err := uv.Presence(u)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// A busy user's sends read the recorded presence at most once a minute:
// the verdict "changes nothing others see" stands for presenceRecheck,
// and a presence the user sets in between ends it at once, so the next
// send brings them back online as before.
func TestPresenceReadOncePerMinuteAndSetPresenceEndsIt(t *testing.T) {
	logger := zerolog.New(io.Discard)
	node, err := englog.Open(englog.Config{Dir: t.TempDir(), Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close()
	eng := projections.NewEngine(node, node.DB(), logger, nil)
	rw, err := roomwrite.New(roomwrite.Config{ServerName: "x", Logger: logger}, node, eng)
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(Config{ServerName: "x", BcryptCost: bcrypt.MinCost}, Deps{Log: node, Engine: eng, Rooms: rw, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	if err := eng.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer eng.Close()
	realNow := nowMS
	defer func() { nowMS = realNow }()
	t0 := realNow()
	clock := t0
	nowMS = func() int64 { return clock }
	const u = "@busy:x"
	record := func(props []englog.Proposal) {
		t.Helper()
		if len(props) == 0 {
			return
		}
		offs, err := node.Append(ctx, props...)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.userdataH.WaitApplied(ctx, offs[len(offs)-1]); err != nil {
			t.Fatal(err)
		}
	}
	record(s.activityFacts(u)) // first activity: online
	if got := s.activityFacts(u); len(got) != 0 {
		t.Fatalf("second send recorded %d facts", len(got))
	}
	if !s.presenceClock.quiet(u, "", clock+presenceRecheck.Milliseconds()-1) || s.presenceClock.quiet(u, "", clock+presenceRecheck.Milliseconds()) {
		t.Fatal("the verdict does not stand for exactly presenceRecheck")
	}
	s.recordSyncPresence(ctx, u, "online")
	if !s.presenceClock.quiet(u, "online", clock) || s.presenceClock.quiet(u, "unavailable", clock) {
		t.Fatal("the sync verdict is not kept for its set_presence only")
	}
	clock += 10_000
	record([]englog.Proposal{s.presenceFact(facts.PresenceContent{UserID: u, Presence: "unavailable"})})
	clock += 10_000
	got := s.activityFacts(u)
	if len(got) != 1 {
		t.Fatalf("a send after the user set unavailable recorded %d facts, want 1 (back online)", len(got))
	}
	record(got)
	p, err := s.presenceOf(s.userdataView(), u)
	if err != nil || p == nil || p.Presence != "online" {
		t.Fatalf("presence after the send = %+v, %v", p, err)
	}
}
