package apibench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/crypto/bcrypt"

	"github.com/engram-hs/engram/api"
	"github.com/engram-hs/engram/bench/mxclient"
	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/projections"
	"github.com/engram-hs/engram/roomwrite"
)

const serverName = "bench.local"

// server is the real client API in this process: the log in Pebble (a
// one-voter Raft cluster), the projection engine and the API's
// projections, served on 127.0.0.1.
type server struct {
	URL  string
	node *englog.Node
	eng  *projections.Engine
	api  *api.Server
	hs   *httptest.Server
}

func startServer(dir string) (*server, error) {
	logger := zerolog.Nop()
	node, err := englog.Open(englog.Config{Dir: dir, Logger: logger})
	if err != nil {
		return nil, err
	}
	eng := projections.NewEngine(node, node.DB(), logger, nil)
	rw, err := roomwrite.New(roomwrite.Config{ServerName: serverName, Logger: logger}, node, eng)
	if err != nil {
		node.Close()
		return nil, err
	}
	srv, err := api.New(api.Config{
		ServerName:                            serverName,
		EnableRegistration:                    true,
		EnableRegistrationWithoutVerification: true,
		BcryptCost:                            bcrypt.MinCost,
	}, api.Deps{Log: node, Engine: eng, Rooms: rw, Logger: logger})
	if err != nil {
		node.Close()
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := eng.Start(ctx); err != nil {
		node.Close()
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	hs := httptest.NewUnstartedServer(srv.Handler())
	hs.Listener = ln
	hs.Start()
	return &server{URL: hs.URL, node: node, eng: eng, api: srv, hs: hs}, nil
}

func (s *server) close() {
	s.api.Close()
	s.hs.Close()
	_ = s.eng.Close()
	_ = s.node.Close()
}

func startServerB(b *testing.B) *server {
	b.Helper()
	s, err := startServer(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(s.close)
	return s
}

var httpClient = mxclient.NewHTTPClient()

// registerClients registers n users prefix0..prefix<n-1>, 8 at a time.
func registerClients(ctx context.Context, base, prefix string, n int) ([]*mxclient.Client, error) {
	clients := make([]*mxclient.Client, n)
	errs := make(chan error, n)
	sem := make(chan struct{}, 8)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c := mxclient.New(base, httpClient)
			if err := c.Register(ctx, fmt.Sprintf("%s%d", prefix, i), "bench-password"); err != nil {
				errs <- fmt.Errorf("register %s%d: %w", prefix, i, err)
				return
			}
			clients[i] = c
		}()
	}
	wg.Wait()
	close(errs)
	return clients, <-errs
}

// parallel runs f(i) for i in [0, n), at most width at a time, and
// returns the first error.
func parallel(n, width int, f func(i int) error) error {
	sem := make(chan struct{}, width)
	var first atomic.Value
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := f(i); err != nil {
				first.CompareAndSwap(nil, err)
			}
		}()
	}
	wg.Wait()
	if err, ok := first.Load().(error); ok {
		return err
	}
	return nil
}

// emit prints one JSON line: the benchmark, its workload and its figures,
// in the order given (key, value, key, value, ...), then the machine.
func emit(kv ...any) {
	var buf bytes.Buffer
	buf.WriteByte('{')
	kv = append(kv, "go", runtime.Version(), "cores", runtime.NumCPU())
	for i := 0; i+1 < len(kv); i += 2 {
		if i > 0 {
			buf.WriteByte(',')
		}
		k, _ := json.Marshal(kv[i])
		v, err := json.Marshal(kv[i+1])
		if err != nil {
			v = []byte(strconv.Quote(err.Error()))
		}
		buf.Write(k)
		buf.WriteByte(':')
		buf.Write(v)
	}
	buf.WriteString("}\n")
	os.Stdout.Write(buf.Bytes())
}

