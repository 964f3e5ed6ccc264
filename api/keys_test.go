package api_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net/url"
	"reflect"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/engram-hs/engram/stateres/signing"
	"maunium.net/go/mautrix"
)

// e2eeDevice is a device's signing key, as a client holds it.
type e2eeDevice struct {
	user, device string
	priv         ed25519.PrivateKey
	pub          string
}

func newE2EEDevice(t *testing.T, c *mautrix.Client) *e2eeDevice {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return &e2eeDevice{user: c.UserID.String(), device: c.DeviceID.String(), priv: priv, pub: signing.EncodeBase64(pub)}
}

// sign signs obj as the device (user ID as the entity, ed25519:DEVICE).
func (d *e2eeDevice) sign(t *testing.T, obj map[string]any) map[string]any {
	t.Helper()
	return signWith(t, d.user, "ed25519:"+d.device, d.priv, obj)
}

func signWith(t *testing.T, entity, keyID string, priv ed25519.PrivateKey, obj map[string]any) map[string]any {
	t.Helper()
	raw, _ := json.Marshal(obj)
	signed, err := signing.SignJSON(entity, keyID, priv, raw)
	if err != nil {
		t.Fatal(err)
	}
	var out map[string]any
	if err := json.Unmarshal(signed, &out); err != nil {
		t.Fatal(err)
	}
	return out
}

func (d *e2eeDevice) deviceKeys(t *testing.T) map[string]any {
	return d.sign(t, map[string]any{
		"user_id": d.user, "device_id": d.device,
		"algorithms": []string{"m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"},
		"keys":       map[string]any{"ed25519:" + d.device: d.pub, "curve25519:" + d.device: "curve-" + d.device},
	})
}

// otks returns n signed one-time keys with IDs prefix0..prefix(n-1).
func (d *e2eeDevice) otks(t *testing.T, prefix string, n int) map[string]any {
	out := map[string]any{}
	for i := range n {
		out[fmt.Sprintf("signed_curve25519:%s%d", prefix, i)] = d.sign(t, map[string]any{"key": fmt.Sprintf("otk-%s-%s%d", d.device, prefix, i)})
	}
	return out
}

func claimBody(user, device string) map[string]any {
	return map[string]any{"one_time_keys": map[string]any{user: map[string]any{device: "signed_curve25519"}}}
}

