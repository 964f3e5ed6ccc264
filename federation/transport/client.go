// Package transport is Engram's outbound federation client: server
// discovery (.well-known, SRV, IP literals, explicit ports), TLS verified
// against the system roots plus operator-supplied CAs, an IP-range deny
// list enforced at dial time, and X-Matrix request signing.
package transport

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/engram-hs/engram/federation/xmatrix"
	"github.com/engram-hs/engram/stateres/signing"
)

// Config is the outbound client's configuration.
type Config struct {
	// ServerName and Key sign requests (X-Matrix origin and key).
	ServerName string
	Key        signing.Key
	// RootCAs are trusted in addition to the system roots.
	RootCAs []*x509.Certificate
	// InsecureSkipVerify turns off certificate checks
	// (federation_verify_certificates: false). For tests only.
	InsecureSkipVerify bool
	// IPFilter refuses dials to denied ranges; nil allows everything.
	IPFilter *IPFilter
	// Resolver looks up SRV, A and AAAA records; nil is the system's.
	Resolver *net.Resolver
	// StaticHosts maps server names to the host:port to connect to,
	// skipping discovery (federation_hosts: test rigs and private
	// networks without DNS). The certificate must still be valid for the
	// server name's host.
	StaticHosts map[string]string
	// Timeout bounds a request that has no deadline of its own (default
	// 60 s, Synapse's federation client_timeout).
	Timeout time.Duration
	Logger  zerolog.Logger
	Now     func() time.Time
}

// Client sends federation requests.
type Client struct {
	cfg    Config
	tlsCfg *tls.Config
	dialer *net.Dialer
	res    *resolver

	mu         sync.Mutex
	transports map[string]*http.Transport // by Target.Addr + "|" + Target.CertName
}

// New builds a client.
func New(cfg Config) (*Client, error) {
	if cfg.ServerName == "" || cfg.Key.Private == nil {
		return nil, errors.New("transport: ServerName and Key are required")
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 60 * time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Resolver == nil {
		cfg.Resolver = net.DefaultResolver
	}
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	for _, c := range cfg.RootCAs {
		pool.AddCert(c)
	}
	c := &Client{
		cfg:        cfg,
		tlsCfg:     &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12, InsecureSkipVerify: cfg.InsecureSkipVerify},
		transports: map[string]*http.Transport{},
	}
	c.dialer = &net.Dialer{Timeout: 15 * time.Second, KeepAlive: 30 * time.Second, Resolver: cfg.Resolver}
	if cfg.IPFilter != nil {
		c.dialer.Control = cfg.IPFilter.control
	}
	wkTransport := &http.Transport{
		DialContext:         c.dialer.DialContext,
		TLSClientConfig:     c.tlsCfg.Clone(),
		TLSHandshakeTimeout: 10 * time.Second,
		IdleConnTimeout:     30 * time.Second,
	}
	c.res = &resolver{
		dns: cfg.Resolver,
		httpClient: &http.Client{Transport: wkTransport, CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if len(via) >= wellKnownRedirects {
				return errors.New("too many redirects")
			}
			return nil
		}},
		now:    cfg.Now,
		cache:  map[string]*wellKnownEntry{},
		static: cfg.StaticHosts,
	}
	return c, nil
}

// ServerName is the name this client signs as.
func (c *Client) ServerName() string { return c.cfg.ServerName }

// Resolve runs server discovery for serverName.
func (c *Client) Resolve(ctx context.Context, serverName string) ([]Target, error) {
	return c.res.resolve(ctx, serverName)
}

func (c *Client) transportFor(t Target) *http.Transport {
	key := t.Addr + "|" + t.CertName
	c.mu.Lock()
	defer c.mu.Unlock()
	if tr := c.transports[key]; tr != nil {
		return tr
	}
	tc := c.tlsCfg.Clone()
	tc.ServerName = t.CertName
	addr := t.Addr
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return c.dialer.DialContext(ctx, network, addr)
		},
		TLSClientConfig:     tc,
		ForceAttemptHTTP2:   true,
		TLSHandshakeTimeout: 10 * time.Second,
		MaxIdleConnsPerHost: 8,
		IdleConnTimeout:     90 * time.Second,
	}
	c.transports[key] = tr
	return tr
}

// Close drops idle connections.
func (c *Client) Close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, tr := range c.transports {
		tr.CloseIdleConnections()
	}
}

// Request is one outbound request.
type Request struct {
	Destination string
	Method      string
	// Path is the request target: path and query, already escaped
	// ("/_matrix/federation/v1/query/profile?user_id=%40a%3Ab").
	Path string
	// Body is JSON; nil for none. Any non-nil value other than []byte or
	// json.RawMessage is marshalled.
	Body any
	// Unsigned skips the Authorization header (key fetches).
	Unsigned bool
	// Header holds extra request headers.
	Header http.Header
}

