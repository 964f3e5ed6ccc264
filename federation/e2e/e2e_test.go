// Package e2e runs two real `engram serve` processes that federate over
// TLS on loopback, each with a certificate issued from one test CA, and
// drives them through the client API.
package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os/exec"
	"strings"
	"testing"

	"github.com/engram-hs/engram/federation/fedtest"
	"github.com/engram-hs/engram/federation/transport"
	"github.com/engram-hs/engram/internal/testca"
	"github.com/engram-hs/engram/internal/testserver"
	"github.com/engram-hs/engram/stateres/signing"
)

func testKey(t testing.TB) signing.Key {
	k, err := signing.GenerateKey(rand.Reader, "t")
	if err != nil {
		t.Fatal(err)
	}
	return k
}

type server struct {
	*testserver.Server
	name string
}

func start(t testing.TB, ca *testca.CA) server {
	t.Helper()
	return startAt(t, ca, fmt.Sprintf("127.0.0.1:%d", testserver.FreePort(t)), "")
}

// startAt starts a server named name (its federation address) on dir
// ("" for a new one): a restart keeps both.
func startAt(t testing.TB, ca *testca.CA, name, dir string) server {
	t.Helper()
	return startWith(t, ca, name, dir, "")
}

// startWith is startAt with extra config lines.
func startWith(t testing.TB, ca *testca.CA, name, dir, extraYAML string) server {
	t.Helper()
	s := testserver.Start(t, testserver.Options{ServerName: name, DataDir: dir, ExtraYAML: extraYAML + fmt.Sprintf(`federation_listen: %q
federation_tls_ca_cert: %q
federation_tls_ca_key: %q
ip_range_whitelist: ["127.0.0.0/8", "::1/128"]
allow_public_rooms_without_auth: true
federation:
  destination_min_retry_interval: 200ms
  destination_max_retry_interval: 1s
`, name, ca.CertPath, ca.KeyPath)})
	return server{s, name}
}

// call makes a client-server request and decodes the answer.
func call(t testing.TB, s server, method, path, token string, body any, out any) int {
	t.Helper()
	return callURL(t, s.URL, method, path, token, body, out)
}

// callURL makes a client-server request to the server at base.
func callURL(t testing.TB, base, method, path, token string, body any, out any) int {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, base+path, rd)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("%s %s: %d %s", method, path, resp.StatusCode, b)
		}
	}
	return resp.StatusCode
}

func register(t testing.TB, s server, user string) string {
	t.Helper()
	var out struct {
		AccessToken string `json:"access_token"`
	}
	if st := call(t, s, "POST", "/_matrix/client/v3/register", "", map[string]any{"username": user, "password": "pw-" + user, "auth": map[string]string{"type": "m.login.dummy"}}, &out); st != 200 {
		t.Fatalf("register %s: %d", user, st)
	}
	return out.AccessToken
}

