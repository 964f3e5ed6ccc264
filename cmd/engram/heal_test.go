package main

import (
	binenc "encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/engram-hs/engram/internal/pebbletest"
)

// TestDamagedProjectionHealsItself flips 64 bytes in a table block that
// holds only rooms-projection event records of a stopped server, starts
// it again and reads the room's whole history with /messages, as a
// client would: the read that meets the damage is answered 503 M_UNKNOWN
// with Retry-After (never a short page), one log line names the
// projection and the damaged file, the projection is rebuilt from the
// log by itself, and the history is then complete, without a restart.
// Writes keep working afterwards. The other projections with records in
// the damaged table keep serving, untouched (the table holds them all:
// the test flushed everything into it), and `engram verify` finds every
// one of them intact afterwards.
func TestDamagedProjectionHealsItself(t *testing.T) {
	dir := t.TempDir()
	listen := freeAddr(t)
	cfg := writeConfig(t, dir, listen, "")
	p := startServer(t, dir, listen, nil, "--config", cfg)
	if out, errOut, code := runTool(t, dir, nil, "register-user", "--config", cfg, "--user", "alice", "--password", "pw-alice"); code != 0 {
		t.Fatalf("register-user: %s %s", out, errOut)
	}
	alice := newRebuildClient(t, listen, "alice")
	room := alice.createRoom(map[string]any{"preset": "private_chat"})
	const sent = 400
	for i := 0; i < sent; i++ {
		alice.send(room, "m.room.message", map[string]any{"msgtype": "m.text", "body": fmt.Sprintf("message %d %s", i, strings.Repeat("words ", 60))})
	}
	if n, st := countMessages(t, alice, room); st != http.StatusOK || n != sent {
		t.Fatalf("before the damage /messages counts %d (status %d), want %d", n, st, sent)
	}
	p.stop()

	file := damageRoomsEventBlock(t, filepath.Join(dir, "data", "db"))

	p = startServer(t, dir, listen, nil, "--config", cfg)
	alice = newRebuildClient(t, listen, "alice")
	deadline := time.Now().Add(60 * time.Second)
	refused := 0
	for {
		n, st := countMessages(t, alice, room)
		if st == http.StatusOK {
			if n != sent {
				t.Fatalf("/messages answered 200 with %d messages of %d: damage served as less", n, sent)
			}
			break
		}
		refused++
		if time.Now().After(deadline) {
			t.Fatalf("still refused after 60 s; server output:\n%s", p.stderr.String())
		}
		time.Sleep(200 * time.Millisecond)
	}
	logs := p.stderr.String()
	var named, healed int
	others := map[string]bool{}
	for _, line := range strings.Split(logs, "\n") {
		if strings.Contains(line, "stored data is damaged") {
			var l struct{ Projection string }
			json.Unmarshal([]byte(line), &l)
			if l.Projection != "rooms" {
				others[l.Projection] = true
			} else if strings.Contains(line, file) {
				named++
			}
		}
		if strings.Contains(line, "projection rooms rebuilt from the log after damage") {
			healed++
		}
	}
	if refused == 0 || named != 1 || healed != 1 {
		t.Fatalf("want reads refused while healing (got %d), one line naming rooms and %s (got %d) and one saying it healed (got %d):\n%s", refused, file, named, healed, logs)
	}
	if len(others) != 0 {
		t.Fatalf("only rooms was damaged, but %v reported damage too:\n%s", others, logs)
	}
	t.Logf("damaged %s: %d reads refused while healing", file, refused)
	// It keeps serving and following the log.
	alice.send(room, "m.room.message", map[string]any{"msgtype": "m.text", "body": "after healing"})
	if n, st := countMessages(t, alice, room); st != http.StatusOK || n != sent+1 {
		t.Fatalf("after healing and one more send: %d messages (status %d), want %d", n, st, sent+1)
	}
	p.stop()
	if strings.Contains(p.stderr.String(), "panic") {
		t.Fatalf("the server panicked:\n%s", p.stderr)
	}
	// The damaged generation was cut out of the table, so no read or
	// compaction meets the damage again, and every projection, the
	// sharers of the table included, matches a replay of the log.
	if strings.Contains(p.stderr.String(), "cutting the damaged generation out of its table failed") {
		t.Fatalf("the excise failed:\n%s", p.stderr)
	}
	if out, errOut, code := runTool(t, dir, nil, "verify", "--config", cfg); code != 0 || !strings.Contains(out, "all projections match") {
		t.Fatalf("verify after healing: code %d\n%s\n%s", code, out, errOut)
	}
}

// countMessages pages back through the whole room with /messages and
// counts the m.room.message events. A refusal must be 503 M_UNKNOWN with
// a Retry-After header; its status is returned.
func countMessages(t *testing.T, c *rebuildClient, room string) (int, int) {
	t.Helper()
	n, from := 0, ""
	for {
		q := url.Values{"dir": {"b"}, "limit": {"100"}}
		if from != "" {
			q.Set("from", from)
		}
		req, _ := http.NewRequest("GET", c.base+"/rooms/"+url.PathEscape(room)+"/messages?"+q.Encode(), nil)
		req.Header.Set("Authorization", "Bearer "+c.token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			var e struct{ Errcode string }
			json.Unmarshal(body, &e)
			ra, _ := strconv.Atoi(resp.Header.Get("Retry-After"))
			if resp.StatusCode != http.StatusServiceUnavailable || e.Errcode != "M_UNKNOWN" || ra < 1 {
				t.Fatalf("/messages = %d %s (Retry-After %q), want 200, or 503 M_UNKNOWN with Retry-After while healing", resp.StatusCode, body, resp.Header.Get("Retry-After"))
			}
			return n, resp.StatusCode
		}
		var page struct {
			Chunk []struct {
				Type string `json:"type"`
			} `json:"chunk"`
			End string `json:"end"`
		}
		if err := json.Unmarshal(body, &page); err != nil {
			t.Fatal(err)
		}
		for _, e := range page.Chunk {
			if e.Type == "m.room.message" {
				n++
			}
		}
		if page.End == "" || len(page.Chunk) == 0 {
			return n, http.StatusOK
		}
		from = page.End
	}
}

// damageRoomsEventBlock flushes the stopped server's store to a table
// and flips 64 bytes in the middle of a data block that holds nothing but
// event records of the serving rooms generation (so the log itself is
// intact). It returns the table's file name.
func damageRoomsEventBlock(t *testing.T, dbDir string) string {
	t.Helper()
	db, err := pebble.Open(dbDir, &pebble.Options{Logger: quietPebble{}})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Flush(); err != nil {
		t.Fatal(err)
	}
	v, closer, err := db.Get([]byte("P\x00rooms"))
	if err != nil {
		t.Fatal(err)
	}
	var m struct {
		Gen uint32 `json:"gen"`
	}
	if err := json.Unmarshal(v, &m); err != nil {
		t.Fatal(err)
	}
	closer.Close()
	db.Close()
	events := binenc.BigEndian.AppendUint32([]byte("Prooms\x00"), m.Gen)
	events = append(events, 'e')

	return pebbletest.DamageBlock(t, dbDir, events)
}
