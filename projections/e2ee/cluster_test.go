package e2ee_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/projections"
	"github.com/engram-hs/engram/projections/e2ee"
	"github.com/rs/zerolog"
)

type member struct {
	peer englog.Peer
	dir  string
	node *englog.Node
	eng  *projections.Engine
	h    *projections.Handle
}

func (m *member) start(t *testing.T, peers []englog.Peer) {
	t.Helper()
	logger := zerolog.New(io.Discard)
	node, err := englog.Open(englog.Config{Dir: m.dir, NodeID: m.peer.ID, RaftAddr: m.peer.Addr, Peers: peers, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	m.node, m.eng = node, projections.NewEngine(node, node.DB(), logger, nil)
	m.h = m.eng.Register(e2ee.New(nil))
	if err := m.eng.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func (m *member) stop() {
	if m.node != nil {
		_ = m.eng.Close()
		_ = m.node.Close()
		m.node = nil
	}
}

func leader(t *testing.T, ms []*member) *member {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		for _, m := range ms {
			if m.node != nil && m.node.IsLeader() {
				return m
			}
		}
	}
	t.Fatal("no leader within 20s")
	return nil
}

// TestClaimsAcrossLeaderChange: claims race on a three-node cluster,
// before and after the leader dies; every one-time key is handed out by
// exactly one claim, whichever node answered it, and every node's
// projection is the same.
func TestClaimsAcrossLeaderChange(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a three-node cluster")
	}
	var ms []*member
	var peers []englog.Peer
	for i := 1; i <= 3; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		p := englog.Peer{ID: fmt.Sprintf("n%d", i), Addr: l.Addr().String()}
		l.Close()
		peers = append(peers, p)
		ms = append(ms, &member{peer: p, dir: t.TempDir()})
	}
	for _, m := range ms {
		m.start(t, peers)
	}
	t.Cleanup(func() {
		for _, m := range ms {
			m.stop()
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const u, d = "@a:x", "DEV"
	if _, err := leader(t, ms).node.Append(ctx,
		facts.MustEncode(englog.KindDeviceAdded, facts.DeviceAdded{UserID: u, DeviceID: d}),
		facts.MustEncode(englog.KindKeysUploaded, facts.KeysUploaded{UserID: u, DeviceID: d, OneTimeKeys: otks("k", 10),
			FallbackKeys: map[string]json.RawMessage{"signed_curve25519:fb": json.RawMessage(`{"key":"fb"}`)}}),
	); err != nil {
		t.Fatal(err)
	}
	claim := facts.MustEncode(englog.KindKeysClaimed, facts.KeysClaimed{Claimer: "@b:x", Claims: map[string]map[string]string{u: {d: "signed_curve25519"}}})
	var mu sync.Mutex
	handed := map[string]int{}
	var last uint64
	// claims appends n claims from 3 goroutines through the current
	// leader and records what each one's verdict handed out.
	claims := func(n int) {
		var wg sync.WaitGroup
		for g := range 3 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := g; i < n; i += 3 {
					m := leader(t, ms)
					offs, err := m.node.Append(ctx, claim)
					if errors.Is(err, englog.ErrNotLeader) {
						i -= 3 // lost leadership meanwhile: ask the next one
						continue
					}
					if err != nil {
						t.Error(err)
						return
					}
					if err := m.h.WaitApplied(ctx, offs[0]); err != nil {
						t.Error(err)
						return
					}
					vd, err := e2ee.NewView(m.h.Reader()).Verdict(offs[0])
					if err != nil || vd == nil {
						t.Errorf("verdict at %d: %v %v", offs[0], vd, err)
						return
					}
					mu.Lock()
					for id := range vd.Claimed[u][d] {
						handed[id]++
					}
					last = max(last, offs[0])
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
	}
	claims(6)
	leader(t, ms).stop()
	claims(7)
	// Every claim in the log counts, not only those acknowledged: a claim
	// whose Append lost leadership while committing may have landed after
	// all (and was asked again), and it took a key like any other.
	m := leader(t, ms)
	if err := m.h.WaitApplied(ctx, m.node.LastOffset()); err != nil {
		t.Fatal(err)
	}
	entries, err := m.node.Read(1, int(m.node.LastOffset())+1)
	if err != nil {
		t.Fatal(err)
	}
	inLog := map[string]int{}
	landed := 0
	for _, e := range entries {
		if e.Kind != englog.KindKeysClaimed {
			continue
		}
		landed++
		vd, err := e2ee.NewView(m.h.Reader()).Verdict(e.Offset)
		if err != nil || vd == nil {
			t.Fatalf("verdict at %d: %v %v", e.Offset, vd, err)
		}
		for id := range vd.Claimed[u][d] {
			inLog[id]++
		}
		last = max(last, e.Offset)
	}
	for id, n := range handed {
		if inLog[id] < n {
			t.Fatalf("%s acknowledged %d times but in the log's verdicts %d times", id, n, inLog[id])
		}
	}
	for i := range 10 {
		if id := fmt.Sprintf("signed_curve25519:k%d", i); inLog[id] != 1 {
			t.Fatalf("%s handed out %d times: %v", id, inLog[id], inLog)
		}
	}
	if landed < 13 || inLog["signed_curve25519:fb"] != landed-10 {
		t.Fatalf("fallback handed out %d times to %d claims, want the %d beyond the 10 one-time keys: %v", inLog["signed_curve25519:fb"], landed, landed-10, inLog)
	}
	var want []byte
	for _, m := range ms {
		if m.node == nil {
			continue
		}
		if err := m.h.WaitApplied(ctx, last); err != nil {
			t.Fatal(err)
		}
		dg, err := m.eng.Digest("e2ee")
		if err != nil {
			t.Fatal(err)
		}
		if want != nil && !bytes.Equal(dg, want) {
			t.Fatalf("%s folded a different e2ee projection", m.peer.ID)
		}
		want = dg
	}
}
