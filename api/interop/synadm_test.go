package interop

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha1"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/engram-hs/engram/internal/testserver"
)

// client is a minimal Matrix client for checking what synadm did.
type client struct {
	t    *testing.T
	base string
}

func (c client) do(method, path, token string, body any) (int, map[string]any) {
	c.t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, c.base+path, rd)
	if err != nil {
		c.t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var out map[string]any
	_ = json.Unmarshal(raw, &out)
	return resp.StatusCode, out
}

func (c client) register(name string) string {
	c.t.Helper()
	st, body := c.do("POST", "/_matrix/client/v3/register", "", map[string]any{"username": name, "password": "pw-" + name, "auth": map[string]any{"type": "m.login.dummy"}})
	if st != 200 {
		c.t.Fatalf("register %s: %d %v", name, st, body)
	}
	return body["access_token"].(string)
}

func (c client) login(user, pw string) (int, map[string]any) {
	return c.do("POST", "/_matrix/client/v3/login", "", map[string]any{"type": "m.login.password", "identifier": map[string]any{"type": "m.id.user", "user": user}, "password": pw})
}

// registerAdmin uses shared-secret registration (the secret testserver
// configures), as register_new_matrix_user does.
func (c client) registerAdmin(name string) string {
	c.t.Helper()
	_, n := c.do("GET", "/_synapse/admin/v1/register", "", nil)
	nonce, _ := n["nonce"].(string)
	mac := hmac.New(sha1.New, []byte("test-shared-secret"))
	mac.Write([]byte(nonce + "\x00" + name + "\x00pw-" + name + "\x00admin"))
	st, body := c.do("POST", "/_synapse/admin/v1/register", "", map[string]any{"nonce": nonce, "username": name, "password": "pw-" + name, "admin": true, "mac": hex.EncodeToString(mac.Sum(nil))})
	if st != 200 {
		c.t.Fatalf("register admin: %d %v", st, body)
	}
	return body["access_token"].(string)
}

// synadmRunner runs Debian's synadm with a config file, in batch mode with
// JSON output, and decodes the last JSON document it printed (synadm
// exits 0 on most errors, so every effect is checked by its answer and
// then through the client API).
type synadmRunner struct {
	t   *testing.T
	cfg string
}

// text runs synadm and returns what it printed.
func (s synadmRunner) text(args ...string) string {
	s.t.Helper()
	cmd := exec.Command("synadm", append([]string{"--batch", "-o", "json", "-c", s.cfg}, args...)...)
	cmd.Env = append(os.Environ(), "HOME="+filepath.Dir(s.cfg))
	out, err := cmd.CombinedOutput()
	if err != nil {
		s.t.Fatalf("synadm %v: %v\n%s", args, err, out)
	}
	return string(out)
}

func (s synadmRunner) run(args ...string) map[string]any {
	s.t.Helper()
	out := s.text(args...)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		l := strings.TrimSpace(lines[i])
		if strings.HasPrefix(l, "{") {
			var m map[string]any
			if err := json.Unmarshal([]byte(l), &m); err == nil {
				if m["errcode"] != nil {
					s.t.Fatalf("synadm %v: the server answered an error: %s", args, l)
				}
				return m
			}
		}
	}
	s.t.Fatalf("synadm %v printed no JSON object:\n%s", args, out)
	return nil
}

