package api_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sort"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/engram-hs/engram/api"
	"github.com/engram-hs/engram/bench/report"
	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/projections"
	"github.com/engram-hs/engram/roomwrite"
	"github.com/rs/zerolog"
	"golang.org/x/crypto/bcrypt"
)

// benchServer is the real API on 127.0.0.1 over a real log in b's
// temporary directory.
type benchServer struct {
	url string
	api *api.Server
}

func startBenchServer(b *testing.B) *benchServer {
	b.Helper()
	logger := zerolog.Nop()
	node, err := englog.Open(englog.Config{Dir: b.TempDir(), Logger: logger})
	if err != nil {
		b.Fatal(err)
	}
	eng := projections.NewEngine(node, node.DB(), logger, nil)
	rw, err := roomwrite.New(roomwrite.Config{ServerName: serverName, Logger: logger}, node, eng)
	if err != nil {
		b.Fatal(err)
	}
	srv, err := api.New(api.Config{ServerName: serverName, EnableRegistration: true, EnableRegistrationWithoutVerification: true, BcryptCost: bcrypt.MinCost}, api.Deps{Log: node, Engine: eng, Rooms: rw, Logger: logger})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := eng.Start(ctx); err != nil {
		b.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	hs := httptest.NewUnstartedServer(srv.Handler())
	hs.Listener = ln
	hs.Start()
	b.Cleanup(func() {
		srv.Close()
		hs.Close()
		_ = eng.Close()
		_ = node.Close()
	})
	return &benchServer{url: hs.URL, api: srv}
}

// call sends a request and decodes the answer into out (may be nil).
func (s *benchServer) call(b *testing.B, method, path, token string, body, out any) {
	var rd io.Reader
	if body != nil {
		raw, _ := json.Marshal(body)
		rd = bytes.NewReader(raw)
	}
	req, _ := http.NewRequest(method, s.url+path, rd)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		b.Error(err)
		return
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		b.Errorf("%s %s: %d %s", method, path, resp.StatusCode, raw)
		return
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			b.Error(err)
		}
	}
}

func (s *benchServer) register(b *testing.B, name string) string {
	var r struct {
		AccessToken string `json:"access_token"`
	}
	s.call(b, "POST", "/_matrix/client/v3/register", "", map[string]any{"username": name, "password": "pw-" + name, "auth": map[string]string{"type": "m.login.dummy"}}, &r)
	return r.AccessToken
}

func (s *benchServer) createRoom(b *testing.B, token string) string {
	var r struct {
		RoomID string `json:"room_id"`
	}
	s.call(b, "POST", "/_matrix/client/v3/createRoom", token, map[string]any{"preset": "public_chat"}, &r)
	return r.RoomID
}

func (s *benchServer) send(b *testing.B, token, roomID string, n int) {
	s.call(b, "PUT", fmt.Sprintf("/_matrix/client/v3/rooms/%s/send/m.room.message/t%d", url.PathEscape(roomID), n), token, map[string]any{"msgtype": "m.text", "body": fmt.Sprintf("message %d", n)}, nil)
}

type syncAnswer struct {
	NextBatch string `json:"next_batch"`
	Rooms     struct {
		Join map[string]json.RawMessage `json:"join"`
	} `json:"rooms"`
}

func (s *benchServer) sync(b *testing.B, token, since string, timeout time.Duration) syncAnswer {
	var r syncAnswer
	s.call(b, "GET", fmt.Sprintf("/_matrix/client/v3/sync?since=%s&timeout=%d", url.QueryEscape(since), timeout.Milliseconds()), token, nil, &r)
	return r
}

// emitJSON prints one benchmark figure as a JSON line, with the commit,
// the Go version, the core count and the load average at the time, so a
// figure read later says what it was measured on.
func emitJSON(kv map[string]any) {
	env := report.CurrentEnv()
	kv["commit"], kv["go"], kv["cores"] = env.Commit, env.GoVersion, env.Cores
	if la := report.LoadAverage(); la != nil {
		kv["loadavg"] = la
	}
	raw, _ := json.Marshal(kv)
	fmt.Println(string(raw))
}