// claimedIDs returns the key IDs a claim response handed out for a device.
func claimedIDs(body map[string]any, user, device string) []string {
	otk, _ := body["one_time_keys"].(map[string]any)
	u, _ := otk[user].(map[string]any)
	d, _ := u[device].(map[string]any)
	var ids []string
	for id := range d {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids
}

// TestKeysUploadQueryClaim: upload is idempotent, a different key under a
// taken ID is refused, the device's signature is checked, claims hand out
// the oldest upload first and each key once (also when racing), and the
// fallback key is served, not consumed, once they run out.
func TestKeysUploadQueryClaim(t *testing.T) {
	ts := startServer(t)
	alice, bob := ts.register("alice"), ts.register("bob")
	ad := newE2EEDevice(t, alice)
	path := "/_matrix/client/v3/keys/"

	// Bad input first: nothing of it may be stored.
	code, body := ts.do("POST", path+"upload", alice.AccessToken, map[string]any{"device_keys": map[string]any{"user_id": ad.user, "device_id": ad.device}})
	if code != 400 || body["errcode"] != "M_BAD_JSON" {
		t.Fatalf("device keys without keys: %d %v", code, body)
	}
	unsignedOTK := map[string]any{"signed_curve25519:U": map[string]any{"key": "k"}}
	if code, body = ts.do("POST", path+"upload", alice.AccessToken, map[string]any{"device_keys": ad.deviceKeys(t), "one_time_keys": unsignedOTK}); code != 400 || body["errcode"] != "M_BAD_JSON" {
		t.Fatalf("unsigned signed_curve25519 key: %d %v", code, body)
	}
	wrongSig := ad.deviceKeys(t)
	wrongSig["signatures"] = map[string]any{ad.user: map[string]any{"ed25519:" + ad.device: ad.sign(t, map[string]any{"other": "object"})["signatures"].(map[string]any)[ad.user].(map[string]any)["ed25519:"+ad.device]}}
	if code, body = ts.do("POST", path+"upload", alice.AccessToken, map[string]any{"device_keys": wrongSig}); code != 400 || body["errcode"] != "M_INVALID_PARAM" {
		t.Fatalf("device keys with a signature of something else: %d %v", code, body)
	}
	forged := ad.deviceKeys(t)
	forged["algorithms"] = []string{"m.olm.v1.curve25519-aes-sha2"} // changed after signing
	if code, body = ts.do("POST", path+"upload", alice.AccessToken, map[string]any{"device_keys": forged}); code != 400 || body["errcode"] != "M_INVALID_PARAM" {
		t.Fatalf("tampered device keys: %d %v", code, body)
	}
	if code, body = ts.do("POST", path+"upload", bob.AccessToken, map[string]any{"device_keys": ad.deviceKeys(t)}); code != 400 {
		t.Fatalf("bob uploading alice's device keys: %d %v", code, body)
	}
	badOTK := map[string]any{"signed_curve25519:X": map[string]any{"key": "k", "signatures": map[string]any{ad.user: map[string]any{"ed25519:" + ad.device: "AAAA"}}}}
	if code, body = ts.do("POST", path+"upload", alice.AccessToken, map[string]any{"device_keys": ad.deviceKeys(t), "one_time_keys": badOTK}); code != 400 || body["errcode"] != "M_INVALID_PARAM" {
		t.Fatalf("badly signed one-time key: %d %v", code, body)
	}
	code, body = ts.do("POST", path+"query", bob.AccessToken, map[string]any{"device_keys": map[string]any{ad.user: []string{}}})
	if code != 200 || len(body["device_keys"].(map[string]any)[ad.user].(map[string]any)) != 0 {
		t.Fatalf("refused uploads stored keys: %d %v", code, body)
	}
	if code, body = ts.do("POST", path+"query", bob.AccessToken, map[string]any{"device_keys": map[string]any{ad.user: map[string]any{"x": 1}}}); code != 400 || body["errcode"] != "M_BAD_JSON" {
		t.Fatalf("device IDs as an object: %d %v", code, body)
	}

	// Upload, twice: idempotent.
	first := ad.otks(t, "a", 3)
	for range 2 {
		code, body = ts.do("POST", path+"upload", alice.AccessToken, map[string]any{"device_keys": ad.deviceKeys(t), "one_time_keys": first})
		if code != 200 || body["one_time_key_counts"].(map[string]any)["signed_curve25519"] != 3.0 {
			t.Fatalf("upload: %d %v", code, body)
		}
	}
	clash := map[string]any{"signed_curve25519:a0": ad.sign(t, map[string]any{"key": "another"})}
	if code, body = ts.do("POST", path+"upload", alice.AccessToken, map[string]any{"one_time_keys": clash}); code != 400 || body["errcode"] != "M_INVALID_PARAM" {
		t.Fatalf("different key under a taken ID: %d %v", code, body)
	}
	// A later upload goes after the first one, whatever its IDs.
	code, _ = ts.do("POST", path+"upload", alice.AccessToken, map[string]any{
		"one_time_keys": ad.otks(t, "0", 2),
		"fallback_keys": map[string]any{"signed_curve25519:fb": ad.sign(t, map[string]any{"key": "fallback", "fallback": true})},
	})
	if code != 200 {
		t.Fatalf("second upload: %d", code)
	}
	code, body = ts.do("POST", path+"query", bob.AccessToken, map[string]any{"device_keys": map[string]any{ad.user: []string{}}})
	dev := body["device_keys"].(map[string]any)[ad.user].(map[string]any)[ad.device].(map[string]any)
	if code != 200 || dev["keys"].(map[string]any)["ed25519:"+ad.device] != ad.pub {
		t.Fatalf("query: %d %v", code, body)
	}

	// Three claims get the first upload's keys; then two racing claims
	// split the second upload's keys between them.
	got := map[string]int{}
	for range 3 {
		_, body = ts.do("POST", path+"claim", bob.AccessToken, claimBody(ad.user, ad.device))
		ids := claimedIDs(body, ad.user, ad.device)
		if len(ids) != 1 || ids[0][:len("signed_curve25519:a")] != "signed_curve25519:a" {
			t.Fatalf("claim from the first upload: %v", body)
		}
		got[ids[0]]++
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, body := ts.do("POST", path+"claim", bob.AccessToken, claimBody(ad.user, ad.device))
			mu.Lock()
			defer mu.Unlock()
			for _, id := range claimedIDs(body, ad.user, ad.device) {
				got[id]++
			}
		}()
	}
	wg.Wait()
	for _, id := range []string{"signed_curve25519:a0", "signed_curve25519:a1", "signed_curve25519:a2", "signed_curve25519:00", "signed_curve25519:01"} {
		if got[id] != 1 {
			t.Fatalf("key %s handed out %d times (all: %v)", id, got[id], got)
		}
	}
	// Two of the four racing claims found no one-time key left: they got
	// the fallback key, which stays.
	if got["signed_curve25519:fb"] != 2 {
		t.Fatalf("fallback key handed out %d times, want 2: %v", got["signed_curve25519:fb"], got)
	}
	// Re-uploading a handed-out key does not make it claimable again.
	ts.do("POST", path+"upload", alice.AccessToken, map[string]any{"one_time_keys": first})
	_, body = ts.do("POST", path+"claim", bob.AccessToken, claimBody(ad.user, ad.device))
	if ids := claimedIDs(body, ad.user, ad.device); len(ids) != 1 || ids[0] != "signed_curve25519:fb" {
		t.Fatalf("after re-uploading claimed keys: %v", body)
	}
	sync := ts.rawSync(alice, nil)
	if n := sync["device_one_time_keys_count"].(map[string]any)["signed_curve25519"]; n != nil && n != 0.0 {
		t.Fatalf("one-time key count in sync: %v", sync["device_one_time_keys_count"])
	}
	if fb := sync["device_unused_fallback_key_types"].([]any); len(fb) != 0 {
		t.Fatalf("used fallback key still listed as unused: %v", fb)
	}

	// Bounded claims.
	huge := map[string]any{}
	for i := range 10_000 {
		huge[fmt.Sprintf("DEV%05d", i)] = "signed_curve25519"
	}
	if code, body = ts.do("POST", path+"claim", bob.AccessToken, map[string]any{"one_time_keys": map[string]any{ad.user: huge}}); code != 413 || body["errcode"] != "M_TOO_LARGE" {
		t.Fatalf("10,000-key claim: %d %v", code, body)
	}
}

