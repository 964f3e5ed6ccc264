package interop

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"

	"maunium.net/go/mautrix"

	"github.com/engram-hs/engram/internal/testserver"
)

// procKB reads a "Name:   123 kB" line of /proc/PID/status.
func procKB(t *testing.T, pid int, name string) int64 {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Skipf("no /proc: %v", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), name+":"); ok {
			n, _ := strconv.ParseInt(strings.Fields(rest)[0], 10, 64)
			return n
		}
	}
	t.Fatalf("%s not in /proc/%d/status", name, pid)
	return 0
}

// noise is a deterministic, incompressible stream of n bytes.
type noise struct {
	r *rand.ChaCha8
	n int64
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

// TestBigMediaStreams uploads and downloads 200 MB through a real engram
// process and checks that its peak resident memory grows by less than
// 30 MB: uploads are hashed while streaming to a temporary file, downloads
// are streamed from the blob file. It measures memory, not time.
func TestBigMediaStreams(t *testing.T) {
	if testing.Short() {
		t.Skip("writes 200 MB")
	}
	const size = 200 << 20
	srv := testserver.Start(t, testserver.Options{ExtraYAML: `max_upload_size: "300M"`})
	cli, err := mautrix.NewClient(srv.URL, "", "")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	reg, err := cli.RegisterDummy(ctx, &mautrix.ReqRegister[any]{Username: "big", Password: "pw-big"})
	if err != nil {
		t.Fatal(err)
	}
	tok := reg.AccessToken

	upload := func(body io.Reader, n int64) string {
		req, _ := http.NewRequest("POST", srv.URL+"/_matrix/media/v3/upload?filename=big.bin", body)
		req.ContentLength = n
		req.Header.Set("Authorization", "Bearer "+tok)
		req.Header.Set("Content-Type", "application/octet-stream")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var out struct {
			ContentURI string `json:"content_uri"`
		}
		raw, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 || json.Unmarshal(raw, &out) != nil {
			t.Fatalf("upload: %d %s", resp.StatusCode, raw)
		}
		return strings.TrimPrefix(out.ContentURI, "mxc://localhost/")
	}
	download := func(id string) (int64, [32]byte) {
		req, _ := http.NewRequest("GET", srv.URL+"/_matrix/client/v1/media/download/localhost/"+id, nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		h := sha256.New()
		n, err := io.Copy(h, resp.Body)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("download: %d %v", resp.StatusCode, err)
		}
		var sum [32]byte
		copy(sum[:], h.Sum(nil))
		return n, sum
	}

	// Warm up (buffers, pools, the first thumbnail-free round trip), then
	// reset the peak so that it measures the big transfer only.
	download(upload(&noise{rand.NewChaCha8([32]byte{1}), 1 << 20}, 1<<20))
	pid := srv.PID()
	if err := os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0); err != nil {
		t.Skipf("cannot reset the peak RSS (%v)", err)
	}
	base := procKB(t, pid, "VmRSS")

	want := sha256.New()
	id := upload(io.TeeReader(&noise{rand.NewChaCha8([32]byte{2}), size}, want), size)
	n, got := download(id)
	if n != size || fmt.Sprintf("%x", got) != fmt.Sprintf("%x", want.Sum(nil)) {
		t.Fatalf("downloaded %d bytes, hash %x; want %d bytes, %x", n, got, size, want.Sum(nil))
	}
	peak := procKB(t, pid, "VmHWM")
	growth := peak - base
	t.Logf("RSS before %d kB, peak during 200 MB upload+download %d kB: growth %d kB", base, peak, growth)
	if growth > 30<<10 {
		t.Errorf("peak RSS grew by %d kB during a 200 MB upload and download; want < 30 MB", growth)
	}
}
