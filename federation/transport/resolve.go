package transport

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Target is one place to send a server's federation requests, found by
// the spec's server discovery (server-server API, "Resolving server
// names").
type Target struct {
	// Addr is host:port to connect to; host is an IP literal or a name
	// resolved with A/AAAA records at dial time.
	Addr string
	// CertName is the name the TLS certificate must be valid for (and the
	// SNI sent, unless it is an IP address).
	CertName string
	// Host is the Host header.
	Host string
}

const defaultPort = "8448"

// Well-known caching bounds (spec: default 24 h, at most 48 h; errors
// cached up to an hour, backing off on repeated failures).
const (
	wellKnownDefaultTTL = 24 * time.Hour
	wellKnownMaxTTL     = 48 * time.Hour
	wellKnownMinTTL     = 5 * time.Minute
	wellKnownErrMinTTL  = 2 * time.Minute
	wellKnownErrMaxTTL  = time.Hour
	wellKnownMaxBody    = 64 << 10
	wellKnownRedirects  = 5
)

// SplitServerName splits a server name into host and port ("" when
// absent), following the appendix grammar: an IPv4 address, a bracketed
// IPv6 address or a DNS name, optionally with ":port". isIP reports an IP
// literal; the returned host of an IPv6 literal has no brackets.
func SplitServerName(name string) (host, port string, isIP bool, err error) {
	if name == "" || len(name) > 255 {
		return "", "", false, fmt.Errorf("server name %q: empty or too long", name)
	}
	h := name
	if strings.HasPrefix(name, "[") {
		end := strings.IndexByte(name, ']')
		if end < 0 {
			return "", "", false, fmt.Errorf("server name %q: unterminated IPv6 literal", name)
		}
		h, port = name[1:end], name[end+1:]
		if port != "" {
			if port[0] != ':' {
				return "", "", false, fmt.Errorf("server name %q: junk after the IPv6 literal", name)
			}
			port = port[1:]
		}
		if ip := net.ParseIP(h); ip == nil || ip.To4() != nil {
			return "", "", false, fmt.Errorf("server name %q: not an IPv6 literal", name)
		}
		isIP = true
	} else {
		if i := strings.LastIndexByte(name, ':'); i >= 0 {
			h, port = name[:i], name[i+1:]
		}
		if net.ParseIP(h) != nil {
			isIP = true
		} else if !validDNSName(h) {
			return "", "", false, fmt.Errorf("server name %q: not a valid host name", name)
		}
	}
	if port != "" || strings.HasSuffix(name, ":") {
		n, err := strconv.Atoi(port)
		if err != nil || n < 1 || n > 65535 || len(port) > 5 {
			return "", "", false, fmt.Errorf("server name %q: bad port", name)
		}
	}
	return h, port, isIP, nil
}

func validDNSName(h string) bool {
	if h == "" || len(h) > 255 {
		return false
	}
	for i := 0; i < len(h); i++ {
		c := h[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.') {
			return false
		}
	}
	return true
}

type wellKnownEntry struct {
	server  string // m.server, "" when the lookup failed
	expires time.Time
	fails   int
}

// resolver runs server discovery and caches .well-known answers.
type resolver struct {
	dns        *net.Resolver
	httpClient *http.Client // for .well-known: filtered dialer, verified TLS
	now        func() time.Time
	// wellKnownPort is 443 except in tests, which cannot bind it.
	wellKnownPort string

	static map[string]string

	mu    sync.Mutex
	cache map[string]*wellKnownEntry
}

// resolve returns the targets for serverName, best first.
func (r *resolver) resolve(ctx context.Context, serverName string) ([]Target, error) {
	host, port, isIP, err := SplitServerName(serverName)
	if err != nil {
		return nil, err
	}
	if addr, ok := r.static[serverName]; ok {
		return []Target{{Addr: addr, CertName: host, Host: serverName}}, nil
	}
	// Step 1: an IP literal.
	if isIP {
		return []Target{{Addr: net.JoinHostPort(host, orDefault(port)), CertName: host, Host: serverName}}, nil
	}
	// Step 2: a host name with an explicit port.
	if port != "" {
		return []Target{{Addr: net.JoinHostPort(host, port), CertName: host, Host: serverName}}, nil
	}
	// Step 3: .well-known delegation.
	if delegated := r.wellKnown(ctx, host); delegated != "" {
		dhost, dport, dIsIP, err := SplitServerName(delegated)
		if err == nil {
			switch {
			case dIsIP: // 3.1
				return []Target{{Addr: net.JoinHostPort(dhost, orDefault(dport)), CertName: dhost, Host: delegated}}, nil
			case dport != "": // 3.2
				return []Target{{Addr: net.JoinHostPort(dhost, dport), CertName: dhost, Host: delegated}}, nil
			}
			// 3.3 and 3.4: SRV for the delegated name; 3.5: port 8448.
			if ts := r.srv(ctx, dhost, dhost); len(ts) > 0 {
				return ts, nil
			}
			return []Target{{Addr: net.JoinHostPort(dhost, defaultPort), CertName: dhost, Host: dhost}}, nil
		}
		// An invalid m.server is an invalid response: fall through to 4.
	}
	// Steps 4 and 5: SRV records for the server name itself.
	if ts := r.srv(ctx, host, host); len(ts) > 0 {
		return ts, nil
	}
	// Step 6.
	return []Target{{Addr: net.JoinHostPort(host, defaultPort), CertName: host, Host: host}}, nil
}

