package apibench

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/engram-hs/engram/internal/testserver"
)

// engramProcess is `engram serve` running as its own process, so that
// its resident memory is the server's alone.
type engramProcess struct {
	url  string
	cmd  *exec.Cmd
	logs *bytes.Buffer
	done chan error
}

// serveEngram writes a config for dataDir and starts the real binary on
// it, waiting up to wait for /_matrix/client/versions to answer; it
// fails the benchmark when it does not.
func serveEngram(b *testing.B, dataDir string, wait time.Duration) *engramProcess {
	b.Helper()
	p, err := startEngram(b, dataDir, wait)
	if err != nil {
		b.Fatal(err)
	}
	return p
}

// errNotServing says the server did not answer in time (it may still be
// catching up with its log).
var errNotServing = errors.New("engram serve did not answer /_matrix/client/versions in time")

// startEngram is serveEngram that returns errNotServing instead of
// failing; the process runs until the benchmark ends.
func startEngram(b *testing.B, dataDir string, wait time.Duration) (*engramProcess, error) {
	b.Helper()
	bin := testserver.Binary(b)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	cfg := fmt.Sprintf("server_name: %q\ndata_dir: %q\nlisten: %q\nregistration_shared_secret: \"bench\"\nrate_limiting_enabled: false\nlog_level: warn\n", serverName, dataDir, addr)
	cfgPath := filepath.Join(b.TempDir(), "engram.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		b.Fatal(err)
	}
	p := &engramProcess{url: "http://" + addr, logs: &bytes.Buffer{}, done: make(chan error, 1)}
	p.cmd = exec.Command(bin, "serve", "--config", cfgPath)
	p.cmd.Stdout, p.cmd.Stderr = p.logs, p.logs
	if err := p.cmd.Start(); err != nil {
		b.Fatal(err)
	}
	go func() { p.done <- p.cmd.Wait() }()
	b.Cleanup(p.stop)
	deadline := time.Now().Add(wait)
	for {
		if resp, err := http.Get(p.url + "/_matrix/client/versions"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return p, nil
			}
		}
		select {
		case err := <-p.done:
			return nil, fmt.Errorf("engram serve exited (%v):\n%s", err, p.logs)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return p, fmt.Errorf("%w (waited %s):\n%s", errNotServing, wait.Round(time.Second), p.logs)
		}
	}
}

