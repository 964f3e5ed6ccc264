package media_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/engram-hs/engram/api"
	"github.com/engram-hs/engram/bench/report"
	"github.com/engram-hs/engram/internal/tests3"
	"github.com/engram-hs/engram/media"
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
			"upload_vs_raw_write": rawW / upW, "download_vs_raw_read": rawR / dlR,
			"commit": report.CurrentEnv().Commit, "loadavg": report.LoadAverage()})
		fmt.Fprintln(os.Stderr, string(line))
		ts.stop()
	}
}

// BenchmarkS3Upload: a 64 MiB upload through the media API with the
// blobs in a real S3 bucket (versitygw on loopback, its posix backend on
// the same disk): seconds until the upload is answered with
// store_synchronous true (the bucket has it) and false (the local disk
// has it; then the seconds until the background upload is in the bucket
// too), and a download from the bucket with the local cache emptied
// (fetched, verified, cached, served). Prints one JSON line per mode,
// with the commit and the load average.
func BenchmarkS3Upload(b *testing.B) {
	const size = 64 << 20
	data := make([]byte, size)
	r := rand.NewChaCha8([32]byte{9})
	srv := tests3.Start(b)
	bucket := srv.Bucket(b, "bench", "")
	commit, _ := exec.Command("git", "rev-parse", "--short", "HEAD").Output()
	for i := 0; i < b.N; i++ {
		for _, sync := range []bool{true, false} {
			_, _ = r.Read(data)
			sum := sha256.Sum256(data)
			key := fmt.Sprintf("i%d/%s", i, blobKey(hex.EncodeToString(sum[:])))
			ts := startServerIn(b, b.TempDir(), func(c *api.Config) {
				c.MaxUploadSize = 1 << 30
				c.Media.Repo.ObjectStore = &media.ObjectStore{Config: srv.Config("bench", fmt.Sprintf("i%d/", i)), StoreLocal: true, Synchronous: sync}
			})
			ts.bucket = nil
			tok := ts.register("bench").AccessToken
			start := time.Now()
			id := ts.upload(tok, data, "application/octet-stream", "")
			answered := time.Since(start).Seconds()
			for {
				if n, err := bucket.Stat(context.Background(), key); err == nil && n == size {
					break
				}
				if time.Since(start) > 5*time.Minute {
					b.Fatal("the upload never reached the bucket")
				}
				time.Sleep(5 * time.Millisecond)
			}
			inBucket := time.Since(start).Seconds()
			ts.evictLocal()
			start = time.Now()
			if resp := ts.do("GET", "/_matrix/client/v1/media/download/"+serverName+"/"+id, tok, nil); resp.Status != 200 || len(resp.Body) != size {
				b.Fatalf("download: %d, %d bytes", resp.Status, len(resp.Body))
			}
			dl := time.Since(start).Seconds()
			load, _ := os.ReadFile("/proc/loadavg")
			mb := float64(size) / (1 << 20)
			line, _ := json.Marshal(map[string]any{"bench": "media_s3_upload", "size_mib": 64, "store_synchronous": sync,
				"answered_s": answered, "in_bucket_s": inBucket, "upload_answered_mb_s": mb / answered,
				"download_from_bucket_mb_s": mb / dl, "commit": strings.TrimSpace(string(commit)), "loadavg": strings.Fields(string(load))[:3]})
			fmt.Fprintln(os.Stderr, string(line))
			ts.stop()
		}
	}
}
