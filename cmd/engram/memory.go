package main

import (
	"context"
	"runtime/debug"
	"runtime/metrics"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	englog "github.com/engram-hs/engram/log"
)

// gcPercent is the Go GC's pace while serving: a collection when the heap
// has grown 200% over what the previous one left live, instead of Go's
// 100%, so half as many collections (measured under `engram bench load`:
// +16-24% sends without a limit), bounded by goMemoryLimit.
const gcPercent = 200

// goMemoryLimit is the Go runtime's soft memory limit for a memory budget
// (memory_target; 0: the default): the budget less a sixteenth. Pebble's
// memtables and block cache (half the budget, englog.PebbleMemory) are
// allocated outside the Go heap, so with the binary's ~20 MB the server's
// RSS stays near 1.5x the budget plus that: under 200 MB at the default
// 128M. Past the limit the GC runs as often as it must (up to half the
// CPU), so a server whose live heap nears it needs a larger memory_target.
func goMemoryLimit(target int64) int64 {
	if target <= 0 {
		target = englog.DefaultMemoryTarget
	}
	return target - target/16
}

// syncCacheBytes is the /sync caches' share of a memory budget
// (api.Config.SyncCacheBytes; 0: the default budget): 3/16, 24 MiB at the
// default 128M, what the initial syncs of a server with 1,000 users, 1,000
// rooms and 1,000,000 events keep without recomputing (an eighth cost
// them 38% more CPU, bench/README.md). They live in the Go heap, which at
// gcPercent grows to about three times what is live before a collection,
// within goMemoryLimit.
func syncCacheBytes(target int64) int64 {
	if target <= 0 {
		target = englog.DefaultMemoryTarget
	}
	return target * 3 / 16
}

// setGC applies gcPercent and goMemoryLimit(target), each unless the
// operator set its environment variable (GOGC, GOMEMLIMIT), which wins.
func setGC(target int64, env func(string) (string, bool), logger zerolog.Logger) {
	if _, ok := env("GOGC"); !ok {
		debug.SetGCPercent(gcPercent)
	}
	if _, ok := env("GOMEMLIMIT"); !ok {
		debug.SetMemoryLimit(goMemoryLimit(target))
	}
	// SetMemoryLimit with a negative value only reads the limit.
	logger.Debug().Int64("go_memory_limit", debug.SetMemoryLimit(-1)).Msg("go runtime memory settings")
}

// returnMemoryEvery is how often returnMemory looks at what the process
// holds and gives back what it no longer uses.
const returnMemoryEvery = 10 * time.Second

// idleAllocBytes is what the Go heap may allocate within one
// returnMemoryEvery for the server to count as idle: a fresh server with
// no requests allocated 0.3 MB in 10 s (its timers, and the metrics
// scrapes that measured it), so any traffic worth the name counts as busy.
const idleAllocBytes = 4 << 20

// returnMemory gives memory back to the system every returnMemoryEvery
// until ctx ends:
//   - C malloc's free pages (mallocTrim). Pebble keeps its block cache and
//     memtables in C memory (the Go heap's limit does not see them), and
//     glibc keeps what they free in its per-thread arenas: on a server
//     holding 1,000,000 events, after 1,000 initial syncs the arenas held
//     ~175-218 MB against Pebble's 64 MB budget (bench/README.md,
//     2026-12-04 (night), footprint).
//   - Once the server has gone idle (idleTracker), the Go heap's free
//     pages too (debug.FreeOSMemory: a collection, then every free page
//     returned). Under load the heap grows to gcPercent over its live set,
//     up to the memory limit, and the runtime's scavenger returns only
//     what lies above that goal, so after a burst an idle server would go
//     on holding about three times its live set. It costs one collection
//     per idle spell.
func returnMemory(ctx context.Context) {
	t := time.NewTicker(returnMemoryEvery)
	defer t.Stop()
	sample := []metrics.Sample{{Name: "/gc/heap/allocs:bytes"}}
	var idle idleTracker
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			metrics.Read(sample)
			if idle.wentIdle(sample[0].Value.Uint64()) {
				debug.FreeOSMemory()
			}
			mallocTrim()
		}
	}
}

// idleTracker tells, from the Go heap's cumulative allocations read once
// per returnMemoryEvery, when the server goes idle: the first period that
// allocated less than idleAllocBytes after one that allocated more (or
// after start).
type idleTracker struct {
	allocs  uint64 // the cumulative count at the last reading
	started bool   // allocs holds a reading
	idle    bool   // the last period was idle
}

func (t *idleTracker) wentIdle(allocs uint64) bool {
	busy := !t.started || allocs-t.allocs >= idleAllocBytes
	t.allocs, t.started = allocs, true
	went := !busy && !t.idle
	t.idle = !busy
	return went
}

// registerMallocMetrics exports what C malloc holds for Pebble (and cgo),
// beside the Go runtime's own figures, where malloc can say.
func registerMallocMetrics(reg prometheus.Registerer) {
	if _, ok := mallocInUse(); !ok {
		return
	}
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "engram", Subsystem: "c_malloc", Name: "in_use_bytes",
		Help: "Bytes C malloc has handed out (Pebble's block cache and memtables, cgo), by glibc's mallinfo2.",
	}, func() float64 {
		n, _ := mallocInUse()
		return float64(n)
	}))
}
