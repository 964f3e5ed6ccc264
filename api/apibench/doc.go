// Package apibench holds the client-server API's speed figures as Go
// benchmarks (no timed tests): durable sends per second with 100
// concurrent clients, the wake-up latency of another user's /sync, the
// initial /sync of a user in 500 rooms, and the resident memory of an
// engram process idle and after a million events. Each benchmark prints
// one JSON line per figure on stdout with its workload, e.g.
//
//	{"bench":"send","clients":100,"rooms":100,"sends_per_s":...,"p50_ms":...,"p99_ms":...}
//
// Run them with
//
//	go test -run '^$' -bench . -benchtime 1x -timeout 30m ./api/apibench/
//
// Knobs (environment): ENGRAM_BENCH_SECONDS, how long each throughput
// run lasts (default 10); ENGRAM_BENCH_EVENTS, the size of the generated
// log of the RSS benchmark (default 1,000,000); ENGRAM_BENCH_BUDGET, how
// long that benchmark may take before it skips, saying how far it got
// (default 10m).
//
// They serve the real API (real log in Pebble, one-voter Raft, real
// projections) on 127.0.0.1; the RSS figures run the real binary.
package apibench
