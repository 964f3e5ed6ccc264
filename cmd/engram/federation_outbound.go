package main

import (
	"crypto/ed25519"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/engram-hs/engram/federation"
	"github.com/engram-hs/engram/federation/keys"
	"github.com/engram-hs/engram/federation/queue"
	"github.com/engram-hs/engram/federation/transport"
	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/projections"
	"github.com/engram-hs/engram/projections/fedqueue"
	"github.com/engram-hs/engram/projections/serverkeys"
	"github.com/engram-hs/engram/roomwrite"
	"github.com/engram-hs/engram/stateres/signing"
)

// trustedKeyServer is one entry of trusted_key_servers (Synapse's shape:
// server_name and verify_keys).
type trustedKeyServer struct {
	ServerName string            `json:"server_name"`
	VerifyKeys map[string]string `json:"verify_keys"`
}

func duration(p func(*Config) *time.Duration) func(*Config, value) error {
	return func(c *Config, v value) error {
		d, err := parseDuration(v.scalar)
		if v.isList || err != nil {
			return errForm
		}
		*p(c) = d
		return nil
	}
}

// ipRanges reads a list of CIDR ranges (checked here so a typo stops the
// start, not the first federation request).
func ipRanges(p func(*Config) *[]string, blacklist bool) func(*Config, value) error {
	return func(c *Config, v value) error {
		if err := list(p)(c, v); err != nil {
			return err
		}
		if _, err := transport.NewIPFilter(*p(c), nil); err != nil {
			return errForm
		}
		if blacklist {
			c.IPRangeBlacklistSet = true
		}
		return nil
	}
}

// parseFederationHosts reads federation_hosts: server names mapped to
// the address to connect to, as /etc/hosts does for names (and ports).
func parseFederationHosts(c *Config, v value) error {
	items := v.list
	if !v.isList {
		items = strings.Split(v.scalar, ",")
	}
	c.FederationHosts = map[string]string{}
	for _, it := range items {
		if it = strings.TrimSpace(it); it == "" {
			continue
		}
		name, addr, ok := strings.Cut(it, "=")
		if _, _, _, err := transport.SplitServerName(name); !ok || err != nil {
			return errForm
		}
		if _, port, err := net.SplitHostPort(addr); err != nil || port == "" {
			return errForm
		}
		c.FederationHosts[name] = addr
	}
	return nil
}

func parseTrustedKeyServers(c *Config, v value) error {
	items := v.list
	if !v.isList {
		// The environment and flags give a JSON list.
		if strings.TrimSpace(v.scalar) == "" {
			c.TrustedKeyServers = nil
			return nil
		}
		var raw []json.RawMessage
		if err := json.Unmarshal([]byte(v.scalar), &raw); err != nil {
			return errForm
		}
		items = nil
		for _, r := range raw {
			items = append(items, string(r))
		}
	}
	c.TrustedKeyServers = nil
	for _, it := range items {
		var t trustedKeyServer
		if err := json.Unmarshal([]byte(it), &t); err != nil || t.ServerName == "" || len(t.VerifyKeys) == 0 {
			return errForm
		}
		for id, k := range t.VerifyKeys {
			if b, err := signing.DecodeBase64(k); err != nil || len(b) != ed25519.PublicKeySize || !strings.HasPrefix(id, "ed25519:") {
				return errForm
			}
		}
		c.TrustedKeyServers = append(c.TrustedKeyServers, t)
	}
	return nil
}

