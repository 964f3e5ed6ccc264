package media_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/engram-hs/engram/api"
)

// BenchmarkUploadDownload: MB/s of a 64 MiB upload and download through
// the media API (in-process server, loopback HTTP, blob hashed, fsynced,
// renamed; metadata through the log), next to the raw disk in the same
// directory (write+fsync, read back). Prints one JSON line.
func BenchmarkUploadDownload(b *testing.B) {
	const size = 64 << 20
	data := make([]byte, size)
	r := rand.NewChaCha8([32]byte{7})
	_, _ = r.Read(data)
	for i := 0; i < b.N; i++ {
		dir := b.TempDir()
		start := time.Now()
		f, _ := os.Create(filepath.Join(dir, "raw"))
		_, _ = f.Write(data)
		_ = f.Sync()
		f.Close()
		rawW := time.Since(start).Seconds()
		start = time.Now()
		got, _ := os.ReadFile(filepath.Join(dir, "raw"))
		rawR := time.Since(start).Seconds()
		_ = got

		ts := startServerIn(b, dir, func(c *api.Config) { c.MaxUploadSize = 1 << 30 })
		tok := ts.register("bench").AccessToken
		start = time.Now()
		req, _ := http.NewRequest("POST", ts.URL+"/_matrix/media/v3/upload", bytes.NewReader(data))
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := http.DefaultClient.Do(req)
		if err != nil || resp.StatusCode != 200 {
			b.Fatalf("upload: %v", err)
		}
		var out struct {
			ContentURI string `json:"content_uri"`
		}
		_ = json.NewDecoder(resp.Body).Decode(&out)
		resp.Body.Close()
		upW := time.Since(start).Seconds()
		start = time.Now()
		req, _ = http.NewRequest("GET", ts.URL+"/_matrix/client/v1/media/download/"+out.ContentURI[len("mxc://"):], nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err = http.DefaultClient.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		n, _ := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		dlR := time.Since(start).Seconds()
		if n != size {
			b.Fatalf("downloaded %d bytes", n)
		}
		mb := float64(size) / (1 << 20)
		line, _ := json.Marshal(map[string]any{"bench": "media_upload_download", "size_mib": 64,
			"raw_write_mb_s": mb / rawW, "raw_read_mb_s": mb / rawR, "upload_mb_s": mb / upW, "download_mb_s": mb / dlR,
			"upload_vs_raw_write": rawW / upW, "download_vs_raw_read": rawR / dlR})
		fmt.Fprintln(os.Stderr, string(line))
		ts.stop()
	}
}
