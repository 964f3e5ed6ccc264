package queue_test

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/engram-hs/engram/federation/fedtest"
	"github.com/engram-hs/engram/internal/testca"
	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/projections/fedqueue"
)

// BenchmarkFanOut100 measures delivering one PDU to 100 destinations:
// from the Deliver call (the outbound entry appended) until every
// destination acknowledged its transaction and the acknowledgements are
// folded. Destinations are 100 TLS listeners on loopback that accept every
// transaction; connections stay open between iterations, as they do
// between messages on a live server. Prints one JSON line.
func BenchmarkFanOut100(b *testing.B) {
	const n = 100
	ca := testca.New(b)
	var received atomic.Int64
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		if strings.HasPrefix(r.URL.Path, "/_matrix/federation/v1/send/") {
			received.Add(1)
		}
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"pdus":{}}`)
	})
	srv := &http.Server{Handler: h, TLSConfig: &tls.Config{Certificates: []tls.Certificate{ca.Issue(b, "127.0.0.1")}}, ErrorLog: nil}
	var dests []string
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		dests = append(dests, l.Addr().String())
		go srv.ServeTLS(l, "", "")
	}
	defer srv.Close()
	a := fedtest.Start(b, ca, fedtest.Options{Queue: fastRetry(time.Hour)})
	ctx := context.Background()
	view := func() fedqueue.View { return fedqueue.NewView(a.Queue.Handle().Reader()) }
	drained := func() bool {
		all, _ := view().Destinations()
		for _, d := range dests {
			if all[d].Pending != 0 {
				return false
			}
		}
		return true
	}
	send := func(i int) {
		offs, err := a.Log.Append(ctx, facts.MustEncode(englog.KindPDU, facts.PDU{RoomVersion: "10", Event: json.RawMessage(fmt.Sprintf(`{"type":"m.room.message","content":{"body":"m%d"}}`, i))}))
		if err != nil {
			b.Fatal(err)
		}
		if err := a.Queue.Deliver(ctx, dests, facts.OutboundItem{Offset: offs[0]}); err != nil {
			b.Fatal(err)
		}
		for !drained() {
			time.Sleep(time.Millisecond)
		}
	}
	send(-1) // warm up: TLS handshakes, key-less connections
	start := received.Load()
	b.ResetTimer()
	t0 := time.Now()
	for i := 0; i < b.N; i++ {
		send(i)
	}
	el := time.Since(t0)
	b.StopTimer()
	if got := received.Load() - start; got < int64(b.N*n) {
		b.Fatalf("%d transactions received, want %d", got, b.N*n)
	}
	load, _ := os.ReadFile("/proc/loadavg")
	fmt.Printf(`{"bench":"federation_fanout","workload":"one PDU to %d destinations (TLS on loopback, warm connections), Deliver to all acknowledged","iterations":%d,"ms_per_fanout":%.2f,"transactions_per_s":%.0f,"loadavg":%q}`+"\n",
		n, b.N, float64(el.Microseconds())/1000/float64(b.N), float64(b.N*n)/el.Seconds(), strings.Fields(string(load))[0])
}
