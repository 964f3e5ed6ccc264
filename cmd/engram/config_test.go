package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	englog "github.com/engram-hs/engram/log"
)

func noEnv(string) (string, bool) { return "", false }

func envOf(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

func TestParseSizeAndDuration(t *testing.T) {
	sizes := map[string]int64{"50M": 50 << 20, "1k": 1024, "2G": 2 << 30, "123": 123, "10MB": 10 << 20}
	for in, want := range sizes {
		if got, err := parseSize(in); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "M", "lots", "-1", "5X"} {
		if _, err := parseSize(bad); err == nil {
			t.Errorf("parseSize(%q) accepted", bad)
		}
	}
	durations := map[string]time.Duration{"1h": time.Hour, "30m": 30 * time.Minute, "2d": 48 * time.Hour, "1w": 7 * 24 * time.Hour, "1500": 1500 * time.Millisecond, "1h30m": 90 * time.Minute}
	for in, want := range durations {
		if got, err := parseDuration(in); err != nil || got != want {
			t.Errorf("parseDuration(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "forever", "-1h", "h"} {
		if _, err := parseDuration(bad); err == nil {
			t.Errorf("parseDuration(%q) accepted", bad)
		}
	}
}

func TestLoadConfigLayers(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "engram.yaml")
	yaml := `server_name: file.example
data_dir: data
max_upload_size: "10M"
memory_target: 256M
turn_uris: ["turn:a.example", "turn:b.example"]
rc_message:
  per_second: 3
  burst_count: 7
cluster:
  node_id: n1
  raft_listen: "127.0.0.1:7001"
  peers:
    - {id: n1, address: "127.0.0.1:7001"}
    - n2=127.0.0.1:7002
federation_tls_cert: tls/cert.pem
federation_tls_key: /abs/key.pem
unknown_thing: 1
rc_unknown:
  per_second: 1
`
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	c, warnings, err := loadConfig(path, envOf(map[string]string{"ENGRAM_RC_MESSAGE_BURST_COUNT": "9", "ENGRAM_TURN_URIS": "turn:c.example, turn:d.example"}), map[string]string{"listen": "127.0.0.1:9999"})
	if err != nil {
		t.Fatal(err)
	}
	if len(warnings) != 2 || !strings.Contains(warnings[0], `"unknown_thing"`) || !strings.Contains(warnings[1], `"rc_unknown"`) {
		t.Fatalf("warnings = %q", warnings)
	}
	if c.MemoryTarget != 256<<20 {
		t.Fatalf("memory_target = %d", c.MemoryTarget)
	}
	if c.ServerName != "file.example" || c.MaxUploadSize != 10<<20 || c.RC.Message.PerSecond != 3 || c.RC.Message.BurstCount != 9 || c.Listen != "127.0.0.1:9999" {
		t.Fatalf("config = %+v", c)
	}
	if !reflect.DeepEqual(c.TurnURIs, []string{"turn:c.example", "turn:d.example"}) {
		t.Fatalf("turn_uris from the environment = %q", c.TurnURIs)
	}
	if want := []englog.Peer{{ID: "n1", Addr: "127.0.0.1:7001"}, {ID: "n2", Addr: "127.0.0.1:7002"}}; !reflect.DeepEqual(c.ClusterPeers, want) {
		t.Fatalf("peers = %+v", c.ClusterPeers)
	}
	if c.DataDir != filepath.Join(dir, "data") || c.SigningKeyPath != filepath.Join(dir, "data", "signing.key") {
		t.Fatalf("paths not relative to the file: data_dir %s, key %s", c.DataDir, c.SigningKeyPath)
	}
	if c.FederationTLSCert != filepath.Join(dir, "tls/cert.pem") || c.FederationTLSKey != "/abs/key.pem" {
		t.Fatalf("TLS paths: %s %s", c.FederationTLSCert, c.FederationTLSKey)
	}

	// Defaults with no file at all.
	d, _, err := loadConfig("", noEnv, nil)
	if err != nil {
		t.Fatal(err)
	}
	if d.ServerName != "localhost" || d.Listen != "127.0.0.1:8008" || d.FederationListen != "" || d.MaxUploadSize != 50<<20 || d.MemoryTarget != 0 {
		t.Fatalf("defaults = %+v", d)
	}

	// SERVER_NAME beats ENGRAM_SERVER_NAME beats the file; a flag beats all.
	c, _, _ = loadConfig(path, envOf(map[string]string{"ENGRAM_SERVER_NAME": "a.example", "SERVER_NAME": "b.example"}), nil)
	if c.ServerName != "b.example" {
		t.Fatalf("server_name = %s, want SERVER_NAME's", c.ServerName)
	}
	c, _, _ = loadConfig(path, envOf(map[string]string{"SERVER_NAME": "b.example"}), map[string]string{"server_name": "flag.example"})
	if c.ServerName != "flag.example" {
		t.Fatalf("server_name = %s, want the flag's", c.ServerName)
	}
}

func TestLoadConfigErrorsNameKeyAndForm(t *testing.T) {
	dir := t.TempDir()
	cases := map[string][]string{
		"listen: [a, b]\n":                   {`"listen"`, "host:port"},
		"cluster:\n  peers: [nonsense]\n":    {`"cluster.peers"`, "node_id=host:port"},
		"bcrypt_rounds: 99\n":                {`"bcrypt_rounds"`, "4 to 31"},
		"memory_target: 1M\n":                {`"memory_target"`, "at least 32M"},
		"log_level: loud\n":                  {`"log_level"`, "debug, info"},
		"server_name: \"@bad\"\n":            {`"server_name"`, "host name"},
		"federation_tls_cert: a.pem\n":       {"federation_tls_key"},
		"- just\n- a list\n":                 {"mapping"},
		"cluster:\n  peers: [a=1.2.3.4:5]\n": {"cluster.raft_listen"},
	}
	for yaml, wants := range cases {
		path := filepath.Join(dir, "c.yaml")
		os.WriteFile(path, []byte(yaml), 0o600)
		_, _, err := loadConfig(path, noEnv, nil)
		if err == nil {
			t.Errorf("%q accepted", yaml)
			continue
		}
		for _, w := range wants {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%q: error %q does not mention %s", yaml, err, w)
			}
		}
	}
}

func TestDefaultConfigFileLoadsCleanly(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "engram.yaml")
	os.WriteFile(path, defaultConfigFile("xyz"), 0o600)
	c, warnings, err := loadConfig(path, noEnv, nil)
	if err != nil || len(warnings) != 0 {
		t.Fatalf("default config: %v %q", err, warnings)
	}
	if c.DataDir != dir || c.RegistrationSharedSecret != "xyz" || c.ServerName != "localhost" {
		t.Fatalf("default config = %+v", c)
	}
}

func TestFederationCertIssuedByCA(t *testing.T) {
	dir := t.TempDir()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "Test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, caKey.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalPKCS8PrivateKey(caKey)
	certPath, keyPath := filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key")
	os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600)

	conf, how, err := federationTLS(Config{ServerName: "hs.example:8448", FederationTLSCACert: certPath, FederationTLSCAKey: keyPath}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(how, "issued") {
		t.Fatalf("how = %q", how)
	}
	leaf, err := x509.ParseCertificate(conf.Certificates[0].Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	if _, err := leaf.Verify(x509.VerifyOptions{DNSName: "hs.example", Roots: pool}); err != nil {
		t.Fatalf("issued certificate does not verify against the CA for hs.example: %v", err)
	}
	// Without a CA or a certificate: self-signed, still for the host.
	conf, _, err = federationTLS(Config{ServerName: "127.0.0.1"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	self, _ := x509.ParseCertificate(conf.Certificates[0].Certificate[0])
	if len(self.IPAddresses) != 1 || !self.IPAddresses[0].Equal([]byte{127, 0, 0, 1}) {
		t.Fatalf("self-signed certificate IPs = %v", self.IPAddresses)
	}
}
