package e2e

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net"
	"net/url"
	"slices"
	"testing"
	"time"

	"github.com/engram-hs/engram/internal/testca"
	"github.com/engram-hs/engram/internal/testserver"
	"github.com/engram-hs/engram/stateres/signing"
)

// Keys across servers: a user of B queries and claims the keys of a user
// of A through B's client API (B asks A over federation user/keys/query
// and user/keys/claim); each one-time key is handed out once, and an
// unreachable, a hanging and a stopped server are reported in failures
// within the timeout.
func TestKeysAcrossTwoServers(t *testing.T) {
	ca := testca.New(t)
	a, b := start(t, ca), start(t, ca)
	alice := register(t, a, "alice")
	bob := register(t, b, "bob")
	var who struct {
		UserID   string `json:"user_id"`
		DeviceID string `json:"device_id"`
	}
	call(t, a, "GET", "/_matrix/client/v3/account/whoami", alice, nil, &who)
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	sign := func(obj map[string]any) map[string]any {
		raw, _ := json.Marshal(obj)
		signed, err := signing.SignJSON(who.UserID, "ed25519:"+who.DeviceID, priv, raw)
		if err != nil {
			t.Fatal(err)
		}
		var out map[string]any
		_ = json.Unmarshal(signed, &out)
		return out
	}
	otks := map[string]any{}
	for i := range 3 {
		otks[fmt.Sprintf("signed_curve25519:k%d", i)] = sign(map[string]any{"key": fmt.Sprintf("otk%d", i)})
	}
	edKey := signing.EncodeBase64(pub)
	upload := map[string]any{
		"device_keys": sign(map[string]any{"user_id": who.UserID, "device_id": who.DeviceID,
			"algorithms": []string{"m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"},
			"keys":       map[string]any{"ed25519:" + who.DeviceID: edKey, "curve25519:" + who.DeviceID: "curve"}}),
		"one_time_keys": otks,
	}
	if st := call(t, a, "POST", "/_matrix/client/v3/keys/upload", alice, upload, nil); st != 200 {
		t.Fatalf("upload: %d", st)
	}

	var q struct {
		DeviceKeys map[string]map[string]struct {
			Keys map[string]string `json:"keys"`
		} `json:"device_keys"`
		Failures map[string]any `json:"failures"`
	}
	unreachable := "127.0.0.1:1"
	body := map[string]any{"timeout": 3000, "device_keys": map[string]any{who.UserID: []string{}, "@x:" + unreachable: []string{}}}
	if st := call(t, b, "POST", "/_matrix/client/v3/keys/query", bob, body, &q); st != 200 {
		t.Fatalf("query: %d", st)
	}
	if q.DeviceKeys[who.UserID][who.DeviceID].Keys["ed25519:"+who.DeviceID] != edKey {
		t.Fatalf("remote query: %+v\n%s", q, b.Logs())
	}
	if q.Failures[unreachable] == nil || q.Failures[a.name] != nil {
		t.Fatalf("failures: %v", q.Failures)
	}

	claim := map[string]any{"one_time_keys": map[string]any{who.UserID: map[string]any{who.DeviceID: "signed_curve25519"}}}
	got := map[string]bool{}
	for range 2 {
		var c struct {
			OneTimeKeys map[string]map[string]map[string]any `json:"one_time_keys"`
		}
		if st := call(t, b, "POST", "/_matrix/client/v3/keys/claim", bob, claim, &c); st != 200 {
			t.Fatalf("claim: %d", st)
		}
		for id := range c.OneTimeKeys[who.UserID][who.DeviceID] {
			got[id] = true
		}
	}
	if len(got) != 2 {
		t.Fatalf("two remote claims got %v", got)
	}
	var counts struct {
		OneTimeKeyCounts map[string]int `json:"one_time_key_counts"`
	}
	call(t, a, "POST", "/_matrix/client/v3/keys/upload", alice, map[string]any{}, &counts)
	if counts.OneTimeKeyCounts["signed_curve25519"] != 1 {
		t.Fatalf("alice's keys left after two remote claims: %v", counts.OneTimeKeyCounts)
	}

	// A server that accepts connections and never answers: the client's
	// timeout bounds the wait (well under the 10 s default), and the
	// server is a failure.
	hang, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hang.Close() })
	go func() {
		var held []net.Conn
		defer func() {
			for _, c := range held {
				c.Close()
			}
		}()
		for {
			c, err := hang.Accept()
			if err != nil {
				return
			}
			held = append(held, c)
		}
	}()
	hung := hang.Addr().String()
	q.Failures = nil
	began := time.Now()
	body = map[string]any{"timeout": 1000, "device_keys": map[string]any{who.UserID: []string{}, "@x:" + hung: []string{}}}
	if st := call(t, b, "POST", "/_matrix/client/v3/keys/query", bob, body, &q); st != 200 {
		t.Fatalf("query with a hanging server: %d", st)
	}
	if took := time.Since(began); took > 8*time.Second {
		t.Fatalf("a query with timeout 1000 ms took %s", took)
	}
	if q.Failures[hung] == nil || q.Failures[a.name] != nil || q.DeviceKeys[who.UserID] == nil {
		t.Fatalf("with a hanging server, failures %v and alice's devices %v", q.Failures, q.DeviceKeys[who.UserID])
	}

	// A stopped: querying and claiming alice's keys report A as failed.
	a.Stop()
	q.Failures, q.DeviceKeys = nil, nil
	body = map[string]any{"timeout": 2000, "device_keys": map[string]any{who.UserID: []string{}}}
	if st := call(t, b, "POST", "/_matrix/client/v3/keys/query", bob, body, &q); st != 200 {
		t.Fatalf("query with A down: %d", st)
	}
	if q.Failures[a.name] == nil || q.DeviceKeys[who.UserID] != nil {
		t.Fatalf("query with A down: %+v", q)
	}
	var c struct {
		OneTimeKeys map[string]any `json:"one_time_keys"`
		Failures    map[string]any `json:"failures"`
	}
	if st := call(t, b, "POST", "/_matrix/client/v3/keys/claim", bob, map[string]any{"timeout": 2000, "one_time_keys": claim["one_time_keys"]}, &c); st != 200 {
		t.Fatalf("claim with A down: %d", st)
	}
	if c.Failures[a.name] == nil || len(c.OneTimeKeys) != 0 {
		t.Fatalf("claim with A down: %+v", c)
	}
}