// percentileMS is the nearest-rank p-th percentile (0..100) in
// milliseconds, rounded to 0.01 ms. It sorts ds.
func percentileMS(ds []time.Duration, p float64) float64 {
	if len(ds) == 0 {
		return 0
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	rank := min(max(int(p/100*float64(len(ds))+0.999999), 1), len(ds))
	return round2(float64(ds[rank-1]) / float64(time.Millisecond))
}

// cpuTime is the CPU time (user + system) this process has used: server
// and clients together. Per operation it is steadier than throughput on
// a shared machine, where other processes take cores away.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func round2(f float64) float64 { return float64(int64(f*100+0.5)) / 100 }

// measureFor is how long a throughput run lasts: ENGRAM_BENCH_SECONDS, or
// def.
func measureFor(def time.Duration) time.Duration {
	if s, err := strconv.ParseFloat(os.Getenv("ENGRAM_BENCH_SECONDS"), 64); err == nil && s > 0 {
		return time.Duration(s * float64(time.Second))
	}
	return def
}

// joinRooms has client i create room i for i < rooms (public, so the
// others can join) and join room i mod rooms otherwise; it returns the
// room of each client.
func joinRooms(ctx context.Context, clients []*mxclient.Client, rooms int) ([]string, error) {
	ids := make([]string, rooms)
	err := parallel(rooms, 8, func(i int) error {
		id, err := clients[i].CreateRoom(ctx, map[string]any{"preset": "public_chat", "name": fmt.Sprintf("bench room %d", i)})
		ids[i] = id
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("createRoom: %w", err)
	}
	of := make([]string, len(clients))
	err = parallel(len(clients), 8, func(i int) error {
		of[i] = ids[i%rooms]
		if i < rooms {
			return nil
		}
		return clients[i].Join(ctx, of[i])
	})
	if err != nil {
		return nil, fmt.Errorf("join: %w", err)
	}
	return of, nil
}

// BenchmarkSend: 100 clients each send messages as fast as their previous
// send returns (closed loop), into one shared room and into 100 rooms
// (one each). A send is counted when its PUT answered 200: the event is
// committed to the log (fsynced) and applied by the rooms projection.
func BenchmarkSend(b *testing.B) {
	for _, rooms := range []int{1, 100} {
		b.Run(fmt.Sprintf("clients=100/rooms=%d", rooms), func(b *testing.B) { benchSend(b, 100, rooms) })
	}
}

func benchSend(b *testing.B, clients, rooms int) {
	ctx := context.Background()
	srv := startServerB(b)
	cs, err := registerClients(ctx, srv.URL, "sender", clients)
	if err != nil {
		b.Fatal(err)
	}
	roomOf, err := joinRooms(ctx, cs, rooms)
	if err != nil {
		b.Fatal(err)
	}
	body := map[string]any{"msgtype": "m.text", "body": "a message of about sixty-four bytes, like a short chat line"}
	// Warm up: every client's first send (connections, caches).
	if err := parallel(clients, clients, func(i int) error {
		_, err := cs[i].Send(ctx, roomOf[i], "m.room.message", "warm", body)
		return err
	}); err != nil {
		b.Fatal(err)
	}

	duration := measureFor(10 * time.Second)
	lats := make([][]time.Duration, clients)
	var errCount atomic.Int64
	var firstErr atomic.Value
	b.ResetTimer()
	cpu0 := cpuTime()
	start := time.Now()
	deadline := start.Add(duration)
	var wg sync.WaitGroup
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; time.Now().Before(deadline); n++ {
				t0 := time.Now()
				if _, err := cs[i].Send(ctx, roomOf[i], "m.room.message", "m"+strconv.Itoa(n), body); err != nil {
					errCount.Add(1)
					firstErr.CompareAndSwap(nil, err)
					continue
				}
				lats[i] = append(lats[i], time.Since(t0))
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	cpu := cpuTime() - cpu0
	b.StopTimer()
	var all []time.Duration
	for _, l := range lats {
		all = append(all, l...)
	}
	if err, ok := firstErr.Load().(error); ok {
		b.Logf("%d sends failed; the first: %v", errCount.Load(), err)
	}
	perSec := float64(len(all)) / elapsed.Seconds()
	p50, p99 := percentileMS(all, 50), percentileMS(all, 99)
	b.ReportMetric(perSec, "sends/s")
	b.ReportMetric(p99, "p99_ms")
	emit("bench", "send", "clients", clients, "rooms", rooms, "seconds", round2(elapsed.Seconds()),
		"sends", len(all), "errors", errCount.Load(), "sends_per_s", round2(perSec), "p50_ms", p50, "p99_ms", p99,
		"cpu_ms_per_send", round2(float64(cpu)/float64(time.Millisecond)/float64(max(len(all), 1))),
		"target_sends_per_s", 5000)
}

// BenchmarkSyncWakeup: senders send into 10 rooms at a paced 500 sends/s
// (open loop: send n starts at start + n/500 s); another user, joined to
// all 10 rooms, long-polls /sync. For each message it records when the
// /sync answer carrying it arrived. wake_ms is that time minus the moment
// the sender's PUT returned (the event was durable and applied; negative
// when /sync answered first, counted as 0), delivery_ms the time minus
// the moment the PUT started.
//
// 500 sends/s is the target load; 100 sends/s shows the wake-up path on
// a server that is not saturated.
func BenchmarkSyncWakeup(b *testing.B) {
	for _, rate := range []float64{500, 100} {
		b.Run(fmt.Sprintf("rate=%g", rate), func(b *testing.B) { benchSyncWakeup(b, rate) })
	}
}

func benchSyncWakeup(b *testing.B, rate float64) {
	const (
		rooms   = 10
		senders = 50
	)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	srv := startServerB(b)
	cs, err := registerClients(ctx, srv.URL, "wsender", senders)
	if err != nil {
		b.Fatal(err)
	}
	roomOf, err := joinRooms(ctx, cs, rooms)
	if err != nil {
		b.Fatal(err)
	}
	rcv := mxclient.New(srv.URL, httpClient)
	if err := rcv.Register(ctx, "receiver", "bench-password"); err != nil {
		b.Fatal(err)
	}
	for _, r := range roomOf[:rooms] {
		if err := rcv.Join(ctx, r); err != nil {
			b.Fatal(err)
		}
	}
	first, err := rcv.Sync(ctx, "", 0, "")
	if err != nil {
		b.Fatal(err)
	}

	duration := measureFor(10 * time.Second)
	total := int(rate * duration.Seconds())
	putStart := make([]time.Time, total)
	putEnd := make([]time.Time, total)
	arrived := make([]time.Time, total)
	var sendErrs atomic.Int64

	// The receiver: every message body is "wake <n>".
	recvDone := make(chan error, 1)
	var seen atomic.Int64
	go func() {
		since := first.NextBatch
		for seen.Load() < int64(total) {
			// A timeline limit above any batch: with the default (10) a
			// busy room's sync is "limited" and skips events by design.
			resp, err := rcv.Sync(ctx, since, 30*time.Second, `{"room":{"timeline":{"limit":10000}}}`)
			if err != nil {
				recvDone <- err
				return
			}
			now := time.Now()
			since = resp.NextBatch
			for _, jr := range resp.Rooms.Join {
				for _, ev := range jr.Timeline.Events {
					var c struct {
						Body string `json:"body"`
					}
					var n int
					if json.Unmarshal(ev.Content, &c) == nil {
						if _, err := fmt.Sscanf(c.Body, "wake %d", &n); err == nil && n >= 0 && n < total && arrived[n].IsZero() {
							arrived[n] = now
							seen.Add(1)
						}
					}
				}
			}
		}
		recvDone <- nil
	}()

	b.ResetTimer()
	slots := make(chan int, total)
	start := time.Now()
	var wg sync.WaitGroup
	for w := range senders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := range slots {
				putStart[n] = time.Now()
				if _, err := cs[w].Send(ctx, roomOf[w], "m.room.message", "w"+strconv.Itoa(n), map[string]any{"msgtype": "m.text", "body": "wake " + strconv.Itoa(n)}); err != nil {
					sendErrs.Add(1)
					continue
				}
				putEnd[n] = time.Now()
			}
		}()
	}
	for n := range total {
		time.Sleep(time.Until(start.Add(time.Duration(float64(n) / rate * float64(time.Second)))))
		slots <- n
	}
	close(slots)
	wg.Wait()
	sent := time.Since(start)
	select {
	case err := <-recvDone:
		if err != nil {
			b.Fatalf("receiver /sync: %v", err)
		}
	case <-time.After(10 * time.Second):
		b.Logf("the receiver saw %d of %d messages 10 s after the last send", seen.Load(), total)
		cancel()
	}
	b.StopTimer()
	var wake, delivery []time.Duration
	for n := range total {
		if arrived[n].IsZero() || putEnd[n].IsZero() {
			continue
		}
		wake = append(wake, max(arrived[n].Sub(putEnd[n]), 0))
		delivery = append(delivery, arrived[n].Sub(putStart[n]))
	}
	b.ReportMetric(percentileMS(wake, 99), "wake_p99_ms")
	emit("bench", "sync_wakeup", "rate", rate, "rooms", rooms, "senders", senders, "receivers", 1,
		"sends", total-int(sendErrs.Load()), "errors", sendErrs.Load(), "achieved_sends_per_s", round2(float64(total)/sent.Seconds()),
		"received", len(wake), "wake_p50_ms", percentileMS(wake, 50), "wake_p99_ms", percentileMS(wake, 99),
		"delivery_p50_ms", percentileMS(delivery, 50), "delivery_p99_ms", percentileMS(delivery, 99), "target_wake_p99_ms", 10)
}

// syncFixture is a user in 500 rooms, each shared with one of 10 other
// users and holding a few messages.
type syncFixture struct {
	srv   *server
	user  *mxclient.Client
	rooms int
}

func initialSyncFixture(b *testing.B) syncFixture {
	b.Helper()
	const rooms, others, msgs = 500, 10, 4
	srv := startServerB(b)
	ctx := context.Background()
	cs, err := registerClients(ctx, srv.URL, "member", others+1)
	if err != nil {
		b.Fatal(err)
	}
	user := cs[0]
	err = parallel(rooms, 8, func(i int) error {
		other := cs[1+i%others]
		id, err := user.CreateRoom(ctx, map[string]any{"preset": "private_chat", "name": fmt.Sprintf("room %d", i), "topic": "a topic", "invite": []string{other.UserID}})
		if err != nil {
			return fmt.Errorf("createRoom: %w", err)
		}
		if err := other.Join(ctx, id); err != nil {
			return fmt.Errorf("join: %w", err)
		}
		for m := range msgs {
			sender := user
			if m%2 == 1 {
				sender = other
			}
			if _, err := sender.Send(ctx, id, "m.room.message", fmt.Sprintf("r%dm%d", i, m), map[string]any{"msgtype": "m.text", "body": fmt.Sprintf("message %d in room %d", m, i)}); err != nil {
				return fmt.Errorf("send: %w", err)
			}
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	return syncFixture{srv: srv, user: user, rooms: rooms}
}

// BenchmarkInitialSync500Rooms: a user joined to 500 rooms (each with one
// other member, create/power levels/join rules/history visibility/name/
// topic state and 4 messages) makes an initial /sync with no filter.
func BenchmarkInitialSync500Rooms(b *testing.B) {
	fix := initialSyncFixture(b)
	get := func() (time.Duration, int) {
		req, _ := http.NewRequest("GET", fix.srv.URL+"/_matrix/client/v3/sync", nil)
		req.Header.Set("Authorization", "Bearer "+fix.user.Token)
		t0 := time.Now()
		resp, err := httpClient.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		n, err := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		took := time.Since(t0)
		if err != nil || resp.StatusCode != http.StatusOK {
			b.Fatalf("/sync: %d %v", resp.StatusCode, err)
		}
		return took, int(n)
	}
	// The first /sync records the user's presence; time the ones after.
	_, size := get()
	var lats []time.Duration
	cpu0 := cpuTime()
	for b.Loop() { // b.Loop runs this function once: the setup is not repeated
		took, n := get()
		lats = append(lats, took)
		size = n
	}
	cpu := cpuTime() - cpu0
	b.StopTimer()
	b.ReportMetric(float64(size), "bytes")
	emit("bench", "initial_sync", "rooms", fix.rooms, "members_per_room", 2, "messages_per_room", 4, "filter", "none",
		"syncs", len(lats), "p50_ms", percentileMS(lats, 50), "max_ms", percentileMS(lats, 100),
		"cpu_ms_per_sync", round2(float64(cpu)/float64(time.Millisecond)/float64(max(len(lats), 1))), "bytes", size)
}
