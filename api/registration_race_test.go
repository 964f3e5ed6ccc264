package api_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"sync"
	"testing"

	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
	"maunium.net/go/mautrix"
)

// sha256hex hashes a token as the server stores it.
func sha256hex(tok string) string {
	sum := sha256.Sum256([]byte(tok))
	return hex.EncodeToString(sum[:])
}

// registeredFirst returns the Registration of the first AccountRegistered
// of userID in the log.
func registeredFirst(t *testing.T, ts *testServer, userID string) string {
	t.Helper()
	entries, err := ts.node.Read(1, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.Kind != englog.KindAccountRegistered {
			continue
		}
		var f facts.AccountRegistered
		if err := facts.Decode(e, &f); err != nil {
			t.Fatal(err)
		}
		if f.UserID == userID {
			return f.Registration
		}
	}
	return ""
}

// TestDuplicateRegistrationFirstInLogWins: two writers (here the API and
// a raw append standing in for another API node) register the same user
// ID at the same time. Whatever the interleaving, the first fact in the
// log wins, the later one is refused with its device and token, and the
// handler answers M_USER_IN_USE exactly when its fact lost.
func TestDuplicateRegistrationFirstInLogWins(t *testing.T) {
	ts := startServer(t)
	ctx := context.Background()

	// Deterministic part: two registrations appended back to back.
	other := facts.AccountRegistered{UserID: uid("twice").String(), Registration: "first"}
	props := []englog.Proposal{
		facts.MustEncode(englog.KindAccountRegistered, other),
		facts.MustEncode(englog.KindDeviceAdded, facts.DeviceAdded{UserID: other.UserID, DeviceID: "FIRSTDEV", Registration: "first"}),
		facts.MustEncode(englog.KindAccessTokenIssued, facts.AccessTokenIssued{UserID: other.UserID, DeviceID: "FIRSTDEV", TokenSHA256: sha256hex("tok-first"), Registration: "first"}),
		facts.MustEncode(englog.KindAccountRegistered, facts.AccountRegistered{UserID: other.UserID, Registration: "second"}),
		facts.MustEncode(englog.KindDeviceAdded, facts.DeviceAdded{UserID: other.UserID, DeviceID: "SECONDDEV", Registration: "second"}),
		facts.MustEncode(englog.KindAccessTokenIssued, facts.AccessTokenIssued{UserID: other.UserID, DeviceID: "SECONDDEV", TokenSHA256: sha256hex("tok-second"), Registration: "second"}),
	}
	if _, err := ts.node.Append(ctx, props...); err != nil {
		t.Fatal(err)
	}
	// whoami with the first token works (it waits for the projection by
	// retrying on M_UNKNOWN_TOKEN briefly); the second never does.
	var code int
	var body map[string]any
	for i := 0; i < 200; i++ {
		if code, body = ts.do("GET", "/_matrix/client/v3/account/whoami", "tok-first", nil); code == 200 {
			break
		}
	}
	if code != 200 || body["device_id"] != "FIRSTDEV" {
		t.Fatalf("winner's token: %d %v", code, body)
	}
	if code, body = ts.do("GET", "/_matrix/client/v3/account/whoami", "tok-second", nil); code != 401 || body["errcode"] != "M_UNKNOWN_TOKEN" {
		t.Fatalf("refused registration's token: %d %v", code, body)
	}
	cli, _ := mautrix.NewClient(ts.URL, uid("twice"), "tok-first")
	devs, err := cli.GetDevicesInfo(ctx)
	if err != nil || len(devs.Devices) != 1 || devs.Devices[0].DeviceID != "FIRSTDEV" {
		t.Fatalf("devices after a refused registration: %+v, %v", devs, err)
	}

	// Racing part: the handler against a raw append, many times.
	for i := 0; i < 20; i++ {
		name := fmt.Sprintf("race%d", i)
		var wg sync.WaitGroup
		wg.Add(2)
		var code int
		var body map[string]any
		go func() {
			defer wg.Done()
			code, body = ts.do("POST", "/_matrix/client/v3/register", "", map[string]any{
				"username": name, "password": "pw", "auth": map[string]any{"type": "m.login.dummy"}})
		}()
		go func() {
			defer wg.Done()
			_, err := ts.node.Append(ctx, facts.MustEncode(englog.KindAccountRegistered, facts.AccountRegistered{UserID: uid(name).String(), Registration: "other-node"}))
			if err != nil {
				t.Error(err)
			}
		}()
		wg.Wait()
		otherWon := registeredFirst(t, ts, uid(name).String()) == "other-node"
		if otherWon {
			if code != 400 || body["errcode"] != "M_USER_IN_USE" {
				t.Fatalf("%s: the other node registered first but the handler answered %d %v", name, code, body)
			}
			continue
		}
		if code != 200 {
			t.Fatalf("%s: the handler registered first but answered %d %v", name, code, body)
		}
		if c, b := ts.do("GET", "/_matrix/client/v3/account/whoami", body["access_token"].(string), nil); c != 200 || b["user_id"] != uid(name).String() {
			t.Fatalf("%s: winner's token: %d %v", name, c, b)
		}
	}
}
