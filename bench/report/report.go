// Package report is the output side of engram bench: one JSON line per
// measurement, each carrying what is needed to compare it with another
// run (workload parameters, git commit, Go version, core count), plus a
// human-readable table for the operator and the ratios between two runs.
package report

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"sort"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"
)

// Better says which direction of a value is an improvement; compare uses
// it to tell speedups from regressions.
const (
	HigherIsBetter = "higher"
	LowerIsBetter  = "lower"
)

// Measurement is one figure of one run.
type Measurement struct {
	// Bench is the subcommand that measured it (generate, replay, load,
	// redrive); Name the figure ("events_per_s", "send_latency_p99_ms").
	Bench  string  `json:"bench"`
	Name   string  `json:"name"`
	Value  float64 `json:"value"`
	Unit   string  `json:"unit"`
	Better string  `json:"better,omitempty"`
	// Params are the workload parameters; two measurements are comparable
	// when bench, name and params match.
	Params map[string]string `json:"params,omitempty"`
	Env
	Time string `json:"time"`
	// LoadAvg is the machine's 1, 5 and 15 minute load averages when the
	// figure was recorded.
	LoadAvg []float64 `json:"loadavg,omitempty"`
}

// Env describes the build and machine a figure was measured on.
type Env struct {
	Commit    string `json:"commit"`
	Dirty     bool   `json:"dirty,omitempty"`
	GoVersion string `json:"go"`
	Cores     int    `json:"cores"`
}

var (
	envOnce sync.Once
	env     Env
	// buildCommit may be set at link time for binaries built outside a
	// checkout: -ldflags "-X github.com/engram-hs/engram/bench/report.buildCommit=$(git rev-parse HEAD)".
	buildCommit string
)

// CurrentEnv reads the commit from the binary's build info (vcs.revision,
// set by go build inside a checkout) or from buildCommit, and falls back to `git rev-parse
// HEAD` in the working directory, so that `go run` and tests get one too.
func CurrentEnv() Env {
	envOnce.Do(func() {
		env = Env{GoVersion: runtime.Version(), Cores: runtime.NumCPU(), Commit: "unknown"}
		if bi, ok := debug.ReadBuildInfo(); ok {
			for _, s := range bi.Settings {
				switch s.Key {
				case "vcs.revision":
					env.Commit = s.Value
				case "vcs.modified":
					env.Dirty = s.Value == "true"
				}
			}
		}
		if buildCommit != "" {
			env.Commit = buildCommit
		}
		if env.Commit == "unknown" {
			if out, err := exec.Command("git", "rev-parse", "HEAD").Output(); err == nil {
				env.Commit = strings.TrimSpace(string(out))
			}
		}
	})
	return env
}

// Recorder collects the measurements of one run and writes each as a JSON
// line the moment it is recorded, so that an interrupted run keeps what
// it measured.
type Recorder struct {
	Bench  string
	Params map[string]string

	mu  sync.Mutex
	out io.Writer // JSON lines; may be nil
	all []Measurement
}

// NewRecorder writes JSON lines to out (nil: only collect).
func NewRecorder(bench string, params map[string]string, out io.Writer) *Recorder {
	return &Recorder{Bench: bench, Params: params, out: out}
}

// SetParam adds a workload parameter known only once the run started
// (the size of the log replayed); it applies to the figures added after.
func (r *Recorder) SetParam(key, value string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	p := make(map[string]string, len(r.Params)+1)
	for k, v := range r.Params {
		p[k] = v
	}
	p[key] = value
	r.Params = p
}

// Add records one figure.
func (r *Recorder) Add(name string, value float64, unit, better string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	m := Measurement{
		Bench: r.Bench, Name: name, Value: value, Unit: unit, Better: better,
		Params: r.Params, Env: CurrentEnv(), Time: time.Now().UTC().Format(time.RFC3339),
		LoadAvg: LoadAverage(),
	}
	r.all = append(r.all, m)
	if r.out != nil {
		b, _ := json.Marshal(m)
		_, _ = r.out.Write(append(b, '\n'))
	}
}

// Measurements returns what was recorded, in order.
func (r *Recorder) Measurements() []Measurement {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Measurement(nil), r.all...)
}

// Get returns the value of a recorded figure.
func (r *Recorder) Get(name string) (float64, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, m := range r.all {
		if m.Name == name {
			return m.Value, true
		}
	}
	return 0, false
}