func (p *engramProcess) stop() {
	if p.cmd.ProcessState != nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// memMB reads VmRSS (resident now) and VmHWM (peak resident) of the
// process, in MB.
func (p *engramProcess) memMB(b *testing.B) (rss, hwm float64) {
	b.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		b.Fatalf("reading the process's memory needs Linux /proc: %v", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || (k != "VmRSS" && k != "VmHWM") {
			continue
		}
		kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
		if k == "VmRSS" {
			rss = round2(kb / 1024)
		} else {
			hwm = round2(kb / 1024)
		}
	}
	return rss, hwm
}

// goMemMB reads the Go runtime's heap in use and the memory it obtained
// from the OS (go_memstats_*), in MB: what of the RSS is Go's; the rest
// is mostly Pebble's manually allocated memtables and block cache.
func (p *engramProcess) goMemMB() (heapInuse, sys float64) {
	resp, err := http.Get(p.url + "/_engram/metrics")
	if err != nil {
		return 0, 0
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	read := func(name string) float64 {
		m := regexp.MustCompile(`(?m)^` + name + ` (\S+)$`).FindSubmatch(body)
		if m == nil {
			return 0
		}
		v, _ := strconv.ParseFloat(string(m[1]), 64)
		return round2(v / (1 << 20))
	}
	return read("go_memstats_heap_inuse_bytes"), read("go_memstats_sys_bytes")
}

// projectionLag sums engram_projection_lag_entries over all projections.
func (p *engramProcess) projectionLag() (float64, error) {
	resp, err := http.Get(p.url + "/_engram/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	matches := regexp.MustCompile(`(?m)^engram_projection_lag_entries\{[^}]*\} (\S+)$`).FindAllSubmatch(body, -1)
	if len(matches) == 0 {
		return 0, fmt.Errorf("no engram_projection_lag_entries in the metrics")
	}
	var lag float64
	for _, m := range matches {
		v, err := strconv.ParseFloat(string(m[1]), 64)
		if err != nil {
			return 0, err
		}
		lag += v
	}
	return lag, nil
}

// BenchmarkRSSIdle: a fresh engram serve, idle for 5 s after it answers.
func BenchmarkRSSIdle(b *testing.B) {
	for b.Loop() {
		p := serveEngram(b, b.TempDir(), 30*time.Second)
		time.Sleep(5 * time.Second)
		rss, hwm := p.memMB(b)
		heap, sys := p.goMemMB()
		p.stop()
		b.ReportMetric(rss, "rss_mb")
		emit("bench", "rss_idle", "state", "fresh data dir, idle 5 s", "rss_mb", rss, "hwm_mb", hwm,
			"go_heap_inuse_mb", heap, "go_sys_mb", sys, "target_rss_mb", 40)
	}
}

// BenchmarkRSSAfterMillionEvents: `engram bench generate` writes a log of
// ENGRAM_BENCH_EVENTS entries (default 1,000,000; 10,000 users, 1,000
// rooms), engram serve folds it into its projections, and once every
// projection has caught up and the server idled 5 s its resident memory
// is read (and its peak, reached while folding). It gives up, skipping,
// when that has not happened within ENGRAM_BENCH_BUDGET (default 10m);
// pass a -timeout larger than that.
func BenchmarkRSSAfterMillionEvents(b *testing.B) {
	events := 1_000_000
	if n, err := strconv.Atoi(os.Getenv("ENGRAM_BENCH_EVENTS")); err == nil && n > 0 {
		events = n
	}
	budget := 10 * time.Minute
	if d, err := time.ParseDuration(os.Getenv("ENGRAM_BENCH_BUDGET")); err == nil && d > 0 {
		budget = d
	}
	users, rooms := max(events/100, 10), max(events/1000, 5)
	for b.Loop() {
		ctx, cancel := context.WithTimeout(context.Background(), budget)
		defer cancel()
		began := time.Now()
		dataDir := b.TempDir()
		gen := exec.CommandContext(ctx, testserver.Binary(b), "bench", "generate", "--out", filepath.Join(dataDir, "db"),
			"--seed", "1", "--users", strconv.Itoa(users), "--rooms", strconv.Itoa(rooms), "--events", strconv.Itoa(events),
			"--server-name", serverName, "--json", filepath.Join(b.TempDir(), "generate.jsonl"))
		if out, err := gen.CombinedOutput(); err != nil {
			if ctx.Err() != nil {
				b.Skipf("engram bench generate of %d entries did not finish within the %s budget (ENGRAM_BENCH_BUDGET)", events, budget)
			}
			b.Fatalf("engram bench generate: %v\n%s", err, lastLines(out, 20))
		}
		generated := time.Since(began)
		// engram serve folds the log into its projections before it
		// answers; its peak memory is reached meanwhile.
		p, err := startEngram(b, dataDir, time.Until(began.Add(budget)))
		if errors.Is(err, errNotServing) {
			rss, hwm := p.memMB(b)
			b.Skipf("engram serve was still folding the %d generated entries when the %s budget (ENGRAM_BENCH_BUDGET) ran out; the log took %s to generate; RSS then %.1f MB, peak %.1f MB",
				events, budget, generated.Round(time.Second), rss, hwm)
		} else if err != nil {
			b.Fatal(err)
		}
		for {
			lag, err := p.projectionLag()
			if err == nil && lag == 0 {
				break
			}
			if ctx.Err() != nil {
				b.Skipf("engram serve had not folded the %d generated entries (lag %v, %v) within the %s budget; the log took %s to generate",
					events, lag, err, budget, generated.Round(time.Second))
			}
			time.Sleep(time.Second)
		}
		folded := time.Since(began) - generated
		time.Sleep(5 * time.Second)
		rss, hwm := p.memMB(b)
		heap, sys := p.goMemMB()
		p.stop()
		b.ReportMetric(rss, "rss_mb")
		emit("bench", "rss_after_events", "events", events, "users", users, "rooms", rooms,
			"generate_s", round2(generated.Seconds()), "fold_s", round2(folded.Seconds()),
			"rss_mb", rss, "hwm_mb", hwm, "go_heap_inuse_mb", heap, "go_sys_mb", sys)
	}
}

func lastLines(out []byte, n int) string {
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	return strings.Join(lines[max(len(lines)-n, 0):], "\n")
}