// Remote profile, remote alias and the remote room directory, resolved
// through the client API of one server asking the other over federation;
// and `engram verify` still passes on the asking server afterwards (the
// keys it fetched are in its log and its projections replay to the same).
func TestRemoteQueriesBetweenTwoServers(t *testing.T) {
	ca := testca.New(t)
	a, b := start(t, ca), start(t, ca)
	alice := register(t, a, "alice")
	bob := register(t, b, "bob")
	aliceID := "@alice:" + a.name
	if st := call(t, a, "PUT", "/_matrix/client/v3/profile/"+url.PathEscape(aliceID)+"/displayname", alice, map[string]string{"displayname": "Alice of A"}, nil); st != 200 {
		t.Fatalf("set displayname: %d", st)
	}
	var room struct {
		RoomID string `json:"room_id"`
	}
	if st := call(t, a, "POST", "/_matrix/client/v3/createRoom", alice, map[string]any{"room_alias_name": "lobby", "visibility": "public", "name": "The Lobby"}, &room); st != 200 {
		t.Fatalf("createRoom: %d", st)
	}

	// Remote profile, whole and one field.
	var prof map[string]any
	if st := call(t, b, "GET", "/_matrix/client/v3/profile/"+url.PathEscape(aliceID), bob, nil, &prof); st != 200 || prof["displayname"] != "Alice of A" {
		t.Fatalf("remote profile: %d %v\n%s", st, prof, b.Logs())
	}
	prof = nil
	if st := call(t, b, "GET", "/_matrix/client/v3/profile/"+url.PathEscape(aliceID)+"/displayname", bob, nil, &prof); st != 200 || prof["displayname"] != "Alice of A" {
		t.Fatalf("remote profile field: %d %v", st, prof)
	}
	var e struct{ Errcode string }
	if st := call(t, b, "GET", "/_matrix/client/v3/profile/"+url.PathEscape("@nobody:"+a.name), bob, nil, &e); st != 404 || e.Errcode != "M_NOT_FOUND" {
		t.Fatalf("remote unknown user: %d %s", st, e.Errcode)
	}

	// Remote alias.
	var dir struct {
		RoomID  string   `json:"room_id"`
		Servers []string `json:"servers"`
	}
	if st := call(t, b, "GET", "/_matrix/client/v3/directory/room/"+url.PathEscape("#lobby:"+a.name), bob, nil, &dir); st != 200 || dir.RoomID != room.RoomID || len(dir.Servers) == 0 || dir.Servers[0] != a.name {
		t.Fatalf("remote alias: %d %+v", st, dir)
	}
	if st := call(t, b, "GET", "/_matrix/client/v3/directory/room/"+url.PathEscape("#nope:"+a.name), bob, nil, &e); st != 404 || e.Errcode != "M_NOT_FOUND" {
		t.Fatalf("remote unknown alias: %d %s", st, e.Errcode)
	}

	// Remote room directory, GET and POST with a filter.
	var pub struct {
		Chunk []struct {
			RoomID string `json:"room_id"`
			Name   string `json:"name"`
		} `json:"chunk"`
	}
	if st := call(t, b, "GET", "/_matrix/client/v3/publicRooms?server="+url.QueryEscape(a.name), bob, nil, &pub); st != 200 || len(pub.Chunk) != 1 || pub.Chunk[0].RoomID != room.RoomID {
		t.Fatalf("remote publicRooms: %d %+v", st, pub)
	}
	pub.Chunk = nil
	if st := call(t, b, "POST", "/_matrix/client/v3/publicRooms?server="+url.QueryEscape(a.name), bob, map[string]any{"filter": map[string]string{"generic_search_term": "lobby"}}, &pub); st != 200 || len(pub.Chunk) != 1 {
		t.Fatalf("remote publicRooms search: %d %+v", st, pub)
	}
	pub.Chunk = nil
	if st := call(t, b, "POST", "/_matrix/client/v3/publicRooms?server="+url.QueryEscape(a.name), bob, map[string]any{"filter": map[string]string{"generic_search_term": "nothing-matches"}}, &pub); st != 200 || len(pub.Chunk) != 0 {
		t.Fatalf("remote publicRooms no match: %d %+v", st, pub)
	}

	// OpenID: a token alice asked A for is exchanged at A's federation
	// listener for her user ID, by a third party (no X-Matrix).
	var tok struct {
		AccessToken string `json:"access_token"`
		ServerName  string `json:"matrix_server_name"`
		ExpiresIn   int    `json:"expires_in"`
	}
	if st := call(t, a, "POST", "/_matrix/client/v3/user/"+url.PathEscape(aliceID)+"/openid/request_token", alice, map[string]any{}, &tok); st != 200 || tok.ServerName != a.name || tok.ExpiresIn <= 0 {
		t.Fatalf("request_token: %d %+v", st, tok)
	}
	if st := call(t, a, "POST", "/_matrix/client/v3/user/"+url.PathEscape("@bob:"+b.name)+"/openid/request_token", alice, map[string]any{}, &e); st != 403 {
		t.Fatalf("request_token for another user: %d", st)
	}
	third := fedtest.ClientFor(t, ca, "third.test", testKey(t))
	var info struct {
		Sub string `json:"sub"`
	}
	if err := third.DoJSON(context.Background(), transport.Request{Destination: a.name, Method: "GET", Path: "/_matrix/federation/v1/openid/userinfo?access_token=" + url.QueryEscape(tok.AccessToken), Unsigned: true}, &info); err != nil || info.Sub != aliceID {
		t.Fatalf("userinfo: %v %+v", err, info)
	}
	var he *transport.HTTPError
	if err := third.DoJSON(context.Background(), transport.Request{Destination: a.name, Method: "GET", Path: "/_matrix/federation/v1/openid/userinfo?access_token=forged", Unsigned: true}, &info); !errors.As(err, &he) || he.Status != 401 || he.Errcode != "M_UNKNOWN_TOKEN" {
		t.Fatalf("userinfo with a forged token: %v", err)
	}

	// The asking server's log replays to the same projections.
	b.Stop()
	out, err := exec.Command(testserver.Binary(t), "verify", "--config", b.Config).CombinedOutput()
	if err != nil {
		t.Fatalf("engram verify after federation traffic: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "serverkeys") {
		t.Fatalf("engram verify did not check serverkeys:\n%s", out)
	}
}