// Table writes the measurements as an aligned table (for stderr).
func Table(w io.Writer, ms []Measurement) {
	if len(ms) == 0 {
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "BENCH\tMEASUREMENT\tVALUE\tUNIT\n")
	for _, m := range ms {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", m.Bench, m.Name, FormatValue(m.Value), m.Unit)
	}
	e := ms[0].Env
	dirty := ""
	if e.Dirty {
		dirty = " (modified)"
	}
	fmt.Fprintf(tw, "commit %s%s, %s, %d cores\n", short(e.Commit), dirty, e.GoVersion, e.Cores)
	_ = tw.Flush()
}

// FormatValue prints a figure with a sensible number of digits.
func FormatValue(v float64) string {
	switch {
	case v == float64(int64(v)) && v < 1e15 && v > -1e15:
		return strconv.FormatInt(int64(v), 10)
	case v >= 100 || v <= -100:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case v >= 1 || v <= -1:
		return strconv.FormatFloat(v, 'f', 2, 64)
	default:
		return strconv.FormatFloat(v, 'g', 3, 64)
	}
}

func short(commit string) string {
	if len(commit) > 12 {
		return commit[:12]
	}
	return commit
}

// ReadFile reads a JSON-lines file written by a Recorder; lines that are
// not measurements (blank, or other tools' output) are skipped.
func ReadFile(path string) ([]Measurement, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return Read(f)
}

// Read parses JSON-lines measurements.
func Read(r io.Reader) ([]Measurement, error) {
	var out []Measurement
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if !strings.HasPrefix(line, "{") {
			continue
		}
		var m Measurement
		if err := json.Unmarshal([]byte(line), &m); err != nil || m.Bench == "" || m.Name == "" {
			continue
		}
		out = append(out, m)
	}
	return out, sc.Err()
}

// Ratio is one matched pair of measurements.
type Ratio struct {
	Bench, Name, Unit, Better string
	A, B                      float64
	// Ratio is B/A; 0 when A is 0.
	Ratio float64
	// Verdict is "better", "worse" or "same" (within 2%), from B's point
	// of view, when the direction is known.
	Verdict string
}

// Compare matches the measurements of two runs by bench, name and
// workload parameters (the last one of each key wins, so re-runs appended
// to one file compare their latest figures) and returns B/A for each,
// in A's order. Unmatched measurements are listed in missing.
func Compare(a, b []Measurement) (ratios []Ratio, missing []string) {
	key := func(m Measurement) string {
		ks := make([]string, 0, len(m.Params))
		for k, v := range m.Params {
			ks = append(ks, k+"="+v)
		}
		sort.Strings(ks)
		return m.Bench + "\x00" + m.Name + "\x00" + strings.Join(ks, ",")
	}
	lastB := map[string]Measurement{}
	for _, m := range b {
		lastB[key(m)] = m
	}
	lastA := map[string]Measurement{}
	var order []string
	for _, m := range a {
		k := key(m)
		if _, seen := lastA[k]; !seen {
			order = append(order, k)
		}
		lastA[k] = m
	}
	for _, k := range order {
		ma := lastA[k]
		mb, ok := lastB[k]
		if !ok {
			missing = append(missing, ma.Bench+"/"+ma.Name+" (only in A)")
			continue
		}
		r := Ratio{Bench: ma.Bench, Name: ma.Name, Unit: ma.Unit, Better: ma.Better, A: ma.Value, B: mb.Value}
		if ma.Value != 0 {
			r.Ratio = mb.Value / ma.Value
		}
		r.Verdict = verdict(r)
		ratios = append(ratios, r)
	}
	for k, mb := range lastB {
		if _, ok := lastA[k]; !ok {
			missing = append(missing, mb.Bench+"/"+mb.Name+" (only in B)")
		}
	}
	sort.Strings(missing)
	return ratios, missing
}

func verdict(r Ratio) string {
	if r.A == 0 {
		return ""
	}
	if r.Ratio > 0.98 && r.Ratio < 1.02 {
		return "same"
	}
	up := r.Ratio > 1
	switch r.Better {
	case HigherIsBetter:
		if up {
			return "better"
		}
		return "worse"
	case LowerIsBetter:
		if up {
			return "worse"
		}
		return "better"
	}
	return ""
}

// PrintRatios writes a comparison table.
func PrintRatios(w io.Writer, ratios []Ratio, missing []string) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "BENCH\tMEASUREMENT\tA\tB\tUNIT\tB/A\tVERDICT\n")
	for _, r := range ratios {
		ratio := "n/a"
		if r.A != 0 {
			ratio = strconv.FormatFloat(r.Ratio, 'f', 3, 64)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Bench, r.Name, FormatValue(r.A), FormatValue(r.B), r.Unit, ratio, r.Verdict)
	}
	_ = tw.Flush()
	for _, m := range missing {
		fmt.Fprintf(w, "unmatched: %s\n", m)
	}
}
