package generate_test

import (
	"context"
	"encoding/hex"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/engram-hs/engram/api"
	"github.com/engram-hs/engram/bench/generate"
	"github.com/engram-hs/engram/bench/replay"
	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/projections"
	"github.com/engram-hs/engram/roomwrite"
)

var small = generate.Options{Seed: 7, Users: 40, Rooms: 12, Events: 3000}

func digestOf(t *testing.T, dir string) (string, uint64) {
	t.Helper()
	node, err := englog.Open(englog.Config{Dir: dir, Logger: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close()
	d, n, err := generate.LogDigest(node)
	if err != nil {
		t.Fatal(err)
	}
	return d, n
}

func TestGenerateIsDeterministic(t *testing.T) {
	ctx := context.Background()
	a, b, c := t.TempDir(), t.TempDir(), t.TempDir()
	ra, err := generate.Run(ctx, a, small)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := generate.Run(ctx, b, small); err != nil {
		t.Fatal(err)
	}
	other := small
	other.Seed = 8
	if _, err := generate.Run(ctx, c, other); err != nil {
		t.Fatal(err)
	}
	da, na := digestOf(t, a)
	db, nb := digestOf(t, b)
	dc, _ := digestOf(t, c)
	if na < uint64(small.Events) || na != ra.Entries {
		t.Fatalf("log has %d entries, result says %d, asked for at least %d", na, ra.Entries, small.Events)
	}
	if da != db || na != nb {
		t.Fatalf("same seed, different logs: %s (%d entries) vs %s (%d entries)", da, na, db, nb)
	}
	if da == dc {
		t.Fatal("different seeds gave the same log")
	}
	for _, k := range []string{"pdu", "edu", "account_registered", "device_added", "access_token_issued", "profile_set", "room_visibility_set"} {
		if ra.ByKind[k] == 0 {
			t.Errorf("no %s entries in the generated log (by kind: %v)", k, ra.ByKind)
		}
	}
	for _, typ := range []string{"m.room.create", "m.room.member", "m.room.message", "m.reaction", "m.room.redaction", "m.room.topic", "m.room.name"} {
		if ra.PDUsByType[typ] == 0 {
			t.Errorf("no %s events (by type: %v)", typ, ra.PDUsByType)
		}
	}
	if _, err := generate.Run(ctx, a, small); err == nil {
		t.Fatal("generating into a non-empty log succeeded")
	}
}

// The projections folded live while the log is written and the ones
// rebuilt by replay afterwards must be identical.
func TestReplayMatchesLiveProjections(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	target, err := generate.OpenTarget(dir, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	engine := projections.NewEngine(target.Node, target.Node.DB(), zerolog.Nop(), nil)
	rw, err := roomwrite.New(roomwrite.Config{ServerName: "live.localhost"}, target.Node, engine)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := api.New(api.Config{ServerName: "live.localhost"}, api.Deps{Log: target.Node, Engine: engine, Rooms: rw, Logger: zerolog.Nop()}); err != nil {
		t.Fatal(err)
	}
	if err := engine.Start(ctx); err != nil {
		t.Fatal(err)
	}
	res, err := generate.Generate(ctx, target, small)
	if err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	live := map[string]string{}
	for _, h := range engine.Handles() {
		if err := h.WaitApplied(wctx, res.Entries); err != nil {
			t.Fatalf("live projection %s: %v", h.Name(), err)
		}
		d, err := engine.Digest(h.Name())
		if err != nil {
			t.Fatal(err)
		}
		live[h.Name()] = hex.EncodeToString(d)
	}
	_ = engine.Close()
	if err := target.Close(); err != nil {
		t.Fatal(err)
	}
	if len(live) < 3 {
		t.Fatalf("expected the API's projections, got %v", live)
	}

	rr, err := replay.Run(ctx, replay.Options{Dir: dir, Logger: zerolog.Nop()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if rr.Entries != res.Entries || rr.BytesRead == 0 {
		t.Fatalf("replay read %d entries (%d bytes), generated %d", rr.Entries, rr.BytesRead, res.Entries)
	}
	if len(rr.Projections) != len(live) {
		t.Fatalf("replay rebuilt %d projections, live had %d", len(rr.Projections), len(live))
	}
	for _, p := range rr.Projections {
		if live[p.Name] != p.Digest {
			t.Errorf("projection %s: live digest %s, replayed %s", p.Name, live[p.Name], p.Digest)
		}
		if p.EventsPerSec <= 0 {
			t.Errorf("projection %s: %v events/s", p.Name, p.EventsPerSec)
		}
	}
}