// TestDeviceListsInSync: a co-member's new device keys show in
// device_lists.changed and /keys/changes; a user who leaves the only
// shared room shows in left.
func TestDeviceListsInSync(t *testing.T) {
	ts := startServer(t)
	ctx := context.Background()
	alice, bob := ts.register("alice"), ts.register("bob")
	room, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	if err != nil {
		t.Fatal(err)
	}
	b0 := ts.rawSync(bob, nil)["next_batch"].(string)
	if _, err := bob.JoinRoomByID(ctx, room.RoomID); err != nil {
		t.Fatal(err)
	}
	// Joining: bob's own devices hear of the room's members and of him.
	b1body := ts.rawSync(bob, url.Values{"since": {b0}, "timeout": {"5000"}})
	if ch := b1body["device_lists"].(map[string]any)["changed"].([]any); !slices.Contains(ch, any(bob.UserID.String())) || !slices.Contains(ch, any(alice.UserID.String())) {
		t.Fatalf("bob's device_lists after he joined: %v", b1body["device_lists"])
	}
	s0 := ts.rawSync(alice, nil)["next_batch"].(string)
	bob2 := ts.login("bob")
	bd := newE2EEDevice(t, bob2)
	if code, _ := ts.do("POST", "/_matrix/client/v3/keys/upload", bob2.AccessToken, map[string]any{"device_keys": bd.deviceKeys(t)}); code != 200 {
		t.Fatal("upload failed")
	}
	s1body := ts.rawSync(alice, url.Values{"since": {s0}, "timeout": {"5000"}})
	changed := s1body["device_lists"].(map[string]any)["changed"].([]any)
	if len(changed) != 1 || changed[0] != bob.UserID.String() {
		t.Fatalf("device_lists after bob's new device: %v", s1body["device_lists"])
	}
	s1 := s1body["next_batch"].(string)
	code, body := ts.do("GET", "/_matrix/client/v3/keys/changes?from="+s0+"&to="+s1, alice.AccessToken, nil)
	if code != 200 || len(body["changed"].([]any)) != 1 || body["changed"].([]any)[0] != bob.UserID.String() {
		t.Fatalf("/keys/changes: %d %v", code, body)
	}
	if _, err := bob.LeaveRoom(ctx, room.RoomID); err != nil {
		t.Fatal(err)
	}
	s2body := ts.rawSync(alice, url.Values{"since": {s1}, "timeout": {"5000"}})
	left := s2body["device_lists"].(map[string]any)["left"].([]any)
	if len(left) != 1 || left[0] != bob.UserID.String() {
		t.Fatalf("device_lists after bob left: %v", s2body["device_lists"])
	}
	// Bob's later key changes no longer concern alice.
	s2 := s2body["next_batch"].(string)
	ts.do("POST", "/_matrix/client/v3/keys/upload", bob2.AccessToken, map[string]any{"device_keys": map[string]any{}})
	bd2 := newE2EEDevice(t, bob)
	ts.do("POST", "/_matrix/client/v3/keys/upload", bob.AccessToken, map[string]any{"device_keys": bd2.deviceKeys(t)})
	s3body := ts.rawSync(alice, url.Values{"since": {s2}})
	if ch := s3body["device_lists"].(map[string]any)["changed"].([]any); len(ch) != 0 {
		t.Fatalf("changes of a user sharing no room: %v", ch)
	}
}

