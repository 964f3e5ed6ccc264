package queue_test

import (
	"context"

	"encoding/json"
	"fmt"
	"github.com/prometheus/client_golang/prometheus"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/engram-hs/engram/federation/fedtest"
	"github.com/engram-hs/engram/federation/keys"
	"github.com/engram-hs/engram/federation/queue"
	"github.com/engram-hs/engram/federation/transport"
	"github.com/engram-hs/engram/federation/xmatrix"
	"github.com/engram-hs/engram/internal/testca"
	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
)

// receiver records the transactions a peer receives on /send, checking
// their X-Matrix signature with the peer's keyring.
type receiver struct {
	mu    sync.Mutex
	txns  []txn
	seen  map[string]bool
	edus  []string // content.n of each EDU, in arrival order (deduplicated by txn)
	pdus  []string
	count atomic.Int32
}

type txn struct {
	ID         string
	PDUs, EDUs int
}

func newReceiver() *receiver { return &receiver{seen: map[string]bool{}} }

func (rc *receiver) wrap(p *fedtest.Peer, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasPrefix(r.URL.Path, "/_matrix/federation/v1/send/") {
			next.ServeHTTP(w, r)
			return
		}
		body, _ := io.ReadAll(r.Body)
		xp, err := xmatrix.Parse(r.Header.Get("Authorization"))
		if err == nil {
			var pub []byte
			pub, err = p.Keyring.Key(r.Context(), xp.Origin, xp.Key, keys.Validity{At: time.Now().UnixMilli(), Current: true})
			if err == nil {
				err = xmatrix.Verify(xp, pub, r.Method, r.RequestURI, body)
			}
		}
		if err != nil || xp.Destination != p.Name {
			w.WriteHeader(401)
			fmt.Fprintf(w, `{"errcode":"M_UNAUTHORIZED","error":%q}`, fmt.Sprint(err))
			return
		}
		var t struct {
			Origin string            `json:"origin"`
			PDUs   []json.RawMessage `json:"pdus"`
			EDUs   []struct {
				Type    string `json:"edu_type"`
				Content struct {
					N string `json:"n"`
				} `json:"content"`
			} `json:"edus"`
		}
		if err := json.Unmarshal(body, &t); err != nil || t.Origin != xp.Origin {
			w.WriteHeader(400)
			return
		}
		id := strings.TrimPrefix(r.URL.Path, "/_matrix/federation/v1/send/")
		rc.count.Add(1)
		rc.mu.Lock()
		if !rc.seen[id] {
			rc.seen[id] = true
			rc.txns = append(rc.txns, txn{id, len(t.PDUs), len(t.EDUs)})
			for _, e := range t.EDUs {
				rc.edus = append(rc.edus, e.Content.N)
			}
			for _, pdu := range t.PDUs {
				var ev struct {
					Content struct {
						Body string `json:"body"`
					} `json:"content"`
				}
				json.Unmarshal(pdu, &ev)
				rc.pdus = append(rc.pdus, ev.Content.Body)
			}
		}
		rc.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"pdus":{}}`)
	})
}

func (rc *receiver) snapshot() ([]txn, []string, []string) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]txn(nil), rc.txns...), append([]string(nil), rc.edus...), append([]string(nil), rc.pdus...)
}

func edu(n int) facts.OutboundItem {
	return facts.OutboundItem{EDU: &facts.OutboundEDU{Type: "org.example.test", Content: json.RawMessage(fmt.Sprintf(`{"n":"%d"}`, n))}}
}

func waitFor(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// freeAddr reserves a loopback address for a peer that starts later.
func freeAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func fastRetry(giveUp time.Duration) *queue.Config {
	return &queue.Config{MinRetry: 50 * time.Millisecond, Multiplier: 2, MaxRetry: 200 * time.Millisecond, GiveUpAfter: giveUp}
}

// Items queued while the destination is down arrive once it is back,
// in order, also when the sender restarted in between; transactions hold
// at most 50 PDUs and 100 EDUs.
func TestQueuedDuringDowntimeArriveAfterRestart(t *testing.T) {
	ca := testca.New(t)
	bAddr := freeAddr(t)
	aDir := t.TempDir()
	a := fedtest.Start(t, ca, fedtest.Options{Dir: aDir, Queue: fastRetry(time.Hour)})
	aKey := a.Key
	ctx := context.Background()

	// B is down: queue 3 EDUs and let A fail a few times.
	if err := a.Queue.Deliver(ctx, []string{bAddr, a.Name, bAddr}, edu(1), edu(2), edu(3)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	if st, _ := a.Queue.Status(bAddr); st.Pending != 3 || st.Down {
		t.Fatalf("before restart: %+v", st)
	}
	// Restart A on the same data; queue 120 PDUs and 150 more EDUs.
	a.Stop()
	a = fedtest.Start(t, ca, fedtest.Options{Dir: aDir, Addr: a.Name, Key: &aKey, Queue: fastRetry(time.Hour)})
	var props []englog.Proposal
	for i := 0; i < 120; i++ {
		props = append(props, facts.MustEncode(englog.KindPDU, facts.PDU{RoomVersion: "10", Event: json.RawMessage(fmt.Sprintf(`{"type":"m.room.message","content":{"body":"p%d"}}`, i))}))
	}
	offs, err := a.Log.Append(ctx, props...)
	if err != nil {
		t.Fatal(err)
	}
	var items []facts.OutboundItem
	for i, off := range offs {
		items = append(items, facts.OutboundItem{Offset: off})
		if i%10 == 0 {
			items = append(items, edu(100+i))
		}
	}
	for i := 0; i < 138; i++ {
		items = append(items, edu(1000+i))
	}
	if err := a.Queue.Deliver(ctx, []string{bAddr}, items...); err != nil {
		t.Fatal(err)
	}
	// B comes up.
	rc := newReceiver()
	fedtest.Start(t, ca, fedtest.Options{Addr: bAddr, Wrap: rc.wrap})
	waitFor(t, "delivery", 30*time.Second, func() bool { st, _ := a.Queue.Status(bAddr); return st.Pending == 0 })
	txns, edus, pdus := rc.snapshot()
	if len(pdus) != 120 || len(edus) != 3+12+138 {
		t.Fatalf("got %d PDUs and %d EDUs", len(pdus), len(edus))
	}
	for i, b := range pdus {
		if b != fmt.Sprintf("p%d", i) {
			t.Fatalf("PDU %d is %s: out of order", i, b)
		}
	}
	if edus[0] != "1" || edus[1] != "2" || edus[2] != "3" {
		t.Fatalf("EDUs queued before the restart: %v", edus[:3])
	}
	for _, tx := range txns {
		if tx.PDUs > queue.MaxPDUs || tx.EDUs > queue.MaxEDUs {
			t.Fatalf("transaction %s has %d PDUs and %d EDUs", tx.ID, tx.PDUs, tx.EDUs)
		}
	}
	if len(txns) < 3 {
		t.Fatalf("120 PDUs in %d transactions", len(txns))
	}
}

// A destination that stays unreachable is retried with backoff, then
// marked down and left alone; when it contacts us it is marked up and
// what was queued arrives.
func TestDeadDestinationGivenUpAndRecovers(t *testing.T) {
	ca := testca.New(t)
	ctx := context.Background()
	// B "exists" as a TCP listener that hangs up on every connection: we
	// count A's attempts.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	bAddr := l.Addr().String()
	var attempts atomic.Int32
	var stamps sync.Mutex
	var times []time.Time
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			attempts.Add(1)
			stamps.Lock()
			times = append(times, time.Now())
			stamps.Unlock()
			c.Close()
		}
	}()
	a := fedtest.Start(t, ca, fedtest.Options{Queue: fastRetry(600 * time.Millisecond), Setup: func(p *fedtest.Peer) {
		p.Server.HandleAuthed("GET /_matrix/federation/v1/test/ping", func(w http.ResponseWriter, r *http.Request, origin string) error {
			w.Header().Set("Content-Type", "application/json")
			io.WriteString(w, `{}`)
			return nil
		})
	}})
	if err := a.Queue.Deliver(ctx, []string{bAddr}, edu(1)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "down mark", 10*time.Second, func() bool { st, _ := a.Queue.Status(bAddr); return st.Down })
	n := attempts.Load()
	if n < 3 {
		t.Fatalf("only %d attempts before giving up", n)
	}
	stamps.Lock()
	gaps := []time.Duration{}
	for i := 1; i < len(times); i++ {
		gaps = append(gaps, times[i].Sub(times[i-1]))
	}
	stamps.Unlock()
	if len(gaps) >= 2 && gaps[len(gaps)-1] < gaps[0] {
		t.Fatalf("retries did not back off: gaps %v", gaps)
	}
	// Down: no more retries, even when more is queued for it.
	if err := a.Queue.Deliver(ctx, []string{bAddr}, edu(2)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	if got := attempts.Load(); got != n {
		t.Fatalf("%d more attempts after the destination was marked down", got-n)
	}
	// The down mark is in the log.
	entries, _ := a.Log.Read(1, 1000)
	marked := false
	for _, e := range entries {
		if e.Kind == englog.KindFederationDestinationSet {
			marked = true
		}
	}
	if !marked {
		t.Fatal("no down mark in the log")
	}
	// B comes back for real on the same address and contacts A.
	l.Close()
	rc := newReceiver()
	b := fedtest.Start(t, ca, fedtest.Options{Addr: bAddr, Wrap: rc.wrap})
	if err := b.Client.DoJSON(ctx, transport.Request{Destination: a.Name, Method: "GET", Path: "/_matrix/federation/v1/test/ping"}, nil); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "recovery", 10*time.Second, func() bool { st, _ := a.Queue.Status(bAddr); return st.Pending == 0 && !st.Down })
	if _, edus, _ := rc.snapshot(); len(edus) != 2 || edus[0] != "1" || edus[1] != "2" {
		t.Fatalf("after recovery B got %v", edus)
	}
}

// The transaction ID names the items: a retry of the same items carries
// the same ID.
func TestRetriedTransactionKeepsItsID(t *testing.T) {
	ca := testca.New(t)
	ctx := context.Background()
	var ids []string
	var mu sync.Mutex
	fail := atomic.Bool{}
	fail.Store(true)
	b := fedtest.Start(t, ca, fedtest.Options{Wrap: func(p *fedtest.Peer, next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if !strings.HasPrefix(r.URL.Path, "/_matrix/federation/v1/send/") {
				next.ServeHTTP(w, r)
				return
			}
			mu.Lock()
			ids = append(ids, r.URL.Path)
			mu.Unlock()
			if fail.Load() {
				w.WriteHeader(502)
				return
			}
			io.WriteString(w, `{"pdus":{}}`)
		})
	}})
	reg := prometheus.NewRegistry()
	qc := fastRetry(time.Hour)
	qc.Metrics = reg
	a := fedtest.Start(t, ca, fedtest.Options{Queue: qc})
	if err := a.Queue.Deliver(ctx, []string{b.Name}, edu(1), edu(2)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "two attempts", 10*time.Second, func() bool { mu.Lock(); defer mu.Unlock(); return len(ids) >= 2 })
	fail.Store(false)
	waitFor(t, "delivery", 10*time.Second, func() bool { st, _ := a.Queue.Status(b.Name); return st.Pending == 0 })
	mfs, _ := reg.Gather()
	counts := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				counts[l.GetValue()] = m.GetCounter().GetValue()
			}
		}
	}
	if counts["failed"] < 2 || counts["ok"] != 1 {
		t.Fatalf("transactions_total: %v", counts)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, id := range ids {
		if id != ids[0] {
			t.Fatalf("transaction IDs differ across retries: %v", ids)
		}
	}
}

// Only the leader sends: a node that is not the leader leaves the queue
// alone, and sends what is pending as soon as it becomes the leader.
func TestOnlyTheLeaderSends(t *testing.T) {
	ca := testca.New(t)
	ctx := context.Background()
	rc := newReceiver()
	b := fedtest.Start(t, ca, fedtest.Options{Wrap: rc.wrap})
	var leader atomic.Bool
	qc := fastRetry(time.Hour)
	qc.Leader = leader.Load
	a := fedtest.Start(t, ca, fedtest.Options{Queue: qc})
	if err := a.Queue.Deliver(ctx, []string{b.Name}, edu(1)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1500 * time.Millisecond)
	if rc.count.Load() != 0 {
		t.Fatal("a node that is not the leader sent a transaction")
	}
	leader.Store(true)
	waitFor(t, "delivery by the new leader", 10*time.Second, func() bool { st, _ := a.Queue.Status(b.Name); return st.Pending == 0 })
	if _, edus, _ := rc.snapshot(); len(edus) != 1 {
		t.Fatalf("B got %v", edus)
	}
}
