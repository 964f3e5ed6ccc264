package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/engram-hs/engram/internal/tests3"
)

// A follower serves a file uploaded through the leader, on three engram
// serve processes: the metadata comes with the replicated log, the blob
// from a peer (cluster.media_peers) by its hash, checked, then kept; the
// follower also makes the thumbnail. A peer that hands out other bytes
// than the hash names is refused, and the peer endpoint wants the
// cluster's media secret.
func TestClusterFollowerServesMedia(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a three-node cluster")
	}
	const secret = "cluster-media-secret"
	c := newServeCluster(t, "  media_secret: \""+secret+"\"\n")
	l := c.leader()
	f := (l + 1) % 3
	// The follower learns where its peers' client APIs are.
	var peers []string
	for i, a := range c.listen {
		if i != f {
			peers = append(peers, `"http://`+a+`"`)
		}
	}
	c.stop(f)
	raw, err := os.ReadFile(c.cfgs[f])
	if err != nil {
		t.Fatal(err)
	}
	raw = bytes.Replace(raw, []byte("cluster:\n"), []byte("cluster:\n  media_peers: ["+strings.Join(peers, ", ")+"]\n"), 1)
	if err := os.WriteFile(c.cfgs[f], raw, 0o600); err != nil {
		t.Fatal(err)
	}
	c.start(f)

	if o, e, code := runTool(t, c.dirs[l], nil, "register-user", "--config", c.cfgs[l], "--user", "alice", "--password", "pw1"); code != 0 {
		t.Fatalf("register-user: %d\n%s\n%s", code, o, e)
	}
	_, token := loginToken(t, c.listen[l], "alice", "pw1")
	// Uploaded first: once the follower has the second, it knows both.
	tampered := clusterUpload(t, c.listen[l], token, "text/plain", []byte("will be tampered with"))
	img := clusterPNG(t, 300, 200)
	id := clusterUpload(t, c.listen[l], token, "image/png", img)

	var st int
	var body []byte
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		st, body = mediaGet(t, c.listen[f], token, "/_matrix/client/v1/media/download/"+id)
		if st == 200 || time.Now().After(deadline) {
			break
		}
	}
	if st != 200 || !bytes.Equal(body, img) {
		t.Fatalf("follower download: %d, %d bytes", st, len(body))
	}
	sum := sha256.Sum256(img)
	hash := hex.EncodeToString(sum[:])
	if _, err := os.Stat(filepath.Join(c.dirs[f], "data", "media", "blobs", hash[0:2], hash[2:4], hash)); err != nil {
		t.Errorf("the follower did not keep the blob it fetched: %v", err)
	}
	st, body = mediaGet(t, c.listen[f], token, "/_matrix/client/v1/media/thumbnail/"+id+"?width=32&height=32&method=crop")
	if cfg, _, err := image.DecodeConfig(bytes.NewReader(body)); st != 200 || err != nil || cfg.Width != 32 || cfg.Height != 32 {
		t.Errorf("follower thumbnail: %d %v %+v", st, err, cfg)
	}

	sum = sha256.Sum256([]byte("will be tampered with"))
	hash = hex.EncodeToString(sum[:])
	if err := os.WriteFile(filepath.Join(c.dirs[l], "data", "media", "blobs", hash[0:2], hash[2:4], hash), []byte("WILL BE TAMPERED WITH"), 0o600); err != nil {
		t.Fatal(err)
	}
	if st, body := mediaGet(t, c.listen[f], token, "/_matrix/client/v1/media/download/"+tampered); st != 404 || bytes.Contains(body, []byte("TAMPERED")) {
		t.Errorf("download of a blob the peer corrupted: %d %s", st, body)
	}
	for _, tok := range []string{"", "not-the-secret"} {
		if st, _ := mediaGet(t, c.listen[l], tok, "/_engram/media/blob/"+hash); st != 403 {
			t.Errorf("blob fetch with secret %q: %d, want 403", tok, st)
		}
	}
	if st, body := mediaGet(t, c.listen[l], secret, "/_engram/media/blob/"+hash); st != 200 || string(body) != "WILL BE TAMPERED WITH" {
		t.Errorf("blob fetch with the secret: %d %q", st, body)
	}
}