// TestKeyBackup: versions (newest is current), the replacement rules,
// etag and count, and uploads to a version that is not current.
func TestKeyBackup(t *testing.T) {
	ts := startServer(t)
	alice := ts.register("alice")
	tok := alice.AccessToken
	base := "/_matrix/client/v3/room_keys/"
	create := map[string]any{"algorithm": "m.megolm_backup.v1.curve25519-aes-sha2", "auth_data": map[string]any{"public_key": "pk"}}
	if code, body := ts.do("GET", base+"version", tok, nil); code != 404 || body["errcode"] != "M_NOT_FOUND" {
		t.Fatalf("no backup yet: %d %v", code, body)
	}
	_, v1 := ts.do("POST", base+"version", tok, create)
	_, v2 := ts.do("POST", base+"version", tok, create)
	if v1["version"] != "1" || v2["version"] != "2" {
		t.Fatalf("versions %v %v", v1, v2)
	}
	key := func(verified bool, first, fwd int) map[string]any {
		return map[string]any{"first_message_index": first, "forwarded_count": fwd, "is_verified": verified, "session_data": map[string]any{"ciphertext": fmt.Sprint(verified, first, fwd)}}
	}
	code, body := ts.do("PUT", base+"keys/!r:x/s1?version=1", tok, key(false, 0, 0))
	if code != 403 || body["errcode"] != "M_WRONG_ROOM_KEYS_VERSION" || body["current_version"] != "2" {
		t.Fatalf("upload to an old version: %d %v", code, body)
	}
	put := func(k map[string]any) map[string]any {
		code, body := ts.do("PUT", base+"keys/!r:x/s1?version=2", tok, k)
		if code != 200 {
			t.Fatalf("put: %d %v", code, body)
		}
		return body
	}
	stored := func() map[string]any {
		_, body := ts.do("GET", base+"keys/!r:x/s1?version=2", tok, nil)
		return body
	}
	b := put(key(false, 5, 2))
	if b["count"] != 1.0 {
		t.Fatalf("count after one key: %v", b)
	}
	etag := b["etag"]
	put(key(false, 6, 0)) // worse first_message_index: kept the old one
	if s := stored(); s["first_message_index"] != 5.0 {
		t.Fatalf("a worse key replaced the stored one: %v", s)
	}
	put(key(false, 5, 1)) // same index, fewer forwards: replaces
	if s := stored(); s["forwarded_count"] != 1.0 {
		t.Fatalf("fewer forwards did not replace: %v", s)
	}
	put(key(true, 9, 9)) // verified beats everything
	if s := stored(); s["is_verified"] != true {
		t.Fatalf("verified did not replace: %v", s)
	}
	b = put(key(false, 0, 0)) // unverified never replaces verified
	if s := stored(); s["is_verified"] != true || b["etag"] == etag || b["count"] != 1.0 {
		t.Fatalf("unverified replaced verified, or etag/count wrong: %v %v", s, b)
	}
	_, info := ts.do("GET", base+"version", tok, nil)
	if info["version"] != "2" || info["count"] != 1.0 {
		t.Fatalf("current version info: %v", info)
	}
	if code, _ := ts.do("DELETE", base+"version/2", tok, nil); code != 200 {
		t.Fatal("delete version")
	}
	if _, info = ts.do("GET", base+"version", tok, nil); info["version"] != "1" {
		t.Fatalf("after deleting the newest version, current is %v", info)
	}
	if code, _ := ts.do("GET", base+"keys/!r:x/s1?version=2", tok, nil); code != 404 {
		t.Fatalf("keys of a deleted version: %d", code)
	}
}

