package main

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/engram-hs/engram/stateres/signing"
)

// binary is the engram command built once for the black-box tests.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "engram-cmd-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "engram")
	build := exec.Command("go", "build", "-o", binary, ".")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building engram:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// freeAddr is a loopback address whose port is free now, for an engram
// serve process to bind later. The port is below Linux's ephemeral range
// (32768-60999 by default): a port from 127.0.0.1:0 is one the kernel
// also gives outbound connections as their source port, so between this
// call and the server's bind any connection of the tests running
// meanwhile could take it (TestClusterFollowerServesMedia failed so in a
// fresh-clone CI run: bind: address already in use).
func freeAddr(t *testing.T) string {
	t.Helper()
	for range 100 {
		addr := fmt.Sprintf("127.0.0.1:%d", 20000+rand.IntN(12000))
		l, err := net.Listen("tcp", addr)
		if err != nil {
			continue // taken: try another
		}
		l.Close()
		return addr
	}
	t.Fatal("no free port among 100 tried in 20000-31999")
	return ""
}

// syncBuffer collects a process's output while it runs.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type proc struct {
	t      *testing.T
	cmd    *exec.Cmd
	stdout *syncBuffer
	stderr *syncBuffer
	done   chan error
}

// startServer runs `engram serve args...` in dir and waits until the
// client API at listen answers /_matrix/client/versions.
func startServer(t *testing.T, dir, listen string, env []string, args ...string) *proc {
	t.Helper()
	p := &proc{t: t, stdout: &syncBuffer{}, stderr: &syncBuffer{}, done: make(chan error, 1)}
	p.cmd = exec.Command(binary, append([]string{"serve"}, args...)...)
	p.cmd.Dir = dir
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stdout, p.cmd.Stderr = p.stdout, p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.done <- p.cmd.Wait() }()
	t.Cleanup(func() {
		if p.cmd.ProcessState == nil {
			p.cmd.Process.Kill()
			<-p.done
		}
	})
	waitServing(t, p, listen)
	return p
}

// waitServing waits until the client API at listen answers
// /_matrix/client/versions.
func waitServing(t *testing.T, p *proc, listen string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get("http://" + listen + "/_matrix/client/versions")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		select {
		case err := <-p.done:
			t.Fatalf("engram serve exited (%v) before serving:\n%s\n%s", err, p.stdout, p.stderr)
		case <-time.After(25 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("engram serve did not answer within 30s:\n%s", p.stderr)
		}
	}
}

// stop sends SIGTERM and requires a clean exit within 10 seconds.
func (p *proc) stop() {
	p.t.Helper()
	start := time.Now()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		p.t.Fatal(err)
	}
	select {
	case err := <-p.done:
		if err != nil {
			p.t.Fatalf("engram exited with %v after SIGTERM:\n%s", err, p.stderr)
		}
		if took := time.Since(start); took > 10*time.Second {
			p.t.Fatalf("engram took %s to stop", took)
		}
	case <-time.After(10 * time.Second):
		p.cmd.Process.Kill()
		p.t.Fatalf("engram did not stop within 10s of SIGTERM:\n%s", p.stderr)
	}
}

// runTool runs an engram subcommand to completion.
func runTool(t *testing.T, dir string, env []string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command(binary, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	code = 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return o.String(), e.String(), code
}

var insecureTLS = &http.Client{
	Timeout:   10 * time.Second,
	Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}},
}

func getJSON(t *testing.T, c *http.Client, url string, out any) {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s %s", url, resp.Status, body)
	}
	if err := json.Unmarshal(body, out); err != nil {
		t.Fatalf("GET %s: %v in %s", url, err, body)
	}
}

