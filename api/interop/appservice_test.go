package interop

import (
	"context"
	"fmt"
	"net/url"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/appservice"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/engram-hs/engram/internal/testserver"
)

// startBridge starts a mautrix appservice (as a bridge would run it) on a
// loopback port, with the registration the server is given.
func startBridge(t *testing.T, dir string) (*appservice.AppService, string) {
	t.Helper()
	port := testserver.FreePort(t)
	reg := appservice.CreateRegistration()
	reg.ID = "testbridge"
	reg.URL = fmt.Sprintf("http://127.0.0.1:%d", port)
	reg.SenderLocalpart = "_bridgebot"
	reg.Namespaces.UserIDs.Register(regexp.MustCompile(`@_bridge_.*:localhost`), true)
	reg.Namespaces.RoomAliases.Register(regexp.MustCompile(`#_bridge_.*:localhost`), true)
	path := filepath.Join(dir, "bridge-registration.yaml")
	if err := reg.Save(path); err != nil {
		t.Fatal(err)
	}
	as := appservice.Create()
	as.Registration = reg
	as.HomeserverDomain = "localhost"
	as.Host = appservice.HostConfig{Hostname: "127.0.0.1", Port: uint16(port)}
	go as.Start()
	t.Cleanup(as.Stop)
	return as, path
}

// nextEvent waits for an event the bridge was pushed that matches.
func nextEvent(t *testing.T, as *appservice.AppService, what string, match func(*event.Event) bool) *event.Event {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		select {
		case evt := <-as.Events:
			if match(evt) {
				return evt
			}
		case <-deadline:
			t.Fatalf("the appservice was never pushed %s", what)
		}
	}
}

