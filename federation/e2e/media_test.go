package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/engram-hs/engram/internal/testca"
	"github.com/engram-hs/engram/internal/tests3"
	"github.com/engram-hs/engram/internal/testserver"
)

func get(t *testing.T, s server, path, token string) (int, []byte, http.Header) {
	t.Helper()
	req, _ := http.NewRequest("GET", s.URL+path, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b, resp.Header
}

// gradientPNG is a w x h PNG whose pixels all differ (so thumbnails of
// it are not trivially small), with the given blue.
func gradientPNG(w, h int, blue uint8) []byte {
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			img.Set(x, y, color.RGBA{uint8(x), uint8(y), blue, 255})
		}
	}
	var buf bytes.Buffer
	_ = png.Encode(&buf, img)
	return buf.Bytes()
}

// uploadPNG uploads content as name to s for token's user and returns its
// mxc URI's server and media ID, which must be s's.
func uploadPNG(t *testing.T, s server, token, name string, content []byte) (mxcServer, mediaID string) {
	t.Helper()
	req, _ := http.NewRequest("POST", s.URL+"/_matrix/media/v3/upload?filename="+url.QueryEscape(name), bytes.NewReader(content))
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "image/png")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var up struct {
		URI string `json:"content_uri"`
	}
	err = json.NewDecoder(resp.Body).Decode(&up)
	resp.Body.Close()
	mxcServer, mediaID, _ = strings.Cut(strings.TrimPrefix(up.URI, "mxc://"), "/")
	if err != nil || resp.StatusCode != 200 || !strings.HasPrefix(up.URI, "mxc://") || mxcServer != s.name || mediaID == "" {
		t.Fatalf("upload: %d %q %v", resp.StatusCode, up.URI, err)
	}
	return mxcServer, mediaID
}

// A second server serves a remote image and its thumbnail to its own
// users: fetched once over the federation media endpoint (multipart),
// cached (it keeps serving with the origin gone), thumbnailed locally.
func TestRemoteMediaBetweenTwoServers(t *testing.T) {
	ca := testca.New(t)
	a, b := start(t, ca), start(t, ca)
	alice := register(t, a, "alice")
	bob := register(t, b, "bob")

	content := gradientPNG(640, 480, 128)
	server, id := uploadPNG(t, a, alice, "photo.png", content)

	st, body, h := get(t, b, "/_matrix/client/v1/media/download/"+server+"/"+id, bob)
	if st != 200 || !bytes.Equal(body, content) {
		t.Fatalf("remote download through b: %d %q\n%s", st, body[:min(len(body), 200)], b.Logs())
	}
	if h.Get("Content-Type") != "image/png" || !strings.Contains(h.Get("Content-Disposition"), "photo.png") {
		t.Errorf("remote download headers: %q %q", h.Get("Content-Type"), h.Get("Content-Disposition"))
	}
	st, body, _ = get(t, b, "/_matrix/client/v1/media/thumbnail/"+server+"/"+id+"?width=96&height=96&method=crop", bob)
	if st != 200 {
		t.Fatalf("remote thumbnail: %d %s", st, body)
	}
	if cfg, _, err := image.DecodeConfig(bytes.NewReader(body)); err != nil || cfg.Width != 96 || cfg.Height != 96 {
		t.Errorf("remote thumbnail: %dx%d %v", cfg.Width, cfg.Height, err)
	}
	// Remote media cached now is "new": not on the unauthenticated path.
	if st, _, _ := get(t, b, "/_matrix/media/v3/download/"+server+"/"+id, ""); st != 404 {
		t.Errorf("legacy download of freshly cached remote media: %d", st)
	}
	// allow_remote=false does not fetch.
	if st, _, _ := get(t, b, "/_matrix/client/v1/media/download/"+server+"/neverUploaded?allow_remote=false", bob); st != 404 {
		t.Errorf("allow_remote=false: %d", st)
	}
	// Unknown remote media: the origin says 404, and so does b.
	if st, _, _ := get(t, b, "/_matrix/client/v1/media/download/"+server+"/neverUploaded", bob); st != 404 {
		t.Errorf("unknown remote media: %d", st)
	}
	// With the origin gone, b serves from its cache.
	a.Stop()
	if st, body, _ := get(t, b, "/_matrix/client/v1/media/download/"+server+"/"+id, bob); st != 200 || !bytes.Equal(body, content) {
		t.Errorf("cached remote download with the origin stopped: %d", st)
	}
}

