// Package testserver builds the engram binary once per test process and
// runs it as a real server on 127.0.0.1, for black-box tests that drive it
// through the Matrix API with third-party clients.
package testserver

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// Binary builds ./cmd/engram into a temporary directory (once per process)
// and returns its path.
func Binary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "engram-bin-")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "engram")
		cmd := exec.Command("go", "build", "-o", binPath, "github.com/engram-hs/engram/cmd/engram")
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Run(); err != nil {
			buildErr = fmt.Errorf("go build ./cmd/engram: %v\n%s", err, out.String())
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// Server is a running engram process.
type Server struct {
	URL     string // http://127.0.0.1:PORT
	DataDir string
	Config  string // path of the YAML config it was started with
	cmd     *exec.Cmd
	logs    *syncBuffer
	t       testing.TB
}

// Options tune the config a test server is started with. Extra YAML lines
// are appended verbatim.
type Options struct {
	ServerName string // default "localhost"
	ExtraYAML  string
	DataDir    string // reuse a data dir (restart tests); default t.TempDir()
	// Port is the client listener's port (to name it in ExtraYAML, e.g.
	// public_baseurl); default a free one.
	Port int
}

// FreePort returns a loopback port that was free a moment ago and that
// this process has not handed out before: the kernel may give a port just
// closed to the next bind(0), and two servers of one test (or a client and
// a federation listener) were seen to get the same one and fail to start.
func FreePort(t testing.TB) int {
	t.Helper()
	handedOut.Lock()
	defer handedOut.Unlock()
	for {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if !handedOut.ports[port] {
			handedOut.ports[port] = true
			return port
		}
	}
}

var handedOut = struct {
	sync.Mutex
	ports map[int]bool
}{ports: map[int]bool{}}

// Start writes a config, starts `engram serve --config` and waits until
// /_matrix/client/versions answers. The process is stopped with SIGTERM at
// test cleanup.
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	bin := Binary(t)
	if opts.ServerName == "" {
		opts.ServerName = "localhost"
	}
	if opts.DataDir == "" {
		opts.DataDir = t.TempDir()
	}
	port := opts.Port
	if port == 0 {
		port = FreePort(t)
	}
	cfg := fmt.Sprintf(`server_name: %q
data_dir: %q
listen: "127.0.0.1:%d"
enable_registration: true
enable_registration_without_verification: true
registration_shared_secret: "test-shared-secret"
rate_limiting_enabled: false
%s
`, opts.ServerName, opts.DataDir, port, opts.ExtraYAML)
	cfgPath := filepath.Join(opts.DataDir, "test-engram.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	s := &Server{
		URL:     fmt.Sprintf("http://127.0.0.1:%d", port),
		DataDir: opts.DataDir,
		Config:  cfgPath,
		logs:    &syncBuffer{},
		t:       t,
	}
	s.cmd = exec.Command(bin, "serve", "--config", cfgPath)
	s.cmd.Stdout, s.cmd.Stderr = s.logs, s.logs
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Stop() })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		resp, err := http.Get(s.URL + "/_matrix/client/versions")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return s
			}
		}
		select {
		case <-ctx.Done():
			s.Stop()
			t.Fatalf("engram did not answer /versions within 30s; its output:\n%s", s.Logs())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Stop sends SIGTERM and waits up to 10 s (the shutdown promise), then kills.
// It reports a test error when the server did not stop in time or exited
// with a failure.
func (s *Server) Stop() {
	if s.cmd == nil || s.cmd.Process == nil || s.cmd.ProcessState != nil {
		return
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- s.cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			s.t.Errorf("engram exited with %v after SIGTERM; output:\n%s", err, s.Logs())
		}
	case <-time.After(10 * time.Second):
		_ = s.cmd.Process.Kill()
		<-done
		s.t.Errorf("engram did not stop within 10s of SIGTERM; output:\n%s", s.Logs())
	}
}

// Logs returns what the server printed so far (tail-trimmed for reports).
func (s *Server) Logs() string {
	out := s.logs.String()
	if len(out) > 20000 {
		out = "...\n" + out[len(out)-20000:]
	}
	return strings.TrimSpace(out)
}

// PID is the server process's ID (for tests that read /proc/PID).
func (s *Server) PID() int { return s.cmd.Process.Pid }

// syncBuffer is the process's output: written by os/exec's copying
// goroutine while a test may read it (Logs).
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