// Device lists and to-device messages across servers: alice (A) and bob
// (B) share a room; alice's new device keys reach bob's /sync as a device
// list change (A sends m.device_list_update to B) and bob's query sees
// them; deleting the device is news again; a to-device message from bob
// reaches alice's device (m.direct_to_device).
func TestDeviceListsAndToDeviceAcrossServers(t *testing.T) {
	ca := testca.New(t)
	a, b := start(t, ca), start(t, ca)
	alice := register(t, a, "alice")
	bob := register(t, b, "bob")
	aliceID := "@alice:" + a.name
	var room struct {
		RoomID string `json:"room_id"`
	}
	if st := call(t, a, "POST", "/_matrix/client/v3/createRoom", alice, map[string]any{"room_alias_name": "crypt", "preset": "public_chat", "room_version": "11"}, &room); st != 200 {
		t.Fatalf("createRoom: %d", st)
	}
	if st := call(t, b, "POST", "/_matrix/client/v3/join/"+url.PathEscape("#crypt:"+a.name), bob, map[string]any{}, nil); st != 200 {
		t.Fatalf("bob joins: %d\n%s", st, b.Logs())
	}
	eventually(t, "A to see bob joined", func() bool { return joined(t, a, alice, room.RoomID, "@bob:"+b.name) })
	var s0 struct {
		NextBatch string `json:"next_batch"`
	}
	call(t, b, "GET", "/_matrix/client/v3/sync?set_presence=offline", bob, nil, &s0)

	// Alice logs in a second device and uploads its keys.
	var login struct {
		AccessToken string `json:"access_token"`
		DeviceID    string `json:"device_id"`
	}
	if st := call(t, a, "POST", "/_matrix/client/v3/login", "", map[string]any{"type": "m.login.password",
		"identifier": map[string]any{"type": "m.id.user", "user": "alice"}, "password": "pw-alice"}, &login); st != 200 {
		t.Fatalf("login: %d", st)
	}
	uploadDeviceKeys(t, a, login.AccessToken, aliceID, login.DeviceID)
	since := s0.NextBatch
	changedFor := func(user string) bool {
		var s struct {
			NextBatch   string `json:"next_batch"`
			DeviceLists struct {
				Changed []string `json:"changed"`
			} `json:"device_lists"`
		}
		call(t, b, "GET", "/_matrix/client/v3/sync?set_presence=offline&timeout=1000&since="+url.QueryEscape(since), bob, nil, &s)
		since = s.NextBatch
		return slices.Contains(s.DeviceLists.Changed, user)
	}
	eventually(t, "bob's sync to show alice's new device", func() bool { return changedFor(aliceID) })
	var q struct {
		DeviceKeys map[string]map[string]any `json:"device_keys"`
	}
	call(t, b, "POST", "/_matrix/client/v3/keys/query", bob, map[string]any{"device_keys": map[string]any{aliceID: []string{}}}, &q)
	if q.DeviceKeys[aliceID][login.DeviceID] == nil {
		t.Fatalf("bob's query does not show alice's new device: %v", q)
	}

	// Renaming the device is a change (its name is part of its keys as
	// others see them).
	if st := call(t, a, "PUT", "/_matrix/client/v3/devices/"+url.PathEscape(login.DeviceID), login.AccessToken, map[string]any{"display_name": "Alice's laptop"}, nil); st != 200 {
		t.Fatalf("rename: %d", st)
	}
	eventually(t, "bob's sync to show alice's device rename", func() bool { return changedFor(aliceID) })

	// Deleting the device (with UIA) is a change again.
	if st := call(t, a, "POST", "/_matrix/client/v3/logout", login.AccessToken, map[string]any{}, nil); st != 200 {
		t.Fatalf("logout: %d", st)
	}
	eventually(t, "bob's sync to show alice's device removal", func() bool { return changedFor(aliceID) })

	// To-device from bob to every device of alice.
	var aliceSync struct {
		NextBatch string `json:"next_batch"`
	}
	call(t, a, "GET", "/_matrix/client/v3/sync?set_presence=offline", alice, nil, &aliceSync)
	msg := map[string]any{"messages": map[string]any{aliceID: map[string]any{"*": map[string]any{"hello": "from B"}}}}
	if st := call(t, b, "PUT", "/_matrix/client/v3/sendToDevice/org.example.ping/t1", bob, msg, nil); st != 200 {
		t.Fatalf("sendToDevice: %d", st)
	}
	asince := aliceSync.NextBatch
	eventually(t, "alice to receive bob's to-device message", func() bool {
		var s struct {
			NextBatch string `json:"next_batch"`
			ToDevice  struct {
				Events []struct {
					Sender  string         `json:"sender"`
					Type    string         `json:"type"`
					Content map[string]any `json:"content"`
				} `json:"events"`
			} `json:"to_device"`
		}
		call(t, a, "GET", "/_matrix/client/v3/sync?set_presence=offline&timeout=1000&since="+url.QueryEscape(asince), alice, nil, &s)
		asince = s.NextBatch
		for _, e := range s.ToDevice.Events {
			if e.Type == "org.example.ping" && e.Sender == "@bob:"+b.name && e.Content["hello"] == "from B" {
				return true
			}
		}
		return false
	})
}

