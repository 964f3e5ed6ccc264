package main

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/engram-hs/engram/api"
	"github.com/engram-hs/engram/api/admin"
	"github.com/engram-hs/engram/api/appservice"
	"github.com/engram-hs/engram/api/ratelimit"
	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/stateres/signing"
)

// Config is the server's configuration. Keys use Synapse's homeserver.yaml
// names where the meaning is the same, so an operator's habits (and parts
// of an existing file) carry over.
type Config struct {
	ServerName                            string
	PublicBaseURL                         string
	EnableRegistration                    bool
	EnableRegistrationWithoutVerification bool
	RegistrationSharedSecret              string
	RegistrationRequiresToken             bool
	AllowGuestAccess                      bool
	MaxUploadSize                         int64
	TurnURIs                              []string
	TurnSharedSecret                      string
	TurnUserLifetime                      time.Duration
	TurnAllowGuests                       bool
	AppServiceConfigFiles                 []string
	appservices                           *appservice.Set // loaded from AppServiceConfigFiles at start
	AllowPublicRoomsWithoutAuth           bool
	AllowDeviceNameLookupOverFederation   bool
	DefaultRoomVersion                    string
	SigningKeyPath                        string
	ServeServerWellKnown                  bool
	LogLevel                              string
	BcryptRounds                          int

	DataDir             string
	Listen              string
	MetricsListen       string
	FederationListen    string
	FederationTLSCert   string
	FederationTLSKey    string
	FederationTLSCACert string
	FederationTLSCAKey  string

	// Outbound federation (federation_outbound.go).
	FederationCustomCAList           []string
	FederationVerifyCertificates     bool
	IPRangeBlacklist                 []string
	IPRangeBlacklistSet              bool
	IPRangeWhitelist                 []string
	TrustedKeyServers                []trustedKeyServer
	FederationHosts                  map[string]string
	FederationClientTimeout          time.Duration
	FederationMinRetryInterval       time.Duration
	FederationRetryMultiplier        float64
	FederationMaxRetryInterval       time.Duration
	FederationDestinationGiveUpAfter time.Duration

	RateLimitingEnabled bool
	RC                  ratelimit.Config // rc_* (config_operator.go)
	XForwarded          bool             // x_forwarded
	TrustedProxies      []netip.Prefix   // trusted_proxies
	ServerNotices       admin.ServerNotices

	ClusterNodeID     string
	ClusterRaftListen string
	ClusterPeers      []englog.Peer

	DiskReserve int64 // 0 = the larger of 1% of the disk and 256 MiB
	DiskBallast int64 // englog.BallastAuto = half the reserve, at most 128 MiB; 0 = none
	// MemoryTarget sizes Pebble's memtables and block cache
	// (englog.PebbleMemory); 0 = englog.DefaultMemoryTarget.
	MemoryTarget int64

	Media mediaSettings // config_media.go
}

// defaultConfig holds every default, in one place.
func defaultConfig() Config {
	return Config{
		ServerName:          "localhost",
		MaxUploadSize:       50 << 20,
		TurnUserLifetime:    time.Hour,
		LogLevel:            "info",
		BcryptRounds:        12,
		DataDir:             "engram-data",
		Listen:              "127.0.0.1:8008",
		RateLimitingEnabled: true,
		RC:                  ratelimit.Defaults(), // Synapse's

		FederationVerifyCertificates:     true,
		FederationClientTimeout:          60 * time.Second,
		FederationMinRetryInterval:       30 * time.Second,
		FederationRetryMultiplier:        2,
		FederationMaxRetryInterval:       time.Hour,
		FederationDestinationGiveUpAfter: 24 * time.Hour,

		DiskBallast: englog.BallastAuto,
	}
}

// value is one configuration value as found in YAML, the environment or a
// flag: a scalar, or a list.
type value struct {
	scalar string
	list   []string
	isList bool
}

// option describes one key: how to parse it and what form it expects (the
// form is quoted in error messages).
type option struct {
	key  string
	form string
	set  func(c *Config, v value) error
}

var errForm = errors.New("wrong form")

func str(p func(*Config) *string) func(*Config, value) error {
	return func(c *Config, v value) error {
		if v.isList {
			return errForm
		}
		*p(c) = v.scalar
		return nil
	}
}

