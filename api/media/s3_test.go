package media_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"path/filepath"
	"testing"

	"github.com/engram-hs/engram/internal/tests3"
	"github.com/engram-hs/engram/media/blobstore"
)

// The S3 backend through the Matrix API, against a real S3 server
// (versitygw on loopback): an upload lands in the bucket by its hash; with
// the local copy gone the download and a thumbnail come from the bucket;
// bytes in the bucket that do not match their hash are never served.
func TestS3MediaBackend(t *testing.T) {
	srv := tests3.Start(t)
	bucket := srv.Bucket(t, "engram-media", "hs1")
	dir := t.TempDir()
	fs, err := blobstore.NewFS(filepath.Join(dir, "media", "blobs"))
	if err != nil {
		t.Fatal(err)
	}
	store := blobstore.NewS3(bucket, fs)
	ts := startServerIn(t, dir, store)
	tok := ts.register("alice").AccessToken
	ctx := context.Background()

	content := testPNG(t, 200, 100)
	sum := sha256.Sum256(content)
	hash := hex.EncodeToString(sum[:])
	key := "blobs/" + hash[0:2] + "/" + hash[2:4] + "/" + hash
	id := ts.upload(tok, content, "image/png", "cat.png")
	if n, err := bucket.Stat(ctx, key); err != nil || n != int64(len(content)) {
		t.Fatalf("the upload is not in the bucket under its hash: %d bytes, %v", n, err)
	}

	if err := store.EvictLocal(ctx, hash); err != nil {
		t.Fatal(err)
	}
	path := "/_matrix/client/v1/media/download/" + serverName + "/" + id
	if r := ts.do("GET", path, tok, nil); r.Status != 200 || !bytes.Equal(r.Body, content) {
		t.Fatalf("download from the bucket: %d, %d bytes", r.Status, len(r.Body))
	}
	if err := store.EvictLocal(ctx, hash); err != nil {
		t.Fatal(err)
	}
	thumb := ts.do("GET", "/_matrix/client/v1/media/thumbnail/"+serverName+"/"+id+"?width=32&height=32&method=crop", tok, nil)
	if thumb.Status != 200 || thumb.Header.Get("Content-Type") == "" || len(thumb.Body) == 0 {
		t.Fatalf("thumbnail from the bucket: %d", thumb.Status)
	}

	// A damaged object: replaced in the bucket by other bytes.
	bad := bytes.Repeat([]byte("x"), len(content))
	if err := bucket.Put(ctx, key, bytes.NewReader(bad), int64(len(bad)), ""); err != nil {
		t.Fatal(err)
	}
	if err := store.EvictLocal(ctx, hash); err != nil {
		t.Fatal(err)
	}
	if r := ts.do("GET", path, tok, nil); r.Status == 200 || bytes.Equal(r.Body, bad) {
		t.Fatalf("bytes that do not match their hash were served: %d", r.Status)
	}
}
