package reports_test

import (
	"bytes"
	"context"
	"io"
	"testing"
	"time"

	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/projections"
	"github.com/engram-hs/engram/projections/reports"
	"github.com/rs/zerolog"
)

// TestFoldAndReplay folds reports from a real log, then drops and replays
// the projection offline: the rebuilt store is byte-for-byte the same.
func TestFoldAndReplay(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	logger := zerolog.New(io.Discard)
	node, err := englog.Open(englog.Config{Dir: t.TempDir(), Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close()

	eng := projections.NewEngine(node, node.DB(), logger, nil)
	h := eng.Register(reports.New())
	if err := eng.Start(ctx); err != nil {
		t.Fatal(err)
	}
	score := -50
	offs, err := node.Append(ctx,
		facts.MustEncode(englog.KindReportFiled, facts.ReportFiled{UserID: "@a:x", RoomID: "!r:x", EventID: "$e", Reason: "spam", Score: &score}),
		facts.MustEncode(englog.KindAccountDataSet, facts.AccountDataSet{UserID: "@a:x", Type: "t", Content: []byte(`{}`)}),
		facts.MustEncode(englog.KindReportFiled, facts.ReportFiled{UserID: "@b:x", RoomID: "!r:x"}),
		facts.MustEncode(englog.KindReportFiled, facts.ReportFiled{UserID: "@b:x", TargetUserID: "@a:x", Reason: "rude"}),
	)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.WaitApplied(ctx, offs[len(offs)-1]); err != nil {
		t.Fatal(err)
	}
	v := reports.NewView(h.Reader())
	if n, err := v.Count(); err != nil || n != 3 {
		t.Fatalf("Count = %d, %v", n, err)
	}
	all, err := v.List(0, 10, false)
	if err != nil || len(all) != 3 {
		t.Fatalf("List: %v %+v", err, all)
	}
	if all[0].ID != offs[0] || all[1].ID != offs[2] || all[2].ID != offs[3] {
		t.Fatalf("report IDs %d %d %d are not the entries' offsets %v", all[0].ID, all[1].ID, all[2].ID, offs)
	}
	if all[0].ReceivedTS == 0 || all[0].Score == nil || *all[0].Score != -50 || all[2].TargetUserID != "@a:x" {
		t.Fatalf("reports: %+v", all)
	}
	if got, _ := v.List(0, 2, true); len(got) != 2 || got[0].ID != offs[3] || got[1].ID != offs[2] {
		t.Fatalf("newest first: %+v", got)
	}
	if got, _ := v.List(offs[3], 10, true); len(got) != 2 || got[0].ID != offs[2] {
		t.Fatalf("newest first before %d: %+v", offs[3], got)
	}
	if r, err := v.Report(offs[1]); err != nil || r != nil {
		t.Fatalf("an account data entry is not a report: %v %+v", err, r)
	}
	before, err := eng.Digest("reports")
	if err != nil {
		t.Fatal(err)
	}
	if err := eng.Close(); err != nil {
		t.Fatal(err)
	}

	eng2 := projections.NewEngine(node, node.DB(), logger, nil)
	h2 := eng2.Register(reports.New())
	if err := eng2.Rebuild(ctx, "reports"); err != nil {
		t.Fatal(err)
	}
	after, err := eng2.Digest("reports")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(before, after) {
		t.Fatalf("replay changed the store: digest %x, then %x", before, after)
	}
	if err := eng2.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer eng2.Close()
	if n, err := reports.NewView(h2.Reader()).Count(); err != nil || n != 3 {
		t.Fatalf("Count after replay = %d, %v", n, err)
	}
}
