package federation

import (
	"crypto/rand"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/engram-hs/engram/stateres/signing"
)

// The key response is signed by the key it publishes and says how long it
// may be cached (server-server API, "Publishing Keys").
func TestServerKeysSignedAndValid(t *testing.T) {
	key, err := signing.GenerateKey(rand.Reader, "a1")
	if err != nil {
		t.Fatal(err)
	}
	now := time.UnixMilli(1_700_000_000_000)
	srv := httptest.NewServer(Handler("example.org", "test", key, func() time.Time { return now }))
	defer srv.Close()

	for _, path := range []string{"/_matrix/key/v2/server", "/_matrix/key/v2/server/" + key.ID} {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("%s: status %d", path, resp.StatusCode)
		}
		if err := signing.VerifyJSON("example.org", key.ID, key.Public(), body); err != nil {
			t.Fatalf("%s: signature: %v", path, err)
		}
		var got struct {
			ServerName   string `json:"server_name"`
			ValidUntilTS int64  `json:"valid_until_ts"`
			VerifyKeys   map[string]struct {
				Key string `json:"key"`
			} `json:"verify_keys"`
		}
		if err := json.Unmarshal(body, &got); err != nil {
			t.Fatal(err)
		}
		if got.ServerName != "example.org" || got.ValidUntilTS != now.Add(keyValidity).UnixMilli() {
			t.Fatalf("%s: %s", path, body)
		}
		if got.VerifyKeys[key.ID].Key != signing.EncodeBase64(key.Public()) {
			t.Fatalf("%s: verify_keys %s", path, body)
		}
	}
}

func TestVersionAndUnknownPaths(t *testing.T) {
	key, _ := signing.GenerateKey(rand.Reader, "a1")
	srv := httptest.NewServer(Handler("example.org", "1.2.3", key, time.Now))
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/_matrix/federation/v1/version")
	if err != nil {
		t.Fatal(err)
	}
	var v struct {
		Server struct{ Name, Version string } `json:"server"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&v)
	resp.Body.Close()
	if v.Server.Name != "Engram" || v.Server.Version != "1.2.3" {
		t.Fatalf("version: %+v", v)
	}
	resp, err = http.Get(srv.URL + "/_matrix/federation/v1/send/txn1")
	if err != nil {
		t.Fatal(err)
	}
	var e struct{ Errcode string }
	_ = json.NewDecoder(resp.Body).Decode(&e)
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound || e.Errcode != "M_UNRECOGNIZED" {
		t.Fatalf("unknown path: %d %s", resp.StatusCode, e.Errcode)
	}
}
