package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/engram-hs/engram/bench/report"
	"github.com/engram-hs/engram/internal/testca"
	"github.com/engram-hs/engram/internal/testserver"
)

// B keeps a copy of alice's (on A) device list, built from A's
// m.device_list_update EDUs and resynced through A's user/devices when an
// update's prev_id names one B never saw:
//   - alice's first new device: B holds no copy, fetches the whole list;
//   - bob (B) leaves the room and alice adds a device: only C hears of it
//     (A's stream for alice moves on without B); bob rejoins, and B's
//     copy is no longer trusted (bob did not share a room with alice the
//     whole time), so bob's query asks A and sees the device;
//   - alice adds one more device: its EDU's prev_id is the update B missed
//     (a gap), so B fetches the whole list before recording it.
//
// Each time, with A stopped, bob's /keys/query still answers alice's
// devices, with no failure for A: from the copy, including the device
// whose EDU never reached B. `engram verify` replays B's copy.
func TestRemoteDeviceListCopyResyncsOnGap(t *testing.T) {
	ca := testca.New(t)
	a, b, c := start(t, ca), start(t, ca), start(t, ca)
	alice := register(t, a, "alice")
	bob := register(t, b, "bob")
	carol := register(t, c, "carol")
	aliceID := "@alice:" + a.name
	var room struct {
		RoomID string `json:"room_id"`
	}
	if st := call(t, a, "POST", "/_matrix/client/v3/createRoom", alice, map[string]any{"room_alias_name": "copy", "preset": "public_chat", "room_version": "11"}, &room); st != 200 {
		t.Fatalf("createRoom: %d", st)
	}
	for _, j := range []struct {
		s     server
		token string
		user  string
	}{{b, bob, "@bob:" + b.name}, {c, carol, "@carol:" + c.name}} {
		if st := call(t, j.s, "POST", "/_matrix/client/v3/join/"+url.PathEscape("#copy:"+a.name), j.token, map[string]any{}, nil); st != 200 {
			t.Fatalf("%s joins: %d\n%s", j.user, st, j.s.Logs())
		}
		eventually(t, "A to see "+j.user+" joined", func() bool { return joined(t, a, alice, room.RoomID, j.user) })
	}

	// newDevice logs alice in on a new device with signed keys.
	newDevice := func() string {
		var login struct {
			AccessToken string `json:"access_token"`
			DeviceID    string `json:"device_id"`
		}
		if st := call(t, a, "POST", "/_matrix/client/v3/login", "", map[string]any{"type": "m.login.password",
			"identifier": map[string]any{"type": "m.id.user", "user": "alice"}, "password": "pw-alice"}, &login); st != 200 {
			t.Fatalf("login: %d", st)
		}
		uploadDeviceKeys(t, a, login.AccessToken, aliceID, login.DeviceID)
		return login.DeviceID
	}
	type answer struct {
		DeviceKeys map[string]map[string]map[string]any `json:"device_keys"`
		Failures   map[string]any                       `json:"failures"`
	}
	query := func(s server, token string) answer {
		var q answer
		if st := call(t, s, "POST", "/_matrix/client/v3/keys/query", token, map[string]any{"device_keys": map[string]any{aliceID: []string{}}, "timeout": 3000}, &q); st != 200 {
			t.Fatalf("query: %d", st)
		}
		return q
	}
	shows := func(q answer, devices ...string) bool {
		for _, d := range devices {
			if q.DeviceKeys[aliceID][d] == nil {
				return false
			}
		}
		return true
	}
	// fromCopy stops A, checks bob's answer shows the devices without
	// asking A, and starts A again.
	fromCopy := func(devices ...string) {
		t.Helper()
		a.Stop()
		q := query(b, bob)
		if len(q.Failures) != 0 || !shows(q, devices...) {
			t.Fatalf("with A stopped, bob's query should answer %v from B's copy of alice's device list: %+v\n%s", devices, q, b.Logs())
		}
		a = startAt(t, ca, a.name, a.DataDir)
	}

	// heard waits until bob's /sync says alice's devices changed: B has
	// recorded the EDU (and the resync it needed, appended before it).
	var since string
	syncB := func() []string {
		var s struct {
			NextBatch   string `json:"next_batch"`
			DeviceLists struct {
				Changed []string `json:"changed"`
			} `json:"device_lists"`
		}
		path := "/_matrix/client/v3/sync?set_presence=offline&timeout=1000"
		if since != "" {
			path += "&since=" + url.QueryEscape(since)
		}
		call(t, b, "GET", path, bob, nil, &s)
		since = s.NextBatch
		return s.DeviceLists.Changed
	}
	heard := func(what string) {
		t.Helper()
		eventually(t, "bob's sync to show alice's "+what, func() bool { return slices.Contains(syncB(), aliceID) })
	}
	syncB()
	d1 := newDevice()
	heard("first new device")
	fromCopy(d1)

	// Bob leaves; alice's next device is news to C only.
	if st := call(t, b, "POST", "/_matrix/client/v3/rooms/"+url.PathEscape(room.RoomID)+"/leave", bob, map[string]any{}, nil); st != 200 {
		t.Fatalf("bob leaves: %d", st)
	}
	eventually(t, "A to see bob left", func() bool { return !joined(t, a, alice, room.RoomID, "@bob:"+b.name) })
	d2 := newDevice()
	eventually(t, "carol's query to show "+d2, func() bool { return shows(query(c, carol), d2) })
	if st := call(t, b, "POST", "/_matrix/client/v3/join/"+url.PathEscape(room.RoomID)+"?server_name="+url.QueryEscape(a.name), bob, map[string]any{}, nil); st != 200 {
		t.Fatalf("bob rejoins: %d\n%s", st, b.Logs())
	}
	eventually(t, "A to see bob rejoined", func() bool { return joined(t, a, alice, room.RoomID, "@bob:"+b.name) })
	if q := query(b, bob); !shows(q, d1, d2) {
		t.Fatalf("after rejoining, bob's query should ask A (B's copy missed %s): %+v", d2, q)
	}

	// Alice's next update names the one B missed: B resyncs.
	syncB()
	d3 := newDevice()
	heard("device after the gap")
	fromCopy(d1, d2, d3)

	b.Stop()
	out, err := exec.Command(testserver.Binary(t), "verify", "--config", b.Config).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "e2ee") {
		t.Fatalf("engram verify on B (its copy of alice's devices replayed): %v\n%s", err, out)
	}
}

