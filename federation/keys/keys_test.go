package keys_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/engram-hs/engram/federation/fedtest"
	"github.com/engram-hs/engram/federation/keys"
	"github.com/engram-hs/engram/federation/transport"
	"github.com/engram-hs/engram/internal/testca"
	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/projections"
	"github.com/engram-hs/engram/projections/serverkeys"
	"github.com/engram-hs/engram/stateres"
	"github.com/engram-hs/engram/stateres/signing"
)

func createEvent(t *testing.T, version, server string, key signing.Key, ts int64) *stateres.Event {
	t.Helper()
	v, _ := stateres.Version(version)
	sk := ""
	ev, err := stateres.BuildEvent(v, &stateres.ProtoEvent{Type: "m.room.create", StateKey: &sk, Sender: "@alice:" + server,
		Content: json.RawMessage(`{"room_version":"` + version + `"}`), RoomID: "!r:" + server, OriginServerTS: ts}, nil, nil, server, key.ID, key.Private)
	if err != nil {
		t.Fatal(err)
	}
	return ev
}

// B verifies A's events with A's keys fetched over TLS, and applies the
// room version's key validity rule.
func TestVerifyEventFetchesKeys(t *testing.T) {
	ca := testca.New(t)
	a := fedtest.Start(t, ca, fedtest.Options{})
	b := fedtest.Start(t, ca, fedtest.Options{})
	ctx := context.Background()
	now := time.Now().UnixMilli()

	if err := b.Keyring.VerifyEvent(ctx, createEvent(t, "10", a.Name, a.Key, now)); err != nil {
		t.Fatalf("valid event: %v", err)
	}
	// Signed with another key under A's key ID: refused.
	forger, _ := signing.GenerateKey(rand.Reader, "t1")
	if err := b.Keyring.VerifyEvent(ctx, createEvent(t, "10", a.Name, forger, now)); !errors.Is(err, stateres.ErrSignature) {
		t.Fatalf("forged: %v", err)
	}
	// origin_server_ts after the key's valid_until_ts (24 h): refused in a
	// room version that enforces key validity, accepted in one that does not.
	later := now + 3*24*3600*1000
	if err := b.Keyring.VerifyEvent(ctx, createEvent(t, "10", a.Name, a.Key, later)); !errors.Is(err, stateres.ErrSignature) {
		t.Fatalf("v10 event after valid_until_ts: %v", err)
	}
	if err := b.Keyring.VerifyEvent(ctx, createEvent(t, "4", a.Name, a.Key, later)); err != nil {
		t.Fatalf("v4 event after valid_until_ts: %v", err)
	}
	// Our own events verify with our own key, without any fetch.
	if err := b.Keyring.VerifyEvent(ctx, createEvent(t, "10", b.Name, b.Key, now)); err != nil {
		t.Fatalf("own event: %v", err)
	}
	// An unreachable signer: the error says the key is unknown.
	if err := b.Keyring.VerifyEvent(ctx, createEvent(t, "10", "127.0.0.1:1", a.Key, now)); !errors.Is(err, keys.ErrUnknownKey) {
		t.Fatalf("unreachable signer: %v", err)
	}
}

// fakeFetcher serves one key response.
type fakeFetcher struct {
	resp  []byte
	calls atomic.Int32
}

func (f *fakeFetcher) DoJSON(_ context.Context, r transport.Request, out any) error {
	f.calls.Add(1)
	*(out.(*json.RawMessage)) = append(json.RawMessage(nil), f.resp...)
	return nil
}

func keyResponse(t *testing.T, server string, cur, old signing.Key, validUntil, oldExpired int64) []byte {
	obj, _ := json.Marshal(map[string]any{
		"server_name":     server,
		"valid_until_ts":  validUntil,
		"verify_keys":     map[string]any{cur.ID: map[string]string{"key": signing.EncodeBase64(cur.Public())}},
		"old_verify_keys": map[string]any{old.ID: map[string]any{"key": signing.EncodeBase64(old.Public()), "expired_ts": oldExpired}},
	})
	signed, err := signing.SignJSON(server, cur.ID, cur.Private, obj)
	if err != nil {
		t.Fatal(err)
	}
	return signed
}

