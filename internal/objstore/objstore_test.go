package objstore_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/engram-hs/engram/internal/objstore"
	"github.com/engram-hs/engram/internal/tests3"
)

// A real S3 server (versitygw on loopback): put of known and unknown
// size (multipart over several parts), ranged reads through Seek, stat,
// list under the prefix, delete, and the not-found error.
func TestObjectStoreAgainstRealS3(t *testing.T) {
	srv := tests3.Start(t)
	c := srv.Bucket(t, "engram-objstore", "pre/fix")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := c.Check(ctx); err != nil {
		t.Fatal(err)
	}

	small := []byte("hello, object storage")
	if err := c.Put(ctx, "a/small", bytes.NewReader(small), int64(len(small)), "text/plain"); err != nil {
		t.Fatal(err)
	}
	// Unknown size, more than two parts: the multipart path.
	big := make([]byte, 2*objstore.PartSize+12345)
	for i := range big {
		big[i] = byte(i * 7 % 251)
	}
	if err := c.Put(ctx, "a/big", io.MultiReader(bytes.NewReader(big)), -1, ""); err != nil {
		t.Fatal(err)
	}

	o, size, err := c.Get(ctx, "a/big")
	if err != nil {
		t.Fatal(err)
	}
	if size != int64(len(big)) {
		t.Fatalf("size %d, want %d", size, len(big))
	}
	got, err := io.ReadAll(o)
	if err != nil || sha256.Sum256(got) != sha256.Sum256(big) {
		t.Fatalf("read back %d bytes, err %v: differs from what was put", len(got), err)
	}
	off := int64(objstore.PartSize + 3)
	if _, err := o.Seek(off, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	part := make([]byte, 100)
	if _, err := io.ReadFull(o, part); err != nil || !bytes.Equal(part, big[off:off+100]) {
		t.Fatalf("ranged read after seek: %v", err)
	}
	o.Close()

	if n, err := c.Stat(ctx, "a/small"); err != nil || n != int64(len(small)) {
		t.Fatalf("stat: %d, %v", n, err)
	}
	var keys []string
	if err := c.List(ctx, "a/", func(k string, _ int64) bool { keys = append(keys, k); return true }); err != nil {
		t.Fatal(err)
	}
	if len(keys) != 2 || keys[0] != "a/big" || keys[1] != "a/small" {
		t.Fatalf("listed %q, want [a/big a/small] (without the prefix)", keys)
	}
	// The prefix is where the objects are: a client without it sees them
	// under pre/fix/.
	raw, err := objstore.New(srv.Config("engram-objstore", ""))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := raw.Stat(ctx, "pre/fix/a/small"); err != nil {
		t.Fatalf("object not under the prefix: %v", err)
	}

	if err := c.Delete(ctx, "a/small"); err != nil {
		t.Fatal(err)
	}
	if err := c.Delete(ctx, "a/small"); err != nil {
		t.Fatalf("deleting a missing object: %v", err)
	}
	if _, err := c.Stat(ctx, "a/small"); !errors.Is(err, objstore.ErrNotFound) {
		t.Fatalf("stat after delete: %v, want ErrNotFound", err)
	}
	if _, _, err := c.Get(ctx, "nope"); !errors.Is(err, objstore.ErrNotFound) {
		t.Fatalf("get missing: %v, want ErrNotFound", err)
	}

	wrong, err := objstore.New(srv.Config("no-such-bucket", ""))
	if err != nil {
		t.Fatal(err)
	}
	if err := wrong.Check(ctx); err == nil {
		t.Fatal("Check passed for a missing bucket")
	}
}
