package resolve

import (
	"encoding/json"
	"fmt"
	"os"
	"runtime"
	"runtime/metrics"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/engram-hs/engram/stateres"
)

// bigFork builds a room with members joined users, then forks it: each side
// gets extra joins, leaves, kicks, bans, a topic and a power levels change.
// With early set, the members join half on each side of the fork instead
// of before it, so that thousands of membership keys conflict.
func bigFork(tb testing.TB, version string, members int, early bool) (*testRoom, []map[stateres.StateKeyTuple]string) {
	r, b := createRoom(tb, version, alice, map[string]int{mod: 50}, 1000)
	b.must("mod-join", mod, stateres.MRoomMember, sk(mod), member("join"), 1001)
	user := func(i int) string { return fmt.Sprintf("@user%05d:example.org", i) }
	ts := int64(2000)
	joinAll := func(br *branch, from, to int) {
		for i := from; i < to; i++ {
			ts++
			br.must("", user(i), stateres.MRoomMember, sk(user(i)), member("join"), ts)
		}
	}
	var x, y *branch
	if early {
		x, y = b, b.fork()
		joinAll(x, 0, members/2)
		joinAll(y, members/2, members)
	} else {
		joinAll(b, 0, members)
		x, y = b, b.fork()
	}
	joinAll(x, members, members+500)
	joinAll(y, members+500, members+1000)
	for i := 0; i < 50; i++ {
		ts++
		x.must("", user(i), stateres.MRoomMember, sk(user(i)), member("leave"), ts)
		y.must("", mod, stateres.MRoomMember, sk(user(members-1-i)), member("ban"), ts)
		x.must("", mod, stateres.MRoomMember, sk(user(100+i)), member("leave"), ts)
	}
	x.must("", mod, "m.room.topic", sk(""), map[string]any{"topic": "x"}, ts+1)
	y.must("", mod, "m.room.topic", sk(""), map[string]any{"topic": "y"}, ts+2)
	levels := map[string]any{mod: 50, user(7): 50}
	if !r.version.PrivilegedCreators {
		levels[alice] = 100
	}
	y.must("", alice, stateres.MRoomPowerLevels, sk(""), powerContent(levels), ts+3)
	return r, []map[stateres.StateKeyTuple]string{x.stateSet(), y.stateSet()}
}

// peakHeap samples the live heap while a benchmark runs.
type peakHeap struct {
	peak atomic.Uint64
	stop chan struct{}
	wg   sync.WaitGroup
}

func startPeakHeap() *peakHeap {
	p := &peakHeap{stop: make(chan struct{})}
	sample := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		t := time.NewTicker(time.Millisecond)
		defer t.Stop()
		for {
			metrics.Read(sample)
			if v := sample[0].Value.Uint64(); v > p.peak.Load() {
				p.peak.Store(v)
			}
			select {
			case <-p.stop:
				return
			case <-t.C:
			}
		}
	}()
	return p
}

func (p *peakHeap) done() uint64 {
	close(p.stop)
	p.wg.Wait()
	return p.peak.Load()
}

// BenchmarkResolve10kFork resolves a 10,000-member room forked in two.
// Target: well under 1 s per resolution on one core. It prints one JSON
// line per sub-benchmark.
func BenchmarkResolve10kFork(b *testing.B) {
	for _, c := range []struct {
		name    string
		version string
		early   bool
	}{
		{"v1-late-fork", "1", false},
		{"v10-late-fork", "10", false},
		{"v10-early-fork", "10", true},
		{"v12-late-fork", "12", false},
		{"v12-early-fork", "12", true},
	} {
		b.Run(c.name, func(b *testing.B) {
			r, sets := bigFork(b, c.version, 10000, c.early)
			runtime.GC()
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			peak := startPeakHeap()
			b.ReportAllocs()
			b.ResetTimer()
			start := time.Now()
			for i := 0; i < b.N; i++ {
				if _, err := ResolveWith(r.version, sets, r, testAuthCheck); err != nil {
					b.Fatal(err)
				}
			}
			elapsed := time.Since(start)
			b.StopTimer()
			peakBytes := peak.done()
			runtime.ReadMemStats(&after)
			line, _ := json.Marshal(map[string]any{
				"benchmark":       "Resolve10kFork/" + c.name,
				"ns_per_op":       elapsed.Nanoseconds() / int64(b.N),
				"target_ns":       int64(time.Second),
				"allocs_per_op":   (after.Mallocs - before.Mallocs) / uint64(b.N),
				"bytes_per_op":    (after.TotalAlloc - before.TotalAlloc) / uint64(b.N),
				"peak_heap_bytes": peakBytes,
				"state_keys":      len(sets[0]),
				"gomaxprocs":      runtime.GOMAXPROCS(0),
			})
			fmt.Fprintln(os.Stdout, string(line))
		})
	}
}
