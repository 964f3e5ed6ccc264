package load_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/engram-hs/engram/bench/internal/benchserver"
	"github.com/engram-hs/engram/bench/load"
	"github.com/engram-hs/engram/bench/report"
)

func TestLoadAgainstEngram(t *testing.T) {
	srv := benchserver.Start(t, "", "load.localhost")
	rec := report.NewRecorder("load", nil, nil)
	res, err := load.Run(context.Background(), load.Options{
		URL: srv.URL, Users: 4, Rooms: 2, Duration: 3 * time.Second, Rate: 100, PID: os.Getpid(), DataDir: srv.Dir,
	}, rec)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Errors) != 0 {
		t.Fatalf("errors: %v", res.Errors)
	}
	// How many is the benchmark's business (speed is never asserted in a
	// test: the machine may be loaded); that it sent and measured is this
	// test's.
	if res.Sends < 1 || res.SendsPerSec <= 0 {
		t.Fatalf("%d sends (%.1f/s) in 3 s at 100/s", res.Sends, res.SendsPerSec)
	}
	// Every acknowledged send is delivered. A send the run's end cut off
	// (at most one per user) may still have reached the server and its
	// receiver without being counted as sent.
	if res.Delivered < res.Sends || res.Delivered > res.Sends+4 {
		t.Fatalf("%d messages reached their receiver for %d sends by 4 users", res.Delivered, res.Sends)
	}
	if res.SendP50 <= 0 || res.SendP99 < res.SendP50 || res.DeliveryP50 <= 0 || res.DeliveryP99 < res.DeliveryP50 {
		t.Fatalf("implausible latencies: send p50 %v p99 %v, delivery p50 %v p99 %v", res.SendP50, res.SendP99, res.DeliveryP50, res.DeliveryP99)
	}
	if res.ServerRSSKB <= 0 {
		t.Fatalf("server RSS not sampled")
	}
	if res.InitialSyncSeconds <= 0 {
		t.Fatalf("initial syncs took %v s", res.InitialSyncSeconds)
	}
	// The server is this process: it answered every send on some CPU.
	if res.ServerCPUSeconds <= 0 {
		t.Fatalf("server CPU %v s over the sends", res.ServerCPUSeconds)
	}
	// The data directory holds at least the messages' bodies.
	if res.DiskBytes < res.Sends*64 {
		t.Fatalf("disk footprint %d bytes for %d sends, ballast %d", res.DiskBytes, res.Sends, res.BallastBytes)
	}
	if v, ok := rec.Get("disk_bytes_per_send"); !ok || v != float64(res.DiskBytes)/float64(res.Sends) {
		t.Fatalf("recorder has disk_bytes_per_send=%v,%v", v, ok)
	}
	if v, ok := rec.Get("sends_per_s"); !ok || v != res.SendsPerSec {
		t.Fatalf("recorder has sends_per_s=%v,%v", v, ok)
	}
}

// A server that refuses some sends: the run counts each refusal under its
// errcode, exactly as often as it happened.
func TestLoadReportsErrcodes(t *testing.T) {
	srv := benchserver.Start(t, "", "load.localhost")
	target, err := url.Parse(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	var seen, refused atomic.Int64
	proxy := httputil.NewSingleHostReverseProxy(target)
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPut && strings.Contains(r.URL.Path, "/send/") && seen.Add(1)%3 == 0 {
			refused.Add(1)
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusForbidden)
			_, _ = w.Write([]byte(`{"errcode":"M_FORBIDDEN","error":"refused by the test"}`))
			return
		}
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(front.Close)
	res, err := load.Run(context.Background(), load.Options{URL: front.URL, Users: 2, Rooms: 1, Duration: 2 * time.Second, Rate: 50}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if refused.Load() == 0 {
		t.Fatal("no send was refused: the test proved nothing")
	}
	if got := res.Errors["M_FORBIDDEN"]; got != refused.Load() {
		t.Fatalf("reported %d M_FORBIDDEN, the server refused %d (errors %v)", got, refused.Load(), res.Errors)
	}
	if len(res.Errors) != 1 {
		t.Fatalf("errors %v, want only M_FORBIDDEN", res.Errors)
	}
}

func TestLoadReportsTransportErrors(t *testing.T) {
	// Nothing listens on this port: setup fails with a transport error,
	// which is reported rather than hidden.
	_, err := load.Run(context.Background(), load.Options{URL: "http://127.0.0.1:1", Users: 1, Rooms: 1, Duration: time.Second}, nil)
	if err == nil {
		t.Fatal("load against a closed port succeeded")
	}
}

// With syncers: every syncer long-polls unfiltered and sees the messages
// of its rooms arrive; the run reports their deliveries.
func TestLoadWithSyncers(t *testing.T) {
	srv := benchserver.Start(t, "", "load.localhost")
	rec := report.NewRecorder("load", nil, nil)
	res, err := load.Run(context.Background(), load.Options{
		URL: srv.URL, Users: 2, Rooms: 2, Duration: 2 * time.Second, Rate: 20, Syncers: 3, SyncerRooms: 2,
	}, rec)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Errors) != 0 {
		t.Fatalf("errors: %v", res.Errors)
	}
	// Each syncer is in both rooms: it sees every message, bar those the
	// run's end cut off.
	if res.Sends < 1 || res.SyncerDeliveries < 1 || res.SyncerDeliveries > 3*(res.Sends+2) || res.SyncerSyncs < 1 {
		t.Fatalf("%d sends, %d syncer deliveries in %d syncs", res.Sends, res.SyncerDeliveries, res.SyncerSyncs)
	}
	if res.SyncerDeliveryP50 <= 0 || res.SyncerDeliveryP99 < res.SyncerDeliveryP50 {
		t.Fatalf("implausible syncer latencies: p50 %v p99 %v", res.SyncerDeliveryP50, res.SyncerDeliveryP99)
	}
	if v, ok := rec.Get("syncer_delivery_latency_p99_ms"); !ok || v != report.MS(res.SyncerDeliveryP99) {
		t.Fatalf("recorder has syncer_delivery_latency_p99_ms=%v,%v", v, ok)
	}
}