// crossKeys is a user's cross-signing key pairs for a test.
type crossKeys struct {
	user                  string
	master, self, usk     ed25519.PrivateKey
	masterPub, uskPub     string
	masterObj, uploadBody map[string]any
}

func newCrossKeys(t *testing.T, user string) crossKeys {
	t.Helper()
	ck := crossKeys{user: user}
	gen := func() (ed25519.PrivateKey, string) {
		pub, priv, _ := ed25519.GenerateKey(rand.Reader)
		return priv, signing.EncodeBase64(pub)
	}
	var selfPub string
	ck.master, ck.masterPub = gen()
	ck.self, selfPub = gen()
	ck.usk, ck.uskPub = gen()
	key := func(usage, pub string) map[string]any {
		return map[string]any{"user_id": user, "usage": []string{usage}, "keys": map[string]string{"ed25519:" + pub: pub}}
	}
	ck.masterObj = key("master", ck.masterPub)
	ck.uploadBody = map[string]any{
		"master_key":       ck.masterObj,
		"self_signing_key": signObj(t, user, "ed25519:"+ck.masterPub, ck.master, key("self_signing", selfPub)),
		"user_signing_key": signObj(t, user, "ed25519:"+ck.masterPub, ck.master, key("user_signing", ck.uskPub)),
	}
	return ck
}

// uploadDeviceKeys uploads device keys for userID's deviceID, signed
// with a fresh ed25519 key of the device.
func uploadDeviceKeys(t testing.TB, s server, token, userID, deviceID string) {
	t.Helper()
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	keys := signObj(t, userID, "ed25519:"+deviceID, priv, map[string]any{"user_id": userID, "device_id": deviceID,
		"algorithms": []string{"m.olm.v1.curve25519-aes-sha2"},
		"keys":       map[string]any{"ed25519:" + deviceID: signing.EncodeBase64(pub), "curve25519:" + deviceID: "c"}})
	if st := call(t, s, "POST", "/_matrix/client/v3/keys/upload", token, map[string]any{"device_keys": keys}, nil); st != 200 {
		t.Fatalf("upload: %d", st)
	}
}

