package log

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"sync"
	"sync/atomic"
	"time"

	hclog "github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	"github.com/rs/zerolog"
)

// ClusterServerName is the name every node certificate carries (besides
// the node's ID) and every node dials: nodes are reached by address, and
// what makes a peer trusted is a certificate issued by the cluster CA.
const ClusterServerName = "engram-raft"

// ClusterTLS builds the mutual-TLS configuration of a node from PEM: the
// cluster CA's certificate and this node's certificate and key. Servers
// require and verify client certificates against the CA; clients verify
// servers against it.
func ClusterTLS(caPEM, certPEM, keyPEM []byte) (*tls.Config, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, errors.New("log: the cluster CA file holds no PEM certificate")
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("log: the node certificate or key: %w", err)
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    pool,
		RootCAs:      pool,
		ServerName:   ClusterServerName,
		// X25519 alone: the default hybrid post-quantum exchange costs
		// several times more CPU per handshake, which is what a stranger
		// flooding the raft port spends of ours (measured: ~150 rejected
		// handshakes/s halved a loaded cluster's write rate).
		CurvePreferences: []tls.CurveID{tls.X25519},
	}, nil
}

// handshakeTimeout bounds a TLS handshake on the raft port.
const handshakeTimeout = 5 * time.Second

// tlsStream is raft's stream layer over mutual TLS. Accept hands raft only
// connections whose handshake succeeded, so a peer without a certificate
// issued by the cluster CA is dropped before a byte of it is read as a
// raft message. Handshakes run concurrently, so slow or hostile clients do
// not hold up real peers.
type tlsStream struct {
	ln     net.Listener
	adv    net.Addr    // what raft tells peers to dial
	conf   *tls.Config // raft's client side: offers no ALPN protocol
	server *tls.Config // accepts raft (no ALPN) and forwardProto
	log    zerolog.Logger
	conns  chan net.Conn // raft's
	fwd    chan net.Conn // forwarded client requests (forwardProto)
	closed chan struct{}
	once   sync.Once

	rejected   atomic.Uint64 // connections dropped at the handshake
	lastWarned atomic.Int64  // unix ns of the last line about them
	failures   failureBudget
}

// failureBudget bounds the handshakes an address may fail: each failed
// handshake spends a token, tokens come back at failRefill per second up
// to failBurst, and while an address has none its connections are closed
// before any TLS work. A flood of connections without a valid certificate
// then costs an accept and a close each, not a key exchange, a signature
// and a certificate check, so it cannot take the CPU raft needs. Real
// peers keep their connections open and never fail a handshake; a peer
// sharing an address with a flooder (loopback, NAT) is held back only
// while the flood lasts, and raft redials.
type failureBudget struct {
	mu    sync.Mutex
	addrs map[string]*failTokens
}

type failTokens struct {
	tokens float64
	at     time.Time
}

const (
	failBurst  = 20
	failRefill = 10 // per second
	failAddrs  = 4096
)

// allow says whether a connection from host may try a handshake.
func (b *failureBudget) allow(host string, now time.Time) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	f := b.addrs[host]
	if f == nil {
		return true
	}
	f.tokens = min(failBurst, f.tokens+now.Sub(f.at).Seconds()*failRefill)
	f.at = now
	if f.tokens >= failBurst {
		delete(b.addrs, host) // back to full: forget it
	}
	return f.tokens >= 1
}

// failed spends one of host's tokens.
func (b *failureBudget) failed(host string, now time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	f := b.addrs[host]
	if f == nil {
		if b.addrs == nil || len(b.addrs) >= failAddrs {
			b.addrs = map[string]*failTokens{} // many flooders: start over rather than grow
		}
		f = &failTokens{tokens: failBurst, at: now}
		b.addrs[host] = f
	}
	f.tokens = max(0, min(failBurst, f.tokens+now.Sub(f.at).Seconds()*failRefill)-1)
	f.at = now
}

func remoteHost(c net.Conn) string {
	if a, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		return a.IP.String()
	}
	return c.RemoteAddr().String()
}

func newTLSStream(addr string, adv net.Addr, conf *tls.Config, l zerolog.Logger) (*tlsStream, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	server := conf.Clone()
	server.NextProtos = []string{forwardProto}
	s := &tlsStream{ln: ln, adv: adv, conf: conf, server: server, log: l, conns: make(chan net.Conn), fwd: make(chan net.Conn), closed: make(chan struct{})}
	go s.acceptLoop()
	return s, nil
}