// serverKey fetches /_matrix/key/v2/server, checks its signature with the
// key it publishes, and returns the server name and key ID.
func serverKey(t *testing.T, fedAddr string) (serverName, keyID string, raw []byte) {
	t.Helper()
	var resp struct {
		ServerName   string `json:"server_name"`
		ValidUntilTS int64  `json:"valid_until_ts"`
		VerifyKeys   map[string]struct {
			Key string `json:"key"`
		} `json:"verify_keys"`
	}
	r, err := insecureTLS.Get("https://" + fedAddr + "/_matrix/key/v2/server")
	if err != nil {
		t.Fatal(err)
	}
	raw, _ = io.ReadAll(r.Body)
	r.Body.Close()
	if err := json.Unmarshal(raw, &resp); err != nil {
		t.Fatalf("key response %s: %v", raw, err)
	}
	if len(resp.VerifyKeys) != 1 || resp.ValidUntilTS <= time.Now().UnixMilli() {
		t.Fatalf("key response %s", raw)
	}
	for id, k := range resp.VerifyKeys {
		pub, err := signing.DecodeBase64(k.Key)
		if err != nil {
			t.Fatal(err)
		}
		if err := signing.VerifyJSON(resp.ServerName, id, pub, raw); err != nil {
			t.Fatalf("key response signature: %v", err)
		}
		keyID = id
	}
	return resp.ServerName, keyID, raw
}

func TestFirstStartWithoutConfig(t *testing.T) {
	dir := t.TempDir()
	listen, fed := freeAddr(t), freeAddr(t)
	p := startServer(t, dir, listen, nil, "--listen", listen, "--federation-listen", fed)

	data := filepath.Join(dir, "engram-data")
	keyFile, err := os.ReadFile(filepath.Join(data, "signing.key"))
	if err != nil {
		t.Fatalf("no signing key in ./engram-data: %v", err)
	}
	if !regexp.MustCompile(`^ed25519 a_\w+ [A-Za-z0-9+/]{43}\n$`).Match(keyFile) {
		t.Fatalf("signing.key is not in the Synapse key-file format: %q", keyFile)
	}
	keys, err := signing.DecodeKeyFile(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	cfgFile, err := os.ReadFile(filepath.Join(data, "engram.yaml"))
	if err != nil {
		t.Fatalf("no config in ./engram-data: %v", err)
	}
	if !bytes.Contains(cfgFile, []byte("# ")) || !bytes.Contains(cfgFile, []byte("registration_shared_secret:")) {
		t.Fatalf("the default config is not commented or lacks a shared secret:\n%s", cfgFile)
	}
	if !strings.Contains(p.stdout.String(), binary+" register-user --config engram-data/engram.yaml --user admin --admin") {
		t.Fatalf("first start does not say how to create the admin user:\n%s", p.stdout)
	}

	var v struct {
		Server struct{ Name, Version string } `json:"server"`
	}
	getJSON(t, insecureTLS, "https://"+fed+"/_matrix/federation/v1/version", &v)
	if v.Server.Name != "Engram" || v.Server.Version == "" {
		t.Fatalf("federation version = %+v", v)
	}
	// The client port serves the federation and key APIs as well, with
	// the spec's answers for unknown paths (404) and methods (405).
	v.Server.Name = ""
	getJSON(t, http.DefaultClient, "http://"+listen+"/_matrix/federation/v1/version", &v)
	if v.Server.Name != "Engram" {
		t.Fatalf("federation version on the client port = %+v", v)
	}
	for _, c := range []struct {
		method, path string
		status       int
	}{
		{"PUT", "/_matrix/federation/v1/version", 405},
		{"PUT", "/_matrix/key/v2/query", 405},
		{"GET", "/_matrix/federation/v1/unknown", 404},
		{"GET", "/_matrix/key/v2/unknown", 404},
		{"PUT", "/_matrix/client/v3/login", 405},
		{"GET", "/_matrix/client/v3/unknown", 404},
	} {
		req, _ := http.NewRequest(c.method, "http://"+listen+c.path, strings.NewReader("{}"))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var e struct{ Errcode string }
		_ = json.NewDecoder(resp.Body).Decode(&e)
		resp.Body.Close()
		if resp.StatusCode != c.status || e.Errcode != "M_UNRECOGNIZED" {
			t.Errorf("%s %s on the client port: %d %s, want %d M_UNRECOGNIZED", c.method, c.path, resp.StatusCode, e.Errcode, c.status)
		}
	}
	name, keyID, _ := serverKey(t, fed)
	if name != "localhost" || keyID != keys[0].ID {
		t.Fatalf("key response for %q with key %q; want localhost and %q", name, keyID, keys[0].ID)
	}
	var metrics bytes.Buffer
	resp, err := http.Get("http://" + listen + "/_engram/metrics")
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(&metrics, resp.Body)
	resp.Body.Close()
	if !strings.Contains(metrics.String(), `engram_projection_lag_entries{projection="accounts"}`) {
		t.Fatalf("metrics lack projection lag:\n%.2000s", metrics.String())
	}

	// Profiles on the client listener are for admins only.
	if resp, err := http.Get("http://" + listen + "/_engram/debug/pprof/goroutine"); err != nil {
		t.Fatal(err)
	} else if resp.Body.Close(); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("pprof without a token on the client listener: %d, want 401", resp.StatusCode)
	}

	p.stop()
	// Restart on the same data: the same key, serving again, no new
	// "first start" message. With metrics_listen, metrics and profiles
	// move there.
	metricsAddr := freeAddr(t)
	p = startServer(t, dir, listen, []string{"ENGRAM_METRICS_LISTEN=" + metricsAddr}, "--listen", listen, "--federation-listen", fed)
	if _, again, _ := serverKey(t, fed); again != keyID {
		t.Fatalf("restart changed the signing key %s -> %s", keyID, again)
	}
	if strings.Contains(p.stdout.String(), "register-user") {
		t.Fatal("restart printed the first-start message again")
	}
	for path, want := range map[string]string{
		"/_engram/metrics":                       "engram_projection_lag_entries",
		"/_engram/debug/pprof/":                  "goroutine",
		"/_engram/debug/pprof/goroutine?debug=1": "goroutine profile: total",
		"/_engram/debug/pprof/heap?debug=1":      "heap profile",
		"/_engram/debug/pprof/cmdline":           "serve",
	} {
		resp, err := http.Get("http://" + metricsAddr + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(body), want) {
			t.Errorf("metrics_listen %s: %d, want 200 containing %q:\n%.300s", path, resp.StatusCode, want, body)
		}
	}
	p.stop()
}

