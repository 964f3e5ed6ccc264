package e2e

import (
	"bytes"
	"crypto/ed25519"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/engram-hs/engram/internal/testca"
	"github.com/engram-hs/engram/internal/testserver"
)

// Interop with a third-party homeserver: Dendrite v0.13.8, built from its
// Go module (github.com/matrix-org/dendrite, Apache-2.0) as a test-only
// binary in testdata/dendrite, a module of its own so that Engram's
// go.mod never requires it. It runs on loopback with a certificate from
// the test CA, server name localhost:PORT (an explicit port: no
// .well-known, no SRV), disable_tls_validation and no key perspectives
// (so it contacts nobody but Engram), and federates with a real
// `engram serve`, which finds it through federation_hosts.

var dendriteBuild struct {
	once sync.Once
	bin  string
	err  error
	took time.Duration
}

// dendriteBinary builds Dendrite once per test binary, as the tool of
// testdata/dendrite: `go tool -n` keeps the linked executable in the Go
// build cache, so only the first run on a machine pays the build (about
// 18 minutes measured on 2 cores shared with a load average of 30; under
// 5 s once cached).
func dendriteBinary(t *testing.T) string {
	t.Helper()
	b := &dendriteBuild
	b.once.Do(func() {
		start := time.Now()
		cmd := exec.Command("go", "tool", "-n", "dendrite")
		cmd.Dir = "testdata/dendrite"
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			b.err = fmt.Errorf("build Dendrite (go tool -n dendrite in federation/e2e/testdata/dendrite): %v\n%s", err, stderr.String())
			return
		}
		b.bin, b.took = strings.TrimSpace(string(out)), time.Since(start)
	})
	if b.err != nil {
		t.Fatal(b.err)
	}
	t.Logf("Dendrite v0.13.8 ready in %s", b.took.Round(time.Second))
	return b.bin
}

// dendrite is a running Dendrite: its client API on plain HTTP, its
// federation (and client) API on TLS at name.
type dendrite struct {
	server
	logs *bytes.Buffer
}