// Device edits through the admin API reach other servers as the client
// API's do: renaming a device of alice (A) and then deleting it are
// m.device_list_update EDUs, so bob (B) sees alice changed in /sync and
// B's copy of her devices shows the new name, then no device (checked
// with A stopped: answered from the copy).
func TestAdminDeviceEditsReachOtherServers(t *testing.T) {
	ca := testca.New(t)
	a := startWith(t, ca, "127.0.0.1:"+strconv.Itoa(testserver.FreePort(t)), "",
		"registration_shared_secret: \"s3cret\"\nallow_device_name_lookup_over_federation: true\n")
	b := start(t, ca)
	reg := exec.Command(testserver.Binary(t), "register-user", "--config", a.Config, "--user", "root", "--admin", "--password", "pw-root")
	if out, err := reg.CombinedOutput(); err != nil {
		t.Fatalf("register-user: %v\n%s", err, out)
	}
	var rootLogin struct {
		AccessToken string `json:"access_token"`
	}
	if st := call(t, a, "POST", "/_matrix/client/v3/login", "", map[string]any{"type": "m.login.password",
		"identifier": map[string]any{"type": "m.id.user", "user": "root"}, "password": "pw-root"}, &rootLogin); st != 200 {
		t.Fatalf("root login: %d", st)
	}
	alice := register(t, a, "alice")
	bob := register(t, b, "bob")
	aliceID := "@alice:" + a.name
	var room struct {
		RoomID string `json:"room_id"`
	}
	if st := call(t, a, "POST", "/_matrix/client/v3/createRoom", alice, map[string]any{"room_alias_name": "adm", "preset": "public_chat", "room_version": "11"}, &room); st != 200 {
		t.Fatalf("createRoom: %d", st)
	}
	if st := call(t, b, "POST", "/_matrix/client/v3/join/"+url.PathEscape("#adm:"+a.name), bob, map[string]any{}, nil); st != 200 {
		t.Fatalf("bob joins: %d\n%s", st, b.Logs())
	}
	eventually(t, "A to see bob joined", func() bool { return joined(t, a, alice, room.RoomID, "@bob:"+b.name) })
	var since string
	heard := func(what string) {
		t.Helper()
		eventually(t, "bob's sync to show alice's "+what, func() bool {
			var s struct {
				NextBatch   string `json:"next_batch"`
				DeviceLists struct {
					Changed []string `json:"changed"`
				} `json:"device_lists"`
			}
			call(t, b, "GET", "/_matrix/client/v3/sync?set_presence=offline&timeout=1000&since="+url.QueryEscape(since), bob, nil, &s)
			since = s.NextBatch
			return slices.Contains(s.DeviceLists.Changed, aliceID)
		})
	}
	var s0 struct {
		NextBatch string `json:"next_batch"`
	}
	call(t, b, "GET", "/_matrix/client/v3/sync?set_presence=offline", bob, nil, &s0)
	since = s0.NextBatch

	var login struct {
		AccessToken string `json:"access_token"`
		DeviceID    string `json:"device_id"`
	}
	if st := call(t, a, "POST", "/_matrix/client/v3/login", "", map[string]any{"type": "m.login.password",
		"identifier": map[string]any{"type": "m.id.user", "user": "alice"}, "password": "pw-alice"}, &login); st != 200 {
		t.Fatalf("login: %d", st)
	}
	uploadDeviceKeys(t, a, login.AccessToken, aliceID, login.DeviceID)
	heard("new device")

	devicePath := "/_synapse/admin/v2/users/" + url.PathEscape(aliceID) + "/devices/" + url.PathEscape(login.DeviceID)
	if st := call(t, a, "PUT", devicePath, rootLogin.AccessToken, map[string]any{"display_name": "renamed by the admin"}, nil); st != 200 {
		t.Fatalf("admin rename: %d", st)
	}
	heard("device renamed by the admin")
	// answer asks B with A stopped: only B's copy can answer.
	answer := func() map[string]map[string]any {
		t.Helper()
		a.Stop()
		defer func() { a = startAt(t, ca, a.name, a.DataDir) }()
		var q struct {
			DeviceKeys map[string]map[string]map[string]any `json:"device_keys"`
			Failures   map[string]any                       `json:"failures"`
		}
		if st := call(t, b, "POST", "/_matrix/client/v3/keys/query", bob, map[string]any{"device_keys": map[string]any{aliceID: []string{}}, "timeout": 3000}, &q); st != 200 || len(q.Failures) != 0 {
			t.Fatalf("query with A stopped: %d %+v", st, q)
		}
		return q.DeviceKeys[aliceID]
	}
	d := answer()[login.DeviceID]
	if u, _ := d["unsigned"].(map[string]any); u == nil || u["device_display_name"] != "renamed by the admin" {
		t.Fatalf("B's copy of alice's device after the admin renamed it: %v", d)
	}

	if st := call(t, a, "DELETE", devicePath, rootLogin.AccessToken, nil, nil); st != 200 {
		t.Fatalf("admin delete: %d", st)
	}
	heard("device deleted by the admin")
	if devs := answer(); devs[login.DeviceID] != nil {
		t.Fatalf("B's copy still lists the device the admin deleted: %v", devs)
	}
}

