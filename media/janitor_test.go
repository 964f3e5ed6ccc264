package media

import (
	"bytes"
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/projections"
	mediaproj "github.com/engram-hs/engram/projections/media"
)

// A free blob that an upload of the same bytes stored again (its fact not
// yet folded) is not collected within the grace after that store; a blob
// that stays free is.
func TestCollectSparesABlobStoredAgain(t *testing.T) {
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
	r, err := Open(Config{ServerName: "janitor.test", Dir: filepath.Join(dir, "media"), JanitorGrace: grace}, node, h, logger)
	if err != nil {
		t.Fatal(err)
	}
	content := []byte("uploaded, deleted, uploaded again")
	m, err := r.Upload(ctx, "@alice:janitor.test", "", bytes.NewReader(content), int64(len(content)), "text/plain", "")
	if err != nil {
		t.Fatal(err)
	}
	if err := r.commit(ctx, facts.MustEncode(englog.KindMediaDeleted, facts.MediaDeleted{Media: []facts.MediaRef{{Origin: m.Origin, MediaID: m.MediaID}}, Reason: "admin"})); err != nil {
		t.Fatal(err)
	}
	present := func() bool { return !r.fs.ModTime(m.SHA256).IsZero() }

	// Listed as free long ago; then the same bytes are stored again, as
	// an upload does before it records its fact.
	firstFree := map[string]time.Time{}
	r.collect(ctx, firstFree, time.Now().Add(-10*grace))
	if _, ok := firstFree[m.SHA256]; !ok || !present() {
		t.Fatalf("the deleted item's blob is not listed as free (%v) or already gone", firstFree)
	}
	if _, _, err := r.fs.Put(ctx, bytes.NewReader(content), 0); err != nil {
		t.Fatal(err)
	}
	r.collect(ctx, firstFree, time.Now().Add(grace/2))
	if !present() {
		t.Fatal("a blob stored again within the grace was collected")
	}
	r.collect(ctx, firstFree, time.Now().Add(2*grace))
	if present() {
		t.Fatal("a blob free for longer than the grace since its last store was kept")
	}
}
