package projections

import "github.com/prometheus/client_golang/prometheus"

// engineMetrics exposes how far behind the log each projection is and how
// long apply batches take. Lag and applied offset are computed at scrape
// time from the handles, so they cost nothing on the apply path.
type engineMetrics struct {
	e             *Engine
	applyDuration *prometheus.HistogramVec
	heals         *prometheus.CounterVec
	lag           *prometheus.Desc
	applied       *prometheus.Desc
}

func newEngineMetrics(e *Engine) *engineMetrics {
	return &engineMetrics{
		e: e,
		applyDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "engram_projection_apply_batch_seconds",
			Help:    "Time to apply and commit one batch of log entries to a projection.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 4, 10),
		}, []string{"projection"}),
		heals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "engram_projection_heals_total",
			Help: "Rebuilds of a projection from the log started because its stored data was found damaged.",
		}, []string{"projection"}),
		lag: prometheus.NewDesc("engram_projection_lag_entries",
			"Log entries committed but not yet visible in the projection (log last offset - applied).",
			[]string{"projection"}, nil),
		applied: prometheus.NewDesc("engram_projection_applied_offset",
			"Last log offset visible in the projection.", []string{"projection"}, nil),
	}
}

func (m *engineMetrics) Describe(ch chan<- *prometheus.Desc) {
	m.applyDuration.Describe(ch)
	m.heals.Describe(ch)
	ch <- m.lag
	ch <- m.applied
}

func (m *engineMetrics) Collect(ch chan<- prometheus.Metric) {
	m.applyDuration.Collect(ch)
	m.heals.Collect(ch)
	last := m.e.log.LastOffset()
	for _, h := range m.e.Handles() {
		applied := h.Applied()
		lag := uint64(0)
		if last > applied {
			lag = last - applied
		}
		ch <- prometheus.MustNewConstMetric(m.lag, prometheus.GaugeValue, float64(lag), h.name)
		ch <- prometheus.MustNewConstMetric(m.applied, prometheus.GaugeValue, float64(applied), h.name)
	}
}