func pct(ds []time.Duration, p float64) float64 {
	if len(ds) == 0 {
		return 0
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	i := min(int(p/100*float64(len(ds))), len(ds)-1)
	return float64(ds[i].Microseconds()) / 1000
}

// BenchmarkIncrementalSync200Rooms: a user joined to 200 rooms syncs
// incrementally (timeout 0) after one message was sent, into a room they
// are not in ("unrelated") or into one of their 200 ("joined"). The
// figures are the /sync latency and the process's CPU time during each
// sync (client and server, and any fold of the send still running).
func BenchmarkIncrementalSync200Rooms(b *testing.B) {
	srv := startBenchServer(b)
	alice := srv.register(b, "alice")
	bob := srv.register(b, "bob")
	rooms := make([]string, 200)
	for i := range rooms {
		rooms[i] = srv.createRoom(b, alice)
	}
	other := srv.createRoom(b, bob)
	for _, tc := range []struct {
		name, token, room string
	}{{"unrelated", bob, other}, {"joined", alice, rooms[0]}} {
		b.Run(tc.name, func(b *testing.B) {
			since := srv.sync(b, alice, "", 0).NextBatch
			lats := make([]time.Duration, 0, b.N)
			var cpu float64
			b.ResetTimer()
			for i := range b.N {
				b.StopTimer()
				srv.send(b, tc.token, tc.room, i)
				b.StartTimer()
				t0, c0 := time.Now(), cpuMS()
				r := srv.sync(b, alice, since, 0)
				lats = append(lats, time.Since(t0))
				cpu += cpuMS() - c0
				since = r.NextBatch
			}
			b.StopTimer()
			emitJSON(map[string]any{"bench": "incremental_sync", "rooms": 200, "changed": tc.name, "syncs": len(lats), "p50_ms": pct(lats, 50), "p99_ms": pct(lats, 99), "cpu_ms_per_sync": cpu / float64(len(lats))})
		})
	}
}

// BenchmarkSyncWakeupsPerCommit: 20 users long-poll /sync, each in a
// room of their own; another user sends messages into a room none of
// them is in. Each commit should wake no long-poll (before the per-user
// notifier, every commit woke all 20).
func BenchmarkSyncWakeupsPerCommit(b *testing.B) {
	const pollers = 20
	srv := startBenchServer(b)
	sender := srv.register(b, "sender")
	room := srv.createRoom(b, sender)
	tokens := make([]string, pollers)
	for i := range tokens {
		tokens[i] = srv.register(b, fmt.Sprintf("poller%d", i))
		srv.createRoom(b, tokens[i])
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	for _, tok := range tokens {
		since := srv.sync(b, tok, "", 0).NextBatch
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequestWithContext(ctx, "GET", srv.url+"/_matrix/client/v3/sync?timeout=300000&since="+url.QueryEscape(since), nil)
			req.Header.Set("Authorization", "Bearer "+tok)
			if resp, err := http.DefaultClient.Do(req); err == nil {
				resp.Body.Close()
			}
		}()
	}
	time.Sleep(200 * time.Millisecond) // let the long-polls register
	before := srv.api.SyncWakeups()
	b.ResetTimer()
	for i := range b.N {
		srv.send(b, sender, room, i)
	}
	b.StopTimer()
	woken := srv.api.SyncWakeups() - before
	cancel()
	wg.Wait()
	emitJSON(map[string]any{"bench": "sync_wakeups_per_commit", "long_polls": pollers, "commits": b.N, "wakeups": woken, "wakeups_per_commit": float64(woken) / float64(b.N)})
}

// cpuMS is the process's user+system CPU time so far, in milliseconds.
func cpuMS() float64 {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e6
}

// BenchmarkInitialSync500Rooms: a user joined to 500 rooms (each created
// by them: the createRoom state and one message) makes an initial /sync
// (no token, default filter). The figures are the latency and the CPU
// time per sync of the whole process (client and server in it).
func BenchmarkInitialSync500Rooms(b *testing.B) {
	srv := startBenchServer(b)
	alice := srv.register(b, "alice")
	for i := range 500 {
		room := srv.createRoom(b, alice)
		srv.send(b, alice, room, i)
	}
	srv.sync(b, alice, "", 0) // warm
	lats := make([]time.Duration, 0, b.N)
	cpu0 := cpuMS()
	b.ResetTimer()
	for range b.N {
		t0 := time.Now()
		r := srv.sync(b, alice, "", 0)
		lats = append(lats, time.Since(t0))
		if len(r.Rooms.Join) != 500 {
			b.Fatalf("%d joined rooms in the initial sync", len(r.Rooms.Join))
		}
	}
	b.StopTimer()
	emitJSON(map[string]any{"bench": "initial_sync", "rooms": 500, "syncs": len(lats), "p50_ms": pct(lats, 50), "p99_ms": pct(lats, 99), "cpu_ms_per_sync": (cpuMS() - cpu0) / float64(len(lats))})
}

// BenchmarkManySyncersOneSend: 200 users, each joined to the same 20
// rooms, long-poll /sync (set_presence=offline, so only the sends wake
// them); another member sends one message per iteration into one of the
// rooms and the iteration ends when every syncer has received it. Every
// send wakes all 200 syncers, each of which builds one room's section with
// the one new event: the per-syncer cost of a woken build, which the
// many-syncers load (issue 14) multiplies. The figures are the wall time
// from the send to the last delivery and the process's CPU per woken
// syncer (client and server).
func BenchmarkManySyncersOneSend(b *testing.B) {
	const syncers, roomCount = 200, 20
	srv := startBenchServer(b)
	sender := srv.register(b, "sender")
	roomIDs := make([]string, roomCount)
	for i := range roomIDs {
		roomIDs[i] = srv.createRoom(b, sender)
	}
	tokens := make([]string, syncers)
	for i := range tokens {
		tokens[i] = srv.register(b, fmt.Sprintf("syncer%d", i))
		for _, room := range roomIDs {
			srv.call(b, "POST", "/_matrix/client/v3/join/"+url.PathEscape(room), tokens[i], map[string]any{}, nil)
		}
	}
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: syncers + 10}}
	ctx, cancel := context.WithCancel(context.Background())
	// got receives, per response, the event IDs it carried.
	got := make(chan []string, syncers*4)
	var wg sync.WaitGroup
	for _, tok := range tokens {
		since := srv.sync(b, tok, "", 0).NextBatch
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				req, _ := http.NewRequestWithContext(ctx, "GET", srv.url+"/_matrix/client/v3/sync?set_presence=offline&timeout=30000&since="+url.QueryEscape(since), nil)
				req.Header.Set("Authorization", "Bearer "+tok)
				resp, err := client.Do(req)
				if err != nil {
					return
				}
				var r struct {
					NextBatch string `json:"next_batch"`
					Rooms     struct {
						Join map[string]struct {
							Timeline struct {
								Events []struct {
									EventID string `json:"event_id"`
								} `json:"events"`
							} `json:"timeline"`
						} `json:"join"`
					} `json:"rooms"`
				}
				err = json.NewDecoder(resp.Body).Decode(&r)
				resp.Body.Close()
				if err != nil {
					return
				}
				since = r.NextBatch
				var ids []string
				for _, jr := range r.Rooms.Join {
					for _, e := range jr.Timeline.Events {
						ids = append(ids, e.EventID)
					}
				}
				if len(ids) > 0 {
					got <- ids
				}
			}
		}()
	}
	time.Sleep(500 * time.Millisecond) // let the long-polls register
	lats := make([]time.Duration, 0, b.N)
	cpu0 := cpuMS()
	b.ResetTimer()
	for i := range b.N {
		var sent struct {
			EventID string `json:"event_id"`
		}
		t0 := time.Now()
		srv.call(b, "PUT", fmt.Sprintf("/_matrix/client/v3/rooms/%s/send/m.room.message/m%d", url.PathEscape(roomIDs[i%roomCount]), i), sender, map[string]any{"msgtype": "m.text", "body": fmt.Sprintf("message %d", i)}, &sent)
		for delivered := 0; delivered < syncers; {
			for _, id := range <-got {
				if id == sent.EventID {
					delivered++
				}
			}
		}
		lats = append(lats, time.Since(t0))
	}
	b.StopTimer()
	cpu := cpuMS() - cpu0
	cancel()
	wg.Wait()
	emitJSON(map[string]any{"bench": "many_syncers_one_send", "syncers": syncers, "rooms": roomCount, "sends": len(lats), "p50_ms": pct(lats, 50), "p99_ms": pct(lats, 99), "cpu_ms_per_send": cpu / float64(len(lats)), "cpu_us_per_woken_syncer": 1000 * cpu / float64(len(lats)*syncers)})
}