// clusterUpload uploads content and returns server/mediaId, retrying
// while a loaded cluster re-elects (503).
func clusterUpload(t *testing.T, listen, token, contentType string, content []byte) string {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		st, mxc := tryUpload(t, listen, token, contentType, content)
		if st == 200 {
			return mxc
		}
		if st != http.StatusServiceUnavailable || time.Now().After(deadline) {
			t.Fatalf("upload: %d %s", st, mxc)
		}
	}
}

func mediaGet(t *testing.T, listen, token, path string) (int, []byte) {
	t.Helper()
	req, _ := http.NewRequest("GET", "http://"+listen+path, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, body
}

func clusterPNG(t *testing.T, w, h int) []byte {
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			img.SetRGBA(x, y, color.RGBA{uint8(x), uint8(y), 0, 255})
		}
	}
	var b bytes.Buffer
	if err := png.Encode(&b, img); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// Three engram serve processes share one S3 bucket (versitygw on
// loopback, store_synchronous: false) and no node names media peers: a
// file uploaded through the leader is in the bucket and a follower serves
// it from there, with its thumbnail; a file uploaded through a follower
// (its fact forwarded to the leader) is served by the leader. Every blob
// ends up in the bucket once, by its hash.
func TestClusterSharesABucket(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a three-node cluster")
	}
	srv := tests3.Start(t)
	bucket := srv.Bucket(t, "cluster-media", "")
	c := newServeCluster(t, fmt.Sprintf(`media_storage_providers:
  - module: s3_storage_provider.S3StorageProviderBackend
    store_local: true
    store_remote: true
    store_synchronous: false
    config: {bucket: cluster-media, endpoint_url: %q, region_name: us-east-1, access_key_id: %q, secret_access_key: %q, prefix: "c/"}
`, srv.Endpoint, srv.AccessKey, srv.SecretKey))
	l := c.leader()
	f := (l + 1) % 3
	if o, e, code := runTool(t, c.dirs[l], nil, "register-user", "--config", c.cfgs[l], "--user", "alice", "--password", "pw1"); code != 0 {
		t.Fatalf("register-user: %d\n%s\n%s", code, o, e)
	}
	_, token := loginToken(t, c.listen[l], "alice", "pw1")
	inBucket := func(content []byte) {
		t.Helper()
		sum := sha256.Sum256(content)
		h := hex.EncodeToString(sum[:])
		for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			n, err := bucket.Stat(context.Background(), "c/blobs/"+h[0:2]+"/"+h[2:4]+"/"+h)
			if err == nil && n == int64(len(content)) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("blob %s never reached the bucket: %d bytes, %v", h, n, err)
			}
		}
	}
	served := func(node int, path string, want []byte) []byte {
		t.Helper()
		var st int
		var body []byte
		for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			st, body = mediaGet(t, c.listen[node], token, path)
			if st == 200 || time.Now().After(deadline) {
				break
			}
		}
		if st != 200 || want != nil && !bytes.Equal(body, want) {
			t.Fatalf("node %d, %s: %d, %d bytes", node, path, st, len(body))
		}
		return body
	}

	img := clusterPNG(t, 300, 200)
	id := clusterUpload(t, c.listen[l], token, "image/png", img)
	inBucket(img)
	served(f, "/_matrix/client/v1/media/download/"+id, img)
	thumb := served(f, "/_matrix/client/v1/media/thumbnail/"+id+"?width=32&height=32&method=crop", nil)
	if cfg, _, err := image.DecodeConfig(bytes.NewReader(thumb)); err != nil || cfg.Width != 32 || cfg.Height != 32 {
		t.Errorf("follower thumbnail: %v %+v", err, cfg)
	}

	doc := []byte("uploaded through a follower")
	id = clusterUpload(t, c.listen[f], token, "text/plain", doc)
	inBucket(doc)
	served(l, "/_matrix/client/v1/media/download/"+id, doc)
}