// signObj signs a JSON object as user's key keyID.
func signObj(t testing.TB, user, keyID string, priv ed25519.PrivateKey, obj map[string]any) map[string]any {
	t.Helper()
	raw, _ := json.Marshal(obj)
	signed, err := signing.SignJSON(user, keyID, priv, raw)
	if err != nil {
		t.Fatal(err)
	}
	var out map[string]any
	_ = json.Unmarshal(signed, &out)
	return out
}

// Verifying a user of another server: alice (A) signs bob's (B) master
// key with her user-signing key. A checks the signature against the key
// B holds, records it, and shows it on bob's master key in alice's
// queries only; a signature that does not verify, or of a key bob does
// not have, is a failure of that key.
func TestSigningRemoteMasterKey(t *testing.T) {
	ca := testca.New(t)
	a, b := start(t, ca), start(t, ca)
	alice, carol := register(t, a, "alice"), register(t, a, "carol")
	bob := register(t, b, "bob")
	aliceID, bobID := "@alice:"+a.name, "@bob:"+b.name
	ak, bk := newCrossKeys(t, aliceID), newCrossKeys(t, bobID)
	if st := call(t, a, "POST", "/_matrix/client/v3/keys/device_signing/upload", alice, ak.uploadBody, nil); st != 200 {
		t.Fatalf("alice uploads cross-signing keys: %d", st)
	}
	if st := call(t, b, "POST", "/_matrix/client/v3/keys/device_signing/upload", bob, bk.uploadBody, nil); st != 200 {
		t.Fatalf("bob uploads cross-signing keys: %d", st)
	}
	uskID := "ed25519:" + ak.uskPub
	signed := signObj(t, aliceID, uskID, ak.usk, bk.masterObj)
	forged := signObj(t, aliceID, uskID, bk.master, bk.masterObj) // not alice's key
	unknown := signObj(t, aliceID, uskID, ak.usk, map[string]any{"user_id": bobID, "usage": []string{"master"}, "keys": map[string]string{"ed25519:nope": "nope"}})
	var up struct {
		Failures map[string]map[string]struct {
			Errcode string `json:"errcode"`
		} `json:"failures"`
	}
	if st := call(t, a, "POST", "/_matrix/client/v3/keys/signatures/upload", alice, map[string]any{bobID: map[string]any{bk.masterPub: forged, "nope": unknown}}, &up); st != 200 {
		t.Fatalf("upload bad signatures: %d", st)
	}
	if up.Failures[bobID][bk.masterPub].Errcode != "M_INVALID_SIGNATURE" || up.Failures[bobID]["nope"].Errcode != "M_NOT_FOUND" {
		t.Fatalf("failures of a forged signature and an unknown key: %+v", up.Failures)
	}
	up.Failures = nil
	if st := call(t, a, "POST", "/_matrix/client/v3/keys/signatures/upload", alice, map[string]any{bobID: map[string]any{bk.masterPub: signed}}, &up); st != 200 || len(up.Failures) != 0 {
		t.Fatalf("alice signs bob's master key: %d %+v\n%s", st, up.Failures, a.Logs())
	}
	query := func(token string) map[string]map[string]string {
		var q struct {
			MasterKeys map[string]struct {
				Signatures map[string]map[string]string `json:"signatures"`
			} `json:"master_keys"`
		}
		if st := call(t, a, "POST", "/_matrix/client/v3/keys/query", token, map[string]any{"device_keys": map[string]any{bobID: []string{}}}, &q); st != 200 {
			t.Fatalf("query bob: %d", st)
		}
		return q.MasterKeys[bobID].Signatures
	}
	want := signed["signatures"].(map[string]any)[aliceID].(map[string]any)[uskID]
	if got := query(alice); got[aliceID][uskID] != want {
		t.Fatalf("alice's query of bob's master key: signatures %v, want alice's %v", got, want)
	}
	if got := query(carol); got[aliceID] != nil {
		t.Fatalf("carol sees alice's signature of bob's master key: %v", got)
	}
}