func boolean(p func(*Config) *bool) func(*Config, value) error {
	return func(c *Config, v value) error {
		if v.isList {
			return errForm
		}
		switch strings.ToLower(v.scalar) {
		case "true", "yes", "on", "1":
			*p(c) = true
		case "false", "no", "off", "0":
			*p(c) = false
		default:
			return errForm
		}
		return nil
	}
}

func integer(p func(*Config) *int) func(*Config, value) error {
	return func(c *Config, v value) error {
		n, err := strconv.Atoi(v.scalar)
		if v.isList || err != nil || n < 0 {
			return errForm
		}
		*p(c) = n
		return nil
	}
}

func list(p func(*Config) *[]string) func(*Config, value) error {
	return func(c *Config, v value) error {
		if v.isList {
			*p(c) = v.list
			return nil
		}
		// The environment and flags give lists comma-separated.
		*p(c) = nil
		for _, s := range strings.Split(v.scalar, ",") {
			if s = strings.TrimSpace(s); s != "" {
				*p(c) = append(*p(c), s)
			}
		}
		return nil
	}
}

func hostPort(p func(*Config) *string, allowEmpty bool) func(*Config, value) error {
	return func(c *Config, v value) error {
		if v.isList {
			return errForm
		}
		if v.scalar == "" && allowEmpty {
			*p(c) = ""
			return nil
		}
		if _, port, err := net.SplitHostPort(v.scalar); err != nil || port == "" {
			return errForm
		}
		*p(c) = v.scalar
		return nil
	}
}

