package search_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/rs/zerolog"

	"github.com/engram-hs/engram/bench/generate"
	"github.com/engram-hs/engram/bench/report"
	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/projections"
	"github.com/engram-hs/engram/projections/search"
)

// BenchmarkSearch folds a generated log into the search projection alone
// (indexing rate), then times searches for single words of the
// generator's vocabulary and for two-word conjunctions over the rooms of
// one user (20 rooms drawn from the log's rooms), in both orders, and
// prints JSON lines: entries/s of the fold and p50/p99 of the searches.
//
//	ENGRAM_BENCH_LOG=DIR   a log written by `engram bench generate` (default:
//	                       a 20,000-entry log generated into a temp dir)
//	ENGRAM_BENCH_QUERIES=N searches to time (default 2000)
//	ENGRAM_BENCH_DB=DIR    keep the projection's store in DIR: a later run
//	                       over the same log and DIR skips the fold (no
//	                       index figures) and times the searches only
//	ENGRAM_BENCH_COMPACT=1 compact the projection's key range after the
//	                       fold, before the searches (is the p99 right after
//	                       a rebuild the compactions still owed?)
//
// go test -run '^$' -bench BenchmarkSearch -benchtime 1x ./projections/search/
func BenchmarkSearch(b *testing.B) {
	ctx := context.Background()
	dir := os.Getenv("ENGRAM_BENCH_LOG")
	if dir == "" {
		dir = b.TempDir()
		if _, err := generate.Run(ctx, dir, generate.Options{Seed: 1, Users: 500, Rooms: 50, Events: 20000, Logger: zerolog.Nop()}); err != nil {
			b.Fatal(err)
		}
	}
	queries := 2000
	if n := os.Getenv("ENGRAM_BENCH_QUERIES"); n != "" {
		fmt.Sscan(n, &queries)
	}
	l, err := englog.Open(englog.Config{Dir: dir, Logger: zerolog.Nop()})
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	dbDir, fold := os.Getenv("ENGRAM_BENCH_DB"), true
	if dbDir == "" {
		dbDir = b.TempDir()
	} else if _, err := os.Stat(dbDir); err == nil {
		fold = false
	}
	db, err := pebble.Open(dbDir, &pebble.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	e := projections.NewEngine(l, db, zerolog.Nop(), nil)
	p := search.New()
	h := e.Register(p)
	s := p.Searcher(h)
	defer e.Close()

	rooms := roomsOf(b, l)
	entries := l.LastOffset()
	for i := 0; fold && i < b.N; i++ {
		start := time.Now()
		cpu0 := cpuSeconds()
		if err := e.Rebuild(ctx); err != nil {
			b.Fatal(err)
		}
		secs := time.Since(start).Seconds()
		params := map[string]string{"entries": fmt.Sprint(entries)}
		emit("index_entries_per_s", float64(entries)/secs, "entries/s", "higher", params)
		emit("index_entries_per_cpu_s", float64(entries)/(cpuSeconds()-cpu0), "entries/cpu-s", "higher", params)
	}
	if fold && os.Getenv("ENGRAM_BENCH_COMPACT") != "" {
		start := time.Now()
		if err := db.Compact(ctx, []byte("Psearch\x00"), []byte("Psearch\x01"), true); err != nil {
			b.Fatal(err)
		}
		emit("compact_s", time.Since(start).Seconds(), "s", "lower", map[string]string{"entries": fmt.Sprint(entries)})
	}
	if err := e.Start(ctx); err != nil {
		b.Fatal(err)
	}
	// A kept store of an older version is rebuilt by Start.
	if err := h.WaitApplied(ctx, entries); err != nil {
		b.Fatal(err)
	}
	words := strings.Fields("the coffee matrix release meeting sound picture mother water deploy")
	rng := rand.New(rand.NewPCG(1, 2))
	for _, order := range []string{"rank", "recent"} {
		var lat []time.Duration
		var hits uint64 // matches over all searches: a check that they found something
		// CPU per search depends less on the machine's load than the
		// latencies do (it includes what else the process runs: Pebble's
		// compactions after a fold).
		cpu0 := cpuSeconds()
		for q := 0; q < queries; q++ {
			term := words[rng.IntN(len(words))]
			if q%2 == 1 {
				term += " " + words[rng.IntN(len(words))]
			}
			mine := make([]string, 0, 20)
			for _, k := range rng.Perm(len(rooms))[:min(20, len(rooms))] {
				mine = append(mine, rooms[k])
			}
			t0 := time.Now()
			res, err := s.Search(ctx, search.Query{Term: term, Rooms: mine, Recent: order == "recent", Limit: 10})
			if err != nil {
				b.Fatal(err)
			}
			lat = append(lat, time.Since(t0))
			hits += res.Total
		}
		slices.Sort(lat)
		params := map[string]string{"entries": fmt.Sprint(entries), "order": order, "rooms": "20", "queries": fmt.Sprint(queries),
			"mean_matches": fmt.Sprint(hits / uint64(queries))}
		emit("search_p50_ms", ms(lat[len(lat)/2]), "ms", "lower", params)
		emit("search_p99_ms", ms(lat[len(lat)*99/100]), "ms", "lower", params)
		emit("search_cpu_ms", (cpuSeconds()-cpu0)*1000/float64(queries), "cpu-ms/search", "lower", params)
	}
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func emit(name string, v float64, unit, better string, params map[string]string) {
	// The commit and the load average at the time, so a figure read later
	// says what it was measured on (the machine is shared).
	env := report.CurrentEnv()
	kv := map[string]any{"bench": "search", "name": name, "value": v, "unit": unit, "better": better,
		"params": params, "cores": runtime.NumCPU(), "go": runtime.Version(), "commit": env.Commit}
	if la := report.LoadAverage(); la != nil {
		kv["loadavg"] = la
	}
	b, _ := json.Marshal(kv)
	fmt.Println(string(b))
}

func cpuSeconds() float64 {
	var ru syscallRusage
	return ru.self()
}

// roomsOf lists the rooms of the log's PDUs.
func roomsOf(b *testing.B, l englog.Log) []string {
	var rooms []string
	seen := map[string]bool{}
	for from := uint64(1); from <= l.LastOffset(); {
		es, err := l.Read(from, 10000)
		if err != nil || len(es) == 0 {
			break
		}
		for _, e := range es {
			if e.Kind != englog.KindPDU {
				continue
			}
			var f struct {
				Event struct {
					RoomID string `json:"room_id"`
				} `json:"event"`
			}
			_ = json.Unmarshal(e.Payload, &f)
			if r := f.Event.RoomID; r != "" && !seen[r] {
				seen[r] = true
				rooms = append(rooms, r)
			}
		}
		from = es[len(es)-1].Offset + 1
	}
	return rooms
}
