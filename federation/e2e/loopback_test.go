package e2e

import (
	"fmt"
	"net/url"
	"strings"
	"testing"

	"github.com/engram-hs/engram/internal/testca"
	"github.com/engram-hs/engram/internal/testserver"
)

// startLoopbackOnly starts a server named "localhost:FPORT" with the
// default IP deny list (no ip_range_whitelist), optionally with its
// public_baseurl on loopback: a development rig with several servers on
// one machine, as a conformance suite deploys them.
func startLoopbackOnly(t *testing.T, ca *testca.CA, publicLoopback bool) server {
	t.Helper()
	fport, port := testserver.FreePort(t), testserver.FreePort(t)
	name := fmt.Sprintf("localhost:%d", fport)
	extra := fmt.Sprintf("federation_listen: \"127.0.0.1:%d\"\nfederation_tls_ca_cert: %q\nfederation_tls_ca_key: %q\n", fport, ca.CertPath, ca.KeyPath)
	if publicLoopback {
		extra += fmt.Sprintf("public_baseurl: \"http://127.0.0.1:%d/\"\n", port)
	} else {
		extra += "public_baseurl: \"https://matrix.example.org/\"\n"
	}
	s := testserver.Start(t, testserver.Options{ServerName: name, Port: port, ExtraYAML: extra})
	return server{s, name}
}

// Servers that only this host can reach (both listeners and
// public_baseurl on loopback) federate over loopback with the default
// deny list; a server whose public_baseurl is public (behind a reverse
// proxy) still refuses loopback destinations unless told otherwise.
func TestLoopbackOnlyServersFederateWithDefaultDenyList(t *testing.T) {
	ca := testca.New(t)
	a, b := startLoopbackOnly(t, ca, true), startLoopbackOnly(t, ca, true)
	alice := register(t, a, "alice")
	bob := register(t, b, "bob")
	aliceID := "@alice:" + a.name
	if st := call(t, a, "PUT", "/_matrix/client/v3/profile/"+url.PathEscape(aliceID)+"/displayname", alice, map[string]string{"displayname": "Alice"}, nil); st != 200 {
		t.Fatalf("set displayname: %d", st)
	}
	var prof map[string]any
	if st := call(t, b, "GET", "/_matrix/client/v3/profile/"+url.PathEscape(aliceID), bob, nil, &prof); st != 200 || prof["displayname"] != "Alice" {
		t.Fatalf("remote profile between loopback-only servers: %d %v\n%s", st, prof, b.Logs())
	}

	proxied := startLoopbackOnly(t, ca, false)
	carol := register(t, proxied, "carol")
	var e struct {
		Errcode string `json:"errcode"`
		Error   string `json:"error"`
	}
	if st := call(t, proxied, "GET", "/_matrix/client/v3/profile/"+url.PathEscape(aliceID), carol, nil, &e); st == 200 {
		t.Fatalf("a server with a public public_baseurl reached loopback with the default deny list: %+v", e)
	}
	if !strings.Contains(proxied.Logs(), "refused by ip_range_blacklist") && !strings.Contains(e.Error, "ip_range_blacklist") {
		t.Fatalf("the refusal does not say which setting refused it: %+v\n%s", e, proxied.Logs())
	}
}
