package federation_test

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/engram-hs/engram/federation"
	"github.com/engram-hs/engram/federation/fedtest"
	"github.com/engram-hs/engram/federation/transport"
	"github.com/engram-hs/engram/internal/testca"
	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/projections/serverkeys"
	"github.com/engram-hs/engram/stateres/signing"
)

// echoRoute answers an authenticated request with its origin and body.
func echoRoute(p *fedtest.Peer) {
	p.Server.HandleAuthed("PUT /_matrix/federation/v1/test/echo/{id}", func(w http.ResponseWriter, r *http.Request, origin string) error {
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]string{"origin": origin, "ctx_origin": federation.Origin(r), "body": string(body)})
		return nil
	})
}

func getJSON(t *testing.T, c *transport.Client, dest, path string, out any) error {
	t.Helper()
	return c.DoJSON(context.Background(), transport.Request{Destination: dest, Method: "GET", Path: path, Unsigned: true}, out)
}

// Two servers over real TLS on loopback, each with a certificate from one
// test CA: B fetches A's key (and records it in its log), accepts A's
// signed request, and refuses forged, malformed and misdirected ones.
func TestSignedRequestsOverTLS(t *testing.T) {
	ca := testca.New(t)
	a := fedtest.Start(t, ca, fedtest.Options{})
	b := fedtest.Start(t, ca, fedtest.Options{Setup: echoRoute})
	ctx := context.Background()

	var got map[string]string
	err := a.Client.DoJSON(ctx, transport.Request{Destination: b.Name, Method: "PUT", Path: "/_matrix/federation/v1/test/echo/1?x=%40y", Body: map[string]int{"n": 1}}, &got)
	if err != nil {
		t.Fatalf("signed request: %v", err)
	}
	if got["origin"] != a.Name || got["ctx_origin"] != a.Name || got["body"] != `{"n":1}` {
		t.Fatalf("echo: %v", got)
	}
	// B recorded A's keys in its log and its projection.
	entries, _ := b.Log.Read(1, 100)
	recorded := 0
	for _, e := range entries {
		if e.Kind == englog.KindServerKeysFetched {
			recorded++
		}
	}
	if recorded != 1 {
		t.Fatalf("B's log holds %d key fetches, want 1", recorded)
	}
	k, err := serverkeys.NewView(b.KeysH.Reader()).Key(a.Name, a.Key.ID)
	if err != nil || k == nil || k.PublicKey != signing.EncodeBase64(a.Key.Public()) {
		t.Fatalf("projection: %+v %v", k, err)
	}
	// A second request uses the recorded key: no new fetch.
	if err := a.Client.DoJSON(ctx, transport.Request{Destination: b.Name, Method: "PUT", Path: "/_matrix/federation/v1/test/echo/2", Body: map[string]int{}}, nil); err != nil {
		t.Fatal(err)
	}
	if entries, _ := b.Log.Read(1, 100); len(entries) != recorded {
		t.Fatalf("second request appended to the log: %d entries", len(entries))
	}

	wantUnauthorized := func(what string, err error) {
		t.Helper()
		var he *transport.HTTPError
		if !errors.As(err, &he) || he.Status != 401 || he.Errcode != "M_UNAUTHORIZED" {
			t.Fatalf("%s: got %v, want 401 M_UNAUTHORIZED", what, err)
		}
	}
	// Forged: same name and key ID, another private key.
	forger, _ := signing.GenerateKey(rand.Reader, strings.TrimPrefix(a.Key.ID, "ed25519:"))
	fc := fedtest.ClientFor(t, ca, a.Name, forger)
	wantUnauthorized("forged signature", fc.DoJSON(ctx, transport.Request{Destination: b.Name, Method: "PUT", Path: "/_matrix/federation/v1/test/echo/3", Body: map[string]int{}}, nil))

	// Malformed headers, a wrong destination, no header.
	raw := fedtest.ClientFor(t, ca, "unused.test", a.Key)
	for _, h := range []string{
		"",
		"Bearer x",
		`X-Matrix origin="` + a.Name + `",key="` + a.Key.ID + `"`,
		`X-Matrix origin="` + a.Name + `,key="x",sig="y"`,
		`X-Matrix origin="` + a.Name + `",destination="` + b.Name + `",key="` + a.Key.ID + `",sig="!!notbase64"`,
	} {
		wantUnauthorized("header "+h, rawPut(t, raw, b.Name, h))
	}
	sig, _ := signHeader(a, "other.test", "/_matrix/federation/v1/test/echo/4")
	wantUnauthorized("wrong destination", rawPut(t, raw, b.Name, sig))
}

