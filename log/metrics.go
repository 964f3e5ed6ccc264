package log

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	appendSeconds   prometheus.Histogram
	entriesPerBatch prometheus.Histogram
	lastOffset      prometheus.Gauge
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
	return m, nil
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