// transportConfig is the outbound federation client's configuration.
// Besides the system roots and federation_custom_ca_list, the CA this
// server issues its own certificate from (federation_tls_ca_cert) is
// trusted: a private federation shares one CA.
func (c Config) transportConfig(key signing.Key, logger zerolog.Logger) (transport.Config, error) {
	tc := transport.Config{
		ServerName:         c.ServerName,
		Key:                key,
		InsecureSkipVerify: !c.FederationVerifyCertificates,
		Timeout:            c.FederationClientTimeout,
		StaticHosts:        c.FederationHosts,
		Logger:             logger,
	}
	cas := append([]string(nil), c.FederationCustomCAList...)
	if c.FederationTLSCACert != "" {
		cas = append(cas, c.FederationTLSCACert)
	}
	for _, path := range cas {
		certs, err := readCertificates(path)
		if err != nil {
			return tc, err
		}
		tc.RootCAs = append(tc.RootCAs, certs...)
	}
	deny := transport.DefaultIPRangeBlacklist
	switch {
	case c.IPRangeBlacklistSet:
		deny = c.IPRangeBlacklist
	case c.loopbackOnly():
		deny = withoutLoopback(deny)
	}
	f, err := transport.NewIPFilter(deny, c.IPRangeWhitelist)
	if err != nil {
		return tc, fmt.Errorf("ip_range_blacklist/ip_range_whitelist: %w", err)
	}
	tc.IPFilter = f
	return tc, nil
}

// loopbackOnly reports a server that only this host can reach: both
// listeners are bound to loopback addresses and public_baseurl (where
// clients are told to connect) is a loopback address too. Two servers
// federating on one machine (names such as "localhost:8448" and
// "localhost:8449", development rigs, test suites) are such servers.
// The default deny list exists so that names supplied by other servers
// or by users cannot make this server reach services only this host can
// reach; when only this host can reach the server itself, every party
// that could supply such a name can already reach those services, so
// the default lets outbound federation reach loopback. A server behind
// a reverse proxy has a public public_baseurl and keeps the full list.
func (c Config) loopbackOnly() bool {
	if c.PublicBaseURL == "" || c.FederationListen == "" {
		return false
	}
	u, err := url.Parse(c.PublicBaseURL)
	if err != nil || !isLoopbackHost(u.Hostname()) {
		return false
	}
	for _, l := range []string{c.Listen, c.FederationListen} {
		h, _, err := net.SplitHostPort(l)
		if err != nil || !isLoopbackHost(h) {
			return false
		}
	}
	return true
}

// isLoopbackHost is a loopback IP literal or "localhost" (which RFC 6761
// reserves for loopback).
func isLoopbackHost(h string) bool {
	if strings.EqualFold(h, "localhost") {
		return true
	}
	a, err := netip.ParseAddr(h)
	return err == nil && a.Unmap().IsLoopback()
}

// withoutLoopback is list minus the ranges that hold loopback addresses.
func withoutLoopback(list []string) []string {
	var out []string
	for _, r := range list {
		p, err := netip.ParsePrefix(r)
		if err == nil && p.Addr().Unmap().IsLoopback() {
			continue
		}
		out = append(out, r)
	}
	return out
}

func readCertificates(path string) ([]*x509.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("federation_custom_ca_list: %w", err)
	}
	var out []*x509.Certificate
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		cert, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("federation_custom_ca_list: %s: %w", path, err)
		}
		out = append(out, cert)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("federation_custom_ca_list: %s holds no PEM certificate", path)
	}
	return out, nil
}

// trustedKeyServers converts the configuration to the keyring's form.
func (c Config) trustedKeyServers() []keys.TrustedKeyServer {
	var out []keys.TrustedKeyServer
	for _, t := range c.TrustedKeyServers {
		k := keys.TrustedKeyServer{ServerName: t.ServerName, VerifyKeys: map[string]ed25519.PublicKey{}}
		for id, b64 := range t.VerifyKeys {
			b, _ := signing.DecodeBase64(b64)
			k.VerifyKeys[id] = ed25519.PublicKey(b)
		}
		out = append(out, k)
	}
	return out
}

// federationProjections are the projections federation folds.
type federationProjections struct {
	keys, queue *projections.Handle
	queueProj   *fedqueue.Projection
}

