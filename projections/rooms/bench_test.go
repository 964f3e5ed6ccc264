package rooms_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/engram-hs/engram/bench/generate"
	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/projections"
	"github.com/engram-hs/engram/projections/rooms"
)

// benchLogEnv names a log directory written by `engram bench generate` to
// replay instead of generating a small one (the rooms projection in it is
// rebuilt in place; no server may run on it).
const benchLogEnv = "ENGRAM_ROOMS_BENCH_LOG"

// openBenchLog opens the log named by benchLogEnv, or generates a small
// realistic one (the bench generator's workload profile) into a temporary
// directory.
func openBenchLog(b *testing.B) *englog.Node {
	b.Helper()
	dir := os.Getenv(benchLogEnv)
	if dir == "" {
		dir = b.TempDir()
		if _, err := generate.Run(context.Background(), dir, generate.Options{Seed: 1, Users: 1000, Rooms: 100, Events: 30000, Logger: zerolog.Nop()}); err != nil {
			b.Fatal(err)
		}
	}
	node, err := englog.Open(englog.Config{Dir: dir, Logger: zerolog.Nop()})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { node.Close() })
	return node
}

// BenchmarkRoomsReplay rebuilds the rooms projection alone from offset 1,
// as `engram bench replay --projection rooms` does. Target (foundation
// issue): a full rebuild at >= 50,000 entries/s on 2 cores.
func BenchmarkRoomsReplay(b *testing.B) {
	node := openBenchLog(b)
	engine := projections.NewEngine(node, node.DB(), zerolog.Nop(), nil)
	defer engine.Close()
	engine.Register(rooms.New(node, nil))
	entries := node.LastOffset()
	var total time.Duration
	runs := 0
	for b.Loop() {
		t0 := time.Now()
		if err := engine.Rebuild(context.Background(), "rooms"); err != nil {
			b.Fatal(err)
		}
		total += time.Since(t0)
		runs++
	}
	perS := float64(entries) * float64(runs) / total.Seconds()
	b.ReportMetric(perS, "entries/s")
	line, _ := json.Marshal(map[string]any{"bench": "rooms_replay", "entries": entries, "entries_per_s": int64(perS)})
	fmt.Println(string(line))
}

// BenchmarkStateStorage folds a generated log (the bench generator's
// workload: joins, leaves, profile and topic changes among messages) and
// prints the bytes the state-at-every-event records take per state
// change, next to what a full snapshot per state change and per event
// would take (the layout of a snapshot record).
func BenchmarkStateStorage(b *testing.B) {
	node := openBenchLog(b)
	engine := projections.NewEngine(node, node.DB(), zerolog.Nop(), nil)
	defer engine.Close()
	h := engine.Register(rooms.New(node, nil))
	for b.Loop() {
		if err := engine.Rebuild(context.Background(), "rooms"); err != nil {
			b.Fatal(err)
		}
	}
	v := rooms.NewView(h.Reader(), node)
	st, err := v.StateStorage()
	if err != nil {
		b.Fatal(err)
	}
	entries, err := node.Read(1, int(node.LastOffset()))
	if err != nil {
		b.Fatal(err)
	}
	snapBytes := map[string]int{}
	var events, changes int
	var perEvent, perChange int64
	for _, e := range entries {
		if e.Kind != englog.KindPDU {
			continue
		}
		var f facts.PDU
		if err := facts.Decode(e, &f); err != nil {
			b.Fatal(err)
		}
		before, after, ok, err := v.StateGroups(f.EventID)
		if err != nil {
			b.Fatal(err)
		}
		if !ok {
			continue
		}
		n, seen := snapBytes[after]
		if !seen {
			evs, _, err := v.StateIDsAfter(f.EventID)
			if err != nil {
				b.Fatal(err)
			}
			n = rooms.SnapshotBytes(evs)
			snapBytes[after] = n
		}
		events++
		perEvent += int64(n)
		if after != before {
			changes++
			perChange += int64(n)
		}
	}
	line, _ := json.Marshal(map[string]any{
		"bench": "state_storage", "events": events, "state_changes": changes,
		"groups": st.Groups, "snapshots": st.Snapshots, "stored_bytes": st.Bytes,
		"stored_bytes_per_change":        st.Bytes / int64(max(changes, 1)),
		"full_snapshot_bytes_per_change": perChange / int64(max(changes, 1)),
		"full_snapshot_per_event_bytes":  perEvent,
		"full_snapshot_per_change_bytes": perChange,
		"ratio_vs_snapshot_per_event":    float64(perEvent) / float64(max(st.Bytes, 1)),
		"ratio_vs_snapshot_per_change":   float64(perChange) / float64(max(st.Bytes, 1)),
	})
	fmt.Println(string(line))
}