var options = []option{
	{"server_name", `a host name, optionally with a port ("example.org")`, func(c *Config, v value) error {
		if v.isList || v.scalar == "" || strings.ContainsAny(v.scalar, "/@ ") {
			return errForm
		}
		c.ServerName = v.scalar
		return nil
	}},
	{"public_baseurl", `a URL ("https://matrix.example.org/")`, str(func(c *Config) *string { return &c.PublicBaseURL })},
	{"enable_registration", "true or false", boolean(func(c *Config) *bool { return &c.EnableRegistration })},
	{"enable_registration_without_verification", "true or false", boolean(func(c *Config) *bool { return &c.EnableRegistrationWithoutVerification })},
	{"registration_shared_secret", "a string", str(func(c *Config) *string { return &c.RegistrationSharedSecret })},
	{"registration_requires_token", "true or false", boolean(func(c *Config) *bool { return &c.RegistrationRequiresToken })},
	{"allow_guest_access", "true or false", boolean(func(c *Config) *bool { return &c.AllowGuestAccess })},
	{"max_upload_size", `a size in bytes, or with a K, M or G suffix ("50M")`, func(c *Config, v value) error {
		n, err := parseSize(v.scalar)
		if v.isList || err != nil {
			return errForm
		}
		c.MaxUploadSize = n
		return nil
	}},
	{"turn_uris", `a list of TURN URIs ("turn:turn.example.org:3478?transport=udp")`, list(func(c *Config) *[]string { return &c.TurnURIs })},
	{"turn_shared_secret", "a string", str(func(c *Config) *string { return &c.TurnSharedSecret })},
	{"turn_user_lifetime", `a duration ("1h", "30m", "1d") or milliseconds`, func(c *Config, v value) error {
		d, err := parseDuration(v.scalar)
		if v.isList || err != nil {
			return errForm
		}
		c.TurnUserLifetime = d
		return nil
	}},
	{"turn_allow_guests", "true or false", boolean(func(c *Config) *bool { return &c.TurnAllowGuests })},
	{"app_service_config_files", "a list of file paths", list(func(c *Config) *[]string { return &c.AppServiceConfigFiles })},
	{"allow_public_rooms_without_auth", "true or false", boolean(func(c *Config) *bool { return &c.AllowPublicRoomsWithoutAuth })},
	{"allow_device_name_lookup_over_federation", "true or false", boolean(func(c *Config) *bool { return &c.AllowDeviceNameLookupOverFederation })},
	{"default_room_version", `a room version ("11")`, str(func(c *Config) *string { return &c.DefaultRoomVersion })},
	{"signing_key_path", "a file path", str(func(c *Config) *string { return &c.SigningKeyPath })},
	{"serve_server_wellknown", "true or false", boolean(func(c *Config) *bool { return &c.ServeServerWellKnown })},
	{"log_level", "one of debug, info, warn, error", func(c *Config, v value) error {
		if _, err := zerologLevel(v.scalar); v.isList || err != nil {
			return errForm
		}
		c.LogLevel = v.scalar
		return nil
	}},
	{"bcrypt_rounds", "an integer from 4 to 31", func(c *Config, v value) error {
		n, err := strconv.Atoi(v.scalar)
		if v.isList || err != nil || n < 4 || n > 31 {
			return errForm
		}
		c.BcryptRounds = n
		return nil
	}},
	{"data_dir", "a directory path", str(func(c *Config) *string { return &c.DataDir })},
	{"listen", `host:port ("127.0.0.1:8008")`, hostPort(func(c *Config) *string { return &c.Listen }, false)},
	{"metrics_listen", `host:port, or empty to serve metrics on the client listener`, hostPort(func(c *Config) *string { return &c.MetricsListen }, true)},
	{"federation_listen", `host:port ("127.0.0.1:8448"), or empty to disable federation`, hostPort(func(c *Config) *string { return &c.FederationListen }, true)},
	{"federation_tls_cert", "a PEM certificate file path", str(func(c *Config) *string { return &c.FederationTLSCert })},
	{"federation_tls_key", "a PEM private key file path", str(func(c *Config) *string { return &c.FederationTLSKey })},
	{"federation_tls_ca_cert", "a PEM CA certificate file path", str(func(c *Config) *string { return &c.FederationTLSCACert })},
	{"federation_tls_ca_key", "a PEM CA private key file path", str(func(c *Config) *string { return &c.FederationTLSCAKey })},
	// Outbound federation: trust, IP ranges, key servers, retries.
	{"federation_custom_ca_list", "a list of PEM CA certificate file paths", list(func(c *Config) *[]string { return &c.FederationCustomCAList })},
	{"federation_verify_certificates", "true or false (false is for tests only)", boolean(func(c *Config) *bool { return &c.FederationVerifyCertificates })},
	{"ip_range_blacklist", `a list of IP ranges ("10.0.0.0/8")`, ipRanges(func(c *Config) *[]string { return &c.IPRangeBlacklist }, true)},
	{"federation_ip_range_blacklist", `a list of IP ranges ("10.0.0.0/8"); the older name of ip_range_blacklist`, ipRanges(func(c *Config) *[]string { return &c.IPRangeBlacklist }, true)},
	{"ip_range_whitelist", `a list of IP ranges ("127.0.0.0/8")`, ipRanges(func(c *Config) *[]string { return &c.IPRangeWhitelist }, false)},
	{"federation_hosts", `a list of "server_name=host:port" (connect there, skipping discovery)`, parseFederationHosts},
	{"trusted_key_servers", `a list of {server_name, verify_keys: {"ed25519:id": "<base64 key>"}}`, parseTrustedKeyServers},
	{"federation.client_timeout", `a duration ("60s")`, duration(func(c *Config) *time.Duration { return &c.FederationClientTimeout })},
	{"federation.destination_min_retry_interval", `a duration ("30s")`, duration(func(c *Config) *time.Duration { return &c.FederationMinRetryInterval })},
	{"federation.destination_retry_multiplier", "a number of at least 1", func(c *Config, v value) error {
		f, err := strconv.ParseFloat(v.scalar, 64)
		if v.isList || err != nil || f < 1 {
			return errForm
		}
		c.FederationRetryMultiplier = f
		return nil
	}},
	{"federation.destination_max_retry_interval", `a duration ("1h")`, duration(func(c *Config) *time.Duration { return &c.FederationMaxRetryInterval })},
	{"federation.destination_give_up_after", `a duration ("24h")`, duration(func(c *Config) *time.Duration { return &c.FederationDestinationGiveUpAfter })},
	{"rate_limiting_enabled", "true or false", boolean(func(c *Config) *bool { return &c.RateLimitingEnabled })},
	{"disk_reserve", `free space below which writes are refused: a size ("256M", "2G"), or empty for the larger of 1% of the disk and 256M`, func(c *Config, v value) error {
		if v.isList {
			return errForm
		}
		if v.scalar == "" {
			c.DiskReserve = 0
			return nil
		}
		n, err := parseSize(v.scalar)
		if err != nil || n <= 0 {
			return errForm
		}
		c.DiskReserve = n
		return nil
	}},
	{"disk_ballast", `a size ("128M") held back in the data directory for restarts on a full disk, 0 for none, or empty for half the reserve (at most 128M)`, func(c *Config, v value) error {
		if v.isList {
			return errForm
		}
		if v.scalar == "" {
			c.DiskBallast = englog.BallastAuto
			return nil
		}
		n, err := parseSize(v.scalar)
		if err != nil || n < 0 {
			return errForm
		}
		c.DiskBallast = n
		return nil
	}},
	{"memory_target", `a size of at least 32M ("128M", "1G") that the storage caches and the Go memory limit are sized from, or empty for 128M`, func(c *Config, v value) error {
		if v.isList {
			return errForm
		}
		if v.scalar == "" {
			c.MemoryTarget = 0
			return nil
		}
		n, err := parseSize(v.scalar)
		if err != nil || n < 32<<20 {
			return errForm
		}
		c.MemoryTarget = n
		return nil
	}},
	{"cluster.node_id", "a string naming this node (unique in the cluster)", str(func(c *Config) *string { return &c.ClusterNodeID })},
	{"cluster.raft_listen", `host:port ("127.0.0.1:7001"), or empty for a single node`, hostPort(func(c *Config) *string { return &c.ClusterRaftListen }, true)},
	{"cluster.peers", `a list of "node_id=host:port" (or of {id, address} maps)`, func(c *Config, v value) error {
		items := v.list
		if !v.isList {
			items = strings.Split(v.scalar, ",")
		}
		c.ClusterPeers = nil
		for _, it := range items {
			if it = strings.TrimSpace(it); it == "" {
				continue
			}
			id, addr, ok := strings.Cut(it, "=")
			if _, _, err := net.SplitHostPort(addr); !ok || id == "" || err != nil {
				return errForm
			}
			c.ClusterPeers = append(c.ClusterPeers, englog.Peer{ID: id, Addr: addr})
		}
		return nil
	}},
}

