package main

import (
	"bytes"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestFirstRunFlagsAndServerName: the flags of the first run are in the
// generated file; a start without them serves the same name; a start
// under another server_name is refused naming both; the printed
// register-user command works as printed (password on stdin).
func TestFirstRunFlagsAndServerName(t *testing.T) {
	dir := t.TempDir()
	listen := freeAddr(t)
	p := startServer(t, dir, listen, nil, "--data-dir", "d2", "--listen", listen, "--server-name", "test.example")
	p.stop()
	file, err := os.ReadFile(filepath.Join(dir, "d2", "engram.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`server_name: "test.example"`, `listen: "` + listen + `"`} {
		if !bytes.Contains(file, []byte("\n"+want+"\n")) {
			t.Fatalf("generated config lacks %s:\n%s", want, file)
		}
	}
	// The banner's command, as printed, against a start without flags.
	p = startServer(t, dir, listen, nil, "--config", "d2/engram.yaml")
	cmd := exec.Command(binary, "register-user", "--config", "d2/engram.yaml", "--user", "admin", "--admin")
	cmd.Dir = dir
	cmd.Stdin = strings.NewReader("pw-from-stdin\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("register-user with the password on stdin: %v\n%s", err, out)
	}
	if st := login(t, listen, "@admin:test.example", "pw-from-stdin"); st != 200 {
		t.Fatalf("login as the registered admin: %d", st)
	}
	p.stop()
	// Another server name on this data is refused, naming both.
	_, stderr, code := runTool(t, dir, nil, "serve", "--config", "d2/engram.yaml", "--server-name", "other.example")
	if code == 0 || !strings.Contains(stderr, `test.example`) || !strings.Contains(stderr, `other.example`) || !strings.Contains(stderr, "cannot change") {
		t.Fatalf("serve under another server_name: exit %d\n%s", code, stderr)
	}
}

// TestOpenRegistrationRefused: enable_registration without a token or
// enable_registration_without_verification stops serve with a message
// naming the way out; with it, the server starts.
func TestOpenRegistrationRefused(t *testing.T) {
	dir := t.TempDir()
	listen := freeAddr(t)
	cfg := writeConfig(t, dir, listen, "enable_registration: true\n")
	_, stderr, code := runTool(t, dir, nil, "serve", "--config", cfg)
	if code != 2 || !strings.Contains(stderr, "enable_registration_without_verification") {
		t.Fatalf("open registration: exit %d\n%s", code, stderr)
	}
	cfg = writeConfig(t, dir, listen, "enable_registration: true\nregistration_requires_token: true\n")
	startServer(t, dir, listen, nil, "--config", cfg).stop()
	cfg = writeConfig(t, dir, listen, "enable_registration: true\nenable_registration_without_verification: true\n")
	p := startServer(t, dir, listen, []string{"ENGRAM_SERVERNAME=typo.example"}, "--config", cfg)
	p.stop()
	// The logs of that run: request lines with latency_ms and no empty
	// fields, millisecond timestamps, no raft election at info.
	logs := p.stderr.String()
	if !strings.Contains(logs, `"message":"request"`) || !strings.Contains(logs, `"latency_ms":`) || strings.Contains(logs, `"latency":`) ||
		strings.Contains(logs, `"errcode":""`) || strings.Contains(logs, `"user":""`) || strings.Contains(logs, `"room":""`) {
		t.Fatalf("request log lines:\n%s", logs)
	}
	if !regexp.MustCompile(`"time":"[0-9-]+T[0-9:]+\.[0-9]{3}Z"`).MatchString(logs) {
		t.Fatalf("timestamps are not in milliseconds:\n%s", logs)
	}
	if strings.Contains(logs, `"subsystem":"raft"`) {
		t.Fatalf("a single node's raft chatter is logged at info:\n%s", logs)
	}
	if !strings.Contains(p.stderr.String(), "ENGRAM_SERVERNAME") {
		t.Fatalf("an unknown ENGRAM_ variable was not warned about:\n%s", p.stderr)
	}
}

// TestHelpAndVersionExitZero: --version and -h on every command exit 0.
func TestHelpAndVersionExitZero(t *testing.T) {
	dir := t.TempDir()
	if out, _, code := runTool(t, dir, nil, "--version"); code != 0 || !strings.Contains(out, version) {
		t.Fatalf("--version: exit %d %q", code, out)
	}
	for _, c := range commands() {
		if c.name == "version" {
			continue
		}
		if _, stderr, code := runTool(t, dir, nil, c.name, "-h"); code != 0 {
			t.Errorf("engram %s -h: exit %d\n%s", c.name, code, stderr)
		}
	}
}

// TestAdminCommand: engram admin lists users and rooms, makes and revokes
// an admin, resets a password and deactivates, on a running server; each
// effect is checked through the client and admin APIs.
func TestAdminCommand(t *testing.T) {
	dir := t.TempDir()
	listen := freeAddr(t)
	cfg := writeConfig(t, dir, listen, "")
	p := startServer(t, dir, listen, nil, "--config", cfg)
	defer p.stop()
	tool := func(stdin string, args ...string) (string, string, int) {
		t.Helper()
		cmd := exec.Command(binary, args...)
		cmd.Dir = dir
		cmd.Stdin = strings.NewReader(stdin)
		var o, e bytes.Buffer
		cmd.Stdout, cmd.Stderr = &o, &e
		err := cmd.Run()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		}
		return o.String(), e.String(), code
	}
	if _, e, code := tool("root-pw\n", "register-user", "--config", cfg, "--user", "root", "--admin"); code != 0 {
		t.Fatalf("register-user root: %s", e)
	}
	if _, e, code := tool("bob-pw\n", "register-user", "--config", cfg, "--user", "bob"); code != 0 {
		t.Fatalf("register-user bob: %s", e)
	}
	admin := func(stdin string, args ...string) string {
		t.Helper()
		out, e, code := tool(stdin, append([]string{"admin", "--config", cfg, "--as", "root"}, args...)...)
		if code != 0 {
			t.Fatalf("engram admin %v: exit %d\n%s", args, code, e)
		}
		return out
	}
	if out := admin("root-pw\n", "list-users"); !strings.Contains(out, "@bob:test.local") || !strings.Contains(out, "@root:test.local") {
		t.Fatalf("list-users:\n%s", out)
	}
	st, bobTok := loginToken(t, listen, "bob", "bob-pw")
	if st != 200 {
		t.Fatalf("bob login: %d", st)
	}
	asBob := func(method, path string, body string) int {
		req, _ := http.NewRequest(method, "http://"+listen+path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+bobTok)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if st := asBob("POST", "/_matrix/client/v3/createRoom", `{"name":"Book Club"}`); st != 200 {
		t.Fatalf("createRoom: %d", st)
	}
	if out := admin("root-pw\n", "list-rooms"); !strings.Contains(out, "Book Club") {
		t.Fatalf("list-rooms:\n%s", out)
	}
	if st := asBob("GET", "/_synapse/admin/v1/server_version", ""); st != 403 {
		t.Fatalf("bob before make-admin: %d", st)
	}
	admin("root-pw\n", "make-admin", "bob")
	if st := asBob("GET", "/_synapse/admin/v1/server_version", ""); st != 200 {
		t.Fatalf("bob after make-admin: %d", st)
	}
	admin("root-pw\n", "revoke-admin", "@bob:test.local")
	if st := asBob("GET", "/_synapse/admin/v1/server_version", ""); st != 403 {
		t.Fatalf("bob after revoke-admin: %d", st)
	}
	admin("root-pw\nbob-new-pw\n", "reset-password", "bob")
	if st := login(t, listen, "bob", "bob-pw"); st != 403 {
		t.Fatalf("bob's old password after reset-password: %d", st)
	}
	if st := login(t, listen, "bob", "bob-new-pw"); st != 200 {
		t.Fatalf("bob's new password: %d", st)
	}
	admin("root-pw\n", "deactivate", "bob")
	if st := login(t, listen, "bob", "bob-new-pw"); st != 403 {
		t.Fatalf("deactivated bob logs in: %d", st)
	}
	if _, e, code := tool("wrong\n", "admin", "--config", cfg, "--as", "root", "list-users"); code == 0 || !strings.Contains(e, "M_FORBIDDEN") {
		t.Fatalf("a wrong admin password: exit %d %s", code, e)
	}
}

// TestOperatorKeys: Synapse's rc_* sections (block and flow style),
// x_forwarded, trusted_proxies and server_notices reach the API config;
// defaults are Synapse's.
func TestOperatorKeys(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "engram.yaml")
	os.WriteFile(path, []byte(`rc_login:
  failed_attempts: {per_second: 0.5, burst_count: 7}
  address:
    per_second: 1
rc_joins: {local: {per_second: 2, burst_count: 4}}
trusted_proxies: ["10.0.0.0/8", "192.0.2.1"]
x_forwarded: false
server_notices:
  system_mxid_localpart: notices
  room_name: "Notices"
`), 0o600)
	c, warnings, err := loadConfig(path, envOf(map[string]string{"ENGRAM_RC_INVITES_PER_USER_BURST_COUNT": "9"}), nil)
	if err != nil || len(warnings) != 0 {
		t.Fatalf("load: %v %v", err, warnings)
	}
	rc := c.RC
	if rc.LoginFailedAttempts.PerSecond != 0.5 || rc.LoginFailedAttempts.BurstCount != 7 || rc.LoginAddress.PerSecond != 1 || rc.LoginAddress.BurstCount != 5 ||
		rc.JoinsLocal.BurstCount != 4 || rc.InvitesPerUser.BurstCount != 9 || rc.Message.PerSecond != 0.2 || rc.Message.BurstCount != 10 {
		t.Fatalf("rate limits: %+v", rc)
	}
	if len(c.TrustedProxies) != 2 || c.TrustedProxies[1].String() != "192.0.2.1/32" || c.ServerNotices.SystemMXIDLocalpart != "notices" || c.ServerNotices.RoomName != "Notices" {
		t.Fatalf("proxies %v, notices %+v", c.TrustedProxies, c.ServerNotices)
	}
	// The generated file parses without warnings.
	os.WriteFile(path, defaultConfigFile("s"), 0o600)
	if _, warnings, err := loadConfig(path, envOf(nil), nil); err != nil || len(warnings) != 0 {
		t.Fatalf("generated file: %v %v", err, warnings)
	}
	if got := unknownEnv([]string{"ENGRAM_SERVER_NAME=x", "ENGRAM_SERVERNAME=y", "ENGRAM_BENCH_SECONDS=3", "PATH=/bin"}); len(got) != 1 || !strings.Contains(got[0], "ENGRAM_SERVERNAME") {
		t.Fatalf("unknown env warnings: %q", got)
	}
}
