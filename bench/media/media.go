// Package media is `engram bench media`: large uploads and downloads
// through a homeserver's media API, with the server's resident memory
// sampled throughout. The target: a 200 MB upload and download
// streams with the server's RSS growing by less than 30 MB, and 1 GB of
// uploads does not make it grow either.
package media

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/engram-hs/engram/bench/mxclient"
	"github.com/engram-hs/engram/bench/report"
)

// TargetGrowthMB is the bound on the server's RSS growth while
// files stream through it.
const TargetGrowthMB = 30

// Options of a media run.
type Options struct {
	URL   string
	Size  int64 // bytes per file (default 200 MiB)
	Files int   // files uploaded, then each downloaded (default 5: 1 GB)
	// PID of the server process, for its RSS (Linux /proc); 0 = unknown
	// (then no memory figures).
	PID int
	// Prefix of the username (default "benchmedia" + a random suffix).
	Prefix   string
	Password string // default "engram-bench-media"
	// SampleEvery is how often the server's RSS is read (default 20 ms).
	SampleEvery time.Duration
}

func (o *Options) defaults() error {
	if o.URL == "" {
		return errors.New("media: --url is required (the homeserver's client API base URL)")
	}
	if o.Size <= 0 {
		o.Size = 200 << 20
	}
	if o.Files <= 0 {
		o.Files = 5
	}
	if o.Prefix == "" {
		var b [3]byte
		_, _ = rand.Read(b[:])
		o.Prefix = "benchmedia" + hex.EncodeToString(b[:])
	}
	if o.Password == "" {
		o.Password = "engram-bench-media"
	}
	if o.SampleEvery <= 0 {
		o.SampleEvery = 20 * time.Millisecond
	}
	return nil
}

// Params lists the workload parameters for reports.
func (o Options) Params() map[string]string {
	return map[string]string{
		"file_bytes": strconv.FormatInt(o.Size, 10), "files": strconv.Itoa(o.Files),
		"target_rss_growth_mb": strconv.Itoa(TargetGrowthMB),
	}
}

// Result of a media run.
type Result struct {
	UploadMBps, DownloadMBps float64
	// Server memory (0 without a PID): VmRSS before the first upload,
	// the largest VmRSS sampled during the uploads and during the
	// downloads, and VmHWM (the process's lifetime peak) at the end.
	BaselineKB, UploadPeakKB, DownloadPeakKB, HWMKB int64
}

// GrowthMB is the largest sampled RSS over the baseline, in MB.
func (r Result) GrowthMB() float64 {
	return float64(max(r.UploadPeakKB, r.DownloadPeakKB)-r.BaselineKB) / 1024
}

// Run registers a user, uploads Files files of Size incompressible bytes
// one after another, downloads each and checks it byte for byte (by
// SHA-256), and records the figures in rec (may be nil).
func Run(ctx context.Context, o Options, rec *report.Recorder) (*Result, error) {
	if err := o.defaults(); err != nil {
		return nil, err
	}
	hc := mxclient.NewHTTPClient()
	c := mxclient.New(o.URL, hc)
	if err := c.Register(ctx, o.Prefix, o.Password); err != nil {
		return nil, fmt.Errorf("media: register %s (the server must allow registration): %w", o.Prefix, err)
	}
	res := &Result{}
	rss := func() int64 {
		if o.PID == 0 {
			return 0
		}
		kb, _ := report.ProcStatusKB(o.PID, "VmRSS")
		return kb
	}
	res.BaselineKB = rss()

	type file struct {
		mxc string
		sum [32]byte
	}
	files := make([]file, o.Files)
	var upTime time.Duration
	stop := sample(o, rss, &res.UploadPeakKB)
	for i := range files {
		seed := uint64(i) + 1
		h := sha256.New()
		body := io.TeeReader(newNoise(seed, o.Size), h)
		start := time.Now()
		mxc, err := upload(ctx, hc, c, body, o.Size)
		if err != nil {
			stop()
			return nil, fmt.Errorf("media: upload %d: %w", i, err)
		}
		upTime += time.Since(start)
		files[i].mxc = mxc
		copy(files[i].sum[:], h.Sum(nil))
	}
	stop()

	var downTime time.Duration
	stop = sample(o, rss, &res.DownloadPeakKB)
	for i, f := range files {
		start := time.Now()
		sum, n, err := download(ctx, hc, c, f.mxc)
		if err != nil {
			stop()
			return nil, fmt.Errorf("media: download %d: %w", i, err)
		}
		downTime += time.Since(start)
		if n != o.Size || sum != f.sum {
			stop()
			return nil, fmt.Errorf("media: download %d: %d bytes that differ from the %d uploaded", i, n, o.Size)
		}
	}
	stop()
	total := float64(o.Size) * float64(o.Files) / 1e6
	res.UploadMBps = total / upTime.Seconds()
	res.DownloadMBps = total / downTime.Seconds()
	if o.PID != 0 {
		res.HWMKB, _ = report.ProcStatusKB(o.PID, "VmHWM")
	}
	if rec != nil {
		rec.Add("upload_mb_per_s", res.UploadMBps, "MB/s", "higher")
		rec.Add("download_mb_per_s", res.DownloadMBps, "MB/s", "higher")
		if o.PID != 0 {
			rec.Add("server_rss_baseline_mb", float64(res.BaselineKB)/1024, "MB", "lower")
			rec.Add("server_rss_peak_upload_mb", float64(res.UploadPeakKB)/1024, "MB", "lower")
			rec.Add("server_rss_peak_download_mb", float64(res.DownloadPeakKB)/1024, "MB", "lower")
			rec.Add("server_rss_growth_mb", res.GrowthMB(), "MB", "lower")
			rec.Add("server_hwm_mb", float64(res.HWMKB)/1024, "MB", "lower")
		}
	}
	return res, nil
}

