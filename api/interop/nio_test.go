// Package interop drives a real engram process with third-party Matrix
// clients, because they catch what our own client would not.
package interop

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/engram-hs/engram/internal/testserver"
)

const python = "/usr/bin/python3"

// requirePython makes sure python3 can import the given modules. In CI
// (CI set) a missing module is a failure, since .ci/run installs them; on a
// developer machine the test is skipped with the command that fixes it.
func requirePython(t *testing.T, modules ...string) {
	t.Helper()
	args := []string{"-c", "import " + strings.Join(modules, ", ")}
	if out, err := exec.Command(python, args...).CombinedOutput(); err != nil {
		msg := fmt.Sprintf("%s cannot import %v (%v: %s); install with: apt-get install -y python3-matrix-nio python3-olm", python, modules, err, out)
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
}

// TestNioFlow: register, login, create room, invite, join, send, sync and
// /messages, all driven by matrix-nio.
func TestNioFlow(t *testing.T) {
	requirePython(t, "nio")
	srv := testserver.Start(t, testserver.Options{})
	script, err := filepath.Abs("testdata/nio_flow.py")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(python, script, srv.URL, fmt.Sprint(time.Now().UnixNano()%1_000_000))
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "NIO FLOW OK") {
		t.Fatalf("nio flow failed: %v\n%s\nserver output:\n%s", err, out, srv.Logs())
	}
}