// TestAppserviceBridge drives Engram with mautrix-go's appservice package,
// the framework of the mautrix bridges: ping, ghost registration and
// masquerading, transactions pushed to the bridge, timestamp massaging,
// exclusive namespaces, and delivery resuming after a restart without
// sending acknowledged events again.
func TestAppserviceBridge(t *testing.T) {
	dir := t.TempDir()
	as, regPath := startBridge(t, dir)
	dataDir := t.TempDir()
	opts := testserver.Options{DataDir: dataDir, ExtraYAML: "app_service_config_files: [" + fmt.Sprintf("%q", regPath) + "]"}
	srv := testserver.Start(t, opts)
	if err := as.SetHomeserverURL(srv.URL); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	bot := as.BotIntent()

	// Homeserver -> appservice reachability, as bridges check at start.
	if _, err := bot.AppservicePing(ctx, "testbridge", "ping-1"); err != nil {
		t.Fatalf("ping: %v\n%s", err, srv.Logs())
	}
	if _, err := bot.AppservicePing(ctx, "otherbridge", "ping-2"); err == nil || !strings.Contains(err.Error(), "M_FORBIDDEN") {
		t.Fatalf("ping of another appservice's id: %v", err)
	}

	// A human on the server, and a ghost of the bridge.
	c := client{t: t, base: srv.URL}
	aliceTok := c.register("alice")
	alice, err := mautrix.NewClient(srv.URL, "@alice:localhost", aliceTok)
	if err != nil {
		t.Fatal(err)
	}
	ghost := as.Intent("@_bridge_bob:localhost")
	if err := ghost.EnsureRegistered(ctx); err != nil {
		t.Fatalf("register the ghost: %v", err)
	}
	if who, err := ghost.Whoami(ctx); err != nil || who.UserID != "@_bridge_bob:localhost" {
		t.Fatalf("masquerading whoami: %v %v", who, err)
	}

	// Humans may not take the bridge's namespace.
	if st, body := c.do("POST", "/_matrix/client/v3/register", "", map[string]any{"username": "_bridge_mallory", "password": "pw", "auth": map[string]any{"type": "m.login.dummy"}}); st != 400 || body["errcode"] != "M_EXCLUSIVE" {
		t.Fatalf("register in an exclusive namespace: %d %v", st, body)
	}
	if _, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{RoomAliasName: "_bridge_taken"}); err == nil || !strings.Contains(err.Error(), "M_EXCLUSIVE") {
		t.Fatalf("createRoom with an alias in an exclusive namespace: %v", err)
	}
	// The appservice may not act outside its namespace.
	outside := as.Client("@alice:localhost")
	if _, err := outside.Whoami(ctx); err == nil || !strings.Contains(err.Error(), "M_FORBIDDEN") {
		t.Fatalf("masquerading outside the namespace: %v", err)
	}

	// Alice invites the ghost; the invite is pushed to the bridge, which
	// joins; her message reaches the bridge.
	room, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat", Invite: []id.UserID{ghost.UserID}})
	if err != nil {
		t.Fatal(err)
	}
	nextEvent(t, as, "the ghost's invite", func(e *event.Event) bool {
		return e.RoomID == room.RoomID && e.Type == event.StateMember && e.GetStateKey() == ghost.UserID.String()
	})
	if _, err := ghost.JoinRoomByID(ctx, room.RoomID); err != nil {
		t.Fatal(err)
	}
	sent, err := alice.SendText(ctx, room.RoomID, "hello bridge")
	if err != nil {
		t.Fatal(err)
	}
	nextEvent(t, as, "alice's message", func(e *event.Event) bool { return e.ID == sent.EventID })

	// The bridge posts a message from the remote network, at the time it
	// was sent there.
	remoteTS := time.Now().Add(-time.Hour).UnixMilli()
	resp, err := ghost.SendMassagedMessageEvent(ctx, room.RoomID, event.EventMessage, map[string]any{"msgtype": "m.text", "body": "from the other side"}, remoteTS)
	if err != nil {
		t.Fatal(err)
	}
	got, err := alice.GetEvent(ctx, room.RoomID, resp.EventID)
	if err != nil {
		t.Fatal(err)
	}
	if got.Timestamp != remoteTS || got.Sender != ghost.UserID {
		t.Fatalf("massaged event: ts %d sender %s, want %d %s", got.Timestamp, got.Sender, remoteTS, ghost.UserID)
	}
	// A human's ?ts= is ignored.
	q := url.Values{"ts": {"1000"}}
	st, body := c.do("PUT", "/_matrix/client/v3/rooms/"+url.PathEscape(room.RoomID.String())+"/send/m.room.message/t1?"+q.Encode(), aliceTok, map[string]any{"msgtype": "m.text", "body": "now"})
	if st != 200 {
		t.Fatalf("send with ts as a human: %d %v", st, body)
	}
	if e, err := alice.GetEvent(ctx, room.RoomID, id.EventID(body["event_id"].(string))); err != nil || e.Timestamp == 1000 {
		t.Fatalf("a human massaged a timestamp: %v %v", e, err)
	}
	nextEvent(t, as, "alice's second message", func(e *event.Event) bool { return e.ID == id.EventID(body["event_id"].(string)) })

	// The bridge goes down; a message waits for it across a restart of
	// the server, and nothing it acknowledged is pushed again.
	as.Stop()
	whileDown, err := alice.SendText(ctx, room.RoomID, "while the bridge was down")
	if err != nil {
		t.Fatal(err)
	}
	srv.Stop()
	srv = testserver.Start(t, opts)
	if err := as.SetHomeserverURL(srv.URL); err != nil {
		t.Fatal(err)
	}
	go as.Start()
	nextEvent(t, as, "the message sent while the bridge was down", func(e *event.Event) bool {
		if e.ID == sent.EventID {
			t.Errorf("an acknowledged event was pushed again after the restart")
		}
		return e.ID == whileDown.EventID
	})
	// The server logs the acknowledgement once the bridge's answer is in.
	for i := 0; !strings.Contains(srv.Logs(), "appservice transaction delivered"); i++ {
		if i == 100 {
			t.Fatalf("no delivery logged:\n%s", srv.Logs())
		}
		time.Sleep(50 * time.Millisecond)
	}
}
