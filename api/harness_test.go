package api_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/engram-hs/engram/api"
	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/projections"
	"github.com/engram-hs/engram/roomwrite"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"golang.org/x/crypto/bcrypt"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"
)

const serverName = "test.local"

// testServer is a real Engram client API: the real log on a temporary
// Pebble directory, the real projection engine, served on 127.0.0.1.
type testServer struct {
	t    *testing.T
	URL  string
	api  *api.Server
	dir  string
	cfg  api.Config
	node *englog.Node
	eng  *projections.Engine
	hs   *httptest.Server
}

func startServer(t *testing.T, mutate ...func(*api.Config)) *testServer {
	t.Helper()
	logger := zerolog.New(io.Discard)
	if testing.Verbose() {
		logger = zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)
	}
	dir := t.TempDir()
	node, err := englog.Open(englog.Config{Dir: dir, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	eng := projections.NewEngine(node, node.DB(), logger, reg)
	cfg := api.Config{
		ServerName:               serverName,
		EnableRegistration:       true,
		RegistrationSharedSecret: "s3cret",
		BcryptCost:               bcrypt.MinCost,
		PublicBaseURL:            "https://matrix.test.local/",
	}
	for _, m := range mutate {
		m(&cfg)
	}
	rw, err := roomwrite.New(roomwrite.Config{ServerName: cfg.ServerName, Logger: logger}, node, eng)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := api.New(cfg, api.Deps{Log: node, Engine: eng, Rooms: rw, Logger: logger, Metrics: reg})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := eng.Start(ctx); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewUnstartedServer(srv.Handler())
	hs.Listener = ln
	hs.Start()
	ts := &testServer{t: t, URL: hs.URL, api: srv, dir: dir, cfg: cfg, node: node, eng: eng, hs: hs}
	t.Cleanup(ts.stop)
	return ts
}

// stop shuts the server down; it is safe to call twice.
func (ts *testServer) stop() {
	if ts.hs == nil {
		return
	}
	ts.api.Close()
	ts.hs.Close()
	_ = ts.eng.Close()
	_ = ts.node.Close()
	ts.hs = nil
}

// register creates a user with m.login.dummy and returns a logged-in client.
func (ts *testServer) register(name string) *mautrix.Client {
	ts.t.Helper()
	cli, err := mautrix.NewClient(ts.URL, "", "")
	if err != nil {
		ts.t.Fatal(err)
	}
	resp, err := cli.RegisterDummy(context.Background(), &mautrix.ReqRegister[any]{Username: name, Password: "pw-" + name})
	if err != nil {
		ts.t.Fatalf("register %s: %v", name, err)
	}
	cli.SetCredentials(resp.UserID, resp.AccessToken)
	cli.DeviceID = resp.DeviceID
	return cli
}

// do sends a raw request and decodes the JSON answer.
func (ts *testServer) do(method, path, token string, body any) (int, map[string]any) {
	ts.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case []byte:
		rd = bytes.NewReader(b)
	case string:
		rd = bytes.NewReader([]byte(b))
	default:
		raw, _ := json.Marshal(b)
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequest(method, ts.URL+path, rd)
	if err != nil {
		ts.t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		ts.t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var out map[string]any
	_ = json.Unmarshal(raw, &out)
	return resp.StatusCode, out
}

func errcode(err error) string {
	var he mautrix.HTTPError
	if errors.As(err, &he) && he.RespError != nil {
		return he.RespError.ErrCode
	}
	var re *mautrix.RespError
	if errors.As(err, &re) {
		return re.ErrCode
	}
	return ""
}

func uid(local string) id.UserID { return id.UserID("@" + local + ":" + serverName) }
