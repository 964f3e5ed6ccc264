package transport

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/engram-hs/engram/federation/xmatrix"
	"github.com/engram-hs/engram/internal/testca"
	"github.com/engram-hs/engram/stateres/signing"
)

// tlsServer serves h over TLS on 127.0.0.1 with a certificate from ca for
// names.
func tlsServer(t *testing.T, ca *testca.CA, h http.Handler, names ...string) (*httptest.Server, string) {
	t.Helper()
	srv := httptest.NewUnstartedServer(h)
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{ca.Issue(t, names...)}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	return srv, port
}

func loopbackFilter(t *testing.T) *IPFilter {
	f, err := NewIPFilter(DefaultIPRangeBlacklist, []string{"127.0.0.0/8"})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func newClient(t *testing.T, ca *testca.CA, mod func(*Config)) (*Client, signing.Key) {
	t.Helper()
	key, _ := signing.GenerateKey(rand.Reader, "t1")
	cfg := Config{ServerName: "origin.test", Key: key, RootCAs: []*x509.Certificate{ca.Cert}, IPFilter: loopbackFilter(t), Timeout: 5 * time.Second}
	if mod != nil {
		mod(&cfg)
	}
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c, key
}

// echo answers with what it saw: the Host header, and whether the X-Matrix
// signature verifies with key for destination dest.
func echo(key signing.Key, hits *atomic.Int32) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if hits != nil {
			hits.Add(1)
		}
		body, _ := io.ReadAll(r.Body)
		verdict := "unsigned"
		if h := r.Header.Get("Authorization"); h != "" && key.Private != nil {
			p, err := xmatrix.Parse(h)
			if err == nil {
				err = xmatrix.Verify(p, key.Public(), r.Method, r.RequestURI, body)
			}
			verdict = "ok"
			if err != nil {
				verdict = err.Error()
			} else {
				verdict += " " + p.Destination
			}
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"host":%q,"auth":%q}`, r.Host, verdict)
	})
}

type echoed struct{ Host, Auth string }

func TestIPLiteralAndExplicitPortOverTLS(t *testing.T) {
	ca := testca.New(t)
	var key signing.Key
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { echo(key, nil).ServeHTTP(w, r) })
	_, port := tlsServer(t, ca, h, "localhost", "127.0.0.1")
	c, k := newClient(t, ca, nil)
	key = k
	for _, dest := range []string{"127.0.0.1:" + port, "localhost:" + port} {
		var got echoed
		err := c.DoJSON(context.Background(), Request{Destination: dest, Method: "PUT", Path: "/_matrix/federation/v1/send/1?a=b", Body: map[string]any{"pdus": []any{}}}, &got)
		if err != nil {
			t.Fatalf("%s: %v", dest, err)
		}
		if got.Host != dest || got.Auth != "ok "+dest {
			t.Fatalf("%s: %+v", dest, got)
		}
	}
}

// federation_hosts: a server name mapped to an address skips discovery;
// the certificate must still be valid for the name.
func TestStaticHosts(t *testing.T) {
	ca := testca.New(t)
	var key signing.Key
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { echo(key, nil).ServeHTTP(w, r) })
	_, port := tlsServer(t, ca, h, "hs1")
	c, k := newClient(t, ca, func(cfg *Config) {
		cfg.StaticHosts = map[string]string{"hs1": "127.0.0.1:" + port, "hs2": "127.0.0.1:" + port}
	})
	key = k
	var got echoed
	if err := c.DoJSON(context.Background(), Request{Destination: "hs1", Method: "GET", Path: "/x"}, &got); err != nil || got.Host != "hs1" || got.Auth != "ok hs1" {
		t.Fatalf("hs1: %+v %v", got, err)
	}
	var hne x509.HostnameError
	if err := c.DoJSON(context.Background(), Request{Destination: "hs2", Method: "GET", Path: "/x"}, nil); !errors.As(err, &hne) {
		t.Fatalf("hs2 (certificate for hs1): %v", err)
	}
}

func TestDenyListRefusesLoopbackByDefault(t *testing.T) {
	ca := testca.New(t)
	_, port := tlsServer(t, ca, echo(signing.Key{}, nil), "127.0.0.1")
	f, _ := NewIPFilter(DefaultIPRangeBlacklist, nil)
	c, _ := newClient(t, ca, func(cfg *Config) { cfg.IPFilter = f })
	err := c.DoJSON(context.Background(), Request{Destination: "127.0.0.1:" + port, Method: "GET", Path: "/x"}, nil)
	var blocked ErrBlockedIP
	if !errors.As(err, &blocked) {
		t.Fatalf("got %v, want ErrBlockedIP", err)
	}
	// A name that resolves to loopback is refused the same way: the check
	// is on the address dialled.
	err = c.DoJSON(context.Background(), Request{Destination: "localhost:" + port, Method: "GET", Path: "/x"}, nil)
	if !errors.As(err, &blocked) {
		t.Fatalf("localhost: got %v, want ErrBlockedIP", err)
	}
	if f.Allowed(mustAddr("0.0.0.0")) || f.Allowed(mustAddr("10.1.2.3")) || !f.Allowed(mustAddr("8.8.8.8")) || f.Allowed(mustAddr("::ffff:127.0.0.1")) {
		t.Fatal("filter decisions")
	}
}

func TestUntrustedCertificateRefused(t *testing.T) {
	ca, other := testca.New(t), testca.New(t)
	_, port := tlsServer(t, other, echo(signing.Key{}, nil), "127.0.0.1")
	c, _ := newClient(t, ca, nil)
	err := c.DoJSON(context.Background(), Request{Destination: "127.0.0.1:" + port, Method: "GET", Path: "/x"}, nil)
	var uae x509.UnknownAuthorityError
	if !errors.As(err, &uae) {
		t.Fatalf("got %v, want an unknown authority error", err)
	}
	// federation_verify_certificates: false (tests only) accepts it.
	c2, _ := newClient(t, ca, func(cfg *Config) { cfg.InsecureSkipVerify = true })
	if err := c2.DoJSON(context.Background(), Request{Destination: "127.0.0.1:" + port, Method: "GET", Path: "/x"}, nil); err != nil {
		t.Fatal(err)
	}
	// A certificate for another name is refused too.
	_, port2 := tlsServer(t, ca, echo(signing.Key{}, nil), "other.test")
	err = c.DoJSON(context.Background(), Request{Destination: "127.0.0.1:" + port2, Method: "GET", Path: "/x"}, nil)
	var hne x509.HostnameError
	if !errors.As(err, &hne) {
		t.Fatalf("got %v, want a hostname error", err)
	}
}

func TestSRVAndWellKnownDiscovery(t *testing.T) {
	ca := testca.New(t)
	dns := testca.NewDNS(t)
	c, key := newClient(t, ca, func(cfg *Config) { cfg.Resolver = dns.Resolver() })

	// _matrix-fed._tcp: the target serves a certificate for the server
	// name, not for the SRV target.
	var hits atomic.Int32
	_, fedPort := tlsServer(t, ca, echo(key, &hits), "srv.test")
	dns.SRV("_matrix-fed._tcp.srv.test", "host1.srv.test", uint16(atoiT(t, fedPort)), 10, 0)
	dns.A("host1.srv.test", "127.0.0.1")
	// The deprecated _matrix._tcp, used only when _matrix-fed is absent.
	_, oldPort := tlsServer(t, ca, echo(key, &hits), "old.test")
	dns.SRV("_matrix._tcp.old.test", "host2.old.test", uint16(atoiT(t, oldPort)), 10, 0)
	dns.A("host2.old.test", "127.0.0.1")

	// .well-known delegation to delegated.test:PORT.
	_, delegatedPort := tlsServer(t, ca, echo(key, &hits), "delegated.test")
	var wkHits atomic.Int32
	_, wkPort := tlsServer(t, ca, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		wkHits.Add(1)
		if r.URL.Path != "/.well-known/matrix/server" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Cache-Control", "max-age=3600")
		fmt.Fprintf(w, `{"m.server":"delegated.test:%s"}`, delegatedPort)
	}), "wk.test")
	dns.A("wk.test", "127.0.0.1")
	dns.A("delegated.test", "127.0.0.1")
	dns.A("srv.test", "127.0.0.1")
	dns.A("old.test", "127.0.0.1")
	c.res.wellKnownPort = wkPort // the .well-known of srv.test and old.test: nothing listens... wk answers 404 for them

	for _, tc := range []struct{ dest, host string }{
		{"srv.test", "srv.test"},
		{"old.test", "old.test"},
		{"wk.test", "delegated.test:" + delegatedPort},
	} {
		var got echoed
		if err := c.DoJSON(context.Background(), Request{Destination: tc.dest, Method: "GET", Path: "/_matrix/federation/v1/version"}, &got); err != nil {
			t.Fatalf("%s: %v", tc.dest, err)
		}
		if got.Host != tc.host || got.Auth != "ok "+tc.dest {
			t.Fatalf("%s: %+v (X-Matrix destination stays the server name, Host is %s)", tc.dest, got, tc.host)
		}
	}
	// srv.test and old.test asked wk's listener (it has their port) and got
	// a TLS error (certificate for wk.test): an error response, cached.
	before := wkHits.Load()
	for i := 0; i < 3; i++ {
		if _, err := c.Resolve(context.Background(), "wk.test"); err != nil {
			t.Fatal(err)
		}
	}
	if wkHits.Load() != before {
		t.Fatalf(".well-known fetched again within its max-age: %d -> %d", before, wkHits.Load())
	}
	ts, _ := c.Resolve(context.Background(), "nothing.test")
	if len(ts) != 1 || ts[0].Addr != "nothing.test:8448" || ts[0].Host != "nothing.test" {
		t.Fatalf("fallback: %+v", ts)
	}
}

func TestResolveRules(t *testing.T) {
	r := &resolver{dns: &net.Resolver{PreferGo: true, Dial: func(context.Context, string, string) (net.Conn, error) {
		return nil, errors.New("no DNS in this test")
	}}, now: time.Now, cache: map[string]*wellKnownEntry{}}
	for _, tc := range []struct{ in, addr, cert, host string }{
		{"1.2.3.4", "1.2.3.4:8448", "1.2.3.4", "1.2.3.4"},
		{"1.2.3.4:99", "1.2.3.4:99", "1.2.3.4", "1.2.3.4:99"},
		{"[::1]", "[::1]:8448", "::1", "[::1]"},
		{"[2001:db8::1]:443", "[2001:db8::1]:443", "2001:db8::1", "[2001:db8::1]:443"},
		{"example.org:1234", "example.org:1234", "example.org", "example.org:1234"},
	} {
		ts, err := r.resolve(context.Background(), tc.in)
		if err != nil || len(ts) != 1 || ts[0] != (Target{tc.addr, tc.cert, tc.host}) {
			t.Fatalf("%s: %+v %v", tc.in, ts, err)
		}
	}
	for _, bad := range []string{"", "a b", "[::1", "[1.2.3.4]", "host:0", "host:99999", "host:", "ex/ample"} {
		if _, _, _, err := SplitServerName(bad); err == nil {
			t.Fatalf("%q accepted", bad)
		}
	}
}

func TestCacheTTL(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	for _, tc := range []struct {
		h    map[string]string
		want time.Duration
	}{
		{nil, 24 * time.Hour},
		{map[string]string{"Cache-Control": "public, max-age=7200"}, 2 * time.Hour},
		{map[string]string{"Cache-Control": "max-age=10"}, wellKnownMinTTL},
		{map[string]string{"Cache-Control": "max-age=999999999"}, 48 * time.Hour},
		{map[string]string{"Cache-Control": "no-store"}, wellKnownMinTTL},
		{map[string]string{"Expires": now.Add(3 * time.Hour).UTC().Format(http.TimeFormat)}, 3 * time.Hour},
		{map[string]string{"Expires": "garbage"}, wellKnownMinTTL},
	} {
		h := http.Header{}
		for k, v := range tc.h {
			h.Set(k, v)
		}
		if got := cacheTTL(h, now); got != tc.want {
			t.Fatalf("%v: %v, want %v", tc.h, got, tc.want)
		}
	}
}

func TestHTTPErrorCarriesErrcode(t *testing.T) {
	ca := testca.New(t)
	_, port := tlsServer(t, ca, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(404)
		io.WriteString(w, `{"errcode":"M_NOT_FOUND","error":"no such user"}`)
	}), "127.0.0.1")
	c, _ := newClient(t, ca, nil)
	err := c.DoJSON(context.Background(), Request{Destination: "127.0.0.1:" + port, Method: "GET", Path: "/x"}, nil)
	var he *HTTPError
	if !errors.As(err, &he) || he.Status != 404 || he.Errcode != "M_NOT_FOUND" || !strings.Contains(he.Error(), "no such user") {
		t.Fatalf("got %v", err)
	}
}

func mustAddr(s string) (a netipAddr) { return parseAddr(s) }

func atoiT(t *testing.T, s string) int {
	var n int
	if _, err := fmt.Sscan(s, &n); err != nil {
		t.Fatal(err)
	}
	return n
}