func startDendrite(t *testing.T, ca *testca.CA) *dendrite {
	t.Helper()
	bin := dendriteBinary(t)
	dir := t.TempDir()
	httpPort, tlsPort := testserver.FreePort(t), testserver.FreePort(t)
	name := fmt.Sprintf("localhost:%d", tlsPort)

	cert := ca.Issue(t, "localhost", "127.0.0.1")
	var chain []byte
	for _, der := range cert.Certificate {
		chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	_, signing, _ := ed25519.GenerateKey(nil)
	for file, data := range map[string][]byte{
		"tls.crt":        chain,
		"tls.key":        pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
		"matrix_key.pem": pem.EncodeToMemory(&pem.Block{Type: "MATRIX PRIVATE KEY", Headers: map[string]string{"Key-ID": "ed25519:dendrite"}, Bytes: signing.Seed()}),
	} {
		if err := os.WriteFile(filepath.Join(dir, file), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	db := func(component string) string {
		return fmt.Sprintf("\n  database:\n    connection_string: file:%s\n", filepath.Join(dir, component+".db"))
	}
	cfg := fmt.Sprintf(`version: 2
global:
  server_name: %q
  private_key: %q
  key_validity_period: 168h0m0s
  trusted_third_party_id_servers: []
  disable_federation: false
  presence:
    enable_inbound: true
    enable_outbound: true
  report_stats:
    enabled: false
  jetstream:
    storage_path: %q
    in_memory: true
app_service_api:
  disable_tls_validation: true
client_api:
  registration_disabled: false
  guests_disabled: true
  rate_limiting:
    enabled: false
federation_api:%s  disable_tls_validation: true
  disable_http_keepalives: true
  send_max_retries: 16
  key_perspectives: []
  prefer_direct_fetch: true
key_server:%smedia_api:%s  base_path: %q
mscs:%srelay_api:%sroom_server:%ssync_api:%s  search:
    enabled: false
user_api:
  bcrypt_cost: 4
  account_database:
    connection_string: file:%s
logging:
  - type: std
    level: warn
`, name, filepath.Join(dir, "matrix_key.pem"), dir,
		db("federationapi"), db("keyserver"), db("mediaapi"), filepath.Join(dir, "media"),
		db("mscs"), db("relayapi"), db("roomserver"), db("syncapi"), filepath.Join(dir, "userapi.db"))
	cfgPath := filepath.Join(dir, "dendrite.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	logs := &bytes.Buffer{}
	cmd := exec.Command(bin, "--config", cfgPath, "--really-enable-open-registration",
		"--http-bind-address", fmt.Sprintf("127.0.0.1:%d", httpPort),
		"--https-bind-address", fmt.Sprintf("127.0.0.1:%d", tlsPort),
		"--tls-cert", filepath.Join(dir, "tls.crt"), "--tls-key", filepath.Join(dir, "tls.key"))
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = syncWriter{logs}, syncWriter{logs}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("Dendrite's log:\n%s", logs.String())
		}
	})
	base := fmt.Sprintf("http://127.0.0.1:%d", httpPort)
	deadline := time.Now().Add(2 * time.Minute)
	for {
		resp, err := http.Get(base + "/_matrix/client/versions")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		select {
		case err := <-exited:
			t.Fatalf("Dendrite exited before serving: %v\n%s", err, logs.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("Dendrite did not serve within 2 minutes:\n%s", logs.String())
		}
		time.Sleep(200 * time.Millisecond)
	}
	return &dendrite{server: server{&testserver.Server{URL: base}, name}, logs: logs}
}

// syncWriter lets Dendrite's stdout and stderr share one buffer.
type syncWriter struct{ b *bytes.Buffer }

var logMu sync.Mutex

func (w syncWriter) Write(p []byte) (int, error) {
	logMu.Lock()
	defer logMu.Unlock()
	return w.b.Write(p)
}

// registerDendrite registers a user through Dendrite's user-interactive
// registration (one m.login.dummy stage).
func registerDendrite(t *testing.T, d *dendrite, user string) string {
	t.Helper()
	var out struct {
		AccessToken string `json:"access_token"`
		Session     string `json:"session"`
	}
	body := map[string]any{"username": user, "password": "pw-" + user + "-long-enough"}
	if st := call(t, d.server, "POST", "/_matrix/client/v3/register", "", body, &out); st == 401 {
		body["auth"] = map[string]string{"type": "m.login.dummy", "session": out.Session}
		if st := call(t, d.server, "POST", "/_matrix/client/v3/register", "", body, &out); st != 200 {
			t.Fatalf("register %s on Dendrite: %d", user, st)
		}
	} else if st != 200 {
		t.Fatalf("register %s on Dendrite: %d", user, st)
	}
	return out.AccessToken
}

// roomState is a room's current state as s's client API shows it:
// (type, state_key) to event ID.
func roomState(t *testing.T, s server, token, roomID string) map[string]string {
	t.Helper()
	var evs []struct {
		Type     string `json:"type"`
		StateKey string `json:"state_key"`
		EventID  string `json:"event_id"`
	}
	if st := call(t, s, "GET", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/state", token, nil, &evs); st != 200 {
		return nil
	}
	out := map[string]string{}
	for _, e := range evs {
		out[e.Type+"|"+e.StateKey] = e.EventID
	}
	return out
}

func displayName(t *testing.T, s server, token, userID string) string {
	t.Helper()
	var p struct {
		DisplayName string `json:"displayname"`
	}
	call(t, s, "GET", "/_matrix/client/v3/profile/"+url.PathEscape(userID), token, nil, &p)
	return p.DisplayName
}

// Engram and Dendrite in both directions, through their client APIs: an
// Engram user joins a Dendrite room by its alias and a Dendrite user joins
// an Engram room by ID through server_name; messages go both ways in both
// rooms; both servers end with the same state (same event IDs) in both
// rooms; profiles and aliases resolve across; both users leave the other
// server's room and its owner sees them go. `engram verify` passes
// afterwards.
func TestInteropWithDendrite(t *testing.T) {
	ca := testca.New(t)
	d := startDendrite(t, ca)
	_, dPort, _ := strings.Cut(d.name, ":")
	e := startWith(t, ca, fmt.Sprintf("127.0.0.1:%d", testserver.FreePort(t)), "",
		fmt.Sprintf("federation_hosts: [%q]\n", d.name+"=127.0.0.1:"+dPort))
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("Engram's log:\n%s", e.Logs())
		}
	})
	alice := register(t, e, "alice")
	dave := registerDendrite(t, d, "dave")
	aliceID, daveID := "@alice:"+e.name, "@dave:"+d.name
	if st := call(t, d.server, "PUT", "/_matrix/client/v3/profile/"+url.PathEscape(daveID)+"/displayname", dave, map[string]string{"displayname": "Dave of Dendrite"}, nil); st != 200 {
		t.Fatalf("set dave's display name: %d", st)
	}
	if st := call(t, e, "PUT", "/_matrix/client/v3/profile/"+url.PathEscape(aliceID)+"/displayname", alice, map[string]string{"displayname": "Alice of Engram"}, nil); st != 200 {
		t.Fatalf("set alice's display name: %d", st)
	}

	var room struct {
		RoomID  string `json:"room_id"`
		Errcode string `json:"errcode"`
		Error   string `json:"error"`
	}
	// Dendrite's room, joined from Engram by alias.
	if st := call(t, d.server, "POST", "/_matrix/client/v3/createRoom", dave, map[string]any{"room_alias_name": "dhall", "preset": "public_chat", "room_version": "11"}, &room); st != 200 {
		t.Fatalf("createRoom on Dendrite: %d %+v", st, room)
	}
	dRoom := room.RoomID
	// History before Engram joins, which Engram backfills from Dendrite.
	var history []string
	for i := range 15 {
		body := fmt.Sprintf("Dendrite's history %02d", i)
		if st := call(t, d.server, "PUT", "/_matrix/client/v3/rooms/"+url.PathEscape(dRoom)+"/send/m.room.message/h"+fmt.Sprint(i), dave, map[string]string{"msgtype": "m.text", "body": body}, nil); st != 200 {
			t.Fatalf("dave sends history: %d", st)
		}
		history = append(history, body)
	}
	if st := call(t, e, "POST", "/_matrix/client/v3/join/"+url.PathEscape("#dhall:"+d.name), alice, map[string]any{}, &room); st != 200 || room.RoomID != dRoom {
		t.Fatalf("Engram joins Dendrite's room by alias: %d %+v\nEngram's log:\n%s", st, room, e.Logs())
	}
	// Engram's room, joined from Dendrite by ID through server_name.
	if st := call(t, e, "POST", "/_matrix/client/v3/createRoom", alice, map[string]any{"room_alias_name": "ehall", "preset": "public_chat", "room_version": "11"}, &room); st != 200 {
		t.Fatalf("createRoom on Engram: %d %+v", st, room)
	}
	eRoom := room.RoomID
	var dir struct {
		RoomID  string   `json:"room_id"`
		Servers []string `json:"servers"`
	}
	if st := call(t, d.server, "GET", "/_matrix/client/v3/directory/room/"+url.PathEscape("#ehall:"+e.name), dave, nil, &dir); st != 200 || dir.RoomID != eRoom {
		t.Fatalf("Dendrite resolves Engram's alias: %d %+v, want %s", st, dir, eRoom)
	}
	if st := call(t, d.server, "POST", "/_matrix/client/v3/join/"+url.PathEscape(eRoom)+"?server_name="+url.QueryEscape(e.name), dave, map[string]any{}, &room); st != 200 || room.RoomID != eRoom {
		t.Fatalf("Dendrite joins Engram's room by ID: %d %+v\nEngram's log:\n%s", st, room, e.Logs())
	}

	for i, roomID := range []string{dRoom, eRoom} {
		for _, who := range []struct {
			s     server
			token string
		}{{e, alice}, {d.server, dave}} {
			eventually(t, "both users joined on "+who.s.name, func() bool {
				return joined(t, who.s, who.token, roomID, aliceID) && joined(t, who.s, who.token, roomID, daveID)
			})
		}
		fromE, fromD := "from Engram in "+roomID, "from Dendrite in "+roomID
		if st := call(t, e, "PUT", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/send/m.room.message/e"+fmt.Sprint(i), alice, map[string]string{"msgtype": "m.text", "body": fromE}, nil); st != 200 {
			t.Fatalf("alice sends: %d", st)
		}
		if st := call(t, d.server, "PUT", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/send/m.room.message/d"+fmt.Sprint(i), dave, map[string]string{"msgtype": "m.text", "body": fromD}, nil); st != 200 {
			t.Fatalf("dave sends: %d", st)
		}
		eventually(t, "Dendrite's message on Engram", func() bool { return hasMessage(t, e, alice, roomID, fromD) })
		eventually(t, "Engram's message on Dendrite", func() bool { return hasMessage(t, d.server, dave, roomID, fromE) })
		var es, ds map[string]string
		eventually(t, "the same state on both servers", func() bool {
			es, ds = roomState(t, e, alice, roomID), roomState(t, d.server, dave, roomID)
			return len(es) > 0 && maps.Equal(es, ds)
		})
	}

	// Alice pages back through the history of Dendrite's room from before
	// her join: Engram fetched it from Dendrite with /backfill.
	evs, _ := pageBack(t, e, alice, dRoom, "", 6)
	got := bodies(evs)
	slices.Reverse(got)
	if len(got) < len(history) || !slices.Equal(got[:len(history)], history) {
		t.Fatalf("alice's history of Dendrite's room: %q, want it to start with %q", got, history)
	}
	if last := evs[len(evs)-1]; last.Type != "m.room.create" {
		t.Fatalf("alice's history of Dendrite's room ends at %s, not the create event", last.Type)
	}

	if got := displayName(t, e, alice, daveID); got != "Dave of Dendrite" {
		t.Errorf("Engram shows dave's display name as %q", got)
	}
	if got := displayName(t, d.server, dave, aliceID); got != "Alice of Engram" {
		t.Errorf("Dendrite shows alice's display name as %q", got)
	}

	// Each leaves the other server's room.
	if st := call(t, e, "POST", "/_matrix/client/v3/rooms/"+url.PathEscape(dRoom)+"/leave", alice, map[string]any{}, nil); st != 200 {
		t.Fatalf("alice leaves Dendrite's room: %d", st)
	}
	if st := call(t, d.server, "POST", "/_matrix/client/v3/rooms/"+url.PathEscape(eRoom)+"/leave", dave, map[string]any{}, nil); st != 200 {
		t.Fatalf("dave leaves Engram's room: %d", st)
	}
	eventually(t, "Dendrite sees alice leave", func() bool { return membership(t, d.server, dave, dRoom, aliceID) == "leave" })
	eventually(t, "Engram sees dave leave", func() bool { return membership(t, e, alice, eRoom, daveID) == "leave" })

	e.Stop()
	if o, err := exec.Command(testserver.Binary(t), "verify", "--config", e.Config).CombinedOutput(); err != nil {
		t.Fatalf("engram verify after federating with Dendrite: %v\n%s", err, o)
	}
}
