package media_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/engram-hs/engram/api"
	"github.com/engram-hs/engram/internal/objstore"
	"github.com/engram-hs/engram/internal/tests3"
	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/media"
	"github.com/engram-hs/engram/projections"
	"github.com/engram-hs/engram/roomwrite"
)

// What the shared suite (eachBackend) does not show about the S3
// backend, against a real S3 server (versitygw on loopback): an upload
// lands in the bucket by its hash under the prefix; bytes in the bucket
// that do not match their hash are never served; store_local: false keeps
// local uploads out of the bucket.
func TestS3MediaBackend(t *testing.T) {
	srv := tests3.Start(t)
	bucket := srv.Bucket(t, "engram-media", "hs1")
	withBucket := func(storeLocal bool) option {
		return func(c *api.Config) {
			c.Media.Repo.ObjectStore = &media.ObjectStore{Config: srv.Config("engram-media", "hs1"), StoreLocal: storeLocal, StoreRemote: true}
		}
	}
	ts := startServer(t, withBucket(true))
	tok := ts.register("alice").AccessToken
	ctx := context.Background()

	content := testPNG(t, 200, 100)
	sum := sha256.Sum256(content)
	key := blobKey(hex.EncodeToString(sum[:]))
	id := ts.upload(tok, content, "image/png", "cat.png")
	if n, err := bucket.Stat(ctx, key); err != nil || n != int64(len(content)) {
		t.Fatalf("the upload is not in the bucket under its hash: %d bytes, %v", n, err)
	}
	path := "/_matrix/client/v1/media/download/" + serverName + "/" + id
	if r := ts.do("GET", path, tok, nil); r.Status != 200 || !bytes.Equal(r.Body, content) {
		t.Fatalf("download from the bucket: %d, %d bytes", r.Status, len(r.Body))
	}

	// A damaged object: replaced in the bucket by other bytes.
	bad := bytes.Repeat([]byte("x"), len(content))
	if err := bucket.Put(ctx, key, bytes.NewReader(bad), int64(len(bad)), ""); err != nil {
		t.Fatal(err)
	}
	if r := ts.do("GET", path, tok, nil); r.Status == 200 || bytes.Equal(r.Body, bad) {
		t.Fatalf("bytes that do not match their hash were served: %d", r.Status)
	}
	ts.evictLocal() // the damaged copy is not in the bucket; no local copy to compare at stop
	ts.stop()

	// store_local: false: local uploads stay on the local disk.
	local := startServer(t, withBucket(false))
	local.bucket = nil // the harness's bucket checks are for blobs meant to be there
	tok = local.register("bob").AccessToken
	other := []byte("stays on this disk")
	id = local.upload(tok, other, "text/plain", "x.txt")
	sum = sha256.Sum256(other)
	if _, err := bucket.Stat(ctx, blobKey(hex.EncodeToString(sum[:]))); !errors.Is(err, objstore.ErrNotFound) {
		t.Errorf("store_local: false, yet a local upload went to the bucket (%v)", err)
	}
	if r := local.do("GET", "/_matrix/client/v1/media/download/"+serverName+"/"+id, tok, nil); r.Status != 200 || !bytes.Equal(r.Body, other) {
		t.Errorf("download of a local-only blob: %d %q", r.Status, r.Body)
	}
}

// A bucket that cannot be used stops the start, saying what to fix.
func TestS3MissingBucketRefused(t *testing.T) {
	srv := tests3.Start(t)
	dir := t.TempDir()
	logger := zerolog.Nop()
	node, err := englog.Open(englog.Config{Dir: filepath.Join(dir, "db"), Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close()
	eng := projections.NewEngine(node, node.DB(), logger, prometheus.NewRegistry())
	defer eng.Close()
	rw, err := roomwrite.New(roomwrite.Config{ServerName: serverName, Logger: logger}, node, eng)
	if err != nil {
		t.Fatal(err)
	}
	cfg := api.Config{ServerName: serverName}
	cfg.Media.Repo.Dir = filepath.Join(dir, "media")
	cfg.Media.Repo.ObjectStore = &media.ObjectStore{Config: srv.Config("no-such-bucket", ""), StoreLocal: true}
	_, err = api.New(cfg, api.Deps{Log: node, Engine: eng, Rooms: rw, Logger: logger})
	if err == nil || !strings.Contains(err.Error(), "media_storage_providers") || !strings.Contains(err.Error(), "does not exist") {
		t.Fatalf("start with a missing bucket: %v", err)
	}
}
