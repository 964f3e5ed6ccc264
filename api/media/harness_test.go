package media_test

import (
	"bytes"
	"context"
	"encoding/json"
	"image"
	"image/color"
	"image/png"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"golang.org/x/crypto/bcrypt"
	"maunium.net/go/mautrix"

	"github.com/engram-hs/engram/api"
	"github.com/engram-hs/engram/internal/objstore"
	"github.com/engram-hs/engram/internal/tests3"
	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/media"
	"github.com/engram-hs/engram/projections"
	"github.com/engram-hs/engram/roomwrite"
)

const serverName = "media.test"

// testServer is a real Engram client API with its media repository: the
// real log on a temporary Pebble directory, the real projection engine,
// blobs in a temporary directory (or the given store), on 127.0.0.1.
type testServer struct {
	t    testing.TB
	URL  string
	dir  string
	cfg  api.Config
	api  *api.Server
	node *englog.Node
	eng  *projections.Engine
	hs   *httptest.Server
	// bucket is the S3 bucket the server keeps blobs in, nil when it
	// uses the local directory only.
	bucket *objstore.Client
}

type option func(*api.Config)

// eachBackend runs a test once per blob store: the local directory
// ("fs"), and an S3 bucket on a real S3-compatible server on loopback
// ("s3", versitygw, configured as media_storage_providers is). With the
// bucket, the local copies are dropped before every GET, so downloads and
// thumbnails are read back from the bucket, and every blob left on the
// local disk when the server stops must be in the bucket too.
func eachBackend(t *testing.T, test func(t *testing.T, be option)) {
	t.Run("fs", func(t *testing.T) { test(t, func(*api.Config) {}) })
	for _, sync := range []bool{true, false} {
		name := "s3"
		if !sync {
			// store_synchronous: false, the default: the blobs go up in
			// the background (the harness waits for them before it
			// drops the local copies).
			name = "s3-async"
		}
		t.Run(name, func(t *testing.T) {
			srv := tests3.Start(t)
			srv.Bucket(t, "engram-media", "")
			test(t, func(c *api.Config) {
				c.Media.Repo.ObjectStore = &media.ObjectStore{Config: srv.Config("engram-media", "hs/"), StoreLocal: true, StoreRemote: true, Synchronous: sync}
			})
		})
	}
}

func startServer(t *testing.T, opts ...option) *testServer {
	t.Helper()
	return startServerIn(t, t.TempDir(), opts...)
}

