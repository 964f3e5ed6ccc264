package api_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/engram-hs/engram/bench/report"
	"github.com/engram-hs/engram/stateres/signing"
)

// benchDevice is a device's signing key in a benchmark.
type benchDevice struct {
	user, device string
	priv         ed25519.PrivateKey
	pub          string
}

func (s *benchServer) whoami(b *testing.B, token string) (string, string) {
	var r struct {
		UserID   string `json:"user_id"`
		DeviceID string `json:"device_id"`
	}
	s.call(b, "GET", "/_matrix/client/v3/account/whoami", token, nil, &r)
	return r.UserID, r.DeviceID
}

func newBenchDevice(b *testing.B, s *benchServer, token string) *benchDevice {
	user, dev := s.whoami(b, token)
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	return &benchDevice{user: user, device: dev, priv: priv, pub: signing.EncodeBase64(pub)}
}

func (d *benchDevice) sign(b *testing.B, obj map[string]any) map[string]any {
	raw, _ := json.Marshal(obj)
	signed, err := signing.SignJSON(d.user, "ed25519:"+d.device, d.priv, raw)
	if err != nil {
		b.Fatal(err)
	}
	var out map[string]any
	_ = json.Unmarshal(signed, &out)
	return out
}

func (d *benchDevice) keys(b *testing.B) map[string]any {
	return d.sign(b, map[string]any{"user_id": d.user, "device_id": d.device,
		"algorithms": []string{"m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"},
		"keys":       map[string]any{"ed25519:" + d.device: d.pub, "curve25519:" + d.device: "c-" + d.device}})
}

// upload uploads the device keys and n signed one-time keys, in
// requests of 100.
func (d *benchDevice) upload(b *testing.B, s *benchServer, token string, n int) {
	s.call(b, "POST", "/_matrix/client/v3/keys/upload", token, map[string]any{"device_keys": d.keys(b)}, nil)
	for i := 0; i < n; i += 100 {
		otks := map[string]any{}
		for j := i; j < min(i+100, n); j++ {
			otks[fmt.Sprintf("signed_curve25519:k%d", j)] = d.sign(b, map[string]any{"key": fmt.Sprintf("otk%d", j)})
		}
		s.call(b, "POST", "/_matrix/client/v3/keys/upload", token, map[string]any{"one_time_keys": otks}, nil)
	}
}

