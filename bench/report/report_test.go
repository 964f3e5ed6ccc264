package report

import (
	"bytes"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestCompareMatchesByBenchNameAndParams(t *testing.T) {
	var bufA, bufB bytes.Buffer
	a := NewRecorder("load", map[string]string{"users": "10"}, &bufA)
	a.Add("sends_per_s", 100, "sends/s", HigherIsBetter)
	a.Add("send_latency_p99_ms", 20, "ms", LowerIsBetter)
	a.Add("only_a", 1, "x", "")
	b := NewRecorder("load", map[string]string{"users": "10"}, &bufB)
	b.Add("sends_per_s", 150, "sends/s", HigherIsBetter)
	b.Add("send_latency_p99_ms", 30, "ms", LowerIsBetter)
	other := NewRecorder("load", map[string]string{"users": "99"}, &bufB)
	other.Add("sends_per_s", 1, "sends/s", HigherIsBetter)

	ma, err := Read(&bufA)
	if err != nil {
		t.Fatal(err)
	}
	mb, err := Read(&bufB)
	if err != nil {
		t.Fatal(err)
	}
	ratios, missing := Compare(ma, mb)
	if len(ratios) != 2 {
		t.Fatalf("ratios %+v", ratios)
	}
	if r := ratios[0]; r.Name != "sends_per_s" || r.Ratio != 1.5 || r.Verdict != "better" {
		t.Errorf("sends: %+v", r)
	}
	if r := ratios[1]; r.Ratio != 1.5 || r.Verdict != "worse" {
		t.Errorf("latency: %+v", r)
	}
	if len(missing) != 2 || !strings.Contains(strings.Join(missing, ";"), "only_a (only in A)") {
		t.Errorf("missing %v", missing)
	}
	var out bytes.Buffer
	PrintRatios(&out, ratios, missing)
	if !strings.Contains(out.String(), "1.500") {
		t.Errorf("table:\n%s", out.String())
	}
}

func TestPercentile(t *testing.T) {
	var ds []time.Duration
	for i := 100; i >= 1; i-- {
		ds = append(ds, time.Duration(i)*time.Millisecond)
	}
	for p, want := range map[float64]time.Duration{50: 50 * time.Millisecond, 90: 90 * time.Millisecond, 99: 99 * time.Millisecond, 100: 100 * time.Millisecond} {
		if got := Percentile(ds, p); got != want {
			t.Errorf("p%v = %v, want %v", p, got, want)
		}
	}
	if Percentile(nil, 50) != 0 {
		t.Error("empty set")
	}
}

func TestProcStatus(t *testing.T) {
	hwm, err := ProcStatusKB(0, "VmHWM")
	if err != nil || hwm <= 0 {
		t.Fatalf("VmHWM %d, %v", hwm, err)
	}
	if _, err := ProcStatusKB(0, "NoSuchField"); err == nil {
		t.Fatal("unknown field read")
	}
}

// A process's CPU time grows while it computes, and reads back in seconds,
// not ticks: 30 ms of spinning reads as at least 0.01 s more.
func TestProcCPUSeconds(t *testing.T) {
	before, err := ProcCPUSeconds(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	var after float64
	for x := 0; after < before+0.01; x++ {
		for i := 0; i < 1e7; i++ {
			x ^= i
		}
		if after, err = ProcCPUSeconds(os.Getpid()); err != nil {
			t.Fatal(err)
		}
	}
	if after > before+60 {
		t.Fatalf("CPU time went from %v to %v s: not seconds", before, after)
	}
	if _, err := ProcCPUSeconds(-1); err == nil {
		t.Fatal("no process, yet CPU read")
	}
}

// Every recorded figure carries the load average it was measured at, read
// from /proc/loadavg and kept through a write and a read.
func TestMeasurementCarriesLoadAverage(t *testing.T) {
	raw, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		t.Skip("no /proc/loadavg on this system")
	}
	first, _ := strconv.ParseFloat(strings.Fields(string(raw))[0], 64)
	var buf bytes.Buffer
	NewRecorder("load", nil, &buf).Add("sends_per_s", 1, "sends/s", HigherIsBetter)
	ms, err := Read(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 1 || len(ms[0].LoadAvg) != 3 {
		t.Fatalf("measurements %+v", ms)
	}
	// The 1-minute average moves between the two reads only slowly.
	if got := ms[0].LoadAvg[0]; got < 0 || got > first+5 || got < first-5 {
		t.Errorf("loadavg %v, /proc/loadavg said %v", ms[0].LoadAvg, first)
	}
}
