// Package fedtest runs in-process federation peers for tests: each has
// its own log and projections in a temporary directory, a real TLS
// listener on 127.0.0.1 with a certificate from a shared test CA, a
// keyring and an outbound client that trusts that CA and may reach
// loopback.
package fedtest

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/engram-hs/engram/federation"
	"github.com/engram-hs/engram/federation/keys"
	"github.com/engram-hs/engram/federation/queue"
	"github.com/engram-hs/engram/federation/transport"
	"github.com/engram-hs/engram/internal/testca"
	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/projections"
	"github.com/engram-hs/engram/projections/fedqueue"
	"github.com/engram-hs/engram/projections/serverkeys"
	"github.com/engram-hs/engram/stateres/signing"
)

// Peer is one running in-process federation server.
type Peer struct {
	Name    string // "127.0.0.1:PORT"
	Key     signing.Key
	Log     *englog.Node
	Engine  *projections.Engine
	KeysH   *projections.Handle
	Client  *transport.Client
	Keyring *keys.Keyring
	Server  *federation.Server
	// Queue is the outbound queue, when Options.Queue asked for one.
	Queue *queue.Queue
	Dir   string

	ln      net.Listener
	httpSrv *http.Server
	ca      *testca.CA
	t       testing.TB
}

// Options tune a peer.
type Options struct {
	// Register adds projections before the engine starts.
	Register func(p *Peer, e *projections.Engine)
	// Setup runs before the listener serves (install routes, hooks).
	Setup func(p *Peer)
	// Dir reuses a data directory (restarts); default a new temp dir.
	Dir string
	// Addr reuses a listen address (restarts); default a free port.
	Addr string
	// Key reuses a signing key (restarts).
	Key *signing.Key
	// Deps adjusts the federation server's dependencies.
	Deps func(p *Peer, d *federation.Deps)
	// Queue, when set, runs an outbound queue with these retry settings
	// (ServerName, Log, Queue, Sender are filled in); inbound requests
	// mark their origin up.
	Queue *queue.Config
	// Trusted are the keyring's notaries (trusted_key_servers).
	Trusted []keys.TrustedKeyServer
	// Wrap wraps the listener's handler (to intercept paths).
	Wrap func(p *Peer, h http.Handler) http.Handler
}

// Logger is quiet unless a test fails.
func Logger(t testing.TB) zerolog.Logger {
	return zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)
}

// ClientFor builds an outbound client that trusts ca and may reach
// loopback.
func ClientFor(t testing.TB, ca *testca.CA, name string, key signing.Key) *transport.Client {
	f, err := transport.NewIPFilter(transport.DefaultIPRangeBlacklist, []string{"127.0.0.0/8"})
	if err != nil {
		t.Fatal(err)
	}
	c, err := transport.New(transport.Config{ServerName: name, Key: key, RootCAs: []*x509.Certificate{ca.Cert}, IPFilter: f, Timeout: 10 * time.Second, Logger: Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// Start runs a peer until the test ends (or Stop).
func Start(t testing.TB, ca *testca.CA, opts Options) *Peer {
	t.Helper()
	addr := opts.Addr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	p := &Peer{Name: ln.Addr().String(), ln: ln, ca: ca, t: t, Dir: opts.Dir}
	if p.Dir == "" {
		p.Dir = t.TempDir()
	}
	if opts.Key != nil {
		p.Key = *opts.Key
	} else if p.Key, err = signing.GenerateKey(rand.Reader, "t1"); err != nil {
		t.Fatal(err)
	}
	logger := Logger(t)
	if p.Log, err = englog.Open(englog.Config{Dir: p.Dir, Logger: logger.Level(zerolog.ErrorLevel)}); err != nil {
		t.Fatal(err)
	}
	p.Engine = projections.NewEngine(p.Log, p.Log.DB(), logger, nil)
	p.KeysH = p.Engine.Register(serverkeys.New())
	if opts.Register != nil {
		opts.Register(p, p.Engine)
	}
	p.Client = ClientFor(t, ca, p.Name, p.Key)
	if opts.Queue != nil {
		qc := *opts.Queue
		qc.ServerName, qc.Log, qc.Sender = p.Name, p.Log, p.Client
		qc.Projection = fedqueue.New(nil)
		qc.Queue = p.Engine.Register(qc.Projection)
		qc.Logger = logger
		if p.Queue, err = queue.New(qc); err != nil {
			t.Fatal(err)
		}
	}
	if p.Keyring, err = keys.New(keys.Config{ServerName: p.Name, Key: p.Key, Log: p.Log, Keys: p.KeysH, Fetcher: p.Client, Trusted: opts.Trusted, Logger: logger}); err != nil {
		t.Fatal(err)
	}
	deps := federation.Deps{Log: p.Log, Keys: p.Keyring, Logger: logger}
	if p.Queue != nil {
		deps.Contacted = p.Queue.MarkUp
	}
	if opts.Deps != nil {
		opts.Deps(p, &deps)
	}
	if p.Server, err = federation.New(federation.Config{ServerName: p.Name, Version: "test", Key: p.Key}, deps); err != nil {
		t.Fatal(err)
	}
	if err := p.Engine.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if p.Queue != nil {
		p.Queue.Start()
	}
	if opts.Setup != nil {
		opts.Setup(p)
	}
	host, _, _ := net.SplitHostPort(p.Name)
	var h http.Handler = p.Server.Handler()
	if opts.Wrap != nil {
		h = opts.Wrap(p, h)
	}
	p.httpSrv = &http.Server{Handler: h, TLSConfig: &tls.Config{Certificates: []tls.Certificate{ca.Issue(t, host, "localhost")}}}
	go func() {
		if err := p.httpSrv.ServeTLS(ln, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
			t.Logf("peer %s: %v", p.Name, err)
		}
	}()
	t.Cleanup(p.Stop)
	return p
}

// Stop closes the listener, the engine and the log (idempotent).
func (p *Peer) Stop() {
	if p.httpSrv == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = p.httpSrv.Shutdown(ctx)
	if p.Queue != nil {
		p.Queue.Close()
	}
	p.Client.Close()
	_ = p.Engine.Close()
	_ = p.Log.Close()
	p.httpSrv = nil
}