// BenchmarkSyncBusyRooms: 100 members of the same 20 rooms, each of
// which got 15 messages since their token; every sync (the members in
// turn, timeout 0) builds 20 limited timelines of the same events, as
// the 1,000 syncers of `bench load` do between two messages of a room.
// Per build: CPU ms (the server and this client), ns and allocations.
func BenchmarkSyncBusyRooms(b *testing.B) {
	const members, roomCount, messages = 100, 20, 15
	srv := startBenchServer(b)
	owner := srv.register(b, "owner")
	roomIDs := make([]string, roomCount)
	for i := range roomIDs {
		roomIDs[i] = srv.createRoom(b, owner)
	}
	tokens := make([]string, members)
	for i := range tokens {
		tokens[i] = srv.register(b, fmt.Sprintf("member%d", i))
		for _, room := range roomIDs {
			srv.call(b, "POST", "/_matrix/client/v3/join/"+url.PathEscape(room), tokens[i], map[string]any{}, nil)
		}
	}
	since := srv.sync(b, owner, "", 0).NextBatch
	for _, room := range roomIDs {
		for n := range messages {
			srv.send(b, owner, room, n)
		}
	}
	b.Run("members", func(b *testing.B) {
		b.ReportAllocs()
		cpu0 := cpuMS()
		b.ResetTimer()
		for i := range b.N {
			srv.call(b, "GET", "/_matrix/client/v3/sync?set_presence=offline&timeout=0&since="+url.QueryEscape(since), tokens[i%members], nil, nil)
		}
		b.StopTimer()
		emitJSON(map[string]any{"bench": "sync_busy_rooms", "members": members, "rooms": roomCount, "syncs": b.N, "cpu_ms_per_sync": (cpuMS() - cpu0) / float64(b.N)})
	})
}