func orDefault(port string) string {
	if port == "" {
		return defaultPort
	}
	return port
}

// srv looks up _matrix-fed._tcp.<name>, then the deprecated
// _matrix._tcp.<name>. The certificate and Host stay certName: the SRV
// target must prove with TLS that it serves that name.
func (r *resolver) srv(ctx context.Context, name, certName string) []Target {
	for _, service := range []string{"matrix-fed", "matrix"} {
		_, addrs, err := r.dns.LookupSRV(ctx, service, "tcp", name)
		if err != nil || len(addrs) == 0 {
			continue
		}
		var out []Target
		for _, a := range addrs {
			target := strings.TrimSuffix(a.Target, ".")
			if target == "" { // "." means the service is decidedly not available
				continue
			}
			out = append(out, Target{Addr: net.JoinHostPort(target, strconv.Itoa(int(a.Port))), CertName: certName, Host: certName})
		}
		if len(out) > 0 {
			return out
		}
	}
	return nil
}

// wellKnown returns m.server for host, or "" when there is none (cached
// either way).
func (r *resolver) wellKnown(ctx context.Context, host string) string {
	now := r.now()
	r.mu.Lock()
	e := r.cache[host]
	r.mu.Unlock()
	if e != nil && now.Before(e.expires) {
		return e.server
	}
	server, ttl, err := r.fetchWellKnown(ctx, host)
	ne := &wellKnownEntry{server: server, expires: now.Add(ttl)}
	if err != nil {
		ne.server = ""
		if e != nil && e.server == "" {
			ne.fails = e.fails + 1
		}
		backoff := wellKnownErrMinTTL << min(ne.fails, 10)
		ne.expires = now.Add(min(backoff, wellKnownErrMaxTTL))
	}
	r.mu.Lock()
	r.cache[host] = ne
	r.mu.Unlock()
	return ne.server
}

var errNoWellKnown = errors.New("no valid .well-known/matrix/server")

func (r *resolver) fetchWellKnown(ctx context.Context, host string) (string, time.Duration, error) {
	u := "https://" + host
	if r.wellKnownPort != "" && r.wellKnownPort != "443" {
		u = "https://" + net.JoinHostPort(host, r.wellKnownPort)
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u+"/.well-known/matrix/server", nil)
	if err != nil {
		return "", 0, err
	}
	resp, err := r.httpClient.Do(req)
	if err != nil {
		return "", 0, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, wellKnownMaxBody))
	if err != nil {
		return "", 0, err
	}
	if resp.StatusCode != http.StatusOK {
		return "", 0, fmt.Errorf("%w: status %d", errNoWellKnown, resp.StatusCode)
	}
	var wk struct {
		Server string `json:"m.server"`
	}
	if err := json.Unmarshal(body, &wk); err != nil || wk.Server == "" {
		return "", 0, fmt.Errorf("%w: body is not {\"m.server\": ...}", errNoWellKnown)
	}
	return wk.Server, cacheTTL(resp.Header, r.now()), nil
}

// cacheTTL reads Cache-Control max-age (or no-store/no-cache, cached for
// the minimum) and Expires, bounded to [wellKnownMinTTL, wellKnownMaxTTL].
func cacheTTL(h http.Header, now time.Time) time.Duration {
	ttl := wellKnownDefaultTTL
	found := false
	for _, cc := range h.Values("Cache-Control") {
		for _, d := range strings.Split(cc, ",") {
			d = strings.ToLower(strings.TrimSpace(d))
			switch {
			case d == "no-store" || d == "no-cache":
				return wellKnownMinTTL
			case strings.HasPrefix(d, "max-age="):
				if n, err := strconv.ParseInt(strings.Trim(d[len("max-age="):], `"`), 10, 64); err == nil && n >= 0 {
					ttl, found = time.Duration(min(n, int64(wellKnownMaxTTL/time.Second)))*time.Second, true
				}
			}
		}
	}
	if !found {
		if exp := h.Get("Expires"); exp != "" {
			if t, err := http.ParseTime(exp); err == nil {
				ttl = t.Sub(now)
			} else {
				ttl = 0 // an invalid Expires means already expired (RFC 9111)
			}
		}
	}
	return min(max(ttl, wellKnownMinTTL), wellKnownMaxTTL)
}
