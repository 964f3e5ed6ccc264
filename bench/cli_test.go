package bench_test

import (
	"bytes"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/engram-hs/engram/bench"
	"github.com/engram-hs/engram/bench/report"
)

func run(t *testing.T, args ...string) (string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	if code := bench.Main(args, &out, &errOut, nil); code != 0 {
		t.Fatalf("engram bench %v: exit %d\n%s", args, code, errOut.String())
	}
	return out.String(), errOut.String()
}

// Two generate+replay runs, each writing its JSON lines to its own file,
// then compare: every measurement is matched and the entry counts, equal
// by construction, compare as "same".
func TestGenerateReplayCompare(t *testing.T) {
	tmp := t.TempDir()
	var files []string
	for _, name := range []string{"a", "b"} {
		dir := filepath.Join(tmp, name)
		jsonl := filepath.Join(tmp, name+".jsonl")
		_, stderr := run(t, "generate", "--out", dir, "--seed", "5", "--users", "20", "--rooms", "5", "--events", "800", "--json", jsonl)
		if !strings.Contains(stderr, "log digest") {
			t.Fatalf("generate printed no digest:\n%s", stderr)
		}
		run(t, "replay", "--log", dir, "--json", jsonl)
		files = append(files, jsonl)
	}
	ms, err := report.ReadFile(files[0])
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, m := range ms {
		seen[m.Bench+"/"+m.Name] = true
		if m.Commit == "" || m.GoVersion == "" || m.Cores == 0 || m.Params == nil {
			t.Fatalf("measurement without its context: %+v", m)
		}
	}
	for _, want := range []string{"generate/entries", "replay/events_per_s", "replay/bytes_read", "replay/peak_rss_mb", "replay/events_per_s.rooms", "replay/disk_per_event_json", "replay/event_json_mb"} {
		if !seen[want] {
			t.Errorf("missing measurement %s (have %v)", want, seen)
		}
	}

	out, _ := run(t, "compare", files[0], files[1])
	if strings.Contains(out, "unmatched") {
		t.Errorf("unmatched measurements:\n%s", out)
	}
	if !regexp.MustCompile(`(?m)^replay\s+entries\s+\d+\s+\d+\s+entries\s+1\.000\s+same`).MatchString(out) {
		t.Errorf("compare did not print the entries ratio:\n%s", out)
	}
	if !regexp.MustCompile(`(?m)^replay\s+events_per_s\s+[\d.]+\s+[\d.]+\s+events/s\s+\d+\.\d{3}`).MatchString(out) {
		t.Errorf("compare did not print the events/s ratio:\n%s", out)
	}
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{{}, {"nope"}, {"generate"}, {"replay"}, {"load"}, {"redrive", "--log", "x"}, {"redrive", "--log", "x", "--url", "y", "--speed", "fast"}, {"compare", "one"}} {
		var out, errOut bytes.Buffer
		if code := bench.Main(args, &out, &errOut, nil); code != 2 {
			t.Errorf("engram bench %v: exit %d, want 2\n%s", args, code, errOut.String())
		}
	}
}
