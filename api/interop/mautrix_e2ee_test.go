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

// TestMautrixE2EE: mautrix-go's crypto, through cryptohelper with the
// pure-Go goolm, encrypts for real against a running engram (see
// testdata/mautrixe2ee): two users decrypt each other in an encrypted
// room, cross-signing is bootstrapped and the device signed, a second
// device gets the room key, and one-time keys are handed out once each.
// The client is its own module, built here with -tags goolm.
func TestMautrixE2EE(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the mautrix crypto client: not in -short")
	}
	bin := filepath.Join(t.TempDir(), "mautrixe2ee")
	build := exec.Command("go", "build", "-tags", "goolm", "-o", bin, ".")
	build.Dir = "testdata/mautrixe2ee"
	build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOWORK=off")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build the mautrix client (testdata/mautrixe2ee): %v\n%s", err, out)
	}
	srv := testserver.Start(t, testserver.Options{})
	var out bytes.Buffer
	cmd := exec.Command(bin, srv.URL, fmt.Sprint(time.Now().UnixNano()%1_000_000))
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil || !strings.Contains(out.String(), "MAUTRIX E2EE OK") {
		t.Fatalf("mautrix e2ee flow failed: %v\n%s\nserver output:\n%s", err, out.String(), srv.Logs())
	}
}
