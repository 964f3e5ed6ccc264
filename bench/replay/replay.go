// Package replay measures how fast the projections fold a log: it opens a
// log, registers every projection the API registers, and rebuilds them all
// from offset 1 in one pass over the log, as `engram rebuild` does.
package replay

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/engram-hs/engram/api"
	"github.com/engram-hs/engram/bench/report"
	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/projections"
	"github.com/engram-hs/engram/roomwrite"
)

// Options of a replay.
type Options struct {
	Dir string // the log's data directory
	// MemoryTarget is the log's memory budget (englog.Config.MemoryTarget);
	// 0 is what a server uses by default.
	MemoryTarget int64
	// Projections to rebuild; all of them when empty.
	Projections []string
	// ServerName is the server the projections are folded for: whose
	// users are local (the notifications fold evaluates push rules for
	// local members only). "" is DefaultServerName, which no generated
	// user belongs to.
	ServerName string
	Logger     zerolog.Logger
	// Progress is called after each applied batch.
	Progress func(name string, applied, target uint64)
}

// Projection is the figure of one projection.
type Projection struct {
	Name         string
	Duration     time.Duration
	EventsPerSec float64
	Digest       string // hex SHA-256 of its keyspace after the rebuild
	DiskBytes    int64  // its serving generation on disk (Pebble's estimate)
}

// Result of a replay.
type Result struct {
	Entries   uint64 // entries in the log
	BytesRead int64  // payload bytes the projections read, over all of them
	Duration  time.Duration
	CPU       time.Duration // user and system CPU time of this process during the rebuild
	// SettleDuration is the compaction of the new generations after the
	// rebuild (Engine.Settle), outside Duration and CPU.
	SettleDuration time.Duration
	Projections    []Projection
	PeakRSSKB      int64 // VmHWM of this process after the replay
	// DiskBytes is what the data directory occupies after the replay, the
	// log closed (ballast apart); EventJSONBytes the canonical JSON of the
	// log's PDUs (their "event"), which the events' share of it stores.
	DiskBytes      int64
	EventJSONBytes int64
	// FlushedBytes and CompactedBytes are what Pebble wrote to tables
	// during the rebuild: by flushing memtables, and by compacting tables
	// (their ratio to the flushed bytes is the write amplification).
	FlushedBytes, CompactedBytes int64
	// LogDiskBytes and RaftDiskBytes are the event log's and the Raft
	// log's shares of the disk (Pebble's estimates).
	LogDiskBytes, RaftDiskBytes int64
}

// DefaultServerName is the server name a replay folds for unless told
// otherwise. No user of a generated log (bench generate's
// bench.localhost) is local to it, so the notifications fold evaluates no
// push rules: every replay figure before 2026-12-08 was measured so, and
// stays comparable. --server-name bench.localhost folds them as the
// generating server would (bench/README.md, notif6: ~50x the CPU on the
// 100k log).
const DefaultServerName = "replay.localhost"

// countingLog counts what the projections read.
type countingLog struct {
	englog.Log
	bytes atomic.Int64
}

func (c *countingLog) Read(from uint64, max int) ([]englog.Entry, error) {
	es, err := c.Log.Read(from, max)
	var n int64
	for _, e := range es {
		n += int64(len(e.Payload))
	}
	c.bytes.Add(n)
	return es, err
}

