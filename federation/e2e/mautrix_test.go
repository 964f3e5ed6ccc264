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
	"github.com/engram-hs/engram/internal/testserver"
)

// End-to-end encryption across two Engram servers with a real client:
// mautrix-go's crypto (cryptohelper with the pure-Go goolm), the client
// api/interop's TestMautrixE2EE uses, in its federated flow (see
// api/interop/testdata/mautrixe2ee/federated.go). Alice of A creates an
// encrypted DM inviting Bob of B; they decrypt each other both ways; her
// cross-signing reaches Bob's client; a new device on either side is seen
// by the other and decrypts the next message.
func TestMautrixE2EEAcrossServers(t *testing.T) {
	bin := mautrixClient(t)
	ca := testca.New(t)
	a, b := start(t, ca), start(t, ca)
	runMautrixFederated(t, bin, a, b)
}

// The same flow between Engram and Dendrite v0.13.8 (dendrite_test.go),
// in both directions: the DM's creator and the first to cross-sign on
// Engram, then on Dendrite.
func TestMautrixE2EEWithDendrite(t *testing.T) {
	bin := mautrixClient(t)
	ca := testca.New(t)
	d := startDendrite(t, ca)
	_, dPort, _ := strings.Cut(d.name, ":")
	e := startWith(t, ca, fmt.Sprintf("127.0.0.1:%d", testserver.FreePort(t)), "",
		fmt.Sprintf("federation_hosts: [%q]\n", d.name+"=127.0.0.1:"+dPort))
	t.Run("engram to dendrite", func(t *testing.T) { runMautrixFederated(t, bin, e, d.server) })
	t.Run("dendrite to engram", func(t *testing.T) { runMautrixFederated(t, bin, d.server, e) })
}

// mautrixClient builds the mautrix client (its own module, with -tags
// goolm and no cgo).
func mautrixClient(t *testing.T) string {
	t.Helper()
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
	return bin
}

// runMautrixFederated runs the client's federated flow with Alice on a
// and Bob on b.
func runMautrixFederated(t *testing.T, bin string, a, b server) {
	t.Helper()
	var out bytes.Buffer
	cmd := exec.Command(bin, "federated", a.URL, b.URL, fmt.Sprint(time.Now().UnixNano()%1_000_000))
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil || !strings.Contains(out.String(), "MAUTRIX FEDERATED E2EE OK") {
		logs := func(s server) string {
			if s.Server.Config == "" {
				return "(not Engram: see its own log)"
			}
			return s.Logs()
		}
		t.Fatalf("mautrix e2ee from %s to %s failed: %v\n%s\n%s:\n%s\n%s:\n%s", a.name, b.name, err, out.String(), a.name, logs(a), b.name, logs(b))
	}
}
