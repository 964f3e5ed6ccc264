package e2ee_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"testing"
	"time"

	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/projections"
	"github.com/engram-hs/engram/projections/e2ee"
	"github.com/rs/zerolog"
)

func otks(prefix string, n int) map[string]json.RawMessage {
	out := map[string]json.RawMessage{}
	for i := range n {
		out[fmt.Sprintf("signed_curve25519:%s%d", prefix, i)] = json.RawMessage(fmt.Sprintf(`{"key":"%s%d"}`, prefix, i))
	}
	return out
}

// TestClaimsInLogOrder: claims appended in one batch (as racing nodes
// would) are answered by the fold in log order, each one-time key once,
// oldest upload first, then the fallback key; a restore's discard fact
// makes every older key unclaimable; a replay reproduces the store.
func TestClaimsInLogOrder(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	logger := zerolog.New(io.Discard)
	node, err := englog.Open(englog.Config{Dir: t.TempDir(), Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close()
	eng := projections.NewEngine(node, node.DB(), logger, nil)
	h := eng.Register(e2ee.New(nil))
	if err := eng.Start(ctx); err != nil {
		t.Fatal(err)
	}
	const u, d = "@a:x", "DEV"
	appendAll := func(props ...englog.Proposal) []uint64 {
		t.Helper()
		offs, err := node.Append(ctx, props...)
		if err != nil {
			t.Fatal(err)
		}
		if err := h.WaitApplied(ctx, offs[len(offs)-1]); err != nil {
			t.Fatal(err)
		}
		return offs
	}
	appendAll(
		facts.MustEncode(englog.KindDeviceAdded, facts.DeviceAdded{UserID: u, DeviceID: d}),
		facts.MustEncode(englog.KindKeysUploaded, facts.KeysUploaded{UserID: u, DeviceID: d, OneTimeKeys: otks("z", 3),
			FallbackKeys: map[string]json.RawMessage{"signed_curve25519:fb": json.RawMessage(`{"key":"fb","fallback":true}`)}}),
		facts.MustEncode(englog.KindKeysUploaded, facts.KeysUploaded{UserID: u, DeviceID: d, OneTimeKeys: otks("a", 2)}),
	)
	claim := facts.MustEncode(englog.KindKeysClaimed, facts.KeysClaimed{Claimer: "@b:x", Claims: map[string]map[string]string{u: {d: "signed_curve25519"}}})
	offs := appendAll(claim, claim, claim, claim, claim, claim, claim)
	v := e2ee.NewView(h.Reader())
	want := []string{"z0", "z1", "z2", "a0", "a1", "fb", "fb"}
	for i, off := range offs {
		vd, err := v.Verdict(off)
		if err != nil || vd == nil {
			t.Fatalf("verdict %d: %v %v", i, vd, err)
		}
		got := vd.Claimed[u][d]
		if len(got) != 1 || got["signed_curve25519:"+want[i]] == nil {
			t.Fatalf("claim %d got %v, want %s", i, got, want[i])
		}
	}
	if fb, _ := v.UnusedFallbackKeyTypes(u, d); len(fb) != 0 {
		t.Fatalf("the served fallback key is still unused: %v", fb)
	}
	// A handed-out key uploaded again is not stored again.
	appendAll(facts.MustEncode(englog.KindKeysUploaded, facts.KeysUploaded{UserID: u, DeviceID: d, OneTimeKeys: otks("z", 1)}))
	if c, _ := v.OneTimeKeyCounts(u, d); c["signed_curve25519"] != 0 {
		t.Fatalf("a handed-out key became claimable again: %v", c)
	}
	// A restore to this point discards what is unclaimed; later uploads
	// stay.
	up := appendAll(facts.MustEncode(englog.KindKeysUploaded, facts.KeysUploaded{UserID: u, DeviceID: d, OneTimeKeys: otks("b", 4)}))
	later := facts.MustEncode(englog.KindKeysUploaded, facts.KeysUploaded{UserID: u, DeviceID: d, OneTimeKeys: otks("c", 1)})
	appendAll(later, facts.MustEncode(englog.KindOneTimeKeysDiscarded, facts.OneTimeKeysDiscarded{UpTo: up[0], Reason: "restore"}))
	if c, _ := v.OneTimeKeyCounts(u, d); c["signed_curve25519"] != 1 {
		t.Fatalf("after the discard: %v, want only the later upload", c)
	}
	appendAll(facts.MustEncode(englog.KindKeysUploaded, facts.KeysUploaded{UserID: u, DeviceID: d, OneTimeKeys: otks("b", 4)}))
	if c, _ := v.OneTimeKeyCounts(u, d); c["signed_curve25519"] != 1 {
		t.Fatalf("discarded keys re-uploaded became claimable: %v", c)
	}

	before, err := eng.Digest("e2ee")
	if err != nil {
		t.Fatal(err)
	}
	if err := eng.Close(); err != nil {
		t.Fatal(err)
	}
	eng2 := projections.NewEngine(node, node.DB(), logger, nil)
	eng2.Register(e2ee.New(nil))
	if err := eng2.Rebuild(ctx, "e2ee"); err != nil {
		t.Fatal(err)
	}
	after, err := eng2.Digest("e2ee")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(before, after) {
		t.Fatalf("replay changed the store: digest %x, then %x", before, after)
	}
}