func findOption(key string) *option {
	for i := range options {
		if options[i].key == key {
			return &options[i]
		}
	}
	return nil
}

// envName is the environment variable overriding a key.
func envName(key string) string {
	return "ENGRAM_" + strings.ToUpper(strings.ReplaceAll(key, ".", "_"))
}

func setOption(c *Config, key string, v value, source string) error {
	o := findOption(key)
	if o == nil {
		return fmt.Errorf("%s: unknown key %q", source, key)
	}
	if err := o.set(c, v); err != nil {
		if !errors.Is(err, errForm) {
			// The option says what is wrong itself (and does not
			// echo the value, which may hold a secret).
			return fmt.Errorf("%s: key %q: %w", source, key, err)
		}
		shown := v.scalar
		if v.isList {
			shown = "[" + strings.Join(v.list, ", ") + "]"
		}
		return fmt.Errorf("%s: key %q: expected %s, got %q", source, key, o.form, shown)
	}
	return nil
}

// loadConfig builds the configuration: defaults, then the YAML file (if
// path is not empty), then ENGRAM_<KEY> environment variables, then
// SERVER_NAME, then flags (most explicit last). Unknown keys in the file
// are returned as warnings, not errors, so that a Synapse homeserver.yaml
// fragment can be reused.
func loadConfig(path string, env func(string) (string, bool), flags map[string]string) (Config, []string, error) {
	c := defaultConfig()
	var warnings []string
	if path != "" {
		data, err := os.ReadFile(path)
		if err != nil {
			return c, nil, fmt.Errorf("reading the config file: %w", err)
		}
		w, set, err := applyYAML(&c, data, path)
		if err != nil {
			return c, nil, err
		}
		warnings = w
		// Relative paths written in the file are relative to the file, so
		// the server can be started from any directory.
		base := filepath.Dir(path)
		for key, p := range map[string]*string{
			"data_dir": &c.DataDir, "signing_key_path": &c.SigningKeyPath,
			"federation_tls_cert": &c.FederationTLSCert, "federation_tls_key": &c.FederationTLSKey,
			"federation_tls_ca_cert": &c.FederationTLSCACert, "federation_tls_ca_key": &c.FederationTLSCAKey,
		} {
			if set[key] && *p != "" && !filepath.IsAbs(*p) {
				*p = filepath.Join(base, *p)
			}
		}
		for i, p := range c.FederationCustomCAList {
			if set["federation_custom_ca_list"] && p != "" && !filepath.IsAbs(p) {
				c.FederationCustomCAList[i] = filepath.Join(base, p)
			}
		}
	}
	for _, o := range options {
		if s, ok := env(envName(o.key)); ok {
			if err := setOption(&c, o.key, value{scalar: s}, "environment variable "+envName(o.key)); err != nil {
				return c, nil, err
			}
		}
	}
	if s, ok := env("SERVER_NAME"); ok && s != "" {
		if err := setOption(&c, "server_name", value{scalar: s}, "environment variable SERVER_NAME"); err != nil {
			return c, nil, err
		}
	}
	keys := make([]string, 0, len(flags))
	for k := range flags {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if err := setOption(&c, k, value{scalar: flags[k]}, "flag --"+strings.ReplaceAll(k, "_", "-")); err != nil {
			return c, nil, err
		}
	}
	if c.SigningKeyPath == "" {
		c.SigningKeyPath = filepath.Join(c.DataDir, "signing.key")
	}
	if (c.FederationTLSCert == "") != (c.FederationTLSKey == "") {
		return c, nil, errors.New("config: set both federation_tls_cert and federation_tls_key, or neither")
	}
	if (c.FederationTLSCACert == "") != (c.FederationTLSCAKey == "") {
		return c, nil, errors.New("config: set both federation_tls_ca_cert and federation_tls_ca_key, or neither")
	}
	if len(c.ClusterPeers) > 0 && c.ClusterRaftListen == "" {
		return c, nil, errors.New("config: cluster.peers needs cluster.raft_listen (this node's raft address)")
	}
	return c, warnings, nil
}

