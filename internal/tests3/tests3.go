// Package tests3 starts a real S3-compatible server for tests: the Versity
// S3 Gateway (github.com/versity/versitygw, Apache-2.0) with its posix
// backend in a temporary directory, on 127.0.0.1. The gateway is built
// from its module with `go install` once per version into the user's
// cache directory; .ci/run builds it up front (go run ./internal/tests3/install).
package tests3

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/engram-hs/engram/internal/objstore"
)

// Version is the gateway release the tests use.
const Version = "v1.8.0"

const module = "github.com/versity/versitygw/cmd/versitygw"

// Path is where the binary of Version is kept.
func Path() (string, error) {
	dir, err := os.UserCacheDir()
	if err != nil {
		return "", err
	}
	return filepath.Join(dir, "engram", "versitygw-"+Version, "versitygw"), nil
}

var (
	buildOnce sync.Once
	buildErr  error
)

// Build makes sure the binary exists, building it when it does not (a
// few minutes the first time on a fresh machine; the Go build cache
// makes a rebuild quick).
func Build() (string, error) {
	bin, err := Path()
	if err != nil {
		return "", err
	}
	buildOnce.Do(func() {
		if _, err := os.Stat(bin); err == nil {
			return
		}
		cmd := exec.Command("go", "install", module+"@"+Version)
		// Outside any module, so the gateway's own go.mod and go.sum pin
		// its dependencies.
		cmd.Dir = os.TempDir()
		cmd.Env = append(os.Environ(), "GOBIN="+filepath.Dir(bin), "GOWORK=off", "GOFLAGS=-mod=mod")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("tests3: go install %s@%s: %v\n%s", module, Version, err, out)
		}
	})
	return bin, buildErr
}

// Server is a running gateway.
type Server struct {
	Endpoint  string // http://127.0.0.1:port
	AccessKey string
	SecretKey string
	Dir       string // the posix backend's root: one directory per bucket

	t      testing.TB
	bin    string
	meta   string
	addr   string
	stop   func()
	stopMu sync.Mutex
}

// Config is an objstore configuration for bucket under prefix on s.
func (s *Server) Config(bucket, prefix string) objstore.Config {
	return objstore.Config{Bucket: bucket, EndpointURL: s.Endpoint, Region: "us-east-1",
		AccessKeyID: s.AccessKey, SecretAccessKey: s.SecretKey, Prefix: prefix}
}

// Bucket makes a client for a new bucket on s.
func (s *Server) Bucket(t testing.TB, bucket, prefix string) *objstore.Client {
	t.Helper()
	c, err := objstore.New(s.Config(bucket, prefix))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.MakeBucket(ctx); err != nil {
		t.Fatal(err)
	}
	return c
}

// Start starts a gateway for the test and stops it when the test ends.
// The test is skipped only when the binary cannot be built (in CI, where
// .ci/run has built it, it fails instead).
func Start(t testing.TB) *Server {
	t.Helper()
	bin, err := Build()
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	dir := t.TempDir()
	key := make([]byte, 16)
	rand.Read(key)
	s := &Server{AccessKey: "engramtest", SecretKey: hex.EncodeToString(key), Dir: filepath.Join(dir, "root")}
	if err := os.MkdirAll(s.Dir, 0o700); err != nil {
		t.Fatal(err)
	}
	s.t, s.bin, s.meta = t, bin, filepath.Join(dir, "meta")
	if err := os.MkdirAll(s.meta, 0o700); err != nil {
		t.Fatal(err)
	}
	for attempt := 0; ; attempt++ {
		err := s.run(freeAddr(t))
		if err == nil {
			break
		}
		if attempt == 3 {
			t.Fatal(err)
		}
		// The port was taken between freeAddr and the bind.
	}
	s.Endpoint = "http://" + s.addr
	t.Cleanup(s.Stop)
	return s
}

func (s *Server) run(addr string) error {
	cmd := exec.Command(s.bin, "--port", addr, "--access", s.AccessKey, "--secret", s.SecretKey, "--quiet",
		"posix", "--sidecar", s.meta, s.Dir)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	if err := waitListening(addr, exited); err != nil {
		_ = cmd.Process.Kill()
		<-exited
		return fmt.Errorf("tests3: the gateway did not start: %v\n%s", err, out.String())
	}
	s.stopMu.Lock()
	s.addr = addr
	s.stop = func() {
		_ = cmd.Process.Kill()
		<-exited
	}
	s.stopMu.Unlock()
	return nil
}

// Stop stops the gateway (the bucket's contents stay, for Restart): to
// show what a server does while its bucket cannot be reached.
func (s *Server) Stop() {
	s.stopMu.Lock()
	stop := s.stop
	s.stop = nil
	s.stopMu.Unlock()
	if stop != nil {
		stop()
	}
}

// Restart starts a stopped gateway again on its address, with what its
// buckets held.
func (s *Server) Restart() {
	s.t.Helper()
	var err error
	for attempt := 0; attempt < 50; attempt++ {
		if err = s.run(s.addr); err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond) // the address may linger a moment
	}
	s.t.Fatal(err)
}

func freeAddr(t testing.TB) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func waitListening(addr string, exited <-chan error) error {
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case err := <-exited:
			return fmt.Errorf("exited: %v", err)
		default:
		}
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return errors.New("not listening after 60 s")
}