// rawPut sends a PUT with a hand-made Authorization header.
func rawPut(t *testing.T, c *transport.Client, dest, header string) error {
	t.Helper()
	ts, err := c.Resolve(context.Background(), dest)
	if err != nil {
		t.Fatal(err)
	}
	_ = ts
	return c.DoJSON(context.Background(), transport.Request{Destination: dest, Method: "PUT", Path: "/_matrix/federation/v1/test/echo/4", Body: map[string]int{}, Unsigned: true, Header: http.Header{"Authorization": {header}}}, nil)
}

func signHeader(p *fedtest.Peer, dest, path string) (string, error) {
	return xmatrixSign(p.Name, dest, p.Key, "PUT", path, []byte(`{}`))
}

// The notary endpoint serves A's keys, as fetched by B, countersigned by
// B, by GET and POST; B's own keys too.
func TestNotaryQuery(t *testing.T) {
	ca := testca.New(t)
	a := fedtest.Start(t, ca, fedtest.Options{})
	b := fedtest.Start(t, ca, fedtest.Options{})
	c := fedtest.ClientFor(t, ca, "client.test", a.Key)
	check := func(resp struct {
		ServerKeys []json.RawMessage `json:"server_keys"`
	}) {
		t.Helper()
		if len(resp.ServerKeys) != 1 {
			t.Fatalf("server_keys: %d", len(resp.ServerKeys))
		}
		r := resp.ServerKeys[0]
		if err := signing.VerifyJSON(a.Name, a.Key.ID, a.Key.Public(), r); err != nil {
			t.Fatalf("origin signature: %v", err)
		}
		if err := signing.VerifyJSON(b.Name, b.Key.ID, b.Key.Public(), r); err != nil {
			t.Fatalf("notary signature: %v", err)
		}
	}
	var resp struct {
		ServerKeys []json.RawMessage `json:"server_keys"`
	}
	if err := getJSON(t, c, b.Name, "/_matrix/key/v2/query/"+transport.PathEscape(a.Name), &resp); err != nil {
		t.Fatal(err)
	}
	check(resp)
	resp.ServerKeys = nil
	future := time.Now().Add(time.Hour).UnixMilli()
	body := map[string]any{"server_keys": map[string]any{a.Name: map[string]any{a.Key.ID: map[string]int64{"minimum_valid_until_ts": future}}}}
	if err := c.DoJSON(context.Background(), transport.Request{Destination: b.Name, Method: "POST", Path: "/_matrix/key/v2/query", Body: body, Unsigned: true}, &resp); err != nil {
		t.Fatal(err)
	}
	check(resp)
	// An unreachable server: no entry, not an error.
	resp.ServerKeys = nil
	if err := getJSON(t, c, b.Name, "/_matrix/key/v2/query/127.0.0.1:1", &resp); err != nil || len(resp.ServerKeys) != 0 {
		t.Fatalf("unreachable: %v %d", err, len(resp.ServerKeys))
	}
	// B's own keys.
	if err := getJSON(t, c, b.Name, "/_matrix/key/v2/query/"+transport.PathEscape(b.Name), &resp); err != nil || len(resp.ServerKeys) != 1 {
		t.Fatalf("own: %v %d", err, len(resp.ServerKeys))
	}
}

func TestVersionAndUnknownPaths(t *testing.T) {
	ca := testca.New(t)
	a := fedtest.Start(t, ca, fedtest.Options{})
	c := fedtest.ClientFor(t, ca, "client.test", a.Key)
	var v struct {
		Server struct{ Name, Version string } `json:"server"`
	}
	if err := getJSON(t, c, a.Name, "/_matrix/federation/v1/version", &v); err != nil || v.Server.Name != "Engram" || v.Server.Version != "test" {
		t.Fatalf("version: %+v %v", v, err)
	}
	var he *transport.HTTPError
	if err := getJSON(t, c, a.Name, "/_matrix/federation/v1/nope", nil); !errors.As(err, &he) || he.Status != 404 || he.Errcode != "M_UNRECOGNIZED" {
		t.Fatalf("unknown path: %v", err)
	}
	if err := c.DoJSON(context.Background(), transport.Request{Destination: a.Name, Method: "DELETE", Path: "/_matrix/federation/v1/version", Unsigned: true}, nil); !errors.As(err, &he) || he.Status != 405 || he.Errcode != "M_UNRECOGNIZED" {
		t.Fatalf("wrong method: %v", err)
	}
}
