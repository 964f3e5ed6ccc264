package testca

import (
	"context"
	"net"
	"strings"
	"sync"
	"testing"

	"golang.org/x/net/dns/dnsmessage"
)

// DNS is a tiny authoritative DNS server on loopback UDP, for tests of
// server discovery (SRV, A records) without touching the host's resolver.
type DNS struct {
	conn net.PacketConn
	mu   sync.Mutex
	a    map[string][]net.IP // name (lower case, with trailing dot) -> A
	srv  map[string][]net.SRV
}

// NewDNS starts a server; Close it with t.Cleanup (done for you).
func NewDNS(t testing.TB) *DNS {
	t.Helper()
	conn, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	d := &DNS{conn: conn, a: map[string][]net.IP{}, srv: map[string][]net.SRV{}}
	go d.serve()
	t.Cleanup(func() { conn.Close() })
	return d
}

func fqdn(name string) string {
	name = strings.ToLower(name)
	if !strings.HasSuffix(name, ".") {
		name += "."
	}
	return name
}

// A adds an A record.
func (d *DNS) A(name string, ip string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.a[fqdn(name)] = append(d.a[fqdn(name)], net.ParseIP(ip).To4())
}

// SRV adds an SRV record ("_matrix-fed._tcp.example.test").
func (d *DNS) SRV(name, target string, port uint16, priority, weight uint16) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.srv[fqdn(name)] = append(d.srv[fqdn(name)], net.SRV{Target: fqdn(target), Port: port, Priority: priority, Weight: weight})
}

// Resolver is a Go resolver that asks only this server.
func (d *DNS) Resolver() *net.Resolver {
	addr := d.conn.LocalAddr().String()
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var dl net.Dialer
		return dl.DialContext(ctx, "udp", addr)
	}}
}

func (d *DNS) serve() {
	buf := make([]byte, 1500)
	for {
		n, from, err := d.conn.ReadFrom(buf)
		if err != nil {
			return
		}
		var p dnsmessage.Parser
		h, err := p.Start(buf[:n])
		if err != nil {
			continue
		}
		q, err := p.Question()
		if err != nil {
			continue
		}
		name := strings.ToLower(q.Name.String())
		b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true, RCode: dnsmessage.RCodeSuccess})
		b.EnableCompression()
		_ = b.StartQuestions()
		_ = b.Question(q)
		_ = b.StartAnswers()
		d.mu.Lock()
		found := false
		rh := dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: 60}
		switch q.Type {
		case dnsmessage.TypeA:
			for _, ip := range d.a[name] {
				found = true
				var a [4]byte
				copy(a[:], ip)
				_ = b.AResource(rh, dnsmessage.AResource{A: a})
			}
		case dnsmessage.TypeSRV:
			for _, s := range d.srv[name] {
				found = true
				_ = b.SRVResource(rh, dnsmessage.SRVResource{Priority: s.Priority, Weight: s.Weight, Port: s.Port, Target: dnsmessage.MustNewName(s.Target)})
			}
		}
		_, known := d.a[name]
		_, knownSRV := d.srv[name]
		d.mu.Unlock()
		msg, err := b.Finish()
		if err != nil {
			continue
		}
		if !found && !known && !knownSRV {
			// NXDOMAIN: rebuild the header with the error code.
			b2 := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true, RCode: dnsmessage.RCodeNameError})
			_ = b2.StartQuestions()
			_ = b2.Question(q)
			if m2, err := b2.Finish(); err == nil {
				msg = m2
			}
		}
		_, _ = d.conn.WriteTo(msg, from)
	}
}
