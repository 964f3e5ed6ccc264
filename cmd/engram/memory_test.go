package main

import (
	"runtime/debug"
	"testing"

	"github.com/rs/zerolog"
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