// sample reads the RSS every SampleEvery into *peak until stop is called.
func sample(o Options, rss func() int64, peak *int64) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(o.SampleEvery)
		defer t.Stop()
		for {
			*peak = max(*peak, rss())
			select {
			case <-done:
				return
			case <-t.C:
			}
		}
	}()
	return func() { close(done); wg.Wait(); *peak = max(*peak, rss()) }
}

func upload(ctx context.Context, hc *http.Client, c *mxclient.Client, body io.Reader, size int64) (string, error) {
	req, err := http.NewRequestWithContext(ctx, "POST", c.Base+"/_matrix/media/v3/upload?filename=bench.bin", body)
	if err != nil {
		return "", err
	}
	req.ContentLength = size
	req.Header.Set("Content-Type", "application/octet-stream")
	req.Header.Set("Authorization", "Bearer "+c.Token)
	resp, err := hc.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
	var out struct {
		ContentURI string `json:"content_uri"`
	}
	if resp.StatusCode != http.StatusOK || json.Unmarshal(raw, &out) != nil || len(out.ContentURI) < len("mxc://") {
		return "", fmt.Errorf("%d %s", resp.StatusCode, bytes.TrimSpace(raw))
	}
	return out.ContentURI[len("mxc://"):], nil
}

func download(ctx context.Context, hc *http.Client, c *mxclient.Client, mxc string) ([32]byte, int64, error) {
	var sum [32]byte
	req, err := http.NewRequestWithContext(ctx, "GET", c.Base+"/_matrix/client/v1/media/download/"+mxc, nil)
	if err != nil {
		return sum, 0, err
	}
	req.Header.Set("Authorization", "Bearer "+c.Token)
	resp, err := hc.Do(req)
	if err != nil {
		return sum, 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		raw, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
		return sum, 0, fmt.Errorf("%d %s", resp.StatusCode, bytes.TrimSpace(raw))
	}
	h := sha256.New()
	n, err := io.Copy(h, resp.Body)
	if err != nil {
		return sum, n, err
	}
	copy(sum[:], h.Sum(nil))
	return sum, n, nil
}

// noise is a deterministic, incompressible stream of n bytes.
type noise struct {
	r *mrand.ChaCha8
	n int64
}

func newNoise(seed uint64, n int64) *noise {
	var s [32]byte
	for i := range 8 {
		s[i] = byte(seed >> (8 * i))
	}
	return &noise{r: mrand.NewChaCha8(s), n: n}
}

func (z *noise) Read(p []byte) (int, error) {
	if z.n <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > z.n {
		p = p[:z.n]
	}
	_, _ = z.r.Read(p)
	z.n -= int64(len(p))
	return len(p), nil
}
