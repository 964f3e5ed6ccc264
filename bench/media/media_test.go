package media

import (
	"bytes"
	"context"
	"os"
	"strings"
	"testing"

	"github.com/engram-hs/engram/bench/internal/benchserver"
	"github.com/engram-hs/engram/bench/report"
)

// A run against a real Engram: every file comes back byte for byte, and
// the figures (with this process's memory as the server's) are JSON lines
// carrying the workload, the commit and the load average.
func TestRunRecordsFigures(t *testing.T) {
	srv := benchserver.Start(t, "", "bench.localhost")
	var out bytes.Buffer
	o := Options{URL: srv.URL, Size: 3<<20 + 17, Files: 2, PID: os.Getpid()}
	rec := report.NewRecorder("media", o.Params(), &out)
	res, err := Run(context.Background(), o, rec)
	if err != nil {
		t.Fatal(err)
	}
	if res.UploadMBps <= 0 || res.DownloadMBps <= 0 || res.BaselineKB <= 0 || res.UploadPeakKB <= 0 || res.HWMKB <= 0 {
		t.Errorf("figures missing: %+v", res)
	}
	ms, err := report.Read(&out)
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, m := range ms {
		names[m.Name] = true
		if m.Params["files"] != "2" || m.Params["file_bytes"] != "3145745" || m.Env.Commit == "" || m.LoadAvg == nil {
			t.Errorf("%s: params %v, commit %q, load %v", m.Name, m.Params, m.Env.Commit, m.LoadAvg)
		}
	}
	for _, n := range []string{"upload_mb_per_s", "download_mb_per_s", "server_rss_growth_mb", "server_hwm_mb"} {
		if !names[n] {
			t.Errorf("no %s line", n)
		}
	}
}

// The noise is deterministic per seed and differs between seeds (so the
// files of a run are distinct blobs); a run where registration fails
// says so.
func TestNoiseAndRegistrationFailure(t *testing.T) {
	a, b, c := make([]byte, 64), make([]byte, 64), make([]byte, 64)
	_, _ = newNoise(1, 64).Read(a)
	_, _ = newNoise(2, 64).Read(b)
	_, _ = newNoise(1, 64).Read(c)
	if bytes.Equal(a, b) || !bytes.Equal(a, c) {
		t.Fatal("noise is not deterministic per seed")
	}
	srv := benchserver.Start(t, "", "bench.localhost")
	if _, err := Run(context.Background(), Options{URL: srv.URL + "/nowhere"}, nil); err == nil || !strings.Contains(err.Error(), "register") {
		t.Errorf("a run against no server: %v", err)
	}
}