// Remote media into object storage on the receiving server: a (local
// disk) hosts an upload; b, with the S3 backend (media_storage_providers,
// store_remote: true) on a real S3-compatible server on loopback, fetches
// it over the authenticated federation media endpoint (TLS between the
// servers), serves it to its user, keeps it in the bucket under its hash,
// and serves it from the bucket once a is stopped and b's local copy is
// gone.
func TestRemoteMediaStoredInS3(t *testing.T) {
	s3 := tests3.Start(t)
	bucket := s3.Bucket(t, "engram-remote", "")
	ca := testca.New(t)
	a := start(t, ca)
	bDir := t.TempDir()
	b := startWith(t, ca, fmt.Sprintf("127.0.0.1:%d", testserver.FreePort(t)), bDir, fmt.Sprintf(`media_storage_providers:
  - module: s3_storage_provider.S3StorageProviderBackend
    store_local: true
    store_remote: true
    store_synchronous: true
    config:
      bucket: engram-remote
      endpoint_url: %q
      region_name: us-east-1
      access_key_id: %q
      secret_access_key: %q
      prefix: b/
`, s3.Endpoint, s3.AccessKey, s3.SecretKey))
	alice := register(t, a, "alice")
	bob := register(t, b, "bob")

	content := gradientPNG(320, 240, 64)
	server, id := uploadPNG(t, a, alice, "s3.png", content)
	dl := "/_matrix/client/v1/media/download/" + server + "/" + id

	st, body, h := get(t, b, dl, bob)
	if st != 200 || !bytes.Equal(body, content) {
		t.Fatalf("remote download through b: %d, %d bytes\n%s", st, len(body), b.Logs())
	}
	if h.Get("Content-Type") != "image/png" {
		t.Errorf("remote download: Content-Type %q", h.Get("Content-Type"))
	}
	// b asked a through the authenticated federation endpoint.
	if logs := a.Logs(); !strings.Contains(logs, `"origin":"`+b.name+`"`) || !strings.Contains(logs, "/_matrix/federation/v1/media/download/"+id) {
		t.Errorf("a's log shows no authenticated federation media download from b:\n%s", logs)
	}
	sum := sha256.Sum256(content)
	hash := hex.EncodeToString(sum[:])
	key := "b/blobs/" + hash[0:2] + "/" + hash[2:4] + "/" + hash
	if n, err := bucket.Stat(context.Background(), key); err != nil || n != int64(len(content)) {
		t.Fatalf("the remote file is not in b's bucket under its hash (%s): %d bytes, %v", key, n, err)
	}

	// With a stopped and b's local copy removed, only the bucket has it.
	a.Stop()
	local := filepath.Join(bDir, "media", "blobs", hash[0:2], hash[2:4], hash)
	if err := os.Remove(local); err != nil {
		t.Fatalf("b's local copy of the remote file: %v", err)
	}
	if st, body, _ := get(t, b, dl, bob); st != 200 || !bytes.Equal(body, content) {
		t.Fatalf("remote download from the bucket with a stopped: %d, %d bytes\n%s", st, len(body), b.Logs())
	}
	st, body, _ = get(t, b, "/_matrix/client/v1/media/thumbnail/"+server+"/"+id+"?width=32&height=32&method=crop", bob)
	if cfg, _, err := image.DecodeConfig(bytes.NewReader(body)); st != 200 || err != nil || cfg.Width != 32 || cfg.Height != 32 {
		t.Errorf("remote thumbnail from the bucket with a stopped: %d %dx%d %v", st, cfg.Width, cfg.Height, err)
	}
}
