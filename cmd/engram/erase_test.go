package main

import (
	"encoding/json"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"testing"

	englog "github.com/engram-hs/engram/log"
)

// TestPurgesEraseFromTheDisk: a room deleted with purge and a purged
// history are erased, not hidden: once the server has stopped, the text
// of what was erased is in no file of the data directory (tables read
// decompressed), while the rest is served as before; engram verify
// passes and a restart serves the same.
func TestPurgesEraseFromTheDisk(t *testing.T) {
	dir := t.TempDir()
	listen := freeAddr(t)
	cfg := writeConfig(t, dir, listen, "")
	p := startServer(t, dir, listen, nil, "--config", cfg)
	if out, errOut, code := runTool(t, dir, nil, "register-user", "--config", cfg, "--user", "alice", "--password", "pw-alice", "--admin"); code != 0 {
		t.Fatalf("register-user: %s %s", out, errOut)
	}
	alice := newRebuildClient(t, listen, "alice")
	admin := func(method, path string, body any, out any) {
		t.Helper()
		c := *alice
		c.base = "http://" + listen + "/_synapse/admin"
		c.ok(method, path, body, out)
	}
	text := func(body string) map[string]any { return map[string]any{"msgtype": "m.text", "body": body} }

	gone := alice.createRoom(map[string]any{"preset": "private_chat", "name": "gone-name-5e0a"})
	for i := 0; i < 3; i++ {
		alice.send(gone, "m.room.message", text("gone-marker-5e0a said this"))
	}
	kept := alice.createRoom(map[string]any{"preset": "private_chat"})
	alice.send(kept, "m.room.message", text("kept-marker-77b2 stays"))
	hist := alice.createRoom(map[string]any{"preset": "private_chat"})
	alice.send(hist, "m.room.message", text("old-marker-c9d4 first"))
	alice.send(hist, "m.room.message", text("old-marker-c9d4 second"))
	alice.state(hist, "m.room.topic", "", map[string]any{"topic": "topic-marker-3f61"})
	cut := alice.send(hist, "m.room.message", text("new-marker-a8e5 after the cut"))
	alice.send(hist, "m.room.message", text("new-marker-a8e5 later"))

	var del struct {
		DeleteID string `json:"delete_id"`
	}
	admin("DELETE", "/v2/rooms/"+url.PathEscape(gone), map[string]any{"purge": true}, &del)
	var status struct {
		Status string `json:"status"`
	}
	admin("GET", "/v2/rooms/delete_status/"+del.DeleteID, nil, &status)
	if status.Status != "complete" {
		t.Fatalf("delete status %q, want complete", status.Status)
	}
	var purge struct {
		PurgeID string `json:"purge_id"`
	}
	admin("POST", "/v1/purge_history/"+url.PathEscape(hist), map[string]any{"purge_up_to_event_id": cut, "delete_local_events": true}, &purge)
	if purge.PurgeID == "" {
		t.Fatal("purge_history answered no purge_id")
	}

	served := func() {
		t.Helper()
		if bodies := roomBodies(t, alice, kept); !strings.Contains(bodies, "kept-marker-77b2") {
			t.Fatalf("the other room's message is no longer served: %q", bodies)
		}
		bodies := roomBodies(t, alice, hist)
		if strings.Contains(bodies, "old-marker-c9d4") || strings.Count(bodies, "new-marker-a8e5") != 2 {
			t.Fatalf("after the history purge /messages holds %q, want the two later messages only", bodies)
		}
		var topic struct {
			Topic string `json:"topic"`
		}
		alice.ok("GET", "/rooms/"+url.PathEscape(hist)+"/state/m.room.topic/", nil, &topic)
		if topic.Topic != "topic-marker-3f61" {
			t.Fatalf("the purge lost the room's topic (a state event): %q", topic.Topic)
		}
		if st, _ := alice.raw("GET", "/rooms/"+url.PathEscape(gone)+"/messages?dir=b", nil); st == http.StatusOK {
			t.Fatal("the deleted room's messages are still served")
		}
	}
	served()
	p.stop()

	data := filepath.Join(dir, "data")
	for _, gone := range []string{"gone-marker-5e0a", "gone-name-5e0a", "old-marker-c9d4"} {
		if hits, err := englog.FilesHolding(data, []byte(gone)); err != nil || len(hits) > 0 {
			t.Errorf("%q is still in %v (%v)", gone, hits, err)
		}
	}
	for _, stays := range []string{"kept-marker-77b2", "new-marker-a8e5", "topic-marker-3f61"} {
		if hits, err := englog.FilesHolding(data, []byte(stays)); err != nil || len(hits) == 0 {
			t.Errorf("%q is nowhere on disk (%v): the search cannot see what it looks for, or the purge took too much", stays, err)
		}
	}
	if out, errOut, code := runTool(t, dir, nil, "verify", "--config", cfg); code != 0 || !strings.Contains(out, "all projections match") {
		t.Fatalf("verify after the purges: code %d\n%s\n%s", code, out, errOut)
	}

	p = startServer(t, dir, listen, nil, "--config", cfg)
	alice = newRebuildClient(t, listen, "alice")
	served()
	alice.send(kept, "m.room.message", text("after the restart"))
	p.stop()
}

// roomBodies joins the bodies of the room's messages /messages returns.
func roomBodies(t *testing.T, c *rebuildClient, room string) string {
	t.Helper()
	var out struct {
		Chunk []struct {
			Content struct {
				Body string `json:"body"`
			} `json:"content"`
		} `json:"chunk"`
	}
	c.ok("GET", "/rooms/"+url.PathEscape(room)+"/messages?dir=b&limit=100", nil, &out)
	var b []string
	for _, e := range out.Chunk {
		b = append(b, e.Content.Body)
	}
	s, _ := json.Marshal(b)
	return string(s)
}