// applyYAML reads a YAML mapping into c. Nested mappings (rc_message,
// cluster) become dotted keys. It returns warnings for unknown keys and
// the set of keys found.
func applyYAML(c *Config, data []byte, source string) ([]string, map[string]bool, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, nil, fmt.Errorf("%s: not valid YAML: %w", source, err)
	}
	if len(doc.Content) == 0 {
		return nil, nil, nil // empty file: all defaults
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		return nil, nil, fmt.Errorf("%s: the top level must be a mapping of keys to values", source)
	}
	var warnings []string
	set := map[string]bool{}
	var walk func(prefix string, m *yaml.Node) error
	walk = func(prefix string, m *yaml.Node) error {
		for i := 0; i+1 < len(m.Content); i += 2 {
			key := prefix + m.Content[i].Value
			n := m.Content[i+1]
			src := fmt.Sprintf("%s line %d", source, m.Content[i].Line)
			if n.Kind == yaml.MappingNode && findOption(key) == nil {
				if hasOptionPrefix(key + ".") {
					if err := walk(key+".", n); err != nil {
						return err
					}
					continue
				}
			}
			if findOption(key) == nil {
				warnings = append(warnings, fmt.Sprintf("%s: unknown key %q is ignored", src, key))
				continue
			}
			v, err := yamlValue(n)
			if err != nil {
				o := findOption(key)
				return fmt.Errorf("%s: key %q: expected %s", src, key, o.form)
			}
			if err := setOption(c, key, v, src); err != nil {
				return err
			}
			set[key] = true
		}
		return nil
	}
	err := walk("", root)
	return warnings, set, err
}

func hasOptionPrefix(p string) bool {
	for _, o := range options {
		if strings.HasPrefix(o.key, p) {
			return true
		}
	}
	return false
}

