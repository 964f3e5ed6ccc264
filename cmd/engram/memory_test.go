package main

import (
	"runtime/debug"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/engram-hs/engram/api"
	englog "github.com/engram-hs/engram/log"
)

// TestSetGC: serving sets the GC's pace and a memory limit from
// memory_target, unless the operator's GOGC or GOMEMLIMIT says otherwise.
func TestSetGC(t *testing.T) {
	oldPercent, oldLimit := debug.SetGCPercent(100), debug.SetMemoryLimit(-1)
	t.Cleanup(func() { debug.SetGCPercent(oldPercent); debug.SetMemoryLimit(oldLimit) })
	for _, tc := range []struct {
		target      int64
		env         map[string]string
		percent     int
		limit       int64
		description string
	}{
		{0, nil, 200, 120 << 20, "the default budget"},
		{1 << 30, nil, 200, 960 << 20, "1G"},
		{0, map[string]string{"GOGC": "50"}, 100, 120 << 20, "GOGC set: the pace is the operator's"},
		{0, map[string]string{"GOMEMLIMIT": "1GiB"}, 200, 7 << 40, "GOMEMLIMIT set: the limit is the operator's"},
	} {
		debug.SetGCPercent(100)
		debug.SetMemoryLimit(7 << 40)
		setGC(tc.target, func(k string) (string, bool) { v, ok := tc.env[k]; return v, ok }, zerolog.Nop())
		if p := debug.SetGCPercent(100); p != tc.percent {
			t.Errorf("%s: GC percent %d, want %d", tc.description, p, tc.percent)
		}
		if l := debug.SetMemoryLimit(-1); l != tc.limit {
			t.Errorf("%s: memory limit %d, want %d", tc.description, l, tc.limit)
		}
	}
}

// TestSyncCacheShare: the /sync caches get 3/16 of memory_target, the
// API's default at the default budget.
func TestSyncCacheShare(t *testing.T) {
	for _, tc := range []struct{ target, want int64 }{
		{0, api.DefaultSyncCacheBytes},
		{englog.DefaultMemoryTarget, api.DefaultSyncCacheBytes},
		{1 << 30, 192 << 20},
	} {
		if got := (Config{MemoryTarget: tc.target}).apiConfig().SyncCacheBytes; got != tc.want {
			t.Errorf("memory_target %d: sync caches %d bytes, want %d", tc.target, got, tc.want)
		}
	}
}

// TestMallocInUse: where malloc can say, the gauge reports what it has
// handed out (cgo's own runtime allocations at least; Pebble's are C only
// outside race builds, which allocate some of them in Go at random).
func TestMallocInUse(t *testing.T) {
	n, ok := mallocInUse()
	if !ok {
		t.Skip("no C malloc statistics in this build")
	}
	if n == 0 {
		t.Fatal("C malloc in use: 0 bytes")
	}
	reg := prometheus.NewRegistry()
	registerMallocMetrics(reg)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	if len(mfs) != 1 || mfs[0].GetName() != "engram_c_malloc_in_use_bytes" || mfs[0].GetMetric()[0].GetGauge().GetValue() <= 0 {
		t.Fatalf("gathered %v, want engram_c_malloc_in_use_bytes > 0", mfs)
	}
}

// TestIdleTracker: the Go heap's free pages are returned once per idle
// spell, when a period that allocated little follows a busy one, and not
// at the first reading (nothing to compare with).
func TestIdleTracker(t *testing.T) {
	const busy, quiet = 3 * idleAllocBytes, idleAllocBytes / 8
	var tr idleTracker
	total := uint64(50 << 20)
	for i, step := range []struct {
		allocated uint64
		want      bool
	}{
		{0, false},              // the first reading
		{busy, false},           // busy
		{quiet, true},           // went idle
		{quiet, false},          // still idle: already returned
		{0, false},              // still idle
		{idleAllocBytes, false}, // busy again (the threshold counts as busy)
		{busy, false},
		{quiet, true}, // idle again
	} {
		total += step.allocated
		if got := tr.wentIdle(total); got != step.want {
			t.Errorf("reading %d (%d bytes allocated): went idle %v, want %v", i, step.allocated, got, step.want)
		}
	}
}
