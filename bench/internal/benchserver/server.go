// Package benchserver runs a real Engram (log, projections, client API)
// in this process on 127.0.0.1, for the bench tools' tests.
package benchserver

import (
	"context"
	"net"
	"net/http/httptest"
	"path/filepath"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/crypto/bcrypt"

	"github.com/engram-hs/engram/api"
	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/projections"
	"github.com/engram-hs/engram/roomwrite"
)

// Server is a running in-process Engram.
type Server struct {
	URL    string
	Dir    string
	Node   *englog.Node
	Engine *projections.Engine
	API    *api.Server
	hs     *httptest.Server
}

// Start serves the log in dir (t.TempDir() when empty) on a loopback port
// until the test ends. Registration is open, rate limiting off, bcrypt at
// its minimum cost.
func Start(t testing.TB, dir, serverName string) *Server {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	logger := zerolog.Nop()
	node, err := englog.Open(englog.Config{Dir: dir, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	eng := projections.NewEngine(node, node.DB(), logger, nil)
	rw, err := roomwrite.New(roomwrite.Config{ServerName: serverName, Logger: logger}, node, eng)
	if err != nil {
		t.Fatal(err)
	}
	cfg := api.Config{
		ServerName:                            serverName,
		EnableRegistration:                    true,
		EnableRegistrationWithoutVerification: true,
		BcryptCost:                            bcrypt.MinCost,
		MaxUploadSize:                         1 << 30,
	}
	// The media repository (bench media), outside the log's directory.
	cfg.Media.Repo.Dir = filepath.Join(t.TempDir(), "media")
	cfg.Media.Repo.AuthenticatedMedia = true
	srv, err := api.New(cfg, api.Deps{Log: node, Engine: eng, Rooms: rw, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
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
	s := &Server{URL: hs.URL, Dir: dir, Node: node, Engine: eng, API: srv, hs: hs}
	t.Cleanup(func() {
		srv.Close()
		hs.Close()
		_ = eng.Close()
		_ = node.Close()
	})
	return s
}
