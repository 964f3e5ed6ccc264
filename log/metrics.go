package log

import (
	"errors"
	"sync"

	"github.com/cockroachdb/pebble/v2"
	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	appendSeconds   prometheus.Histogram
	entriesPerBatch prometheus.Histogram
	lastOffset      prometheus.Gauge
	pebbleMemory    *pebbleMemory
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		appendSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "engram", Subsystem: "log", Name: "append_seconds",
			Help:    "Time from Append to commit+apply, for successful appends.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16),
		}),
		entriesPerBatch: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "engram", Subsystem: "log", Name: "entries_per_raft_command",
			Help:    "Entries group-committed into one raft command.",
			Buckets: prometheus.ExponentialBuckets(1, 2, 13),
		}),
		lastOffset: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "engram", Subsystem: "log", Name: "last_offset",
			Help: "Offset of the newest entry applied on this node.",
		}),
	}
	var err error
	if m.appendSeconds, err = register(reg, m.appendSeconds); err != nil {
		return nil, err
	}
	if m.entriesPerBatch, err = register(reg, m.entriesPerBatch); err != nil {
		return nil, err
	}
	if m.lastOffset, err = register(reg, m.lastOffset); err != nil {
		return nil, err
	}
	if m.pebbleMemory, err = register(reg, newPebbleMemory()); err != nil {
		return nil, err
	}
	return m, nil
}

// pebbleMemory reports what Pebble holds in C memory (its block cache and
// memtables, allocated with malloc: the Go heap's figures and limit do not
// see them), and what it wrote to tables (flushes and compactions: the
// write amplification behind the disk I/O and much of the CPU of a busy
// server), read from the open DB at each scrape.
type pebbleMemory struct {
	cache, memTables            *prometheus.Desc
	flushed, compacted, readAmp *prometheus.Desc

	mu sync.Mutex
	db *pebble.DB // nil while no DB is open
}

func newPebbleMemory() *pebbleMemory {
	return &pebbleMemory{
		cache: prometheus.NewDesc("engram_log_pebble_block_cache_bytes",
			"Bytes of blocks in Pebble's block cache (C memory).", nil, nil),
		memTables: prometheus.NewDesc("engram_log_pebble_memtable_bytes",
			"Bytes allocated for Pebble's memtables, those flushed but not yet freed or kept for reuse included (C memory; charged to the block cache's capacity).", nil, nil),
		flushed: prometheus.NewDesc("engram_log_pebble_flushed_bytes_total",
			"Bytes Pebble wrote to tables by flushing memtables since the store was opened.", nil, nil),
		compacted: prometheus.NewDesc("engram_log_pebble_compacted_bytes_total",
			"Bytes Pebble wrote to tables by compactions since the store was opened.", nil, nil),
		readAmp: prometheus.NewDesc("engram_log_pebble_read_amplification",
			"Tables and levels a point read may search (memtables, L0 sublevels, non-empty levels).", nil, nil),
	}
}

// set points the collector at db, the DB a node has opened.
func (p *pebbleMemory) set(db *pebble.DB) {
	p.mu.Lock()
	p.db = db
	p.mu.Unlock()
}

// release forgets db, which is closing, unless the collector (shared by
// nodes registered in one registry) follows another DB since.
func (p *pebbleMemory) release(db *pebble.DB) {
	p.mu.Lock()
	if p.db == db {
		p.db = nil
	}
	p.mu.Unlock()
}

func (p *pebbleMemory) Describe(ch chan<- *prometheus.Desc) {
	ch <- p.cache
	ch <- p.memTables
	ch <- p.flushed
	ch <- p.compacted
	ch <- p.readAmp
}

func (p *pebbleMemory) Collect(ch chan<- prometheus.Metric) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.db == nil {
		return
	}
	m := p.db.Metrics()
	ch <- prometheus.MustNewConstMetric(p.cache, prometheus.GaugeValue, float64(m.BlockCache.Size))
	ch <- prometheus.MustNewConstMetric(p.memTables, prometheus.GaugeValue, float64(m.MemTable.Size+m.MemTable.ZombieSize))
	t := m.Total()
	// Total adds what went to the WAL and what was ingested (a rebuild's
	// generations, written outside Pebble) to TableBytesFlushed.
	ch <- prometheus.MustNewConstMetric(p.flushed, prometheus.CounterValue, float64(t.TableBytesFlushed-t.TableBytesIn))
	ch <- prometheus.MustNewConstMetric(p.compacted, prometheus.CounterValue, float64(t.TableBytesCompacted))
	ch <- prometheus.MustNewConstMetric(p.readAmp, prometheus.GaugeValue, float64(m.ReadAmp()))
}

// register reuses an identical collector already registered (a node
// reopened in the same process) instead of failing.
func register[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing, nil
			}
		}
		return c, err
	}
	return c, nil
}