func yamlValue(n *yaml.Node) (value, error) {
	switch n.Kind {
	case yaml.ScalarNode:
		if n.Tag == "!!null" {
			return value{}, nil
		}
		return value{scalar: n.Value}, nil
	case yaml.SequenceNode:
		v := value{isList: true}
		for _, item := range n.Content {
			switch item.Kind {
			case yaml.ScalarNode:
				v.list = append(v.list, item.Value)
			case yaml.MappingNode: // cluster.peers: {id: node2, address: host:port}
				var p struct {
					ID      string `yaml:"id"`
					Address string `yaml:"address"`
				}
				if err := item.Decode(&p); err != nil {
					return value{}, err
				}
				if p.ID == "" && p.Address == "" {
					// Another mapping (trusted_key_servers): its option reads it as JSON.
					var m map[string]any
					if err := item.Decode(&m); err != nil {
						return value{}, err
					}
					b, err := json.Marshal(m)
					if err != nil {
						return value{}, err
					}
					v.list = append(v.list, string(b))
					continue
				}
				v.list = append(v.list, p.ID+"="+p.Address)
			default:
				return value{}, errForm
			}
		}
		return v, nil
	}
	return value{}, errForm
}

// parseSize reads Synapse's size form: bytes, or a number with a K, M or
// G suffix (powers of 1024).
func parseSize(s string) (int64, error) {
	s = strings.TrimSpace(strings.TrimSuffix(strings.ToUpper(strings.TrimSpace(s)), "B"))
	mult := int64(1)
	if s != "" {
		switch s[len(s)-1] {
		case 'K':
			mult = 1 << 10
		case 'M':
			mult = 1 << 20
		case 'G':
			mult = 1 << 30
		}
		if mult > 1 {
			s = s[:len(s)-1]
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 {
		return 0, errForm
	}
	return n * mult, nil
}

// parseDuration reads Synapse's duration form ("30s", "5m", "1h", "2d",
// "1w", "1y", or an integer of milliseconds) and Go's ("1h30m").
func parseDuration(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	if n, err := strconv.ParseInt(s, 10, 64); err == nil && n >= 0 {
		return time.Duration(n) * time.Millisecond, nil
	}
	units := map[byte]time.Duration{'s': time.Second, 'm': time.Minute, 'h': time.Hour, 'd': 24 * time.Hour, 'w': 7 * 24 * time.Hour, 'y': 365 * 24 * time.Hour}
	if len(s) > 1 {
		if u, ok := units[s[len(s)-1]]; ok {
			if n, err := strconv.ParseInt(s[:len(s)-1], 10, 64); err == nil && n >= 0 {
				return time.Duration(n) * u, nil
			}
		}
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		return 0, errForm
	}
	return d, nil
}

// apiConfig is what the client-server API needs.
func (c Config) apiConfig() api.Config {
	ac := api.Config{
		Appservices:                           c.appservices,
		ServerName:                            c.ServerName,
		PublicBaseURL:                         c.PublicBaseURL,
		EnableRegistration:                    c.EnableRegistration,
		EnableRegistrationWithoutVerification: c.EnableRegistrationWithoutVerification,
		RegistrationSharedSecret:              c.RegistrationSharedSecret,
		RegistrationRequiresToken:             c.RegistrationRequiresToken,
		AllowGuestAccess:                      c.AllowGuestAccess,
		AllowPublicRoomsWithoutAuth:           c.AllowPublicRoomsWithoutAuth,
		AllowDeviceNameLookupOverFederation:   c.AllowDeviceNameLookupOverFederation,
		DefaultRoomVersion:                    c.DefaultRoomVersion,
		MaxUploadSize:                         c.MaxUploadSize,
		TurnURIs:                              c.TurnURIs,
		TurnSharedSecret:                      c.TurnSharedSecret,
		TurnUserLifetime:                      c.TurnUserLifetime,
		TurnAllowGuests:                       c.TurnAllowGuests,
		RateLimitingEnabled:                   c.RateLimitingEnabled,
		RateLimits:                            c.RC,
		XForwarded:                            c.XForwarded,
		TrustedProxies:                        c.TrustedProxies,
		ServerNotices:                         c.ServerNotices,
		ServerVersion:                         "engram " + version,
		BcryptCost:                            c.BcryptRounds,
		Media:                                 c.mediaConfig(),
		SyncCacheBytes:                        syncCacheBytes(c.MemoryTarget),
	}
	if c.ServeServerWellKnown {
		port := "8448"
		if c.FederationListen != "" {
			_, port, _ = net.SplitHostPort(c.FederationListen)
		}
		ac.WellKnownServer = net.JoinHostPort(serverHost(c.ServerName), port)
	}
	return ac
}

// serverHost is the host part of a server name (which may carry a port).
func serverHost(serverName string) string {
	if h, _, err := net.SplitHostPort(serverName); err == nil {
		return h
	}
	return strings.Trim(serverName, "[]")
}

// loadOrCreateSigningKey reads the signing key file, creating it (with a
// new key) when it does not exist yet.
func loadOrCreateSigningKey(path string) (signing.Key, bool, error) {
	data, err := os.ReadFile(path)
	if err == nil {
		keys, err := signing.DecodeKeyFile(data)
		if err != nil {
			return signing.Key{}, false, fmt.Errorf("signing key file %s: %w", path, err)
		}
		return keys[0], false, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return signing.Key{}, false, fmt.Errorf("reading the signing key: %w", err)
	}
	var rb [2]byte
	if _, err := rand.Read(rb[:]); err != nil {
		return signing.Key{}, false, err
	}
	key, err := signing.GenerateKey(rand.Reader, "a_"+hex.EncodeToString(rb[:]))
	if err != nil {
		return signing.Key{}, false, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return signing.Key{}, false, err
	}
	if err := writeFileAtomic(path, signing.EncodeKeyFile(key), 0o600); err != nil {
		return signing.Key{}, false, fmt.Errorf("writing the signing key: %w", err)
	}
	return key, true, nil
}

func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// defaultConfigFile is the commented configuration written on a first
// start without one. Paths are relative to the file.
func defaultConfigFile(sharedSecret string) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, `# Engram configuration, written on first start. Keys use Synapse's
# homeserver.yaml names where the meaning is the same. Every key can be
# overridden by an environment variable ENGRAM_<KEY> (e.g. ENGRAM_SERVER_NAME,
# ENGRAM_RC_MESSAGE_PER_SECOND); SERVER_NAME overrides server_name.

# The domain of user IDs (@alice:<server_name>). Cannot change once users exist.
server_name: "localhost"
# public_baseurl: "https://matrix.example.org/"

# Where the log and the projections live (relative to this file).
data_dir: "."
# Signing key of this server ("ed25519 <id> <seed>" lines).
signing_key_path: "signing.key"

# Client-server API (plain HTTP; put a TLS proxy in front for the Internet).
listen: "127.0.0.1:8008"
# Prometheus metrics are served on the client listener at /_engram/metrics
# unless metrics_listen is set.
# metrics_listen: "127.0.0.1:9090"

# Federation (HTTPS). Empty disables it. Without a certificate, Engram
# issues one from federation_tls_ca_cert/key, or a self-signed one.
federation_listen: ""
# federation_tls_cert: "/etc/engram/tls.crt"
# federation_tls_key: "/etc/engram/tls.key"
# federation_tls_ca_cert: ""
# federation_tls_ca_key: ""
serve_server_wellknown: false
# Outbound federation. Other servers' certificates are checked against the
# system roots, these CAs and federation_tls_ca_cert.
# federation_custom_ca_list: ["/etc/engram/peer-ca.pem"]
federation_verify_certificates: true
# Ranges outbound federation may not reach (default: loopback, private,
# link-local, CGNAT, documentation, multicast); the whitelist wins. When
# listen, federation_listen and public_baseurl are all on loopback (only
# this host can reach the server), the default leaves loopback out.
# ip_range_blacklist: ["127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]
# ip_range_whitelist: []
# Notaries for keys of servers that cannot be reached (none by default).
# trusted_key_servers:
#   - server_name: "matrix.org"
#     verify_keys: {"ed25519:auto": "Noi6WqcDj0QmPxCNQqgezwTlBKrfqehY1u2FyWP9uYw"}
federation:
  client_timeout: "60s"
  # Backoff of deliveries to an unreachable server, and when to give up
  # (until it contacts us or a local user acts towards it).
  destination_min_retry_interval: "30s"
  destination_retry_multiplier: 2
  destination_max_retry_interval: "1h"
  destination_give_up_after: "24h"

enable_registration: false
enable_registration_without_verification: false
registration_requires_token: false
# Used by "engram register-user" (and Synapse's register_new_matrix_user).
registration_shared_secret: %q
allow_guest_access: false
allow_public_rooms_without_auth: false
# Other servers see your users' device names (in their key queries and
# device list updates) only when true, as in Synapse.
allow_device_name_lookup_over_federation: false
# default_room_version: "11"
max_upload_size: "50M"
# Media: new uploads are served only by the authenticated endpoints
# (/_matrix/client/v1/media); false also serves them without a token.
# enable_authenticated_media: true
# max_image_pixels: "32M"
# Thumbnails are made at the nearest of these sizes (Synapse's defaults),
# or at the requested size when dynamic_thumbnails is true.
# thumbnail_sizes:
#   - {width: 32, height: 32, method: crop}
#   - {width: 96, height: 96, method: crop}
#   - {width: 320, height: 240, method: scale}
#   - {width: 640, height: 480, method: scale}
#   - {width: 800, height: 600, method: scale}
# dynamic_thumbnails: false
# What one user may upload in any period (none by default):
# media_upload_limits:
#   - {time_period: "1h", max_size: "100M"}
# URL previews fetch pages for clients; when enabled, the blacklist is required.
url_preview_enabled: false
# url_preview_ip_range_blacklist: ["127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16", "::1/128", "fe80::/10", "fc00::/7"]
# media_retention:
#   local_media_lifetime: "90d"
#   remote_media_lifetime: "14d"
# Blobs kept in an S3-compatible bucket as well (the local directory is
# their cache), with the entry of Synapse's S3 storage provider:
# media_storage_providers:
#   - module: s3_storage_provider.S3StorageProviderBackend
#     store_local: true
#     store_remote: true
#     store_synchronous: true
#     # the local copies' bound: past it, the least recently used blobs
#     # that are safely in the bucket leave the local disk
#     local_cache_max_size: "10G"
#     config: {bucket: "engram-media", endpoint_url: "https://s3.example.org", region_name: "us-east-1", access_key_id: "", secret_access_key: "", prefix: ""}

rate_limiting_enabled: true
# Synapse's rate limits and defaults (server admins are exempt):
rc_message:
  per_second: 0.2
  burst_count: 10
# rc_registration: {per_second: 0.17, burst_count: 3}
# rc_login:
#   address: {per_second: 0.003, burst_count: 5}
#   account: {per_second: 0.003, burst_count: 5}
#   failed_attempts: {per_second: 0.17, burst_count: 3}
# rc_joins:
#   local: {per_second: 0.1, burst_count: 10}
#   remote: {per_second: 0.01, burst_count: 10}
# rc_invites:
#   per_room: {per_second: 0.3, burst_count: 10}
#   per_user: {per_second: 0.003, burst_count: 5}
#   per_issuer: {per_second: 0.3, burst_count: 10}
# rc_media_create: {per_second: 10, burst_count: 50}
# Behind a reverse proxy, believe its X-Forwarded-For header:
# x_forwarded: true              # from any peer, or only from:
# trusted_proxies: ["127.0.0.1/32"]

# Server notices from a system user (/_synapse/admin/v1/send_server_notice):
# server_notices:
#   system_mxid_localpart: "notices"
#   system_mxid_display_name: "Server Notices"
#   room_name: "Server Notices"

# turn_uris: ["turn:turn.example.org:3478?transport=udp"]
# turn_shared_secret: ""
turn_user_lifetime: "1h"
turn_allow_guests: false

# app_service_config_files: []

log_level: "info"

# A cluster of several nodes replicates the log with Raft.
# cluster:
#   node_id: "node1"
#   raft_listen: "127.0.0.1:7001"
#   peers:
#     - {id: node1, address: "127.0.0.1:7001"}
#     - {id: node2, address: "127.0.0.1:7002"}
#     - {id: node3, address: "127.0.0.1:7003"}
`, sharedSecret)
	return b.Bytes()
}

func randomSecret() string {
	var b [24]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b[:])
}