func startServerIn(t testing.TB, dir string, opts ...option) *testServer {
	t.Helper()
	logger := zerolog.New(io.Discard)
	if testing.Verbose() {
		logger = zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)
	}
	node, err := englog.Open(englog.Config{Dir: filepath.Join(dir, "db"), Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	eng := projections.NewEngine(node, node.DB(), logger, prometheus.NewRegistry())
	cfg := api.Config{
		ServerName:         serverName,
		EnableRegistration: true,
		BcryptCost:         bcrypt.MinCost,
		MaxUploadSize:      1 << 20,
	}
	cfg.Media.Repo.Dir = filepath.Join(dir, "media")
	cfg.Media.Repo.AuthenticatedMedia = true
	cfg.Media.Repo.JanitorInterval = time.Hour
	for _, o := range opts {
		o(&cfg)
	}
	rw, err := roomwrite.New(roomwrite.Config{ServerName: cfg.ServerName, Logger: logger}, node, eng)
	if err != nil {
		node.Close()
		t.Fatal(err)
	}
	var bucket *objstore.Client
	if st := cfg.Media.Repo.ObjectStore; st != nil {
		if bucket, err = objstore.New(st.Config); err != nil {
			t.Fatal(err)
		}
	}
	srv, err := api.New(cfg, api.Deps{Log: node, Engine: eng, Rooms: rw, Logger: logger})
	if err != nil {
		node.Close()
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := eng.Start(ctx); err != nil {
		t.Fatal(err)
	}
	srv.StartMediaJanitor()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewUnstartedServer(srv.Handler())
	hs.Listener = ln
	hs.Start()
	ts := &testServer{t: t, URL: hs.URL, dir: dir, cfg: cfg, api: srv, node: node, eng: eng, hs: hs, bucket: bucket}
	t.Cleanup(ts.stop)
	return ts
}

func (ts *testServer) stop() {
	if ts.hs == nil {
		return
	}
	if ts.bucket != nil {
		for _, h := range ts.localBlobs() {
			if err := ts.waitInBucket(h); err != nil {
				ts.t.Errorf("blob %s is on the local disk but not in the bucket: %v", h, err)
			}
		}
	}
	ts.api.Close()
	ts.hs.Close()
	_ = ts.eng.Close()
	_ = ts.node.Close()
	ts.hs = nil
}

// localBlobs lists the hashes of the blobs in the local directory.
func (ts *testServer) localBlobs() []string {
	var hashes []string
	_ = filepath.Walk(filepath.Join(ts.dir, "media", "blobs"), func(p string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() && !strings.Contains(p, "/blobs/tmp/") {
			hashes = append(hashes, fi.Name())
		}
		return nil
	})
	return hashes
}

// waitInBucket waits until the bucket holds a blob: at once with
// store_synchronous, within 30 s of background uploads without.
func (ts *testServer) waitInBucket(h string) error {
	deadline := time.Now().Add(30 * time.Second)
	if ts.cfg.Media.Repo.ObjectStore.Synchronous {
		deadline = time.Now()
	}
	for {
		_, err := ts.bucket.Stat(context.Background(), blobKey(h))
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// evictLocal drops the local copies of all blobs (the bucket keeps them;
// without store_synchronous, once the background uploads put them
// there).
func (ts *testServer) evictLocal() {
	for _, h := range ts.localBlobs() {
		if ts.bucket != nil {
			if err := ts.waitInBucket(h); err != nil {
				ts.t.Fatalf("blob %s never reached the bucket: %v", h, err)
			}
		}
		if err := os.Remove(filepath.Join(ts.dir, "media", "blobs", h[0:2], h[2:4], h)); err != nil {
			ts.t.Fatal(err)
		}
	}
}

// blobKey is the bucket key of a blob (under the configured prefix).
func blobKey(hash string) string { return "blobs/" + hash[0:2] + "/" + hash[2:4] + "/" + hash }

func (ts *testServer) register(name string) *mautrix.Client {
	ts.t.Helper()
	cli, err := mautrix.NewClient(ts.URL, "", "")
	if err != nil {
		ts.t.Fatal(err)
	}
	resp, err := cli.RegisterDummy(context.Background(), &mautrix.ReqRegister[any]{Username: name, Password: "pw-" + name})
	if err != nil {
		ts.t.Fatalf("register %s: %v", name, err)
	}
	cli.SetCredentials(resp.UserID, resp.AccessToken)
	cli.DeviceID = resp.DeviceID
	return cli
}

// response is a raw answer.
type response struct {
	Status int
	Header http.Header
	Body   []byte
}

func (r response) json(t testing.TB) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(r.Body, &m); err != nil {
		t.Fatalf("answer is not JSON (%d): %q", r.Status, r.Body)
	}
	return m
}

func (r response) errcode() string {
	var m struct {
		Errcode string `json:"errcode"`
	}
	_ = json.Unmarshal(r.Body, &m)
	return m.Errcode
}

func (ts *testServer) do(method, path, token string, body io.Reader, header ...string) response {
	ts.t.Helper()
	req, err := http.NewRequest(method, ts.URL+path, body)
	if err != nil {
		ts.t.Fatal(err)
	}
	if ts.bucket != nil && method == http.MethodGet {
		ts.evictLocal()
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		ts.t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	return response{resp.StatusCode, resp.Header, raw}
}

// upload POSTs content and returns the mxc URI's media ID.
func (ts *testServer) upload(token string, content []byte, ct, name string) string {
	ts.t.Helper()
	path := "/_matrix/media/v3/upload"
	if name != "" {
		path += "?filename=" + queryEscape(name)
	}
	r := ts.do("POST", path, token, bytes.NewReader(content), "Content-Type", ct)
	if r.Status != 200 {
		ts.t.Fatalf("upload: %d %s", r.Status, r.Body)
	}
	uri, _ := r.json(ts.t)["content_uri"].(string)
	prefix := "mxc://" + serverName + "/"
	if len(uri) <= len(prefix) || uri[:len(prefix)] != prefix {
		ts.t.Fatalf("content_uri %q", uri)
	}
	return uri[len(prefix):]
}

// testPNG is a w x h PNG: a horizontal gradient, red in the top half and
// blue in the bottom, so that orientation and crops are visible.
func testPNG(t testing.TB, w, h int) []byte {
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			c := color.RGBA{uint8(255 * x / w), 0, 0, 255}
			if y >= h/2 {
				c = color.RGBA{0, 0, uint8(255 * x / w), 255}
			}
			img.SetRGBA(x, y, c)
		}
	}
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// io_NoLen hides the length of a body, so the request is sent chunked.
func io_NoLen(b []byte) io.Reader { return struct{ io.Reader }{bytes.NewReader(b)} }

type color_Color = color.Color

var (
	black = color.Gray{0}
	white = color.Gray{255}
)
