package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestBackupRestoreAnswersAsAtTheCut: back up a running server, keep
// writing, back up again (only the new entries), stop, restore to the
// offset of the first backup, and the restored server answers /sync,
// /messages, /state and the rest exactly as the original did then, for
// two users (ages aside). A damaged segment is named by backup verify.
func TestBackupRestoreAnswersAsAtTheCut(t *testing.T) {
	dir := t.TempDir()
	listen := freeAddr(t)
	cfg := writeConfig(t, dir, listen, "")
	p := startServer(t, dir, listen, nil, "--config", cfg)
	for _, u := range []string{"alice", "bob"} {
		if out, errOut, code := runTool(t, dir, nil, "register-user", "--config", cfg, "--user", u, "--password", "pw-"+u); code != 0 {
			t.Fatalf("register-user %s: code %d %s %s", u, code, out, errOut)
		}
	}
	alice := newRebuildClient(t, listen, "alice")
	bob := newRebuildClient(t, listen, "bob")
	traffic := driveTraffic(t, alice, bob)
	atCut := recordAnswers(t, traffic, alice, bob)

	backupDir := filepath.Join(dir, "backup")
	span := regexp.MustCompile(`backed up offsets (\d+)\.\.(\d+) \((\d+) new entries, online`)
	out, errOut, code := runTool(t, dir, nil, "backup", "--config", cfg, "--to", backupDir)
	m := span.FindStringSubmatch(out)
	if code != 0 || m == nil || m[1] != "1" {
		t.Fatalf("backup: code %d\n%s\n%s", code, out, errOut)
	}
	cut := m[2]

	// Later writes: the second run adds only them, as a new segment.
	room := traffic.rooms[alice.user][0]
	for i := 0; i < 5; i++ {
		alice.send(room, "m.room.message", map[string]any{"msgtype": "m.text", "body": "after the cut " + strconv.Itoa(i)})
	}
	out, errOut, code = runTool(t, dir, nil, "backup", "--config", cfg, "--to", backupDir)
	m = span.FindStringSubmatch(out)
	if c, _ := strconv.Atoi(cut); code != 0 || m == nil || m[1] != strconv.Itoa(c+1) || m[3] == "0" {
		t.Fatalf("incremental backup: code %d\n%s\n%s", code, out, errOut)
	}
	p.stop()
	if out, errOut, code = runTool(t, dir, nil, "backup", "verify", backupDir); code != 0 || !strings.Contains(out, "2 segments") {
		t.Fatalf("backup verify: code %d\n%s\n%s", code, out, errOut)
	}

	restored := filepath.Join(dir, "restored")
	out, errOut, code = runTool(t, dir, nil, "restore", "--config", cfg, "--from", backupDir, "--to-offset", cut, "--data-dir", restored)
	if code != 0 || !strings.Contains(out, "kept "+cut+" entries") || !strings.Contains(out, room) || !strings.Contains(errOut, "100%") {
		t.Fatalf("restore: code %d\n%s\n%s", code, out, errOut)
	}
	t.Logf("restore said:\n%s", out)

	startServer(t, dir, listen, nil, "--config", cfg, "--data-dir", restored)
	after := recordAnswers(t, traffic, alice, bob)
	if len(after) != len(atCut) {
		t.Fatalf("recorded %d answers at the cut and %d after the restore", len(atCut), len(after))
	}
	for i := range atCut {
		b, a := atCut[i], after[i]
		if b.request != a.request || b.status != a.status || !bytes.Equal(b.body, a.body) {
			at := firstDiff(b.body, a.body)
			t.Errorf("%s differs after restore at byte %d:\nat the cut %d ...%s...\nrestored   %d ...%s...", b.request, at, b.status, around(b.body, at), a.status, around(a.body, at))
		}
	}
	t.Logf("%d answers compared", len(atCut))

	// A flipped byte in a segment is found and named.
	segs, _ := filepath.Glob(filepath.Join(backupDir, "segments", "*.zst"))
	b, err := os.ReadFile(segs[0])
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0x01
	if err := os.WriteFile(segs[0], b, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, errOut, code = runTool(t, dir, nil, "backup", "verify", backupDir); code == 0 || !strings.Contains(errOut, filepath.Base(segs[0])) {
		t.Fatalf("backup verify of a damaged segment: code %d\n%s", code, errOut)
	}
}

// TestRestoreNeverHandsOutAClaimedKeyAgain: a one-time key claimed after
// the cut is not handed out again by the restored server.
func TestRestoreNeverHandsOutAClaimedKeyAgain(t *testing.T) {
	dir := t.TempDir()
	listen := freeAddr(t)
	cfg := writeConfig(t, dir, listen, "")
	p := startServer(t, dir, listen, nil, "--config", cfg)
	for _, u := range []string{"alice", "bob"} {
		if out, errOut, code := runTool(t, dir, nil, "register-user", "--config", cfg, "--user", u, "--password", "pw-"+u); code != 0 {
			t.Fatalf("register-user %s: code %d %s %s", u, code, out, errOut)
		}
	}
	alice := newRebuildClient(t, listen, "alice")
	bob := newRebuildClient(t, listen, "bob")
	var who struct {
		DeviceID string `json:"device_id"`
	}
	alice.ok("GET", "/account/whoami", nil, &who)
	alice.ok("POST", "/keys/upload", map[string]any{"one_time_keys": map[string]any{
		"curve25519:AAAAAQ": "a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a",
		"curve25519:AAAAAg": "b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b",
	}}, nil)
	backupDir := filepath.Join(dir, "backup")
	if out, errOut, code := runTool(t, dir, nil, "backup", "--config", cfg, "--to", backupDir); code != 0 {
		t.Fatalf("backup: %s %s", out, errOut)
	}
	m, err := readManifestLast(backupDir)
	if err != nil {
		t.Fatal(err)
	}
	claim := func(c *rebuildClient) string {
		t.Helper()
		var out struct {
			OneTimeKeys map[string]map[string]map[string]any `json:"one_time_keys"`
		}
		c.ok("POST", "/keys/claim", map[string]any{"one_time_keys": map[string]any{alice.user: map[string]string{who.DeviceID: "curve25519"}}}, &out)
		for id := range out.OneTimeKeys[alice.user][who.DeviceID] {
			return id
		}
		return ""
	}
	claimed := claim(bob)
	if claimed == "" {
		t.Fatal("bob claimed no key")
	}
	if out, errOut, code := runTool(t, dir, nil, "backup", "--config", cfg, "--to", backupDir); code != 0 {
		t.Fatalf("backup: %s %s", out, errOut)
	}
	p.stop()
	restored := filepath.Join(dir, "restored")
	out, errOut, code := runTool(t, dir, nil, "restore", "--config", cfg, "--from", backupDir, "--to-offset", strconv.FormatUint(m, 10), "--data-dir", restored)
	if code != 0 {
		t.Fatalf("restore: code %d\n%s\n%s", code, out, errOut)
	}
	startServer(t, dir, listen, nil, "--config", cfg, "--data-dir", restored)
	if again := claim(bob); again == claimed {
		t.Fatalf("the restored server handed out %s a second time", claimed)
	}
	if !strings.Contains(out, "one-time key claims were after the cut") {
		t.Fatalf("the restore report does not say the keys were discarded:\n%s", out)
	}
}

func readManifestLast(dir string) (uint64, error) {
	b, err := os.ReadFile(filepath.Join(dir, "manifest.json"))
	if err != nil {
		return 0, err
	}
	var m struct {
		Segments []struct {
			Last uint64 `json:"last_offset"`
		} `json:"segments"`
	}
	if err := json.Unmarshal(b, &m); err != nil || len(m.Segments) == 0 {
		return 0, fmt.Errorf("manifest: %v", err)
	}
	return m.Segments[len(m.Segments)-1].Last, nil
}

// TestRestoreToATimeResetsLaterClients: back up, keep writing, restore to
// a time in the middle. The restored server answers the two users byte
// for byte as the original did at that time; a login after it is unknown
// (401 M_UNKNOWN_TOKEN) while one from before works, and one from before
// that logged out after it stays logged out; a /sync token handed
// out after it is refused with M_UNKNOWN_POS, also once the restored log
// has grown past the position it names, while tokens from before the cut
// and from the restored server work; and the one-time key claimed after
// the cut is not handed out again.
func TestRestoreToATimeResetsLaterClients(t *testing.T) {
	dir := t.TempDir()
	listen := freeAddr(t)
	cfg := writeConfig(t, dir, listen, "")
	p := startServer(t, dir, listen, nil, "--config", cfg)
	for _, u := range []string{"alice", "bob", "carol"} {
		if out, errOut, code := runTool(t, dir, nil, "register-user", "--config", cfg, "--user", u, "--password", "pw-"+u); code != 0 {
			t.Fatalf("register-user %s: code %d %s %s", u, code, out, errOut)
		}
	}
	alice := newRebuildClient(t, listen, "alice")
	bob := newRebuildClient(t, listen, "bob")
	carol := newRebuildClient(t, listen, "carol") // her keys and devices stay out of alice's and bob's answers
	carolsLaptop := newRebuildClient(t, listen, "carol")
	var who struct {
		DeviceID string `json:"device_id"`
	}
	carol.ok("GET", "/account/whoami", nil, &who)
	carol.ok("POST", "/keys/upload", map[string]any{"one_time_keys": map[string]any{
		"curve25519:AAAAAQ": "a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a",
		"curve25519:AAAAAg": "b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b",
	}}, nil)
	traffic := driveTraffic(t, alice, bob)
	atCut := recordAnswers(t, traffic, alice, bob)

	// The cut: entries are stamped in milliseconds; nothing is written
	// from the recording until after it.
	time.Sleep(20 * time.Millisecond)
	cut := time.Now().UTC()
	time.Sleep(20 * time.Millisecond)

	claim := func(c *rebuildClient) string {
		t.Helper()
		var out struct {
			OneTimeKeys map[string]map[string]map[string]any `json:"one_time_keys"`
		}
		c.ok("POST", "/keys/claim", map[string]any{"one_time_keys": map[string]any{carol.user: map[string]string{who.DeviceID: "curve25519"}}}, &out)
		for id := range out.OneTimeKeys[carol.user][who.DeviceID] {
			return id
		}
		return ""
	}
	claimed := claim(bob)
	if claimed == "" {
		t.Fatal("bob claimed no key before the restore")
	}
	lateLogin := newRebuildClient(t, listen, "alice")
	carolsLaptop.ok("POST", "/logout", map[string]any{}, nil)
	room := traffic.rooms[alice.user][0]
	for i := 0; i < 5; i++ {
		alice.send(room, "m.room.message", map[string]any{"msgtype": "m.text", "body": "after the cut " + strconv.Itoa(i)})
	}
	lateSince := alice.sinceToken()
	// A /messages page token into the timeline past the cut.
	var latePage struct {
		End string `json:"end"`
	}
	alice.ok("GET", "/rooms/"+url.PathEscape(room)+"/messages?dir=b&limit=2", nil, &latePage)
	if latePage.End == "" {
		t.Fatal("/messages before the backup gave no end token")
	}
	backupDir := filepath.Join(dir, "backup")
	if out, errOut, code := runTool(t, dir, nil, "backup", "--config", cfg, "--to", backupDir); code != 0 {
		t.Fatalf("backup: code %d\n%s\n%s", code, out, errOut)
	}
	p.stop()

	restored := filepath.Join(dir, "restored")
	out, errOut, code := runTool(t, dir, nil, "restore", "--config", cfg, "--from", backupDir, "--to-time", cut.Format(time.RFC3339Nano), "--data-dir", restored)
	if code != 0 || !strings.Contains(out, "M_UNKNOWN_POS") || !strings.Contains(out, "one-time key claims were after the cut") || !strings.Contains(out, "1 access tokens were logged out after the cut") {
		t.Fatalf("restore: code %d\n%s\n%s", code, out, errOut)
	}
	t.Logf("restore said:\n%s", out)
	startServer(t, dir, listen, nil, "--config", cfg, "--data-dir", restored)

	after := recordAnswers(t, traffic, alice, bob)
	if len(after) != len(atCut) {
		t.Fatalf("recorded %d answers at the cut and %d after the restore", len(atCut), len(after))
	}
	for i := range atCut {
		b, a := atCut[i], after[i]
		if b.request != a.request || b.status != a.status || !bytes.Equal(b.body, a.body) {
			at := firstDiff(b.body, a.body)
			t.Errorf("%s differs after restore at byte %d:\nat the cut %d ...%s...\nrestored   %d ...%s...", b.request, at, b.status, around(b.body, at), a.status, around(a.body, at))
		}
	}
	t.Logf("%d answers compared", len(atCut))

	errcode := func(body []byte) string {
		var e struct{ Errcode string }
		json.Unmarshal(body, &e)
		return e.Errcode
	}
	if st, body := lateLogin.raw("GET", "/account/whoami", nil); st != 401 || errcode(body) != "M_UNKNOWN_TOKEN" {
		t.Errorf("an access token issued after the cut: %d %s, want 401 M_UNKNOWN_TOKEN", st, body)
	}
	if st, body := alice.raw("GET", "/account/whoami", nil); st != 200 {
		t.Errorf("an access token issued before the cut: %d %s", st, body)
	}
	if st, body := carolsLaptop.raw("GET", "/account/whoami", nil); st != 401 || errcode(body) != "M_UNKNOWN_TOKEN" {
		t.Errorf("an access token issued before the cut and logged out after it: %d %s, want 401 M_UNKNOWN_TOKEN", st, body)
	}

	late, err := strconv.ParseUint(strings.TrimPrefix(lateSince, "s"), 10, 64)
	if err != nil {
		t.Fatalf("the original's sync token %q: %v", lateSince, err)
	}
	refused := func(when string) {
		t.Helper()
		if st, body := alice.raw("GET", "/sync?timeout=0&since="+url.QueryEscape(lateSince), nil); st != 400 || errcode(body) != "M_UNKNOWN_POS" {
			t.Errorf("%s: /sync with a token from after the cut (%s): %d %s, want 400 M_UNKNOWN_POS", when, lateSince, st, body)
		}
		// Paging from a token of the lost timeline would read the
		// restored one from a position that meant something else.
		for _, tok := range []string{latePage.End, lateSince} {
			if st, body := alice.raw("GET", "/rooms/"+url.PathEscape(room)+"/messages?dir=b&limit=2&from="+url.QueryEscape(tok), nil); st != 400 || errcode(body) != "M_INVALID_PARAM" {
				t.Errorf("%s: /messages from a token from after the cut (%s): %d %s, want 400 M_INVALID_PARAM", when, tok, st, body)
			}
		}
	}
	refused("right after the restore")
	// The restored log grows past the position the old token names.
	for i := 0; ; i++ {
		fresh := alice.sinceToken()
		pos, err := strconv.ParseUint(strings.TrimPrefix(fresh[:strings.IndexByte(fresh+"_", '_')], "s"), 10, 64)
		if err != nil {
			t.Fatalf("the restored server's sync token %q: %v", fresh, err)
		}
		if pos > late {
			break
		}
		alice.send(room, "m.room.message", map[string]any{"msgtype": "m.text", "body": "restored " + strconv.Itoa(i)})
	}
	refused("once the restored log passed its position")

	// The restored server's own tokens work, and carry on from there.
	fresh := alice.sinceToken()
	sent := alice.send(room, "m.room.message", map[string]any{"msgtype": "m.text", "body": "after the restore"})
	var inc struct {
		Rooms struct {
			Join map[string]struct {
				Timeline struct {
					Events []struct {
						EventID string `json:"event_id"`
					} `json:"events"`
				} `json:"timeline"`
			} `json:"join"`
		} `json:"rooms"`
	}
	alice.ok("GET", "/sync?timeout=0&since="+url.QueryEscape(fresh), nil, &inc)
	evs := inc.Rooms.Join[room].Timeline.Events
	if len(evs) != 1 || evs[0].EventID != sent {
		t.Errorf("an incremental /sync from the restored server's token %s: %+v, want just %s", fresh, evs, sent)
	}
	// So do its page tokens past the cut: back from the newest event,
	// one page then the next.
	var page struct {
		End   string `json:"end"`
		Chunk []struct {
			EventID string `json:"event_id"`
		} `json:"chunk"`
	}
	alice.ok("GET", "/rooms/"+url.PathEscape(room)+"/messages?dir=b&limit=1", nil, &page)
	if len(page.Chunk) != 1 || page.Chunk[0].EventID != sent || !strings.Contains(page.End, "_r") {
		t.Errorf("/messages on the restored server: %+v, want %s and an end token naming the restore", page, sent)
	}
	var next struct {
		Chunk []struct {
			Content struct{ Body string } `json:"content"`
		} `json:"chunk"`
	}
	alice.ok("GET", "/rooms/"+url.PathEscape(room)+"/messages?dir=b&limit=1&from="+url.QueryEscape(page.End), nil, &next)
	if len(next.Chunk) != 1 || !strings.HasPrefix(next.Chunk[0].Content.Body, "restored ") {
		t.Errorf("/messages from the restored server's end token %s: %+v, want the message before %s", page.End, next.Chunk, sent)
	}

	if again := claim(bob); again == claimed {
		t.Errorf("the restored server handed out %s a second time", claimed)
	}
}
