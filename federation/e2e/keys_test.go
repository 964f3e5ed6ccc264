package e2e

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"testing"

	"github.com/engram-hs/engram/internal/testca"
	"github.com/engram-hs/engram/stateres/signing"
)

// Keys across servers: a user of B queries and claims the keys of a user
// of A through B's client API (B asks A over federation user/keys/query
// and user/keys/claim); each one-time key is handed out once, and an
// unreachable server is reported in failures within the timeout.
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
}