func requireSynadm(t *testing.T) {
	if _, err := exec.LookPath("synadm"); err != nil {
		msg := "synadm is not installed; install with: apt-get install -y synadm"
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
}

func writeSynadmConfig(t *testing.T, dir, name, base, token, matrixPath string) string {
	t.Helper()
	path := filepath.Join(dir, name)
	cfg := fmt.Sprintf("user: \"@root:localhost\"\ntoken: %q\nbase_url: %q\nadmin_path: /_synapse/admin\nmatrix_path: %q\ntimeout: 30\nserver_discovery: well-known\nhomeserver: localhost\nformat: json\n", token, base, matrixPath)
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestSynadm drives the admin tasks an operator does with synadm against
// engram serve, and checks each effect through the client API: user
// list, details, modify, create, password, shadow-ban, deactivate; room
// list, details, history purge, delete; regtok list/new/update/delete;
// event reports (synadm has no reports command: its raw request with the
// admin API as base path).
func TestSynadm(t *testing.T) {
	requireSynadm(t)
	srv := testserver.Start(t, testserver.Options{ExtraYAML: "bcrypt_rounds: 4\n"})
	c := client{t: t, base: srv.URL}
	adminTok := c.registerAdmin("root")
	alice, bob := c.register("alice"), c.register("bob")
	dir := t.TempDir()
	sa := synadmRunner{t, writeSynadmConfig(t, dir, "synadm.yaml", srv.URL, adminTok, "/_matrix")}
	// For the admin endpoints synadm has no command for (event reports).
	raw := synadmRunner{t, writeSynadmConfig(t, dir, "synadm-raw.yaml", srv.URL, adminTok, "/_synapse/admin")}

	// A room with history and a report.
	st, body := c.do("POST", "/_matrix/client/v3/createRoom", alice, map[string]any{"name": "Test Room", "preset": "public_chat", "visibility": "public", "room_alias_name": "test"})
	if st != 200 {
		t.Fatalf("createRoom: %d %v", st, body)
	}
	roomID := body["room_id"].(string)
	room := url.PathEscape(roomID)
	if st, body = c.do("POST", "/_matrix/client/v3/rooms/"+room+"/join", bob, map[string]any{}); st != 200 {
		t.Fatalf("bob joins: %d %v", st, body)
	}
	var msgs []string
	for i := 0; i < 3; i++ {
		st, body = c.do("PUT", fmt.Sprintf("/_matrix/client/v3/rooms/%s/send/m.room.message/m%d", room, i), alice, map[string]any{"msgtype": "m.text", "body": fmt.Sprintf("message %d", i)})
		if st != 200 {
			t.Fatalf("send: %d %v", st, body)
		}
		msgs = append(msgs, body["event_id"].(string))
	}
	if st, body = c.do("POST", "/_matrix/client/v3/rooms/"+room+"/report/"+url.PathEscape(msgs[0]), bob, map[string]any{"reason": "spam"}); st != 200 {
		t.Fatalf("report: %d %v", st, body)
	}

	t.Run("users", func(t *testing.T) {
		sa := synadmRunner{t, sa.cfg}
		out := sa.run("user", "list")
		names := []string{}
		for _, u := range out["users"].([]any) {
			names = append(names, u.(map[string]any)["name"].(string))
		}
		if out["total"] != float64(3) || !slices.Contains(names, "@alice:localhost") || !slices.Contains(names, "@root:localhost") {
			t.Fatalf("user list: %v", out)
		}
		if d := sa.run("user", "details", "@alice:localhost"); d["name"] != "@alice:localhost" || d["admin"] != false || d["deactivated"] != false {
			t.Fatalf("user details: %v", d)
		}
		if m := sa.run("user", "modify", "@alice:localhost", "-n", "Alice A"); m["displayname"] != "Alice A" {
			t.Fatalf("user modify: %v", m)
		}
		if st, p := c.do("GET", "/_matrix/client/v3/profile/@alice:localhost/displayname", "", nil); st != 200 || p["displayname"] != "Alice A" {
			t.Fatalf("profile after synadm user modify: %d %v", st, p)
		}
		if m := sa.run("user", "modify", "@carol:localhost", "-P", "carol-pw", "-n", "Carol"); m["name"] != "@carol:localhost" {
			t.Fatalf("user modify (create): %v", m)
		}
		if st, b := c.login("carol", "carol-pw"); st != 200 {
			t.Fatalf("carol, created by synadm, cannot log in: %d %v", st, b)
		}
		sa.run("user", "password", "@bob:localhost", "-p", "bob-new-pw")
		if st, _ := c.login("bob", "pw-bob"); st != 403 {
			t.Fatalf("bob's old password still works: %d", st)
		}
		if st, _ := c.do("GET", "/_matrix/client/v3/account/whoami", bob, nil); st != 401 {
			t.Fatalf("bob's old session survived the password reset: %d", st)
		}
		st, b := c.login("bob", "bob-new-pw")
		if st != 200 {
			t.Fatalf("bob's new password: %d %v", st, b)
		}
		bob = b["access_token"].(string)

		// Shadow-ban carol: her send is answered, nobody sees it.
		st, b = c.login("carol", "carol-pw")
		carol := b["access_token"].(string)
		if st, b = c.do("POST", "/_matrix/client/v3/rooms/"+room+"/join", carol, map[string]any{}); st != 200 {
			t.Fatalf("carol joins: %d %v", st, b)
		}
		sa.run("user", "shadow-ban", "@carol:localhost")
		if d := sa.run("user", "details", "@carol:localhost"); d["shadow_banned"] != true {
			t.Fatalf("details after shadow-ban: %v", d)
		}
		st, b = c.do("PUT", "/_matrix/client/v3/rooms/"+room+"/send/m.room.message/c1", carol, map[string]any{"msgtype": "m.text", "body": "shadow"})
		if st != 200 || b["event_id"] == nil {
			t.Fatalf("shadow-banned send: %d %v", st, b)
		}
		if st, _ := c.do("GET", "/_matrix/client/v3/rooms/"+room+"/event/"+url.PathEscape(b["event_id"].(string)), alice, nil); st != 404 {
			t.Fatalf("alice sees the shadow-banned user's message: %d", st)
		}
		// Deactivate carol: she leaves the room and cannot log in.
		if d := sa.run("user", "deactivate", "@carol:localhost"); d["id_server_unbind_result"] != "success" {
			t.Fatalf("user deactivate: %v", d)
		}
		if st, b := c.login("carol", "carol-pw"); st != 403 || b["errcode"] != "M_USER_DEACTIVATED" {
			t.Fatalf("deactivated carol logs in: %d %v", st, b)
		}
		_, jm := c.do("GET", "/_matrix/client/v3/rooms/"+room+"/joined_members", alice, nil)
		if _, still := jm["joined"].(map[string]any)["@carol:localhost"]; still {
			t.Fatalf("deactivated carol is still in the room: %v", jm)
		}
	})

	t.Run("regtok", func(t *testing.T) {
		sa := synadmRunner{t, sa.cfg}
		if tok := sa.run("regtok", "new", "-n", "invite-1", "-u", "2"); tok["token"] != "invite-1" || tok["uses_allowed"] != float64(2) {
			t.Fatalf("regtok new: %v", tok)
		}
		list := sa.run("regtok", "list")
		found := false
		for _, tk := range list["registration_tokens"].([]any) {
			found = found || tk.(map[string]any)["token"] == "invite-1"
		}
		if !found {
			t.Fatalf("regtok list: %v", list)
		}
		if tok := sa.run("regtok", "update", "invite-1", "-u", "5"); tok["uses_allowed"] != float64(5) {
			t.Fatalf("regtok update: %v", tok)
		}
		validity := func() any {
			_, v := c.do("GET", "/_matrix/client/v1/register/m.login.registration_token/validity?token=invite-1", "", nil)
			return v["valid"]
		}
		if validity() != true {
			t.Fatal("the new token is not valid for registration")
		}
		if out := sa.text("regtok", "delete", "invite-1"); !strings.Contains(out, "successfully deleted") {
			t.Fatalf("regtok delete: %s", out)
		}
		if validity() != false {
			t.Fatal("the deleted token is still valid")
		}
		if len(sa.run("regtok", "list")["registration_tokens"].([]any)) != 0 {
			t.Fatal("regtok list after delete is not empty")
		}
	})

	t.Run("reports", func(t *testing.T) {
		raw := synadmRunner{t, raw.cfg}
		list := raw.run("matrix", "raw", "v1/event_reports")
		reps, _ := list["event_reports"].([]any)
		if len(reps) != 1 || reps[0].(map[string]any)["event_id"] != msgs[0] || reps[0].(map[string]any)["reason"] != "spam" {
			t.Fatalf("event reports: %v", list)
		}
		id := fmt.Sprint(int64(reps[0].(map[string]any)["id"].(float64)))
		if rep := raw.run("matrix", "raw", "v1/event_reports/"+id); rep["event_json"] == nil || rep["sender"] != "@alice:localhost" {
			t.Fatalf("event report details: %v", rep)
		}
		raw.run("matrix", "raw", "-m", "delete", "v1/event_reports/"+id)
		if after := raw.run("matrix", "raw", "v1/event_reports"); after["total"] != float64(0) {
			t.Fatalf("event reports after delete: %v", after)
		}
	})

	t.Run("rooms", func(t *testing.T) {
		sa := synadmRunner{t, sa.cfg}
		list := sa.run("room", "list")
		var entry map[string]any
		for _, r := range list["rooms"].([]any) {
			if r.(map[string]any)["room_id"] == roomID {
				entry = r.(map[string]any)
			}
		}
		if entry == nil || entry["name"] != "Test Room" || entry["joined_members"] != float64(2) || entry["canonical_alias"] != "#test:localhost" {
			t.Fatalf("room list: %v", list)
		}
		if d := sa.run("room", "details", roomID); d["name"] != "Test Room" || d["public"] != true || d["join_rules"] != "public" {
			t.Fatalf("room details: %v", d)
		}
		// Purge the history before the last message: the two before it
		// are gone from /messages, the last one and the state stay.
		p := sa.run("history", "purge", roomID, "-i", msgs[2])
		purgeID, _ := p["purge_id"].(string)
		if purgeID == "" {
			t.Fatalf("history purge: %v", p)
		}
		if s := sa.run("history", "purge-status", purgeID); s["status"] != "complete" {
			t.Fatalf("purge status: %v", s)
		}
		_, m := c.do("GET", "/_matrix/client/v3/rooms/"+room+"/messages?dir=b&limit=100", alice, nil)
		var seen []string
		for _, ev := range m["chunk"].([]any) {
			seen = append(seen, ev.(map[string]any)["event_id"].(string))
		}
		if slices.Contains(seen, msgs[0]) || slices.Contains(seen, msgs[1]) || !slices.Contains(seen, msgs[2]) {
			t.Fatalf("after the purge /messages has %v; want %s but not %s, %s", seen, msgs[2], msgs[0], msgs[1])
		}
		// Delete and block the room: everybody is out, nobody gets back in.
		d := sa.run("room", "delete", roomID, "--block")
		kicked := fmt.Sprint(d["kicked_users"])
		if !strings.Contains(kicked, "@alice:localhost") || !strings.Contains(kicked, "@bob:localhost") {
			t.Fatalf("room delete: %v", d)
		}
		_, jr := c.do("GET", "/_matrix/client/v3/joined_rooms", alice, nil)
		if slices.Contains(jr["joined_rooms"].([]any), any(roomID)) {
			t.Fatalf("alice is still in the deleted room: %v", jr)
		}
		if st, b := c.do("POST", "/_matrix/client/v3/join/"+room, bob, map[string]any{}); st != 403 {
			t.Fatalf("bob joins the blocked room: %d %v", st, b)
		}
		if st, b := c.do("GET", "/_matrix/client/v3/directory/room/"+url.PathEscape("#test:localhost"), "", nil); st != 404 {
			t.Fatalf("the deleted room's alias still resolves: %d %v", st, b)
		}
		if _, pr := c.do("GET", "/_matrix/client/v3/publicRooms", alice, nil); strings.Contains(fmt.Sprint(pr["chunk"]), roomID) {
			t.Fatalf("the deleted room is still in the room directory: %v", pr)
		}
		for _, r := range sa.run("room", "list")["rooms"].([]any) {
			if r.(map[string]any)["room_id"] == roomID {
				t.Fatalf("the purged room is still listed")
			}
		}
	})
}