// A remote user joining an encrypted room through send_join is news once:
// alice (A) sees bob (B) in device_lists.changed for the join, and B's announcement of
// bob's devices after the join (one m.device_list_update per device) does
// not put him there a second time, since A's copy of his list already
// holds those devices (A fetched it during the send_join). Alice's own new
// device afterwards shows alone. Before, the announcement arriving just
// after alice's sync named bob again.
func TestJoinIsOneDeviceListChange(t *testing.T) {
	ca := testca.New(t)
	a, b := start(t, ca), start(t, ca)
	alice := register(t, a, "alice")
	bob := register(t, b, "bob")
	aliceID, bobID := "@alice:"+a.name, "@bob:"+b.name
	var who struct {
		DeviceID string `json:"device_id"`
	}
	call(t, b, "GET", "/_matrix/client/v3/account/whoami", bob, nil, &who)
	uploadDeviceKeys(t, b, bob, bobID, who.DeviceID)
	// And a device without keys (as Complement's users have): B announces
	// it too, and A's resync on that announcement lists only devices with
	// keys; what alice can see is the same, so it is no news either.
	if st := call(t, b, "POST", "/_matrix/client/v3/login", "", map[string]any{"type": "m.login.password",
		"identifier": map[string]any{"type": "m.id.user", "user": "bob"}, "password": "pw-bob"}, nil); st != 200 {
		t.Fatalf("bob's second login: %d", st)
	}
	var room struct {
		RoomID string `json:"room_id"`
	}
	if st := call(t, a, "POST", "/_matrix/client/v3/createRoom", alice, map[string]any{"room_alias_name": "once", "preset": "public_chat", "room_version": "11",
		"initial_state": []map[string]any{{"type": "m.room.encryption", "state_key": "", "content": map[string]any{"algorithm": "m.megolm.v1.aes-sha2"}}}}, &room); st != 200 {
		t.Fatalf("createRoom: %d", st)
	}
	type syncAnswer struct {
		NextBatch   string `json:"next_batch"`
		DeviceLists struct {
			Changed []string `json:"changed"`
		} `json:"device_lists"`
		Rooms struct {
			Join map[string]struct {
				Timeline struct {
					Events []struct {
						Sender  string         `json:"sender"`
						Content map[string]any `json:"content"`
					} `json:"events"`
				} `json:"timeline"`
			} `json:"join"`
		} `json:"rooms"`
	}
	syncA := func(since string, timeout int) syncAnswer {
		var s syncAnswer
		path := "/_matrix/client/v3/sync?set_presence=offline&timeout=" + strconv.Itoa(timeout)
		if since != "" {
			path += "&since=" + url.QueryEscape(since)
		}
		if st := call(t, a, "GET", path, alice, nil, &s); st != 200 {
			t.Fatalf("sync: %d", st)
		}
		return s
	}
	before := syncA("", 0).NextBatch
	if st := call(t, b, "POST", "/_matrix/client/v3/join/"+url.PathEscape("#once:"+a.name), bob, map[string]any{}, nil); st != 200 {
		t.Fatalf("bob joins: %d\n%s", st, b.Logs())
	}
	// Right after the join: alice is told bob's devices changed (B's
	// announcement is most likely still on its way).
	first := syncA(before, 0)
	if !slices.Contains(first.DeviceLists.Changed, bobID) {
		t.Fatalf("alice's sync after bob joined should name him in device_lists.changed: %+v", first.DeviceLists)
	}
	// Two messages from bob, the second sent once alice saw the first:
	// B's transactions to A go one after the other, so by the time the
	// second arrives the announcement queued at the join was recorded.
	var changed []string
	since := first.NextBatch
	for i, body := range []string{"one", "two"} {
		if st := call(t, b, "PUT", "/_matrix/client/v3/rooms/"+url.PathEscape(room.RoomID)+"/send/m.room.message/m"+strconv.Itoa(i), bob, map[string]any{"msgtype": "m.text", "body": body}, nil); st != 200 {
			t.Fatalf("bob sends: %d", st)
		}
		eventually(t, "alice to see bob's message "+body, func() bool {
			s := syncA(since, 1000)
			since = s.NextBatch
			changed = append(changed, s.DeviceLists.Changed...)
			for _, ev := range s.Rooms.Join[room.RoomID].Timeline.Events {
				if ev.Sender == bobID && ev.Content["body"] == body {
					return true
				}
			}
			return false
		})
	}
	var login struct {
		AccessToken string `json:"access_token"`
		DeviceID    string `json:"device_id"`
	}
	if st := call(t, a, "POST", "/_matrix/client/v3/login", "", map[string]any{"type": "m.login.password",
		"identifier": map[string]any{"type": "m.id.user", "user": "alice"}, "password": "pw-alice"}, &login); st != 200 {
		t.Fatalf("login: %d", st)
	}
	uploadDeviceKeys(t, a, login.AccessToken, aliceID, login.DeviceID)
	eventually(t, "alice's sync to show her new device", func() bool {
		s := syncA(since, 1000)
		since = s.NextBatch
		changed = append(changed, s.DeviceLists.Changed...)
		return slices.Contains(s.DeviceLists.Changed, aliceID)
	})
	if slices.Contains(changed, bobID) {
		t.Fatalf("after the sync that told alice of bob's join, bob's devices did not change, yet device_lists.changed named him again: %v\n%s", changed, a.Logs())
	}
}

