package main

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestOfflineToolsDoNotJoinTheCluster: verify, log, rebuild and an
// offline backup on a stopped cluster node read its data and never join
// the cluster: they neither listen on its raft port nor dial its peers.
func TestOfflineToolsDoNotJoinTheCluster(t *testing.T) {
	c := newServeCluster(t, "")
	l := c.leader()
	// Right after start a loaded machine may still re-elect (503 with
	// Retry-After): retry like a client.
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		o, e, code := runTool(t, c.dirs[l], nil, "register-user", "--config", c.cfgs[l], "--user", "alice", "--password", "pw-alice")
		if code == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("register-user on the leader: %d\n%s\n%s", code, o, e)
		}
	}
	down := (l + 1) % 3
	// The follower has the account and a session before it stops.
	var code int
	var token string
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		if code, token = loginToken(t, c.listen[l], "alice", "pw-alice"); code == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("login on the leader: %d", code)
		}
	}
	waitWhoami(t, c.listen[down], token, 200)
	c.stop(down)

	// Hold its raft port: a tool that tried to join would fail to listen.
	own, err := net.Listen("tcp", c.raft[down])
	if err != nil {
		t.Fatal(err)
	}
	defer own.Close()
	// Its peers, for the tools, are a counting listener: a tool that
	// joined would dial them within an election timeout.
	peers, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer peers.Close()
	var dialled atomic.Int64
	go func() {
		for {
			conn, err := peers.Accept()
			if err != nil {
				return
			}
			dialled.Add(1)
			conn.Close()
		}
	}()
	cfg, err := os.ReadFile(c.cfgs[down])
	if err != nil {
		t.Fatal(err)
	}
	toolCfg := string(cfg)
	for i, a := range c.raft {
		if i != down {
			toolCfg = strings.ReplaceAll(toolCfg, a, peers.Addr().String())
		}
	}
	toolPath := filepath.Join(c.dirs[down], "tool.yaml")
	if err := os.WriteFile(toolPath, []byte(toolCfg), 0o600); err != nil {
		t.Fatal(err)
	}

	dir := c.dirs[down]
	if o, e, code := runTool(t, dir, nil, "verify", "--config", toolPath); code != 0 || !strings.Contains(o, "all projections match") {
		t.Fatalf("verify on a stopped cluster node: %d\n%s\n%s", code, o, e)
	}
	if o, e, code := runTool(t, dir, nil, "log", "--config", toolPath, "tail", "-n", "100"); code != 0 || !strings.Contains(o, "account_registered") {
		t.Fatalf("log tail on a stopped cluster node: %d\n%s\n%s", code, o, e)
	}
	if o, e, code := runTool(t, dir, nil, "rebuild", "--config", toolPath, "--projection", "accounts"); code != 0 {
		t.Fatalf("rebuild on a stopped cluster node: %d\n%s\n%s", code, o, e)
	}
	if o, e, code := runTool(t, dir, nil, "backup", "--config", toolPath, "--to", filepath.Join(t.TempDir(), "b")); code != 0 || !strings.Contains(o, "offline") {
		t.Fatalf("offline backup of a stopped cluster node: %d\n%s\n%s", code, o, e)
	}
	if n := dialled.Load(); n != 0 {
		t.Fatalf("offline tools dialled the node's peers %d time(s)", n)
	}

	// The node rejoins and serves what the tools left.
	own.Close()
	c.start(down)
	waitWhoami(t, c.listen[down], token, 200)
}
