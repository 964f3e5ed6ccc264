package e2e

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/engram-hs/engram/internal/testca"
)

// End-to-end encryption across two Engram servers with a real client:
// mautrix-go's crypto (cryptohelper with the pure-Go goolm), the client
// api/interop's TestMautrixE2EE uses, in its federated flow (see
// api/interop/testdata/mautrixe2ee/federated.go). Alice of A creates an
// encrypted DM inviting Bob of B; they decrypt each other both ways; her
// cross-signing reaches Bob's client; a new device on either side is seen
// by the other and decrypts the next message.
func TestMautrixE2EEAcrossServers(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the mautrix crypto client: not in -short")
	}
	bin := filepath.Join(t.TempDir(), "mautrixe2ee")
	build := exec.Command("go", "build", "-tags", "goolm", "-o", bin, ".")
	build.Dir = "../../api/interop/testdata/mautrixe2ee"
	build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOWORK=off")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build the mautrix client (api/interop/testdata/mautrixe2ee): %v\n%s", err, out)
	}
	ca := testca.New(t)
	a, b := start(t, ca), start(t, ca)
	var out bytes.Buffer
	cmd := exec.Command(bin, "federated", a.URL, b.URL, fmt.Sprint(time.Now().UnixNano()%1_000_000))
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil || !strings.Contains(out.String(), "MAUTRIX FEDERATED E2EE OK") {
		t.Fatalf("mautrix e2ee across servers failed: %v\n%s\nA:\n%s\nB:\n%s", err, out.String(), a.Logs(), b.Logs())
	}
}