// Device names cross to other servers only where
// allow_device_name_lookup_over_federation is true (off by default, as
// in Synapse): B's user sees the name of a device of A (which allows
// it), A's user does not see that of a device of B.
func TestDeviceNamesOverFederation(t *testing.T) {
	ca := testca.New(t)
	a := startWith(t, ca, fmt.Sprintf("127.0.0.1:%d", testserver.FreePort(t)), "", "allow_device_name_lookup_over_federation: true\n")
	b := start(t, ca)
	device := func(s server, user string) (token, userID, deviceID string) {
		register(t, s, user)
		var login struct {
			AccessToken string `json:"access_token"`
			UserID      string `json:"user_id"`
			DeviceID    string `json:"device_id"`
		}
		if st := call(t, s, "POST", "/_matrix/client/v3/login", "", map[string]any{"type": "m.login.password", "initial_device_display_name": user + "'s phone",
			"identifier": map[string]any{"type": "m.id.user", "user": user}, "password": "pw-" + user}, &login); st != 200 {
			t.Fatalf("login: %d", st)
		}
		uploadDeviceKeys(t, s, login.AccessToken, login.UserID, login.DeviceID)
		return login.AccessToken, login.UserID, login.DeviceID
	}
	alice, aliceID, aliceDev := device(a, "alice")
	bob, bobID, bobDev := device(b, "bob")
	name := func(s server, token, user, dev string) (string, bool) {
		var q struct {
			DeviceKeys map[string]map[string]struct {
				Unsigned map[string]any `json:"unsigned"`
			} `json:"device_keys"`
		}
		if st := call(t, s, "POST", "/_matrix/client/v3/keys/query", token, map[string]any{"device_keys": map[string]any{user: []string{}}}, &q); st != 200 {
			t.Fatalf("query: %d", st)
		}
		d, ok := q.DeviceKeys[user][dev]
		if !ok {
			t.Fatalf("query of %s shows no device %s: %+v", user, dev, q)
		}
		n, _ := d.Unsigned["device_display_name"].(string)
		return n, n != ""
	}
	if n, _ := name(b, bob, aliceID, aliceDev); n != "alice's phone" {
		t.Fatalf("bob sees alice's device named %q; A allows names over federation", n)
	}
	if n, shown := name(a, alice, bobID, bobDev); shown {
		t.Fatalf("alice sees bob's device named %q; B does not allow names over federation", n)
	}
	if n, _ := name(b, bob, bobID, bobDev); n != "bob's phone" {
		t.Fatalf("bob sees his own device named %q", n)
	}
}

// TestJoinAnnouncesDevicesToTheRoomsServers: when alice (A) joins a room
// on B, with which she shared no room before, A sends B her device list
// (spec, "Device Management": a server newly sharing a room with a user
// gets their devices), so B keeps a copy: once A is down, bob's
// /keys/query on B still finds alice's device, with no failure for A.
// (Without the update B holds no copy and asks A each time.)
func TestJoinAnnouncesDevicesToTheRoomsServers(t *testing.T) {
	ca := testca.New(t)
	a, b := start(t, ca), start(t, ca)
	alice := register(t, a, "alice")
	bob := register(t, b, "bob")
	aliceID := "@alice:" + a.name
	var who struct {
		DeviceID string `json:"device_id"`
	}
	call(t, a, "GET", "/_matrix/client/v3/account/whoami", alice, nil, &who)
	uploadDeviceKeys(t, a, alice, aliceID, who.DeviceID)
	var room struct {
		RoomID string `json:"room_id"`
	}
	if st := call(t, b, "POST", "/_matrix/client/v3/createRoom", bob, map[string]any{"room_alias_name": "lobby", "preset": "public_chat", "room_version": "11"}, &room); st != 200 {
		t.Fatalf("createRoom: %d", st)
	}
	if st := call(t, a, "POST", "/_matrix/client/v3/join/"+url.PathEscape("#lobby:"+b.name), alice, map[string]any{}, nil); st != 200 {
		t.Fatalf("alice joins: %d\n%s", st, a.Logs())
	}
	eventually(t, "B to see alice joined", func() bool { return joined(t, b, bob, room.RoomID, aliceID) })

	// While A is up, B answers either from its copy or by asking A; with
	// A down only the copy answers.
	var q struct {
		DeviceKeys map[string]map[string]any `json:"device_keys"`
		Failures   map[string]any            `json:"failures"`
	}
	eventually(t, "bob's query to show alice's device", func() bool {
		call(t, b, "POST", "/_matrix/client/v3/keys/query", bob, map[string]any{"device_keys": map[string]any{aliceID: []string{}}}, &q)
		return q.DeviceKeys[aliceID][who.DeviceID] != nil
	})
	a.Stop()
	eventually(t, "B to answer alice's devices from its copy with A down", func() bool {
		q.DeviceKeys, q.Failures = nil, nil
		call(t, b, "POST", "/_matrix/client/v3/keys/query", bob, map[string]any{"device_keys": map[string]any{aliceID: []string{}}, "timeout": 2000}, &q)
		return q.DeviceKeys[aliceID][who.DeviceID] != nil && len(q.Failures) == 0
	})
}