// Run rebuilds the projections of the log in opts.Dir and records its
// figures in rec (may be nil).
func Run(ctx context.Context, opts Options, rec *report.Recorder) (*Result, error) {
	node, err := englog.Open(englog.Config{Dir: opts.Dir, Logger: opts.Logger, MemoryTarget: opts.MemoryTarget})
	if err != nil {
		return nil, fmt.Errorf("replay: open the log in %s: %w", opts.Dir, err)
	}
	defer node.Close()
	counting := &countingLog{Log: node}
	engine := projections.NewEngine(counting, node.DB(), opts.Logger, nil)
	// As a server's: on the log's filesystem (Pebble ignores the
	// directory).
	engine.RebuildIn(filepath.Join(opts.Dir, "rebuild"))
	defer engine.Close()
	// The API registers the projections it serves from; registering them
	// through it keeps the replay in step with the server.
	serverName := opts.ServerName
	if serverName == "" {
		serverName = DefaultServerName
	}
	rw, err := roomwrite.New(roomwrite.Config{ServerName: serverName, Logger: opts.Logger}, counting, engine)
	if err != nil {
		return nil, err
	}
	if _, err := api.New(api.Config{ServerName: serverName}, api.Deps{Log: counting, Engine: engine, Rooms: rw, Logger: opts.Logger}); err != nil {
		return nil, err
	}
	// A full rebuild folds every projection in one pass over the log (the
	// engine reads each batch once and applies it to all of them
	// concurrently), as `engram rebuild` does; a projection's time is when
	// it had folded the last entry.
	var (
		mu       sync.Mutex
		finished = map[string]time.Duration{}
		start    time.Time
	)
	engine.OnProgress(func(name string, applied, target uint64) {
		if applied >= target {
			mu.Lock()
			finished[name] = time.Since(start)
			mu.Unlock()
		}
		if opts.Progress != nil {
			opts.Progress(name, applied, target)
		}
	})
	names := opts.Projections
	if len(names) == 0 {
		for _, h := range engine.Handles() {
			names = append(names, h.Name())
		}
	}
	res := &Result{Entries: node.LastOffset()}
	if rec != nil {
		// The workload is the log: runs over logs of one size compare.
		rec.SetParam("entries", strconv.FormatUint(res.Entries, 10))
	}
	before := node.DB().Metrics().Total()
	start = time.Now()
	cpuStart := cpuTime()
	if err := engine.Rebuild(ctx, names...); err != nil {
		return nil, fmt.Errorf("replay: rebuild %v: %w", names, err)
	}
	res.Duration = time.Since(start)
	res.CPU = cpuTime() - cpuStart
	after := node.DB().Metrics().Total()
	res.FlushedBytes = int64(after.TableBytesFlushed - after.TableBytesIn - (before.TableBytesFlushed - before.TableBytesIn))
	res.CompactedBytes = int64(after.TableBytesCompacted - before.TableBytesCompacted)
	// What engram rebuild does next, outside the timed part: compact the
	// new generations, which reads (and the disk figures below) would
	// otherwise pay for until Pebble's compactions reach them.
	settleStart := time.Now()
	if err := engine.Settle(ctx, names...); err != nil {
		return nil, fmt.Errorf("replay: %w", err)
	}
	res.SettleDuration = time.Since(settleStart)
	for _, name := range names {
		dig, err := engine.Digest(name)
		if err != nil {
			return nil, err
		}
		mu.Lock()
		d, ok := finished[name]
		mu.Unlock()
		if !ok {
			d = res.Duration
		}
		p := Projection{Name: name, Duration: d, EventsPerSec: float64(res.Entries) / d.Seconds(), Digest: hex.EncodeToString(dig)}
		res.Projections = append(res.Projections, p)
		if rec != nil {
			rec.Add("events_per_s."+name, p.EventsPerSec, "events/s", report.HigherIsBetter)
			rec.Add("seconds."+name, d.Seconds(), "s", report.LowerIsBetter)
		}
	}
	// Where the bytes on disk are, once everything is in tables.
	if err := node.DB().Flush(); err != nil {
		return nil, err
	}
	for i, name := range names {
		n, err := engine.DiskUsage(name)
		if err != nil {
			return nil, err
		}
		res.Projections[i].DiskBytes = int64(n)
		if rec != nil {
			rec.Add("disk_mb."+name, float64(n)/1e6, "MB", report.LowerIsBetter)
		}
	}
	// The event log ('L' 'e') and the Raft log of entries not yet
	// snapshotted away ('L' 'r'), as log/store.go lays them out.
	for _, part := range []struct {
		name string
		kind byte
		dst  *int64
	}{{"log", 'e', &res.LogDiskBytes}, {"raft_log", 'r', &res.RaftDiskBytes}} {
		n, err := node.DB().EstimateDiskUsage([]byte{'L', part.kind}, []byte{'L', part.kind + 1})
		if err != nil {
			return nil, err
		}
		*part.dst = int64(n)
		if rec != nil {
			rec.Add("disk_mb."+part.name, float64(n)/1e6, "MB", report.LowerIsBetter)
		}
	}
	res.BytesRead = counting.bytes.Load()
	res.PeakRSSKB, _ = report.ProcStatusKB(0, "VmHWM")
	// The footprint, outside the timed part: the events' canonical JSON,
	// then what the directory holds once the log is closed.
	if res.EventJSONBytes, err = eventJSONBytes(node); err != nil {
		return nil, err
	}
	engine.Close()
	if err := node.Close(); err != nil {
		return nil, err
	}
	if res.DiskBytes, _, err = report.DiskUsage(opts.Dir); err != nil {
		return nil, err
	}
	if rec != nil {
		rec.Add("entries", float64(res.Entries), "entries", "")
		// Overall: how fast the whole read side is rebuilt from the log.
		rec.Add("events_per_s", float64(res.Entries)/res.Duration.Seconds(), "events/s", report.HigherIsBetter)
		rec.Add("seconds", res.Duration.Seconds(), "s", report.LowerIsBetter)
		// On a shared machine wall time says little; CPU time per entry
		// does not depend on what else runs.
		rec.Add("cpu_seconds", res.CPU.Seconds(), "s", report.LowerIsBetter)
		rec.Add("settle_seconds", res.SettleDuration.Seconds(), "s", report.LowerIsBetter)
		rec.Add("events_per_cpu_s", float64(res.Entries)/res.CPU.Seconds(), "events/s", report.HigherIsBetter)
		rec.Add("bytes_read", float64(res.BytesRead), "bytes", "")
		rec.Add("read_mb_per_s", float64(res.BytesRead)/1e6/res.Duration.Seconds(), "MB/s", report.HigherIsBetter)
		rec.Add("flushed_mb", float64(res.FlushedBytes)/1e6, "MB", "")
		rec.Add("compacted_mb", float64(res.CompactedBytes)/1e6, "MB", report.LowerIsBetter)
		rec.Add("peak_rss_mb", float64(res.PeakRSSKB)/1024, "MB", report.LowerIsBetter)
		rec.Add("disk_mb", float64(res.DiskBytes)/1e6, "MB", report.LowerIsBetter)
		rec.Add("disk_bytes_per_entry", float64(res.DiskBytes)/float64(max(res.Entries, 1)), "bytes", report.LowerIsBetter)
		rec.Add("event_json_mb", float64(res.EventJSONBytes)/1e6, "MB", "")
		// Everything on disk (log, projections, WALs) over the events'
		// JSON alone: the other entries' bytes count against it.
		rec.Add("disk_per_event_json", float64(res.DiskBytes)/float64(max(res.EventJSONBytes, 1)), "ratio", report.LowerIsBetter)
	}
	return res, nil
}

// eventJSONBytes sums the size of every PDU's event JSON in the log.
func eventJSONBytes(l englog.Log) (int64, error) {
	var n int64
	for from := uint64(1); ; {
		es, err := l.Read(from, 10000)
		if err != nil {
			return 0, err
		}
		if len(es) == 0 {
			return n, nil
		}
		for _, e := range es {
			if e.Kind != englog.KindPDU {
				continue
			}
			var p facts.PDU
			if err := json.Unmarshal(e.Payload, &p); err != nil {
				return 0, fmt.Errorf("replay: PDU at offset %d: %w", e.Offset, err)
			}
			n += int64(len(p.Event))
		}
		from = es[len(es)-1].Offset + 1
	}
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