// old_verify_keys verify events made before they expired and never
// requests; valid_until_ts is capped at 7 days; a replay of the log
// rebuilds the same keys without any fetch.
func TestOldVerifyKeysAndReplay(t *testing.T) {
	dir := t.TempDir()
	logger := fedtest.Logger(t)
	node, err := englog.Open(englog.Config{Dir: dir, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	engine := projections.NewEngine(node, node.DB(), logger, nil)
	h := engine.Register(serverkeys.New())
	if err := engine.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	me, _ := signing.GenerateKey(rand.Reader, "me")
	cur, _ := signing.GenerateKey(rand.Reader, "new")
	old, _ := signing.GenerateKey(rand.Reader, "old")
	now := time.Now()
	f := &fakeFetcher{resp: keyResponse(t, "remote.test", cur, old, now.Add(30*24*time.Hour).UnixMilli(), now.Add(-time.Hour).UnixMilli())}
	kr, _ := keys.New(keys.Config{ServerName: "me.test", Key: me, Log: node, Keys: h, Fetcher: f, Logger: logger})
	ctx := context.Background()

	if _, err := kr.Key(ctx, "remote.test", old.ID, keys.Validity{At: now.Add(-2 * time.Hour).UnixMilli()}); err != nil {
		t.Fatalf("old key before it expired: %v", err)
	}
	if _, err := kr.Key(ctx, "remote.test", old.ID, keys.Validity{At: now.UnixMilli()}); !errors.Is(err, keys.ErrUnknownKey) {
		t.Fatalf("old key after it expired: %v", err)
	}
	if _, err := kr.Key(ctx, "remote.test", old.ID, keys.Validity{At: now.Add(-2 * time.Hour).UnixMilli(), Current: true}); !errors.Is(err, keys.ErrUnknownKey) {
		t.Fatalf("old key for a request: %v", err)
	}
	if _, err := kr.Key(ctx, "remote.test", cur.ID, keys.Validity{At: now.Add(8 * 24 * time.Hour).UnixMilli()}); !errors.Is(err, keys.ErrUnknownKey) {
		t.Fatalf("current key 8 days ahead (capped at 7): %v", err)
	}
	if _, err := kr.Key(ctx, "remote.test", cur.ID, keys.Validity{At: now.Add(6 * 24 * time.Hour).UnixMilli(), Current: true}); err != nil {
		t.Fatalf("current key: %v", err)
	}
	if n := f.calls.Load(); n != 1 {
		t.Fatalf("%d fetches, want 1 (refetches are rate limited)", n)
	}
	// A response signed by a key it does not list, or for another server,
	// is refused.
	if _, err := keys.ParseResponse("other.test", f.resp, now); err == nil {
		t.Fatal("response for another server accepted")
	}
	forged := keyResponse(t, "remote.test", cur, old, now.Add(time.Hour).UnixMilli(), 0)
	forged = []byte(string(forged[:len(forged)-5]) + `AAAA"}}}`)
	if _, err := keys.ParseResponse("remote.test", forged, now); err == nil {
		t.Fatal("badly signed response accepted")
	}

	digest, err := engine.Digest(serverkeys.Name)
	if err != nil {
		t.Fatal(err)
	}
	_ = engine.Close()
	e2 := projections.NewEngine(node, node.DB(), logger, nil)
	e2.Register(serverkeys.New())
	if err := e2.Rebuild(ctx, serverkeys.Name); err != nil {
		t.Fatal(err)
	}
	again, _ := e2.Digest(serverkeys.Name)
	if len(digest) == 0 || string(digest) != string(again) {
		t.Fatal("replay gave another projection")
	}
	_ = e2.Close()
	_ = node.Close()
}

// A server that cannot be reached directly has its keys fetched through a
// configured notary (trusted_key_servers), whose signature is checked;
// without notaries nothing else is asked.
func TestKeysThroughTrustedNotary(t *testing.T) {
	ca := testca.New(t)
	ctx := context.Background()
	a := fedtest.Start(t, ca, fedtest.Options{})
	notary := fedtest.Start(t, ca, fedtest.Options{})
	ev := createEvent(t, "10", a.Name, a.Key, time.Now().UnixMilli())
	// The notary learns A's keys while A is up.
	if err := notary.Keyring.VerifyEvent(ctx, ev); err != nil {
		t.Fatal(err)
	}
	a.Stop()
	lonely := fedtest.Start(t, ca, fedtest.Options{})
	if err := lonely.Keyring.VerifyEvent(ctx, ev); !errors.Is(err, keys.ErrUnknownKey) {
		t.Fatalf("no notary, A down: %v", err)
	}
	wrongKey, _ := signing.GenerateKey(rand.Reader, "x")
	bad := fedtest.Start(t, ca, fedtest.Options{Trusted: []keys.TrustedKeyServer{{ServerName: notary.Name, VerifyKeys: map[string]ed25519.PublicKey{notary.Key.ID: wrongKey.Public()}}}})
	if err := bad.Keyring.VerifyEvent(ctx, ev); !errors.Is(err, keys.ErrUnknownKey) {
		t.Fatalf("notary with a key it does not sign with: %v", err)
	}
	c := fedtest.Start(t, ca, fedtest.Options{Trusted: []keys.TrustedKeyServer{{ServerName: notary.Name, VerifyKeys: map[string]ed25519.PublicKey{notary.Key.ID: notary.Key.Public()}}}})
	if err := c.Keyring.VerifyEvent(ctx, ev); err != nil {
		t.Fatalf("through the notary: %v", err)
	}
	entries, _ := c.Log.Read(1, 100)
	var f facts.ServerKeysFetched
	for _, e := range entries {
		if e.Kind == englog.KindServerKeysFetched {
			facts.Decode(e, &f)
		}
	}
	if f.ServerName != a.Name || f.Via != notary.Name {
		t.Fatalf("recorded: %+v", f)
	}
}
