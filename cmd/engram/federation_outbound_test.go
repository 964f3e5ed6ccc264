package main

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestFederationOutboundConfig(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "engram.yaml")
	yaml := `
server_name: "a.test"
federation_ip_range_blacklist: ["10.0.0.0/8"]
ip_range_whitelist: ["10.1.0.0/16"]
federation_verify_certificates: false
federation_hosts: ["hs1=127.0.0.1:9001", "[::1]:80=127.0.0.1:9002"]
trusted_key_servers:
  - server_name: "notary.test"
    verify_keys:
      "ed25519:auto": "Noi6WqcDj0QmPxCNQqgezwTlBKrfqehY1u2FyWP9uYw"
federation:
  client_timeout: 5s
  destination_min_retry_interval: 1s
  destination_retry_multiplier: 1.5
  destination_give_up_after: 10m
`
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	c, warnings, err := loadConfig(path, func(string) (string, bool) { return "", false }, nil)
	if err != nil || len(warnings) != 0 {
		t.Fatalf("%v %v", err, warnings)
	}
	if len(c.TrustedKeyServers) != 1 || c.TrustedKeyServers[0].ServerName != "notary.test" || len(c.trustedKeyServers()[0].VerifyKeys["ed25519:auto"]) != 32 {
		t.Fatalf("trusted_key_servers: %+v", c.TrustedKeyServers)
	}
	if c.FederationClientTimeout != 5*time.Second || c.FederationMinRetryInterval != time.Second || c.FederationRetryMultiplier != 1.5 || c.FederationDestinationGiveUpAfter != 10*time.Minute || c.FederationMaxRetryInterval != time.Hour {
		t.Fatalf("retries: %+v", c)
	}
	tc, err := c.transportConfig(testKey(t), testLoggerNop())
	if err != nil {
		t.Fatal(err)
	}
	if tc.StaticHosts["hs1"] != "127.0.0.1:9001" || tc.StaticHosts["[::1]:80"] != "127.0.0.1:9002" {
		t.Fatalf("federation_hosts: %v", tc.StaticHosts)
	}
	if !tc.InsecureSkipVerify {
		t.Fatal("federation_verify_certificates: false ignored")
	}
	// The older key replaced the default list: loopback is allowed now,
	// 10/8 denied except the whitelisted 10.1/16.
	for ip, want := range map[string]bool{"127.0.0.1": true, "10.2.0.1": false, "10.1.2.3": true, "0.0.0.0": false} {
		if got := tc.IPFilter.Allowed(netip.MustParseAddr(ip)); got != want {
			t.Fatalf("%s: allowed=%v", ip, got)
		}
	}
	// Defaults: loopback refused, certificates verified, no notary.
	d, _, err := loadConfig("", func(string) (string, bool) { return "", false }, nil)
	if err != nil {
		t.Fatal(err)
	}
	tc, _ = d.transportConfig(testKey(t), testLoggerNop())
	if tc.IPFilter.Allowed(netip.MustParseAddr("127.0.0.1")) || tc.InsecureSkipVerify || len(d.TrustedKeyServers) != 0 {
		t.Fatal("defaults")
	}
	// A server only this host can reach (listeners and public_baseurl on
	// loopback) may reach loopback by default, and nothing else private;
	// one behind a reverse proxy (public public_baseurl) may not.
	for _, tc := range []struct {
		yaml string
		want bool
	}{
		{"public_baseurl: \"http://127.0.0.1:8008/\"\nfederation_listen: \"127.0.0.1:8448\"\n", true},
		{"public_baseurl: \"http://localhost:8008/\"\nfederation_listen: \"[::1]:8448\"\n", true},
		{"public_baseurl: \"https://matrix.example.org/\"\nfederation_listen: \"127.0.0.1:8448\"\n", false},
		{"public_baseurl: \"http://127.0.0.1:8008/\"\nfederation_listen: \"0.0.0.0:8448\"\n", false},
		{"public_baseurl: \"http://127.0.0.1:8008/\"\nfederation_listen: \"127.0.0.1:8448\"\nip_range_blacklist: [\"127.0.0.0/8\"]\n", false},
	} {
		os.WriteFile(path, []byte(tc.yaml), 0o600)
		c, _, err := loadConfig(path, func(string) (string, bool) { return "", false }, nil)
		if err != nil {
			t.Fatal(err)
		}
		trc, err := c.transportConfig(testKey(t), testLoggerNop())
		if err != nil {
			t.Fatal(err)
		}
		if got := trc.IPFilter.Allowed(netip.MustParseAddr("127.0.0.1")); got != tc.want {
			t.Fatalf("%s: loopback allowed=%v", tc.yaml, got)
		}
		if (trc.IPFilter.Allowed(netip.MustParseAddr("10.0.0.1")) || trc.IPFilter.Allowed(netip.MustParseAddr("192.168.1.1"))) && !strings.Contains(tc.yaml, "ip_range_blacklist") {
			t.Fatalf("%s: a private range is allowed", tc.yaml)
		}
	}
	for _, bad := range []string{"ip_range_whitelist: [\"nonsense\"]", "trusted_key_servers: [{server_name: x, verify_keys: {\"ed25519:a\": \"short\"}}]", "federation: {destination_retry_multiplier: 0.5}", "federation_hosts: [\"hs1\"]"} {
		os.WriteFile(path, []byte(bad+"\n"), 0o600)
		if _, _, err := loadConfig(path, func(string) (string, bool) { return "", false }, nil); err == nil || !strings.Contains(err.Error(), "expected") {
			t.Fatalf("%s: %v", bad, err)
		}
	}
	// The generated config file parses with these keys and no warning.
	os.WriteFile(path, defaultConfigFile("s"), 0o600)
	if _, w, err := loadConfig(path, func(string) (string, bool) { return "", false }, nil); err != nil || len(w) != 0 {
		t.Fatalf("default file: %v %v", err, w)
	}
}