// BenchmarkKeysClaim: 8 clients claim one-time keys of one device
// concurrently (each claim is a log entry the fold answers); the device
// holds b.N+8 keys, so every claim gets a one-time key. The figures are
// claims per second, the latency of one claim, and the process's CPU time
// per claim (client and server; steadier than wall time on a shared
// machine).
func BenchmarkKeysClaim(b *testing.B) {
	srv := startBenchServer(b)
	owner := srv.register(b, "owner")
	claimer := srv.register(b, "claimer")
	d := newBenchDevice(b, srv, owner)
	d.upload(b, srv, owner, b.N+8)
	body := map[string]any{"one_time_keys": map[string]any{d.user: map[string]any{d.device: "signed_curve25519"}}}
	var mu sync.Mutex
	lats := make([]time.Duration, 0, b.N)
	seen := map[string]bool{}
	work := make(chan struct{}, b.N)
	for range b.N {
		work <- struct{}{}
	}
	close(work)
	load0 := report.LoadAverage()
	b.ResetTimer()
	start, cpu0 := time.Now(), cpuMS()
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range work {
				var r struct {
					OneTimeKeys map[string]map[string]map[string]json.RawMessage `json:"one_time_keys"`
				}
				t0 := time.Now()
				srv.call(b, "POST", "/_matrix/client/v3/keys/claim", claimer, body, &r)
				lat := time.Since(t0)
				mu.Lock()
				lats = append(lats, lat)
				for id := range r.OneTimeKeys[d.user][d.device] {
					if seen[id] {
						b.Errorf("key %s handed out twice", id)
					}
					seen[id] = true
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	cpu := cpuMS() - cpu0
	emitJSON(map[string]any{"bench": "keys_claim", "clients": 8, "claims": len(lats), "claims_per_s": float64(len(lats)) / elapsed.Seconds(),
		"p50_ms": pct(lats, 50), "p99_ms": pct(lats, 99), "cpu_ms_per_claim": cpu / float64(len(lats)), "loadavg_start": load0})
}

// BenchmarkKeysQuery: one /keys/query for 50 users with 2 devices each
// (100 device keys in the answer), from 4 clients at once. The figures
// are queries per second, the latency of one, and the process's CPU time
// per query.
func BenchmarkKeysQuery(b *testing.B) {
	srv := startBenchServer(b)
	users := map[string][]string{}
	for i := range 50 {
		name := fmt.Sprintf("u%d", i)
		tok := srv.register(b, name)
		newBenchDevice(b, srv, tok).upload(b, srv, tok, 0)
		var login struct {
			AccessToken string `json:"access_token"`
		}
		srv.call(b, "POST", "/_matrix/client/v3/login", "", map[string]any{"type": "m.login.password", "identifier": map[string]any{"type": "m.id.user", "user": name}, "password": "pw-" + name}, &login)
		d2 := newBenchDevice(b, srv, login.AccessToken)
		d2.upload(b, srv, login.AccessToken, 0)
		users[d2.user] = []string{}
	}
	asker := srv.register(b, "asker")
	body := map[string]any{"device_keys": users}
	var mu sync.Mutex
	lats := make([]time.Duration, 0, b.N)
	work := make(chan struct{}, b.N)
	for range b.N {
		work <- struct{}{}
	}
	close(work)
	load0 := report.LoadAverage()
	b.ResetTimer()
	start, cpu0 := time.Now(), cpuMS()
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range work {
				var r struct {
					DeviceKeys map[string]map[string]json.RawMessage `json:"device_keys"`
				}
				t0 := time.Now()
				srv.call(b, "POST", "/_matrix/client/v3/keys/query", asker, body, &r)
				lat := time.Since(t0)
				n := 0
				for _, devs := range r.DeviceKeys {
					n += len(devs)
				}
				if n != 100 {
					b.Errorf("query answered %d devices, want 100", n)
				}
				mu.Lock()
				lats = append(lats, lat)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	cpu := cpuMS() - cpu0
	emitJSON(map[string]any{"bench": "keys_query", "clients": 4, "users_per_query": 50, "devices_per_query": 100, "queries": len(lats),
		"queries_per_s": float64(len(lats)) / elapsed.Seconds(), "p50_ms": pct(lats, 50), "p99_ms": pct(lats, 99),
		"cpu_ms_per_query": cpu / float64(len(lats)), "loadavg_start": load0})
}

// BenchmarkDeviceListFanout500Rooms: alice is in 500 rooms and logs in a
// new device and uploads its keys; every other member of those rooms
// long-polls /sync. The figure is the time from the upload until every
// member's /sync lists alice in device_lists.changed (the slowest of
// them), per iteration, and the process's CPU time over it. Two shapes:
// 50 members in 10 of her rooms each, and 500 members in one room each
// (one long-poll per room to wake).
func BenchmarkDeviceListFanout500Rooms(b *testing.B) {
	for _, members := range []int{50, 500} {
		b.Run(fmt.Sprintf("members=%d", members), func(b *testing.B) { benchDeviceListFanout(b, 500, members) })
	}
}

func benchDeviceListFanout(b *testing.B, roomsN, members int) {
	srv := startBenchServer(b)
	alice := srv.register(b, "alice")
	rooms := make([]string, roomsN)
	for i := range rooms {
		rooms[i] = srv.createRoom(b, alice)
	}
	tokens := make([]string, members)
	for i := range tokens {
		tokens[i] = srv.register(b, fmt.Sprintf("m%d", i))
		for j := i; j < roomsN; j += members {
			srv.call(b, "POST", "/_matrix/client/v3/join/"+url.PathEscape(rooms[j]), tokens[i], map[string]any{}, nil)
		}
	}
	aliceID, _ := srv.whoami(b, alice)
	// One connection per long-poll: the default transport keeps two idle
	// connections per host, and the members' syncs would queue on dials.
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: members + 8}}
	defer client.CloseIdleConnections()
	var all []time.Duration
	var cpu float64
	load0 := report.LoadAverage()
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		sinces := make([]string, members)
		for k, tok := range tokens {
			sinces[k] = srv.sync(b, tok, "", 0).NextBatch
		}
		var login struct {
			AccessToken string `json:"access_token"`
		}
		srv.call(b, "POST", "/_matrix/client/v3/login", "", map[string]any{"type": "m.login.password", "identifier": map[string]any{"type": "m.id.user", "user": "alice"}, "password": "pw-alice"}, &login)
		d := newBenchDevice(b, srv, login.AccessToken)
		keys := d.keys(b)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		var wg sync.WaitGroup
		seenAt := make([]time.Time, members)
		var waiting sync.WaitGroup
		waiting.Add(members)
		for k, tok := range tokens {
			wg.Add(1)
			go func() {
				defer wg.Done()
				since := sinces[k]
				first := true
				for ctx.Err() == nil {
					req, _ := http.NewRequestWithContext(ctx, "GET", srv.url+"/_matrix/client/v3/sync?set_presence=offline&timeout=60000&since="+url.QueryEscape(since), nil)
					req.Header.Set("Authorization", "Bearer "+tok)
					if first {
						waiting.Done()
						first = false
					}
					resp, err := client.Do(req)
					if err != nil {
						return
					}
					var r struct {
						NextBatch   string `json:"next_batch"`
						DeviceLists struct {
							Changed []string `json:"changed"`
						} `json:"device_lists"`
					}
					_ = json.NewDecoder(resp.Body).Decode(&r)
					resp.Body.Close()
					if slices.Contains(r.DeviceLists.Changed, aliceID) {
						seenAt[k] = time.Now()
						return
					}
					since = r.NextBatch
				}
			}()
		}
		waiting.Wait()
		time.Sleep(time.Duration(members) * time.Millisecond) // the long-polls reach the server and wait
		b.StartTimer()
		t0, c0 := time.Now(), cpuMS()
		srv.call(b, "POST", "/_matrix/client/v3/keys/upload", login.AccessToken, map[string]any{"device_keys": keys}, nil)
		wg.Wait()
		cpu += cpuMS() - c0
		b.StopTimer()
		cancel()
		slowest := time.Duration(0)
		for k, at := range seenAt {
			if at.IsZero() {
				b.Fatalf("member %d never saw alice's new device", k)
			}
			slowest = max(slowest, at.Sub(t0))
		}
		all = append(all, slowest)
	}
	emitJSON(map[string]any{"bench": "device_list_fanout", "rooms": roomsN, "members": members, "rooms_per_member": roomsN / members, "iterations": len(all),
		"all_seen_p50_ms": pct(all, 50), "all_seen_max_ms": pct(all, 100), "cpu_ms_per_fanout": cpu / float64(len(all)), "loadavg_start": load0})
}