// registerFederationProjections registers them; serve and the offline
// tools (rebuild, verify) both call it.
func registerFederationProjections(e *projections.Engine) federationProjections {
	qp := fedqueue.New(nil)
	return federationProjections{keys: e.Register(serverkeys.New()), queue: e.Register(qp), queueProj: qp}
}

// newFederationClient is the outbound federation client.
func newFederationClient(cfg Config, key signing.Key, logger zerolog.Logger) (*transport.Client, error) {
	tc, err := cfg.transportConfig(key, logger.With().Str("component", "federation_client").Logger())
	if err != nil {
		return nil, err
	}
	if tc.InsecureSkipVerify {
		logger.Warn().Msg("federation_verify_certificates is false: other servers' certificates are not checked, so anyone on the network path can impersonate them; use it for tests only")
	}
	ev := logger.Info().Int("extra_ca_certificates", len(tc.RootCAs)).Int("trusted_key_servers", len(cfg.TrustedKeyServers)).
		Bool("custom_ip_range_blacklist", cfg.IPRangeBlacklistSet).Strs("ip_range_whitelist", cfg.IPRangeWhitelist)
	if !cfg.IPRangeBlacklistSet && cfg.loopbackOnly() {
		ev = ev.Str("loopback", "allowed: listen, federation_listen and public_baseurl are all on loopback, so only this host can reach this server (set ip_range_blacklist to decide otherwise)")
	}
	if len(cfg.FederationHosts) > 0 {
		ev = ev.Int("federation_hosts", len(cfg.FederationHosts))
	}
	ev.Msg("outbound federation")
	return transport.New(tc)
}

// federationParts are the running federation pieces serve wires.
type federationParts struct {
	client  *transport.Client
	keyring *keys.Keyring
	queue   *queue.Queue
	server  *federation.Server
}

// newFederation builds the outbound client, the keyring and the handler
// root, registering their projections; call it before the engine starts
// and after api.New (whose projections the query endpoints read).
func newFederation(cfg Config, key signing.Key, node *englog.Node, engine *projections.Engine, rw *roomwrite.Writer, client *transport.Client, logger zerolog.Logger, metrics prometheus.Registerer) (*federationParts, error) {
	fp := registerFederationProjections(engine)
	keysH := fp.keys
	keyring, err := keys.New(keys.Config{ServerName: cfg.ServerName, Key: key, Log: node, Keys: keysH, Fetcher: client,
		Trusted: cfg.trustedKeyServers(), Logger: logger.With().Str("component", "keyring").Logger()})
	if err != nil {
		return nil, err
	}
	q, err := queue.New(queue.Config{ServerName: cfg.ServerName, Log: node, Projection: fp.queueProj, Queue: fp.queue, Sender: client,
		Leader: node.IsLeader, MinRetry: cfg.FederationMinRetryInterval, Multiplier: cfg.FederationRetryMultiplier,
		MaxRetry: cfg.FederationMaxRetryInterval, GiveUpAfter: cfg.FederationDestinationGiveUpAfter,
		Logger: logger.With().Str("component", "federation_queue").Logger(), Metrics: metrics})
	if err != nil {
		return nil, err
	}
	byName := map[string]*projections.Handle{}
	for _, h := range engine.Handles() {
		byName[h.Name()] = h
	}
	srv, err := federation.New(federation.Config{ServerName: cfg.ServerName, Version: version, Key: key, DeviceNamesOverFederation: cfg.AllowDeviceNameLookupOverFederation},
		federation.Deps{Log: node, Keys: keyring, Logger: logger, Accounts: byName["accounts"], Rooms: rw, OpenID: byName["openid"], E2EE: byName["e2ee"], Contacted: q.MarkUp, Deliver: q.Deliver, Client: client})
	if err != nil {
		return nil, err
	}
	return &federationParts{client: client, keyring: keyring, queue: q, server: srv}, nil
}

// start runs the delivery queue (after the engine caught up).
func (f *federationParts) start() { f.queue.Start() }

func (f *federationParts) close() {
	f.queue.Close()
	f.client.Close()
}