// TestCrossSigning: the first upload needs no UIA; replacing keys does;
// signatures are checked one by one and failures reported per key.
func TestCrossSigning(t *testing.T) {
	ts := startServer(t)
	alice, bob := ts.register("alice"), ts.register("bob")
	ad := newE2EEDevice(t, alice)
	ts.do("POST", "/_matrix/client/v3/keys/upload", alice.AccessToken, map[string]any{"device_keys": ad.deviceKeys(t)})
	type csKey struct {
		priv ed25519.PrivateKey
		pub  string
	}
	gen := func() csKey {
		pub, priv, _ := ed25519.GenerateKey(rand.Reader)
		return csKey{priv, signing.EncodeBase64(pub)}
	}
	master, ssk, usk := gen(), gen(), gen()
	obj := func(k csKey, usage string) map[string]any {
		return map[string]any{"user_id": ad.user, "usage": []string{usage}, "keys": map[string]any{"ed25519:" + k.pub: k.pub}}
	}
	body := map[string]any{
		"master_key":       obj(master, "master"),
		"self_signing_key": signWith(t, ad.user, "ed25519:"+master.pub, master.priv, obj(ssk, "self_signing")),
		"user_signing_key": signWith(t, ad.user, "ed25519:"+master.pub, master.priv, obj(usk, "user_signing")),
	}
	if code, b := ts.do("POST", "/_matrix/client/v3/keys/device_signing/upload", alice.AccessToken, body); code != 200 {
		t.Fatalf("first cross-signing upload: %d %v", code, b)
	}
	if code, b := ts.do("POST", "/_matrix/client/v3/keys/device_signing/upload", alice.AccessToken, body); code != 200 {
		t.Fatalf("identical re-upload needs no UIA: %d %v", code, b)
	}
	master2 := gen()
	code, b := ts.do("POST", "/_matrix/client/v3/keys/device_signing/upload", alice.AccessToken, map[string]any{"master_key": obj(master2, "master")})
	if code != 401 || b["flows"] == nil {
		t.Fatalf("replacing the master key without UIA: %d %v", code, b)
	}
	badSSK := signWith(t, ad.user, "ed25519:"+master2.pub, master2.priv, obj(gen(), "self_signing"))
	if code, b = ts.do("POST", "/_matrix/client/v3/keys/device_signing/upload", alice.AccessToken, map[string]any{"self_signing_key": badSSK}); code != 400 {
		t.Fatalf("self-signing key not signed by the master key: %d %v", code, b)
	}

	// Sign alice's device with the self-signing key: accepted. A forged
	// signature and an unknown device fail, each under its own key.
	dk := ad.deviceKeys(t)
	delete(dk, "signatures")
	good := signWith(t, ad.user, "ed25519:"+ssk.pub, ssk.priv, dk)
	forged := signWith(t, ad.user, "ed25519:"+ssk.pub, gen().priv, dk)
	code, b = ts.do("POST", "/_matrix/client/v3/keys/signatures/upload", alice.AccessToken, map[string]any{ad.user: map[string]any{ad.device: good}})
	if code != 200 || len(b["failures"].(map[string]any)) != 0 {
		t.Fatalf("good signature: %d %v", code, b)
	}
	code, b = ts.do("POST", "/_matrix/client/v3/keys/signatures/upload", alice.AccessToken, map[string]any{ad.user: map[string]any{ad.device: forged, "NOSUCHDEV": good}})
	f := b["failures"].(map[string]any)[ad.user].(map[string]any)
	if code != 200 || f[ad.device].(map[string]any)["errcode"] != "M_INVALID_SIGNATURE" || f["NOSUCHDEV"].(map[string]any)["errcode"] != "M_NOT_FOUND" {
		t.Fatalf("bad signatures: %d %v", code, b)
	}
	_, q := ts.do("POST", "/_matrix/client/v3/keys/query", bob.AccessToken, map[string]any{"device_keys": map[string]any{ad.user: []string{}}})
	sigs := q["device_keys"].(map[string]any)[ad.user].(map[string]any)[ad.device].(map[string]any)["signatures"].(map[string]any)[ad.user].(map[string]any)
	if sigs["ed25519:"+ssk.pub] == nil || sigs["ed25519:"+ad.device] == nil {
		t.Fatalf("device signatures in query: %v", sigs)
	}
	if q["master_keys"].(map[string]any)[ad.user] == nil || q["self_signing_keys"].(map[string]any)[ad.user] == nil {
		t.Fatalf("cross-signing keys in query: %v", q)
	}
	if len(q["user_signing_keys"].(map[string]any)) != 0 {
		t.Fatalf("alice's user-signing key shown to bob: %v", q["user_signing_keys"])
	}
}

