package adminstate_test

import (
	"context"
	"io"
	"testing"
	"time"

	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/projections"
	"github.com/engram-hs/engram/projections/adminstate"
	"github.com/rs/zerolog"
)

// The cached view answers what the log says after every batch: a purge
// or a restore folded is in force for the very next read, including for
// a room (or a server) whose "none" was cached before.
func TestCachedViewFollowsTheLog(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	logger := zerolog.New(io.Discard)
	node, err := englog.Open(englog.Config{Dir: t.TempDir(), Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { node.Close() })
	eng := projections.NewEngine(node, node.DB(), logger, nil)
	p := adminstate.New()
	h := eng.Register(p)
	if err := eng.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { eng.Close() })
	cached, direct := p.View(h.Reader()), adminstate.NewView(h.Reader())
	apply := func(props ...englog.Proposal) uint64 {
		t.Helper()
		offs, err := node.Append(ctx, props...)
		if err != nil {
			t.Fatal(err)
		}
		if err := h.WaitApplied(ctx, offs[len(offs)-1]); err != nil {
			t.Fatal(err)
		}
		return offs[len(offs)-1]
	}
	purged := func(room string, want uint64) {
		t.Helper()
		for i, v := range []adminstate.View{cached, cached, direct} { // the second from the cache
			if got, err := v.PurgedUpTo(room); err != nil || got != want {
				t.Fatalf("read %d: PurgedUpTo(%s) = %d, %v; want %d", i, room, got, err, want)
			}
		}
	}
	restored := func(want *adminstate.Restore) {
		t.Helper()
		for i, v := range []adminstate.View{cached, cached, direct} {
			got, err := v.Restored()
			if err != nil || (got == nil) != (want == nil) || (got != nil && *got != *want) {
				t.Fatalf("read %d: Restored() = %+v, %v; want %+v", i, got, err, want)
			}
		}
	}
	apply(facts.MustEncode(englog.KindServerNoticeRoom, facts.ServerNoticeRoom{UserID: "@a:x", RoomID: "!n:x"}))
	purged("!a:x", 0)
	purged("!b:x", 0)
	restored(nil)

	apply(facts.MustEncode(englog.KindHistoryPurged, facts.HistoryPurged{RoomID: "!a:x", PurgeID: "p1", UpTo: 7}))
	purged("!a:x", 7)
	purged("!b:x", 0)
	apply(facts.MustEncode(englog.KindHistoryPurged, facts.HistoryPurged{RoomID: "!a:x", PurgeID: "p2", UpTo: 3}))
	purged("!a:x", 7) // a purge never un-hides
	apply(facts.MustEncode(englog.KindHistoryPurged, facts.HistoryPurged{RoomID: "!b:x", PurgeID: "p3", UpTo: 9}))
	purged("!b:x", 9)

	at := apply(facts.MustEncode(englog.KindRestored, facts.Restored{Cut: 2}))
	restored(&adminstate.Restore{Cut: 2, Offset: at})
	at = apply(facts.MustEncode(englog.KindRestored, facts.Restored{Cut: 4}))
	restored(&adminstate.Restore{Cut: 4, Offset: at})
}
