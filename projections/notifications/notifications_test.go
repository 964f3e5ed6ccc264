package notifications_test

import (
	"context"
	"slices"
	"testing"

	"github.com/rs/zerolog"

	"github.com/engram-hs/engram/bench/generate"
	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/projections"
	"github.com/engram-hs/engram/projections/notifications"
)

// fold rebuilds the notifications projection from a generated log whose
// entries are spread over the given number of days, and returns every
// generated user's notifications, oldest first, and each entry's log time
// by offset.
func fold(t *testing.T, days float64) (map[string][]notifications.Notification, map[uint64]int64) {
	t.Helper()
	ctx := context.Background()
	const users, events = 12, 1500
	dir := t.TempDir()
	if _, err := generate.Run(ctx, dir, generate.Options{Seed: 11, Users: users, Rooms: 6, Events: events,
		Rate: events / (days * 86400), Logger: zerolog.Nop()}); err != nil {
		t.Fatal(err)
	}
	l, err := englog.Open(englog.Config{Dir: dir, Logger: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	entries, err := l.Read(1, int(l.LastOffset()))
	if err != nil {
		t.Fatal(err)
	}
	times := map[uint64]int64{}
	for _, e := range entries {
		times[e.Offset] = e.Time
	}
	e := projections.NewEngine(l, l.DB(), zerolog.Nop(), nil)
	defer e.Close()
	h := e.Register(notifications.New("bench.localhost"))
	if err := e.Rebuild(ctx, notifications.Name); err != nil {
		t.Fatal(err)
	}
	v := notifications.NewView(h.Reader())
	out := map[string][]notifications.Notification{}
	for i := range users {
		u := generate.UserID("bench.localhost", i)
		ns, err := v.Notifications(u, 0, 1<<30, false)
		if err != nil {
			t.Fatal(err)
		}
		for j := len(ns) - 1; j >= 0; j-- { // newest first -> oldest first
			out[u] = append(out[u], ns[j])
		}
	}
	return out, times
}

// TestNotificationRetention folds the same generated history twice: within
// an hour, where nothing expires, and spread over 120 days (the same
// entries at the same offsets, only the clock runs slower). What the
// second fold keeps must be exactly what the retention rule gives when run
// here over the first fold's full history with the second log's times:
// each new notification first drops up to 64 of the user's oldest ones
// from before its time minus Retention.
func TestNotificationRetention(t *testing.T) {
	all, _ := fold(t, 1.0/24)
	kept, times := fold(t, 120)
	const prunePerAdd = 64
	total, dropped := 0, 0
	for u, history := range all {
		var want []uint64
		for _, n := range history {
			at := times[n.Offset]
			for i := 0; i < prunePerAdd && len(want) > 0 && times[want[0]] < at-notifications.Retention; i++ {
				want = want[1:]
			}
			want = append(want, n.Offset)
		}
		var got []uint64
		for _, n := range kept[u] {
			if n.At != times[n.Offset] {
				t.Fatalf("%s: notification at offset %d has log time %d, the entry %d", u, n.Offset, n.At, times[n.Offset])
			}
			got = append(got, n.Offset)
		}
		if !slices.Equal(got, want) {
			t.Errorf("%s: kept %d notifications %v..., want %d %v...", u, len(got), head(got), len(want), head(want))
		}
		total += len(history)
		dropped += len(history) - len(want)
	}
	if total == 0 || dropped == 0 {
		t.Fatalf("%d notifications, %d expired: the generated history does not exercise retention", total, dropped)
	}
	t.Logf("%d notifications in the short fold, %d expired in the 120-day fold", total, dropped)
}

func head(s []uint64) []uint64 { return s[:min(len(s), 5)] }

// TestFoldIndependentOfBatches folds a generated history as live traffic
// does, one entry per batch (so the projection's memo of room records and
// power levels carries across every batch), and compares the keyspace
// with a rebuild of the same log by a fresh projection in big batches.
func TestFoldIndependentOfBatches(t *testing.T) {
	ctx := context.Background()
	src := t.TempDir()
	if _, err := generate.Run(ctx, src, generate.Options{Seed: 5, Users: 10, Rooms: 5, Events: 600, Logger: zerolog.Nop()}); err != nil {
		t.Fatal(err)
	}
	gen, err := englog.Open(englog.Config{Dir: src, Logger: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	entries, err := gen.Read(1, int(gen.LastOffset()))
	gen.Close()
	if err != nil {
		t.Fatal(err)
	}
	l, err := englog.Open(englog.Config{Dir: t.TempDir(), Logger: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	live := projections.NewEngine(l, l.DB(), zerolog.Nop(), nil)
	h := live.Register(notifications.New("bench.localhost"))
	if err := live.Start(ctx); err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		offs, err := l.Append(ctx, englog.Proposal{Kind: e.Kind, Payload: e.Payload})
		if err != nil {
			t.Fatal(err)
		}
		if err := h.WaitApplied(ctx, offs[0]); err != nil {
			t.Fatal(err)
		}
	}
	want, err := live.Digest(notifications.Name)
	if err != nil {
		t.Fatal(err)
	}
	n, err := notifications.NewView(h.Reader()).Notifications(generate.UserID("bench.localhost", 1), 0, 1<<30, false)
	if err != nil {
		t.Fatal(err)
	}
	if len(n) == 0 {
		t.Fatal("the generated history notifies no one: it exercises nothing")
	}
	live.Close()

	fresh := projections.NewEngine(l, l.DB(), zerolog.Nop(), nil)
	defer fresh.Close()
	fresh.Register(notifications.New("bench.localhost"))
	if err := fresh.Rebuild(ctx, notifications.Name); err != nil {
		t.Fatal(err)
	}
	got, err := fresh.Digest(notifications.Name)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("a rebuild in big batches gives digest %x, the fold one entry per batch %x", got, want)
	}
}
