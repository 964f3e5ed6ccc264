package media_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

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
			c.Media.Repo.ObjectStore = &media.ObjectStore{Config: srv.Config("engram-media", "hs1"), StoreLocal: storeLocal, StoreRemote: true, Synchronous: true}
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

// With a bucket, the local copies are a cache bounded by
// local_cache_max_size: past it the least recently used blobs that are in
// the bucket leave the local disk (and are fetched again, verified, when
// asked for), the recently used ones stay, and a blob that is not in the
// bucket (store_local: false keeps local uploads out of it) is never
// dropped, whatever the bound.
func TestS3LocalCacheIsBounded(t *testing.T) {
	srv := tests3.Start(t)
	srv.Bucket(t, "engram-media", "")
	const blobSize = 64 << 10
	const bound = 3*blobSize + blobSize/2 // room for three blobs
	withCache := func(storeLocal bool) option {
		return func(c *api.Config) {
			c.Media.Repo.ObjectStore = &media.ObjectStore{Config: srv.Config("engram-media", "cache/"), StoreLocal: storeLocal, StoreRemote: true,
				Synchronous: true, LocalCacheMaxSize: bound}
		}
	}
	localBytes := func(ts *testServer) (n int64) {
		for _, h := range ts.localBlobs() {
			if fi, err := os.Stat(filepath.Join(ts.dir, "media", "blobs", h[0:2], h[2:4], h)); err == nil {
				n += fi.Size()
			}
		}
		return n
	}
	blob := func(i int) []byte { return bytes.Repeat([]byte{byte('a' + i)}, blobSize) }
	hashOf := func(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }

	ts := startServer(t, withCache(true))
	// GETs here read the cache as it is (the harness would empty it).
	bucket := ts.bucket
	ts.bucket = nil
	tok := ts.register("alice").AccessToken
	var ids []string
	for i := range 6 {
		ids = append(ids, ts.upload(tok, blob(i), "application/octet-stream", ""))
		// The first upload is read again and again: the most recently
		// used, it must stay.
		if r := ts.do("GET", "/_matrix/client/v1/media/download/"+serverName+"/"+ids[0], tok, nil); r.Status != 200 {
			t.Fatalf("download: %d", r.Status)
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for localBytes(ts) > bound && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := localBytes(ts); n > bound {
		t.Fatalf("the local cache holds %d bytes, over its bound of %d", n, bound)
	}
	local := map[string]bool{}
	for _, h := range ts.localBlobs() {
		local[h] = true
	}
	if !local[hashOf(blob(0))] || !local[hashOf(blob(5))] {
		t.Errorf("the most recently used blobs left the cache (local: %v)", local)
	}
	if local[hashOf(blob(1))] {
		t.Errorf("the least recently used blob is still local, over the bound")
	}
	// Every file is still served, the dropped ones from the bucket.
	for i, id := range ids {
		if r := ts.do("GET", "/_matrix/client/v1/media/download/"+serverName+"/"+id, tok, nil); r.Status != 200 || !bytes.Equal(r.Body, blob(i)) {
			t.Fatalf("download of file %d after the trim: %d, %d bytes", i, r.Status, len(r.Body))
		}
	}
	ts.bucket = bucket // every blob left local must be in the bucket
	ts.stop()

	// Blobs only on this disk stay, though over the bound.
	only := startServer(t, withCache(false))
	only.bucket = nil // nothing of local uploads is meant to be in the bucket
	tok = only.register("bob").AccessToken
	for i := range 6 {
		only.upload(tok, blob(10+i), "application/octet-stream", "")
	}
	only.api.MediaRepo().TrimCache(context.Background())
	if n := localBytes(only); n != 6*blobSize {
		t.Fatalf("blobs in no bucket were dropped from the only disk that holds them: %d of %d bytes left", n, 6*blobSize)
	}
}

// store_synchronous, against a real S3 server that is stopped and started
// again: a synchronous upload is answered only once its blob is in the
// bucket, so with the bucket down it fails; an asynchronous one is
// answered once the blob is on the local disk (downloads work at once),
// goes to the bucket in the background, and a pending upload survives a
// restart of the server: sent once the bucket is back.
func TestS3StoreSynchronous(t *testing.T) {
	srv := tests3.Start(t)
	bucket := srv.Bucket(t, "engram-media", "")
	provider := func(sync bool) option {
		return func(c *api.Config) {
			c.Media.Repo.ObjectStore = &media.ObjectStore{Config: srv.Config("engram-media", "sync/"), StoreLocal: true, StoreRemote: true, Synchronous: sync}
		}
	}
	key := func(content []byte) string {
		s := sha256.Sum256(content)
		return "sync/" + blobKey(hex.EncodeToString(s[:]))
	}
	inBucket := func(content []byte, within time.Duration) bool {
		deadline := time.Now().Add(within)
		for {
			if n, err := bucket.Stat(context.Background(), key(content)); err == nil && n == int64(len(content)) {
				return true
			}
			if time.Now().After(deadline) {
				return false
			}
			time.Sleep(20 * time.Millisecond)
		}
	}

	// Synchronous: in the bucket when answered; no bucket, no answer.
	syncDir := t.TempDir()
	ts := startServerIn(t, syncDir, provider(true))
	tok := ts.register("alice").AccessToken
	first := []byte("synchronous upload")
	ts.upload(tok, first, "text/plain", "")
	if !inBucket(first, 0) {
		t.Fatal("a synchronous upload was answered before its blob was in the bucket")
	}
	srv.Stop()
	ts.bucket = nil
	if r := ts.do("POST", "/_matrix/media/v3/upload", tok, bytes.NewReader([]byte("no bucket")), "Content-Type", "text/plain"); r.Status == 200 {
		t.Fatalf("a synchronous upload was answered 200 while the bucket was down: %s", r.Body)
	}
	ts.stop()
	srv.Restart()

	// Asynchronous: answered from the local disk, then in the bucket.
	dir := t.TempDir()
	ts = startServerIn(t, dir, provider(false))
	ts.bucket = nil // checked here, as the uploads go up
	tok = ts.register("bob").AccessToken
	second := []byte("asynchronous upload")
	ts.upload(tok, second, "text/plain", "")
	if !inBucket(second, 30*time.Second) {
		t.Fatal("an asynchronous upload never reached the bucket")
	}

	// The bucket goes down: uploads are still answered and served, and a
	// restart of the server with the upload pending does not lose it.
	srv.Stop()
	third := []byte("pending while the bucket is down, across a restart")
	id := ts.upload(tok, third, "text/plain", "")
	if r := ts.do("GET", "/_matrix/client/v1/media/download/"+serverName+"/"+id, tok, nil); r.Status != 200 || !bytes.Equal(r.Body, third) {
		t.Fatalf("download of an upload pending for the bucket: %d %q", r.Status, r.Body)
	}
	ts.stop()
	srv.Restart()
	if inBucket(third, 0) {
		t.Fatal("the bucket was down, yet it holds the upload made meanwhile: the test shows nothing")
	}
	ts = startServerIn(t, dir, provider(false))
	if !inBucket(third, 30*time.Second) {
		t.Fatal("the upload pending at the restart never reached the bucket")
	}
	// And the restarted server serves it from the bucket alone.
	ts.evictLocal()
	if r := ts.do("GET", "/_matrix/client/v1/media/download/"+serverName+"/"+id, tok, nil); r.Status != 200 || !bytes.Equal(r.Body, third) {
		t.Fatalf("download from the bucket after the pending upload went up: %d %q", r.Status, r.Body)
	}
}