// BenchmarkRemoteDeviceListFanout500Rooms is BenchmarkDeviceListFanout500Rooms
// (api) across two servers: alice (A) is in 500 rooms whose other members
// are users of B, each in rooms/members of them, and long-poll B's /sync;
// she logs in a new device and uploads its keys. The figure is the time
// from the upload until every member's /sync lists her in
// device_lists.changed (the slowest of them): A queues one
// m.device_list_update for B, B records it and wakes its members. One
// untimed device first, so that B holds its copy of alice's list (the
// first update makes B fetch it whole).
func BenchmarkRemoteDeviceListFanout500Rooms(b *testing.B) {
	for _, members := range []int{50, 500} {
		b.Run(fmt.Sprintf("members=%d", members), func(b *testing.B) { benchRemoteDeviceListFanout(b, 500, members) })
	}
}

func benchRemoteDeviceListFanout(b *testing.B, roomsN, members int) {
	ca := testca.New(b)
	a, bs := start(b, ca), start(b, ca)
	alice := register(b, a, "alice")
	aliceID := "@alice:" + a.name
	rooms := make([]string, roomsN)
	for i := range rooms {
		var r struct {
			RoomID string `json:"room_id"`
		}
		if st := call(b, a, "POST", "/_matrix/client/v3/createRoom", alice, map[string]any{"preset": "public_chat", "room_version": "11"}, &r); st != 200 {
			b.Fatalf("createRoom: %d", st)
		}
		rooms[i] = r.RoomID
	}
	tokens := make([]string, members)
	for i := range tokens {
		tokens[i] = register(b, bs, fmt.Sprintf("m%d", i))
	}
	// Remote joins, four at a time (each is make_join and send_join to A).
	var wg sync.WaitGroup
	var failed atomic.Int32
	work := make(chan int, roomsN)
	for j := range roomsN {
		work <- j
	}
	close(work)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range work {
				path := "/_matrix/client/v3/join/" + url.PathEscape(rooms[j]) + "?server_name=" + url.QueryEscape(a.name)
				if st := call(b, bs, "POST", path, tokens[j%members], map[string]any{}, nil); st != 200 {
					failed.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	if n := failed.Load(); n > 0 {
		b.Fatalf("%d remote joins failed\n%s", n, bs.Logs())
	}
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: members + 8}}
	defer client.CloseIdleConnections()
	// fanout adds a device of alice and returns how long until every
	// member's /sync on B showed it.
	fanout := func() time.Duration {
		sinces := make([]string, members)
		for k, tok := range tokens {
			var s struct {
				NextBatch string `json:"next_batch"`
			}
			call(b, bs, "GET", "/_matrix/client/v3/sync?set_presence=offline&timeout=0", tok, nil, &s)
			sinces[k] = s.NextBatch
		}
		var login struct {
			AccessToken string `json:"access_token"`
			DeviceID    string `json:"device_id"`
		}
		if st := call(b, a, "POST", "/_matrix/client/v3/login", "", map[string]any{"type": "m.login.password",
			"identifier": map[string]any{"type": "m.id.user", "user": "alice"}, "password": "pw-alice"}, &login); st != 200 {
			b.Fatalf("login: %d", st)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		seenAt := make([]time.Time, members)
		var polls, waiting sync.WaitGroup
		waiting.Add(members)
		for k, tok := range tokens {
			polls.Add(1)
			go func() {
				defer polls.Done()
				since, first := sinces[k], true
				for ctx.Err() == nil {
					req, _ := http.NewRequestWithContext(ctx, "GET", bs.URL+"/_matrix/client/v3/sync?set_presence=offline&timeout=60000&since="+url.QueryEscape(since), nil)
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
		time.Sleep(time.Duration(members) * time.Millisecond) // the long-polls reach B and wait
		t0 := time.Now()
		uploadDeviceKeys(b, a, login.AccessToken, aliceID, login.DeviceID)
		polls.Wait()
		slowest := time.Duration(0)
		for k, at := range seenAt {
			if at.IsZero() {
				b.Fatalf("member %d never saw alice's new device\n%s", k, bs.Logs())
			}
			slowest = max(slowest, at.Sub(t0))
		}
		return slowest
	}
	fanout() // B fetches alice's list whole on the first update
	rec := report.NewRecorder("remote_device_list_fanout", map[string]string{"rooms": strconv.Itoa(roomsN), "members": strconv.Itoa(members),
		"rooms_per_member": strconv.Itoa(roomsN / members), "servers": "2"}, os.Stdout)
	load0 := report.LoadAverage()
	var all []time.Duration
	b.ResetTimer()
	for range b.N {
		all = append(all, fanout())
	}
	b.StopTimer()
	rec.SetParam("loadavg_start", fmt.Sprint(load0))
	rec.Add("all_seen_p50_ms", report.MS(report.Percentile(all, 50)), "ms", report.LowerIsBetter)
	rec.Add("all_seen_max_ms", report.MS(report.Percentile(all, 100)), "ms", report.LowerIsBetter)
}
