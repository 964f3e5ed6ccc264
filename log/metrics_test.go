package log

import (
	"context"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// gauges returns the values of the registry's gauges and counters by name.
func gauges(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			if g := m.GetGauge(); g != nil {
				out[mf.GetName()] = g.GetValue()
			}
			if c := m.GetCounter(); c != nil {
				out[mf.GetName()] = c.GetValue()
			}
		}
	}
	return out
}

// The Pebble gauges (memory, tables written, read amplification) follow
// the open DB, also across a reopen in the same process (the collector
// registered first is reused), and say nothing while it is closed.
func TestPebbleMemoryMetrics(t *testing.T) {
	dir := t.TempDir()
	reg := prometheus.NewRegistry()
	open := func() *Node {
		n, err := Open(Config{Dir: dir, Metrics: reg, Logger: zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)})
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	for round := range 2 {
		n := open()
		for i := range 200 {
			if _, err := n.Append(context.Background(), Proposal{Kind: KindPDU, Payload: payloadFor(i)}); err != nil {
				t.Fatal(err)
			}
		}
		// Reads of a flushed table go through the block cache.
		if err := n.DB().Flush(); err != nil {
			t.Fatal(err)
		}
		if _, err := n.Read(1, 1000); err != nil {
			t.Fatal(err)
		}
		g := gauges(t, reg)
		if g["engram_log_pebble_block_cache_bytes"] <= 0 || g["engram_log_pebble_memtable_bytes"] <= 0 {
			t.Fatalf("round %d: block cache %v B, memtables %v B; want both > 0", round, g["engram_log_pebble_block_cache_bytes"], g["engram_log_pebble_memtable_bytes"])
		}
		if f := g["engram_log_pebble_flushed_bytes_total"]; f <= 0 {
			t.Fatalf("round %d: flushed %v B after a flush; want > 0", round, f)
		}
		if ra := g["engram_log_pebble_read_amplification"]; ra < 1 {
			t.Fatalf("round %d: read amplification %v after a flush; want >= 1", round, ra)
		}
		// Two tables holding one key: compacting them rewrites it (a
		// lone table would only move down).
		before := g["engram_log_pebble_compacted_bytes_total"]
		for i := range 2 {
			if err := n.DB().Set([]byte("Ztest"), []byte{byte(i)}, pebble.Sync); err != nil {
				t.Fatal(err)
			}
			if err := n.DB().Flush(); err != nil {
				t.Fatal(err)
			}
		}
		if err := n.DB().Compact(context.Background(), []byte{0}, []byte{0xff}, true); err != nil {
			t.Fatal(err)
		}
		if after := gauges(t, reg)["engram_log_pebble_compacted_bytes_total"]; after <= before {
			t.Fatalf("round %d: compacted %v B after a compaction, %v before", round, after, before)
		}
		if err := n.Close(); err != nil {
			t.Fatal(err)
		}
		g = gauges(t, reg)
		if _, ok := g["engram_log_pebble_block_cache_bytes"]; ok {
			t.Fatalf("round %d: block cache gauge reported for a closed DB", round)
		}
	}

	// Two nodes in one registry: the gauges follow the one opened last,
	// and the other's closing does not silence them.
	first := open()
	second, err := Open(Config{Dir: t.TempDir(), Metrics: reg, Logger: zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)})
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	if _, ok := gauges(t, reg)["engram_log_pebble_memtable_bytes"]; !ok {
		t.Fatal("the memtable gauge went silent when a node closed while another, opened later, is open")
	}
}