// HTTPError is a non-2xx answer. Errcode and Message come from a Matrix
// error body when there is one.
type HTTPError struct {
	Destination string
	Status      int
	Errcode     string
	Message     string
}

func (e *HTTPError) Error() string {
	if e.Errcode != "" {
		return fmt.Sprintf("%s answered %d %s: %s", e.Destination, e.Status, e.Errcode, e.Message)
	}
	return fmt.Sprintf("%s answered %d", e.Destination, e.Status)
}

// MatrixError lets callers that do not import this package (api) read
// the remote error.
func (e *HTTPError) MatrixError() (status int, errcode, message string) {
	return e.Status, e.Errcode, e.Message
}

// Do sends r and returns the response (the caller closes its body). Only
// connection failures move on to the next discovered target.
func (c *Client) Do(ctx context.Context, r Request) (*http.Response, error) {
	var body []byte
	switch b := r.Body.(type) {
	case nil:
	case []byte:
		body = b
	case json.RawMessage:
		body = b
	default:
		var err error
		if body, err = json.Marshal(b); err != nil {
			return nil, fmt.Errorf("transport: encoding the request to %s: %w", r.Destination, err)
		}
	}
	if r.Destination == c.cfg.ServerName {
		return nil, fmt.Errorf("transport: refusing to send a federation request to ourselves (%s)", r.Destination)
	}
	var auth string
	if !r.Unsigned {
		var err error
		if auth, err = xmatrix.Sign(c.cfg.ServerName, r.Destination, c.cfg.Key, r.Method, r.Path, body); err != nil {
			return nil, fmt.Errorf("transport: signing the request to %s: %w", r.Destination, err)
		}
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.cfg.Timeout)
		resp, err := c.do(ctx, r, body, auth)
		if err != nil {
			cancel()
			return nil, err
		}
		resp.Body = cancelOnClose{resp.Body, cancel}
		return resp, nil
	}
	return c.do(ctx, r, body, auth)
}

type cancelOnClose struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (c cancelOnClose) Close() error { err := c.ReadCloser.Close(); c.cancel(); return err }

func (c *Client) do(ctx context.Context, r Request, body []byte, auth string) (*http.Response, error) {
	targets, err := c.res.resolve(ctx, r.Destination)
	if err != nil {
		return nil, err
	}
	var lastErr error
	for _, t := range targets {
		req, err := http.NewRequestWithContext(ctx, r.Method, "https://"+t.Host+r.Path, bytes.NewReader(body))
		if err != nil {
			return nil, fmt.Errorf("transport: request to %s: %w", r.Destination, err)
		}
		req.Host = t.Host
		if body != nil {
			req.Header.Set("Content-Type", "application/json")
		} else {
			req.Body, req.ContentLength = http.NoBody, 0
		}
		for k, vs := range r.Header {
			req.Header[k] = vs
		}
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		req.Header.Set("User-Agent", "Engram")
		resp, err := c.transportFor(t).RoundTrip(req)
		if err == nil {
			return resp, nil
		}
		lastErr = fmt.Errorf("%s (via %s): %w", r.Destination, t.Addr, err)
		if ctx.Err() != nil {
			break
		}
	}
	return nil, lastErr
}

// DefaultMaxResponse bounds a response body DoJSON reads.
const DefaultMaxResponse = 64 << 20

// DoJSON sends r and decodes a 2xx JSON answer into out (unless nil). A
// non-2xx answer is an *HTTPError.
func (c *Client) DoJSON(ctx context.Context, r Request, out any) error {
	resp, err := c.Do(ctx, r)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, DefaultMaxResponse+1))
	if err != nil {
		return fmt.Errorf("%s: reading the response: %w", r.Destination, err)
	}
	if len(b) > DefaultMaxResponse {
		return fmt.Errorf("%s: response larger than %d bytes", r.Destination, DefaultMaxResponse)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		he := &HTTPError{Destination: r.Destination, Status: resp.StatusCode}
		var me struct {
			Errcode string `json:"errcode"`
			Error   string `json:"error"`
		}
		if json.Unmarshal(b, &me) == nil {
			he.Errcode, he.Message = me.Errcode, me.Error
		}
		return he
	}
	if out == nil {
		return nil
	}
	if raw, ok := out.(*json.RawMessage); ok {
		*raw = append((*raw)[:0], b...)
		return nil
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("%s: the response is not the JSON expected: %w", r.Destination, err)
	}
	return nil
}

// PathEscape escapes one path segment of a federation URL.
func PathEscape(s string) string {
	// url.PathEscape leaves ':' and '@' alone, which Matrix IDs are full of
	// and some servers' routers mis-split; escape everything but unreserved.
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		ch := s[i]
		if ch >= 'a' && ch <= 'z' || ch >= 'A' && ch <= 'Z' || ch >= '0' && ch <= '9' || strings.IndexByte("-._~", ch) >= 0 {
			b.WriteByte(ch)
		} else {
			fmt.Fprintf(&b, "%%%02X", ch)
		}
	}
	return b.String()
}