func (s *tlsStream) acceptLoop() {
	for {
		raw, err := s.ln.Accept()
		if err != nil {
			select {
			case <-s.closed:
				return
			default:
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			time.Sleep(10 * time.Millisecond)
			continue
		}
		if !s.failures.allow(remoteHost(raw), time.Now()) {
			s.rejected.Add(1)
			raw.Close()
			continue
		}
		go s.handshake(raw)
	}
}

func (s *tlsStream) handshake(raw net.Conn) {
	c := tls.Server(raw, s.server)
	ctx, cancel := context.WithTimeout(context.Background(), handshakeTimeout)
	defer cancel()
	if err := c.HandshakeContext(ctx); err != nil {
		s.failures.failed(remoteHost(raw), time.Now())
		total := s.rejected.Add(1)
		// One line per 10 s at most: whoever floods the port must not
		// flood the log too.
		if now, last := time.Now().UnixNano(), s.lastWarned.Load(); now-last > int64(10*time.Second) && s.lastWarned.CompareAndSwap(last, now) {
			s.log.Warn().Str("remote", raw.RemoteAddr().String()).Err(err).Uint64("rejected_total", total).
				Msg("log: dropped a raft connection without a valid cluster certificate (a node needs one from `engram cluster add-node`)")
		}
		raw.Close()
		return
	}
	// Both kinds of traffic need the cluster certificate; ALPN tells a
	// forwarded request (HTTP/1.1) from raft's own protocol.
	to := s.conns
	if c.ConnectionState().NegotiatedProtocol == forwardProto {
		to = s.fwd
	}
	select {
	case to <- c:
	case <-s.closed:
		c.Close()
	}
}

func (s *tlsStream) Accept() (net.Conn, error) {
	select {
	case c := <-s.conns:
		return c, nil
	case <-s.closed:
		return nil, net.ErrClosed
	}
}

func (s *tlsStream) Close() error {
	s.once.Do(func() { close(s.closed) })
	return s.ln.Close()
}

func (s *tlsStream) Addr() net.Addr { return s.adv }

func (s *tlsStream) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	d := &net.Dialer{Timeout: timeout}
	c, err := tls.DialWithDialer(d, "tcp", string(address), s.conf)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// newTransport is raft's network transport: over mutual TLS when conf is
// set, plain TCP otherwise (in-package tests on loopback only: serve
// requires the cluster certificates).
func newTransport(addr, advertise string, conf *tls.Config, l zerolog.Logger, hlog hclog.Logger) (raft.Transport, *tlsStream, error) {
	adv, err := net.ResolveTCPAddr("tcp", advertise)
	if err != nil {
		return nil, nil, fmt.Errorf("log: raft address %q: %w", advertise, err)
	}
	if adv.IP == nil || adv.IP.IsUnspecified() {
		return nil, nil, fmt.Errorf("log: raft address %q is not one peers can dial: list this node in cluster.peers with its reachable address", advertise)
	}
	if conf == nil {
		t, err := raft.NewTCPTransportWithLogger(addr, adv, 4, 10*time.Second, hlog)
		if err != nil {
			return nil, nil, fmt.Errorf("log: listening for raft on %s (port in use?): %w", addr, err)
		}
		return t, nil, nil
	}
	s, err := newTLSStream(addr, adv, conf, l)
	if err != nil {
		return nil, nil, fmt.Errorf("log: listening for raft on %s (port in use?): %w", addr, err)
	}
	return raft.NewNetworkTransportWithLogger(s, 4, 10*time.Second, hlog), s, nil
}

// NewClusterCA creates a cluster CA (ECDSA P-256, ten years): the PEM
// certificate every node trusts and the PEM key that issues node
// certificates (keep it off the nodes once they are issued).
func NewClusterCA(name string, now time.Time) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          randomSerial(),
		Subject:               pkix.Name{CommonName: name + " Engram cluster CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.AddDate(10, 0, 0),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, err
	}
	return pemEncode("CERTIFICATE", der), pemKey(key), nil
}

// IssueNodeCert issues a node's certificate (five years), valid for TLS
// both as server and as client, named nodeID and ClusterServerName.
func IssueNodeCert(caCertPEM, caKeyPEM []byte, nodeID string, now time.Time) (certPEM, keyPEM []byte, err error) {
	ca, err := tls.X509KeyPair(caCertPEM, caKeyPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("log: the cluster CA certificate or key: %w", err)
	}
	caCert, err := x509.ParseCertificate(ca.Certificate[0])
	if err != nil {
		return nil, nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: randomSerial(),
		Subject:      pkix.Name{CommonName: nodeID},
		DNSNames:     []string{ClusterServerName, nodeID},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.AddDate(5, 0, 0),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, ca.PrivateKey)
	if err != nil {
		return nil, nil, err
	}
	return pemEncode("CERTIFICATE", der), pemKey(key), nil
}

func randomSerial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return n
}

func pemEncode(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

func pemKey(k *ecdsa.PrivateKey) []byte {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		panic(err) // a valid P-256 key always marshals
	}
	return pemEncode("PRIVATE KEY", der)
}
