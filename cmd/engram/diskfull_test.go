package main

import (
	"encoding/json"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
)

// TestDiskFullServerRefusesWritesAndResumes runs a real server on a small
// tmpfs and fills it: sends fail with the documented 507 M_UNKNOWN, reads
// keep answering, and once space is freed sends work again without a
// restart; nothing acknowledged is lost and verify passes. It needs to
// mount a tmpfs (root); the log package's disk-full test also runs on a
// simulated filesystem where it cannot.
func TestDiskFullServerRefusesWritesAndResumes(t *testing.T) {
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=96m"); err != nil {
		t.Skipf("cannot mount a tmpfs here (%v); log.TestDiskFullRefusesWritesKeepsReadsAndResumes covers this on a simulated disk", err)
	}
	t.Cleanup(func() { syscall.Unmount(dir, syscall.MNT_DETACH) })
	listen := freeAddr(t)
	cfg := writeConfig(t, dir, listen, "disk_reserve: \"16M\"\ndisk_ballast: \"4M\"\n")
	p := startServer(t, dir, listen, nil, "--config", cfg)
	if out, errOut, code := runTool(t, dir, nil, "register-user", "--config", cfg, "--user", "alice", "--password", "pw-alice"); code != 0 {
		t.Fatalf("register-user: %s %s", out, errOut)
	}
	alice := newRebuildClient(t, listen, "alice")
	room := alice.createRoom(map[string]any{"preset": "private_chat"})
	var sent []string
	for i := 0; i < 20; i++ {
		sent = append(sent, alice.send(room, "m.room.message", map[string]any{"msgtype": "m.text", "body": "before"}))
	}

	filler := filepath.Join(dir, "filler")
	fill := func(leave int64) {
		t.Helper()
		var st syscall.Statfs_t
		if err := syscall.Statfs(dir, &st); err != nil {
			t.Fatal(err)
		}
		f, err := os.OpenFile(filler, os.O_CREATE|os.O_WRONLY, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		fi, _ := f.Stat()
		if take := int64(st.Bavail)*st.Bsize - leave; take > 0 {
			if err := syscall.Fallocate(int(f.Fd()), 0, fi.Size(), take); err != nil {
				t.Fatal(err)
			}
		}
	}
	fill(8 << 20)
	time.Sleep(100 * time.Millisecond)
	st, body := alice.raw("PUT", "/rooms/"+url.PathEscape(room)+"/send/m.room.message/"+alice.txn(), map[string]any{"msgtype": "m.text", "body": "refused"})
	var e struct{ Errcode, Error string }
	json.Unmarshal(body, &e)
	if st != http.StatusInsufficientStorage || e.Errcode != "M_UNKNOWN" || !strings.Contains(e.Error, "disk space") {
		t.Fatalf("send on a full disk = %d %s, want 507 M_UNKNOWN saying the disk is full", st, body)
	}
	// Reads keep working.
	var msgs struct {
		Chunk []struct {
			EventID string `json:"event_id"`
		} `json:"chunk"`
	}
	alice.ok("GET", "/rooms/"+url.PathEscape(room)+"/messages?dir=b&limit=100", nil, &msgs)
	if !containsEvents(msgs.Chunk, sent) {
		t.Fatalf("/messages on a full disk lacks sent events")
	}
	if !strings.Contains(p.stderr.String(), "disk nearly full: writes are refused; free at least") {
		t.Fatalf("no log line says what to free:\n%s", p.stderr)
	}

	os.Remove(filler)
	time.Sleep(100 * time.Millisecond)
	sent = append(sent, alice.send(room, "m.room.message", map[string]any{"msgtype": "m.text", "body": "after"}))
	p.stop()
	if strings.Contains(p.stderr.String(), "panic") {
		t.Fatalf("the server panicked:\n%s", p.stderr)
	}
	if out, errOut, code := runTool(t, dir, nil, "verify", "--config", cfg); code != 0 || !strings.Contains(out, "all projections match") {
		t.Fatalf("verify: code %d\n%s\n%s", code, out, errOut)
	}
	startServer(t, dir, listen, nil, "--config", cfg)
	alice = newRebuildClient(t, listen, "alice")
	alice.ok("GET", "/rooms/"+url.PathEscape(room)+"/messages?dir=b&limit=100", nil, &msgs)
	if !containsEvents(msgs.Chunk, sent) {
		t.Fatalf("acknowledged sends missing after the restart")
	}
}

func containsEvents(chunk []struct {
	EventID string `json:"event_id"`
}, want []string) bool {
	have := map[string]bool{}
	for _, c := range chunk {
		have[c.EventID] = true
	}
	for _, id := range want {
		if !have[id] {
			return false
		}
	}
	return true
}

// TestVerifyNamesDiskDamage flips bytes in a table file of a stopped
// server's data: engram verify reports disk damage naming the file, not a
// projection mismatch to report as a bug.
func TestVerifyNamesDiskDamage(t *testing.T) {
	dir := t.TempDir()
	listen := freeAddr(t)
	cfg := writeConfig(t, dir, listen, "")
	p := startServer(t, dir, listen, nil, "--config", cfg)
	if out, errOut, code := runTool(t, dir, nil, "register-user", "--config", cfg, "--user", "alice", "--password", "pw-alice"); code != 0 {
		t.Fatalf("register-user: %s %s", out, errOut)
	}
	alice := newRebuildClient(t, listen, "alice")
	room := alice.createRoom(map[string]any{"preset": "private_chat"})
	for i := 0; i < 200; i++ {
		alice.send(room, "m.room.message", map[string]any{"msgtype": "m.text", "body": strings.Repeat("words ", 20)})
	}
	p.stop()
	// Memtables to a table file, then damage it.
	db, err := pebble.Open(filepath.Join(dir, "data", "db"), &pebble.Options{Logger: quietPebble{}})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Flush(); err != nil {
		t.Fatal(err)
	}
	db.Close()
	ssts, _ := filepath.Glob(filepath.Join(dir, "data", "db", "*.sst"))
	if len(ssts) == 0 {
		t.Fatal("no table file after a flush")
	}
	b, err := os.ReadFile(ssts[0])
	if err != nil {
		t.Fatal(err)
	}
	for i := len(b) / 4; i < len(b)/4+64; i++ {
		b[i] ^= 0xff
	}
	if err := os.WriteFile(ssts[0], b, 0o600); err != nil {
		t.Fatal(err)
	}
	out, errOut, code := runTool(t, dir, nil, "verify", "--config", cfg)
	if code == 0 || !strings.Contains(errOut, "DISK DAMAGE") || !strings.Contains(errOut, strings.TrimSuffix(filepath.Base(ssts[0]), ".sst")) || strings.Contains(errOut, "report the bug") {
		t.Fatalf("verify on a damaged table: code %d\n%s\n%s", code, out, errOut)
	}
}