// TestE2EEBadInput: each malformed, unsigned, misdirected or oversized
// request to the key and backup endpoints gets the spec's error, and
// leaves every key as it was: what bob's /keys/query shows of alice, her
// devices' one-time key counts and fallback key, bob's /keys/changes
// (nothing of alice changed) and both of alice's backup versions.
// Then the claim bound's edge, and racing claims of a device's last key.
func TestE2EEBadInput(t *testing.T) {
	ts := startServer(t)
	ctx := context.Background()
	alice, bob := ts.register("alice"), ts.register("bob")
	alice2 := ts.login("alice")
	room, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bob.JoinRoomByID(ctx, room.RoomID); err != nil {
		t.Fatal(err)
	}
	ad, ad2 := newE2EEDevice(t, alice), newE2EEDevice(t, alice2)
	const keysPath, backupPath = "/_matrix/client/v3/keys/", "/_matrix/client/v3/room_keys/"
	mustOK := func(what string, code int, body map[string]any) {
		t.Helper()
		if code != 200 {
			t.Fatalf("%s: %d %v", what, code, body)
		}
	}
	code, body := ts.do("POST", keysPath+"upload", alice.AccessToken, map[string]any{"device_keys": ad.deviceKeys(t), "one_time_keys": ad.otks(t, "a", 3),
		"fallback_keys": map[string]any{"signed_curve25519:fb": ad.sign(t, map[string]any{"key": "fallback", "fallback": true})}})
	mustOK("alice's upload", code, body)
	code, body = ts.do("POST", keysPath+"upload", alice2.AccessToken, map[string]any{"device_keys": ad2.deviceKeys(t), "one_time_keys": ad2.otks(t, "b", 2)})
	mustOK("alice's second device's upload", code, body)
	createBackup := map[string]any{"algorithm": "m.megolm_backup.v1.curve25519-aes-sha2", "auth_data": map[string]any{"public_key": "pk"}}
	backupKey := func(first int) map[string]any {
		return map[string]any{"first_message_index": first, "forwarded_count": 0, "is_verified": false, "session_data": map[string]any{"ciphertext": fmt.Sprint("c", first)}}
	}
	code, body = ts.do("POST", backupPath+"version", alice.AccessToken, createBackup)
	mustOK("backup version 1", code, body)
	code, body = ts.do("PUT", backupPath+"keys/!r:x/s1?version=1", alice.AccessToken, backupKey(3))
	mustOK("key in version 1", code, body)
	code, body = ts.do("POST", backupPath+"version", alice.AccessToken, createBackup)
	mustOK("backup version 2", code, body)
	code, body = ts.do("PUT", backupPath+"keys/!r:x/s1?version=2", alice.AccessToken, backupKey(5))
	mustOK("key in version 2", code, body)
	from := ts.rawSync(bob, nil)["next_batch"].(string)

	// state is everything a bad request must leave alone.
	state := func() map[string]any {
		t.Helper()
		out := map[string]any{}
		read := func(name, method, path, token string, body any) {
			t.Helper()
			code, b := ts.do(method, path, token, body)
			if code != 200 {
				t.Fatalf("reading %s: %d %v", name, code, b)
			}
			out[name] = b
		}
		read("query", "POST", keysPath+"query", bob.AccessToken, map[string]any{"device_keys": map[string]any{ad.user: []string{}}})
		read("counts", "POST", keysPath+"upload", alice.AccessToken, map[string]any{})
		read("counts2", "POST", keysPath+"upload", alice2.AccessToken, map[string]any{})
		read("changes", "GET", keysPath+"changes?from="+url.QueryEscape(from), bob.AccessToken, nil)
		read("backup", "GET", backupPath+"version", alice.AccessToken, nil)
		read("keys1", "GET", backupPath+"keys?version=1", alice.AccessToken, nil)
		read("keys2", "GET", backupPath+"keys?version=2", alice.AccessToken, nil)
		s := ts.rawSync(alice, nil)
		out["fallback"] = s["device_unused_fallback_key_types"]
		return out
	}
	before := state()
	if n := before["counts"].(map[string]any)["one_time_key_counts"].(map[string]any)["signed_curve25519"]; n != 3.0 {
		t.Fatalf("alice's count before: %v", before["counts"])
	}

	deviceKeys := func(mutate func(map[string]any)) map[string]any {
		dk := ad.deviceKeys(t)
		mutate(dk)
		return map[string]any{"device_keys": dk}
	}
	bigClaim := map[string]any{ad.device: "signed_curve25519"}
	for i := range 9_999 {
		bigClaim[fmt.Sprintf("NODEV%04d", i)] = "signed_curve25519"
	}
	_, otherKey, _ := ed25519.GenerateKey(rand.Reader)
	for _, tc := range []struct {
		name         string
		token        string
		method, path string
		body         any
		status       int
		errcode      string
	}{
		{"device keys not an object", alice.AccessToken, "POST", keysPath + "upload", map[string]any{"device_keys": "keys"}, 400, "M_BAD_JSON"},
		{"request not JSON", alice.AccessToken, "POST", keysPath + "upload", `{"device_keys": {`, 400, "M_NOT_JSON"},
		{"device keys without keys", alice.AccessToken, "POST", keysPath + "upload", deviceKeys(func(dk map[string]any) { delete(dk, "keys") }), 400, "M_BAD_JSON"},
		{"device keys without signatures", alice.AccessToken, "POST", keysPath + "upload", deviceKeys(func(dk map[string]any) { delete(dk, "signatures") }), 400, "M_BAD_JSON"},
		{"device keys changed after signing", alice.AccessToken, "POST", keysPath + "upload", deviceKeys(func(dk map[string]any) { dk["algorithms"] = []string{"m.olm.v1.curve25519-aes-sha2"} }), 400, "M_INVALID_PARAM"},
		{"device keys signed by another key", alice.AccessToken, "POST", keysPath + "upload", map[string]any{"device_keys": signWith(t, ad.user, "ed25519:"+ad.device, otherKey,
			map[string]any{"user_id": ad.user, "device_id": ad.device, "algorithms": []string{"m.megolm.v1.aes-sha2"}, "keys": map[string]any{"ed25519:" + ad.device: ad.pub}})}, 400, "M_INVALID_PARAM"},
		{"ed25519 key not a key", alice.AccessToken, "POST", keysPath + "upload", deviceKeys(func(dk map[string]any) { dk["keys"] = map[string]any{"ed25519:" + ad.device: "AAAA"} }), 400, "M_INVALID_PARAM"},
		{"keys of another user's device", bob.AccessToken, "POST", keysPath + "upload", map[string]any{"device_keys": ad.deviceKeys(t)}, 400, "M_INVALID_PARAM"},
		{"keys of one's other device", alice2.AccessToken, "POST", keysPath + "upload", map[string]any{"device_keys": ad.deviceKeys(t)}, 400, "M_INVALID_PARAM"},
		{"upload path naming another device", alice2.AccessToken, "POST", keysPath + "upload/" + ad.device, map[string]any{"one_time_keys": ad2.otks(t, "c", 1)}, 400, "M_INVALID_PARAM"},
		{"unsigned one-time key", alice.AccessToken, "POST", keysPath + "upload", map[string]any{"one_time_keys": map[string]any{"signed_curve25519:u": map[string]any{"key": "k"}}}, 400, "M_BAD_JSON"},
		{"one-time key signed by another key", alice.AccessToken, "POST", keysPath + "upload", map[string]any{"one_time_keys": map[string]any{
			"signed_curve25519:o": signWith(t, ad.user, "ed25519:"+ad.device, otherKey, map[string]any{"key": "k"})}}, 400, "M_INVALID_PARAM"},
		{"one-time key ID without algorithm", alice.AccessToken, "POST", keysPath + "upload", map[string]any{"one_time_keys": map[string]any{"noalgorithm": "k"}}, 400, "M_INVALID_PARAM"},
		{"another key under a taken ID", alice.AccessToken, "POST", keysPath + "upload", map[string]any{"one_time_keys": map[string]any{
			"signed_curve25519:a0": ad.sign(t, map[string]any{"key": "another"})}}, 400, "M_INVALID_PARAM"},
		{"two fallback keys of one algorithm", alice.AccessToken, "POST", keysPath + "upload", map[string]any{"fallback_keys": map[string]any{
			"signed_curve25519:f1": ad.sign(t, map[string]any{"key": "f1", "fallback": true}), "signed_curve25519:f2": ad.sign(t, map[string]any{"key": "f2", "fallback": true})}}, 400, "M_INVALID_PARAM"},
		{"query with device IDs as an object", bob.AccessToken, "POST", keysPath + "query", map[string]any{"device_keys": map[string]any{ad.user: map[string]any{ad.device: true}}}, 400, "M_BAD_JSON"},
		{"claim of 10,000 keys", bob.AccessToken, "POST", keysPath + "claim", map[string]any{"one_time_keys": map[string]any{ad.user: bigClaim}}, 413, "M_TOO_LARGE"},
		{"claim without an algorithm", bob.AccessToken, "POST", keysPath + "claim", map[string]any{"one_time_keys": map[string]any{ad.user: map[string]any{ad.device: ""}}}, 400, "M_INVALID_PARAM"},
		{"claim without one_time_keys", bob.AccessToken, "POST", keysPath + "claim", map[string]any{}, 400, "M_MISSING_PARAM"},
		{"backup key to the old version", alice.AccessToken, "PUT", backupPath + "keys/!r:x/s1?version=1", backupKey(0), 403, "M_WRONG_ROOM_KEYS_VERSION"},
		{"backup room to the old version", alice.AccessToken, "PUT", backupPath + "keys/!r:x?version=1", map[string]any{"sessions": map[string]any{"s1": backupKey(0)}}, 403, "M_WRONG_ROOM_KEYS_VERSION"},
		{"backup of all rooms to the old version", alice.AccessToken, "PUT", backupPath + "keys?version=1", map[string]any{"rooms": map[string]any{"!r:x": map[string]any{"sessions": map[string]any{"s1": backupKey(0)}}}}, 403, "M_WRONG_ROOM_KEYS_VERSION"},
		{"backup to a version that never was", alice.AccessToken, "PUT", backupPath + "keys/!r:x/s1?version=9", backupKey(0), 404, "M_NOT_FOUND"},
		{"backup without a version", alice.AccessToken, "PUT", backupPath + "keys/!r:x/s1", backupKey(0), 400, "M_MISSING_PARAM"},
		{"backup key that is not KeyBackupData", alice.AccessToken, "PUT", backupPath + "keys/!r:x/s1?version=2", map[string]any{"session_data": map[string]any{}}, 400, "M_BAD_JSON"},
		{"backup of another user's version", bob.AccessToken, "PUT", backupPath + "keys/!r:x/s1?version=2", backupKey(0), 404, "M_NOT_FOUND"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, body := ts.do(tc.method, tc.path, tc.token, tc.body)
			if code != tc.status || body["errcode"] != tc.errcode {
				t.Fatalf("got %d %v, want %d %s", code, body, tc.status, tc.errcode)
			}
			if tc.errcode == "M_WRONG_ROOM_KEYS_VERSION" && body["current_version"] != "2" {
				t.Fatalf("current_version: %v", body)
			}
			if after := state(); !reflect.DeepEqual(before, after) {
				t.Fatalf("the refused request changed what is stored:\nbefore %v\nafter  %v", before, after)
			}
		})
	}

	// The bound: 5,000 keys in one claim are served (one key for the one
	// real device, none for the others).
	edge := map[string]any{ad.device: "signed_curve25519"}
	for i := range 4_999 {
		edge[fmt.Sprintf("NODEV%04d", i)] = "signed_curve25519"
	}
	code, body = ts.do("POST", keysPath+"claim", bob.AccessToken, map[string]any{"one_time_keys": map[string]any{ad.user: edge}})
	if ids := claimedIDs(body, ad.user, ad.device); code != 200 || len(ids) != 1 || !strings.HasPrefix(ids[0], "signed_curve25519:a") {
		t.Fatalf("claim of 5,000 keys: %d %v", code, ids)
	}
	if reflect.DeepEqual(before, state()) {
		t.Fatal("a served claim left alice's count as it was: the comparison above sees nothing")
	}

	// The last key of a device, claimed by 12 clients at once: one gets
	// it, the others get nothing for that device (it has no fallback key)
	// and no error, and no key is left.
	code, body = ts.do("POST", keysPath+"upload", alice2.AccessToken, map[string]any{"one_time_keys": ad2.otks(t, "last", 1)})
	mustOK("upload", code, body)
	for range 2 {
		_, body = ts.do("POST", keysPath+"claim", bob.AccessToken, claimBody(ad2.user, ad2.device))
		if ids := claimedIDs(body, ad2.user, ad2.device); len(ids) != 1 || ids[0] == "signed_curve25519:last0" {
			t.Fatalf("the older keys go first: %v", body)
		}
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	var got []string
	for range 12 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			code, body := ts.do("POST", keysPath+"claim", bob.AccessToken, claimBody(ad2.user, ad2.device))
			mu.Lock()
			defer mu.Unlock()
			if code != 200 {
				t.Errorf("racing claim: %d %v", code, body)
			}
			got = append(got, claimedIDs(body, ad2.user, ad2.device)...)
		}()
	}
	wg.Wait()
	if len(got) != 1 || got[0] != "signed_curve25519:last0" {
		t.Fatalf("12 racing claims of the last key handed out %v", got)
	}
	code, body = ts.do("POST", keysPath+"upload", alice2.AccessToken, map[string]any{})
	if n := body["one_time_key_counts"].(map[string]any)["signed_curve25519"]; code != 200 || (n != nil && n != 0.0) {
		t.Fatalf("keys left after the last was claimed: %d %v", code, body)
	}
}
