package media

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/engram-hs/engram/internal/objstore"
	"github.com/engram-hs/engram/internal/tests3"
	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/projections"
	mediaproj "github.com/engram-hs/engram/projections/media"
)

// Two nodes share one bucket (a real S3 server, versitygw) and one log:
// node A collects a blob that has been unreferenced for longer than the
// grace while node B uploads the same bytes again. B finds the object in
// the bucket and does not send it; A deletes it before B records its
// upload. The blob must still be in the bucket once B's upload has
// answered, and served by a node without a local copy; before the
// collection went through the log, A's deletion left the bucket without
// it, and B's local copy, once dropped from its cache, was the last.
func TestBucketCollectionRacesAnUploadOfTheSameBytes(t *testing.T) {
	srv := tests3.Start(t)
	bucket := srv.Bucket(t, "shared", "")
	dir := t.TempDir()
	logger := zerolog.Nop()
	node, err := englog.Open(englog.Config{Dir: filepath.Join(dir, "db"), Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close()
	eng := projections.NewEngine(node, node.DB(), logger, prometheus.NewRegistry())
	h := eng.Register(mediaproj.New())
	ctx := context.Background()
	if err := eng.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer eng.Close()
	const grace = time.Minute
	open := func(name string) *Repo {
		r, err := Open(Config{ServerName: "shared.test", Dir: filepath.Join(dir, name), JanitorGrace: grace,
			ObjectStore: &ObjectStore{Config: srv.Config("shared", ""), StoreLocal: true, Synchronous: true}}, node, h, logger)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	a, b := open("a"), open("b")
	content := []byte("uploaded on A, deleted, uploaded again on B")
	m, err := a.Upload(ctx, "@alice:shared.test", "", bytes.NewReader(content), int64(len(content)), "text/plain", "")
	if err != nil {
		t.Fatal(err)
	}
	key := "blobs/" + m.SHA256[0:2] + "/" + m.SHA256[2:4] + "/" + m.SHA256
	if err := a.commit(ctx, facts.MustEncode(englog.KindMediaDeleted, facts.MediaDeleted{Media: []facts.MediaRef{{Origin: m.Origin, MediaID: m.MediaID}}, Reason: "admin"})); err != nil {
		t.Fatal(err)
	}
	// A stored the blob and has seen it free since long ago.
	long := time.Now().Add(-10 * grace)
	if err := os.Chtimes(filepath.Join(dir, "a", "blobs", m.SHA256[0:2], m.SHA256[2:4], m.SHA256), long, long); err != nil {
		t.Fatal(err)
	}
	firstFree := map[string]time.Time{}
	a.collect(ctx, firstFree, time.Now().Add(-10*grace))
	if _, ok := firstFree[m.SHA256]; !ok {
		t.Fatalf("the deleted item's blob is not listed as free: %v", firstFree)
	}

	collected := false
	b.afterBlobStored = func() {
		if _, err := bucket.Stat(ctx, key); err != nil {
			t.Errorf("B's upload did not find or put the object: %v", err)
		}
		a.collect(ctx, firstFree, time.Now())
		_, err := bucket.Stat(ctx, key)
		collected = errors.Is(err, objstore.ErrNotFound)
	}
	m2, err := b.Upload(ctx, "@bob:shared.test", "", bytes.NewReader(content), int64(len(content)), "text/plain", "")
	if err != nil {
		t.Fatal(err)
	}
	if !collected {
		t.Fatal("A's collection did not delete the object under B's upload: the race was not reproduced")
	}
	if n, err := bucket.Stat(ctx, key); err != nil || n != int64(len(content)) {
		t.Fatalf("B's upload answered, its blob is referenced, but the bucket lacks it: %d bytes, %v", n, err)
	}
	// B's cache may drop its copy now; A, with no copy, serves the file
	// from the bucket.
	if err := b.fs.Delete(ctx, m2.SHA256); err != nil {
		t.Fatal(err)
	}
	blob, n, err := a.OpenBlob(ctx, m2.SHA256)
	if err != nil || n != int64(len(content)) {
		t.Fatalf("A opens B's upload: %d bytes, %v", n, err)
	}
	blob.Close()
	if st, err := a.View().BucketState(m2.SHA256); err != nil || st != nil {
		t.Fatalf("the blob is back in the bucket, yet marked %+v (%v)", st, err)
	}
	// A later collection leaves it alone: it is referenced.
	a.collect(ctx, firstFree, time.Now().Add(10*grace))
	if _, err := bucket.Stat(ctx, key); err != nil {
		t.Fatalf("a referenced blob was collected: %v", err)
	}
}

// The fold of the collection facts, entry by entry: a referenced blob is
// never marked; a second collection does not take over one under way; the
// end of a collection applies only to the collection it names; a restore
// clears only a deletion that is over.
func TestBucketCollectionFold(t *testing.T) {
	dir := t.TempDir()
	logger := zerolog.Nop()
	node, err := englog.Open(englog.Config{Dir: filepath.Join(dir, "db"), Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close()
	eng := projections.NewEngine(node, node.DB(), logger, prometheus.NewRegistry())
	h := eng.Register(mediaproj.New())
	ctx := context.Background()
	if err := eng.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer eng.Close()
	r, err := Open(Config{ServerName: "fold.test", Dir: filepath.Join(dir, "media")}, node, h, logger)
	if err != nil {
		t.Fatal(err)
	}
	up := func(s string) string {
		m, err := r.Upload(ctx, "@a:fold.test", "", bytes.NewReader([]byte(s)), int64(len(s)), "text/plain", "")
		if err != nil {
			t.Fatal(err)
		}
		return m.SHA256
	}
	record := func(typ string, v any) uint64 {
		offs, err := node.Append(ctx, serverFact(typ, v))
		if err != nil {
			t.Fatal(err)
		}
		if err := h.WaitApplied(ctx, offs[0]); err != nil {
			t.Fatal(err)
		}
		return offs[0]
	}
	state := func(hash string) string {
		st, err := r.View().BucketState(hash)
		if err != nil {
			t.Fatal(err)
		}
		if st == nil {
			return "-"
		}
		return fmt.Sprintf("%s@%d", st.State, st.Offset)
	}
	used := up("still referenced")
	m, err := r.Upload(ctx, "@a:fold.test", "", bytes.NewReader([]byte("free")), 4, "text/plain", "")
	if err != nil {
		t.Fatal(err)
	}
	free := m.SHA256
	if err := r.commit(ctx, facts.MustEncode(englog.KindMediaDeleted, facts.MediaDeleted{Media: []facts.MediaRef{{Origin: m.Origin, MediaID: m.MediaID}}})); err != nil {
		t.Fatal(err)
	}

	c1 := record(mediaproj.FactBlobsCollecting, mediaproj.BlobsCollecting{SHA256: []string{used, free}, TS: 1})
	if got, want := state(used)+" "+state(free), fmt.Sprintf("- collecting@%d", c1); got != want {
		t.Fatalf("after a collection began: %s, want %s", got, want)
	}
	record(mediaproj.FactBlobsCollecting, mediaproj.BlobsCollecting{SHA256: []string{free}, TS: 2})
	if got, want := state(free), fmt.Sprintf("collecting@%d", c1); got != want {
		t.Fatalf("a second collection took over: %s, want %s", got, want)
	}
	record(mediaproj.FactBlobsCollected, mediaproj.BlobsCollected{Offset: c1 + 1000, Deleted: []string{free}})
	if got, want := state(free), fmt.Sprintf("collecting@%d", c1); got != want {
		t.Fatalf("the end of another collection applied: %s, want %s", got, want)
	}
	record(mediaproj.FactBlobsRestored, mediaproj.BlobsRestored{SHA256: []string{free}})
	if got, want := state(free), fmt.Sprintf("collecting@%d", c1); got != want {
		t.Fatalf("a restore undid a collection under way: %s, want %s", got, want)
	}
	record(mediaproj.FactBlobsCollected, mediaproj.BlobsCollected{Offset: c1, Deleted: []string{free}})
	if got, want := state(free), fmt.Sprintf("deleted@%d", c1); got != want {
		t.Fatalf("after the collection ended: %s, want %s", got, want)
	}
	record(mediaproj.FactBlobsRestored, mediaproj.BlobsRestored{SHA256: []string{free}})
	if got := state(free); got != "-" {
		t.Fatalf("after a restore: %s", got)
	}
	c2 := record(mediaproj.FactBlobsCollecting, mediaproj.BlobsCollecting{SHA256: []string{free}, TS: 3})
	record(mediaproj.FactBlobsCollected, mediaproj.BlobsCollected{Offset: c2, Kept: []string{free}})
	if got := state(free); got != "-" {
		t.Fatalf("a blob the collection kept is still marked: %s", got)
	}
}
