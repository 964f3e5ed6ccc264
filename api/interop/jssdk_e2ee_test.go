package interop

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/engram-hs/engram/internal/testserver"
)

// TestJSSDKE2EE: matrix-js-sdk with its Rust crypto (WASM) against a
// running engram (testdata/jse2ee/flow.mjs): cross-signing bootstrapped
// through UIA, secret storage with a recovery key and a new key backup, a
// megolm message whose key reaches the backup; a new device cannot decrypt
// it, then restores the room keys from the backup with the recovery key and
// does, cross-signs itself and is seen as verified by the first device.
//
// The packages are pinned in testdata/jse2ee/package-lock.json and installed
// there by .ci/run (`npm ci`); node 22 (which matrix-js-sdk needs) comes from
// the npm registry as the node package, so the system's node only runs npm.
func TestJSSDKE2EE(t *testing.T) {
	dir, err := filepath.Abs("testdata/jse2ee")
	if err != nil {
		t.Fatal(err)
	}
	node := filepath.Join(dir, "node_modules", ".bin", "node")
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "matrix-js-sdk")); err != nil {
		msg := "matrix-js-sdk is not installed; install with: npm ci --prefix api/interop/testdata/jse2ee"
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	srv := testserver.Start(t, testserver.Options{})
	var out bytes.Buffer
	cmd := exec.Command(node, filepath.Join(dir, "flow.mjs"), srv.URL, fmt.Sprint(time.Now().UnixNano()%1_000_000))
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = &out, &out
	done := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", node, err)
	}
	go func() { done <- cmd.Wait() }()
	select {
	case err = <-done:
	case <-time.After(3 * time.Minute):
		_ = cmd.Process.Kill()
		err = fmt.Errorf("timed out after 3 minutes: %v", <-done)
	}
	if err != nil || !strings.Contains(out.String(), "JS E2EE OK") {
		t.Fatalf("matrix-js-sdk e2ee flow failed: %v\n%s\nserver output:\n%s", err, out.String(), srv.Logs())
	}
	t.Logf("%s", out.String())
}