func writeConfig(t *testing.T, dir, listen, extra string) string {
	t.Helper()
	path := filepath.Join(dir, "engram.yaml")
	cfg := fmt.Sprintf(`server_name: "test.local"
data_dir: "data"
listen: %q
registration_shared_secret: "s3cret"
bcrypt_rounds: 4
rate_limiting_enabled: false
%s`, listen, extra)
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func login(t *testing.T, listen, user, password string) int {
	status, _ := loginToken(t, listen, user, password)
	return status
}

func loginToken(t *testing.T, listen, user, password string) (int, string) {
	t.Helper()
	body, _ := json.Marshal(map[string]any{
		"type":       "m.login.password",
		"identifier": map[string]string{"type": "m.id.user", "user": user},
		"password":   password,
	})
	resp, err := http.Post("http://"+listen+"/_matrix/client/v3/login", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out struct {
		AccessToken string `json:"access_token"`
	}
	json.NewDecoder(resp.Body).Decode(&out)
	return resp.StatusCode, out.AccessToken
}

// longPoll starts a /sync that waits for new events for 60 s and returns
// a channel that receives when the request ends.
func longPoll(t *testing.T, listen, token string) <-chan struct{} {
	t.Helper()
	get := func(url string) map[string]any {
		req, _ := http.NewRequest("GET", url, nil)
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return nil
		}
		defer resp.Body.Close()
		var out map[string]any
		json.NewDecoder(resp.Body).Decode(&out)
		return out
	}
	first := get("http://" + listen + "/_matrix/client/v3/sync")
	since, _ := first["next_batch"].(string)
	if since == "" {
		t.Fatalf("initial /sync has no next_batch: %v", first)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		get("http://" + listen + "/_matrix/client/v3/sync?timeout=60000&since=" + since)
	}()
	time.Sleep(100 * time.Millisecond) // let it reach the server and wait there
	return done
}

func TestRegisterUserRestartVerifyTools(t *testing.T) {
	dir := t.TempDir()
	listen := freeAddr(t)
	cfg := writeConfig(t, dir, listen, "some_unknown_key: 1\nrc_message:\n  per_second: 5\n  burst_count: 20\n")
	p := startServer(t, dir, listen, nil, "--config", cfg)
	if !strings.Contains(p.stderr.String(), `unknown key \"some_unknown_key\"`) {
		t.Fatalf("no warning naming the unknown key:\n%s", p.stderr)
	}
	if _, err := os.Stat(filepath.Join(dir, "data", "signing.key")); err != nil {
		t.Fatalf("data_dir is not relative to the config file: %v", err)
	}
	out, errOut, code := runTool(t, dir, nil, "register-user", "--config", cfg, "--user", "alice", "--password", "pw1", "--admin")
	if code != 0 || !strings.Contains(out, "@alice:test.local") {
		t.Fatalf("register-user: code %d, %s %s", code, out, errOut)
	}
	if _, _, code := runTool(t, dir, nil, "register-user", "--config", cfg, "--user", "alice", "--password", "pw1"); code == 0 {
		t.Fatal("registering the same user twice succeeded")
	}
	st, token := loginToken(t, listen, "alice", "pw1")
	if st != http.StatusOK {
		t.Fatalf("login = %d", st)
	}
	// A /sync long-poll in flight does not hold the shutdown up.
	polling := longPoll(t, listen, token)
	select {
	case <-polling:
		t.Fatal("the long-poll /sync returned at once")
	default:
	}
	p.stop()
	<-polling

	// Offline tools on the stopped server's data.
	out, errOut, code = runTool(t, dir, nil, "verify", "--config", cfg)
	if code != 0 || !strings.Contains(out, "all projections match") || !strings.Contains(out, "accounts") {
		t.Fatalf("verify: code %d\n%s\n%s", code, out, errOut)
	}
	// Entry 1 records the server name; 2 is alice's registration, whose
	// password hash is not printed.
	out, _, code = runTool(t, dir, nil, "log", "--config", cfg, "show", "2")
	var e printedEntry
	if code != 0 || json.Unmarshal([]byte(out), &e) != nil || e.Offset != 2 || e.Kind != "account_registered" || !bytes.Contains(e.Payload, []byte("@alice:test.local")) {
		t.Fatalf("log show 2: code %d, %s", code, out)
	}
	if bytes.Contains(e.Payload, []byte("$2")) || !bytes.Contains(e.Payload, []byte(`"password_hash":"[redacted]"`)) {
		t.Fatalf("log show prints the password hash: %s", e.Payload)
	}
	out, _, code = runTool(t, dir, nil, "log", "--config", cfg, "tail", "-n", "2")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if code != 0 || len(lines) != 2 {
		t.Fatalf("log tail -n 2: code %d, %q", code, out)
	}
	var lastEntry printedEntry
	json.Unmarshal([]byte(lines[1]), &lastEntry)
	out, _, _ = runTool(t, dir, nil, "log", "--config", cfg, "tail", "-n", "1000")
	if all := strings.Split(strings.TrimSpace(out), "\n"); uint64(len(all)) != lastEntry.Offset || !strings.HasPrefix(all[0], `{"offset":1,`) {
		t.Fatalf("log tail -n 1000 printed %d entries, want all %d:\n%s", len(all), lastEntry.Offset, out)
	}
	if _, errOut, code = runTool(t, dir, nil, "rebuild", "--config", cfg, "--projection", "accounts"); code != 0 || !strings.Contains(errOut, "100%") {
		t.Fatalf("rebuild: code %d\n%s", code, errOut)
	}
	if _, errOut, code = runTool(t, dir, nil, "rebuild", "--config", cfg, "--projection", "nope"); code == 0 || !strings.Contains(errOut, "nope") {
		t.Fatalf("rebuild of an unknown projection: code %d\n%s", code, errOut)
	}

	// Restart resumes: the user is still there.
	p = startServer(t, dir, listen, nil, "--config", cfg)
	if st := login(t, listen, "alice", "pw1"); st != http.StatusOK {
		t.Fatalf("login after restart and rebuild = %d", st)
	}
	// Offline tools refuse to run beside the server, saying why.
	if _, errOut, code := runTool(t, dir, nil, "verify", "--config", cfg); code == 0 || !strings.Contains(errOut, "another engram") {
		t.Fatalf("verify beside a running server: code %d\n%s", code, errOut)
	}
	p.stop()
}

func TestBadConfigValueNamesKey(t *testing.T) {
	dir := t.TempDir()
	listen := freeAddr(t)
	cases := []struct {
		extra string
		env   []string
		want  []string
	}{
		{extra: "max_upload_size: lots\n", want: []string{`"max_upload_size"`, `"50M"`, `"lots"`}},
		{extra: "enable_registration: perhaps\n", want: []string{`"enable_registration"`, "true or false"}},
		{extra: "rc_message:\n  per_second: fast\n", want: []string{`"rc_message.per_second"`, "positive number"}},
		{extra: "turn_user_lifetime: forever\n", want: []string{`"turn_user_lifetime"`, "duration"}},
		{env: []string{"ENGRAM_LISTEN=nowhere"}, want: []string{"ENGRAM_LISTEN", `"listen"`, "host:port"}},
		{env: []string{"ENGRAM_RATE_LIMITING_ENABLED=maybe"}, want: []string{"ENGRAM_RATE_LIMITING_ENABLED", "true or false"}},
	}
	for _, c := range cases {
		cfg := writeConfig(t, dir, listen, c.extra)
		_, errOut, code := runTool(t, dir, c.env, "serve", "--config", cfg)
		if code != 2 {
			t.Errorf("%q %v: exit code %d, want 2 (stderr %s)", c.extra, c.env, code, errOut)
		}
		for _, w := range c.want {
			if !strings.Contains(errOut, w) {
				t.Errorf("%q %v: error %q does not mention %s", c.extra, c.env, strings.TrimSpace(errOut), w)
			}
		}
	}
}

func TestServerNameFromEnvironment(t *testing.T) {
	dir := t.TempDir()
	listen, fed := freeAddr(t), freeAddr(t)
	cfg := writeConfig(t, dir, listen, fmt.Sprintf("federation_listen: %q\n", fed))
	// ENGRAM_SERVER_NAME overrides the file; SERVER_NAME overrides both.
	p := startServer(t, dir, listen, []string{"ENGRAM_SERVER_NAME=engram-env.example", "SERVER_NAME=env.example"}, "--config", cfg)
	if name, _, _ := serverKey(t, fed); name != "env.example" {
		t.Fatalf("server name = %q, want env.example from SERVER_NAME", name)
	}
	p.stop()
	// A new data directory: the first one is recorded as env.example's.
	dir = t.TempDir()
	cfg = writeConfig(t, dir, listen, fmt.Sprintf("federation_listen: %q\n", fed))
	p = startServer(t, dir, listen, []string{"ENGRAM_SERVER_NAME=engram-env.example"}, "--config", cfg)
	if name, _, _ := serverKey(t, fed); name != "engram-env.example" {
		t.Fatalf("server name = %q, want engram-env.example from ENGRAM_SERVER_NAME", name)
	}
	p.stop()
}
