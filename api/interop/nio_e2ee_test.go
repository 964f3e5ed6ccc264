package interop

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/engram-hs/engram/internal/testserver"
)

// TestNioE2EE: matrix-nio with python3-olm encrypts for real against a
// running engram: two users in an encrypted room decrypt each other's
// messages, a second device of one of them receives the room key, and
// one-time keys are handed out once each.
func TestNioE2EE(t *testing.T) {
	requirePython(t, "nio", "olm")
	srv := testserver.Start(t, testserver.Options{})
	script, err := filepath.Abs("testdata/nio_e2ee.py")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(python, script, srv.URL, fmt.Sprint(time.Now().UnixNano()%1_000_000), t.TempDir())
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "NIO E2EE OK") {
		t.Fatalf("nio e2ee flow failed: %v\n%s\nserver output:\n%s", err, out, srv.Logs())
	}
}
