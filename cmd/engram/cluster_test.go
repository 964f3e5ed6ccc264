package main

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestClusterInitAddNodeAndMutualTLS: `engram cluster init` and `engram
// cluster add-node` make the certificates three `engram serve` nodes need
// to form a cluster over mutual TLS; a node without them refuses to start
// and says what to run.
func TestClusterInitAddNodeAndMutualTLS(t *testing.T) {
	root := t.TempDir()
	raft := []string{freeAddr(t), freeAddr(t), freeAddr(t)}
	listen := []string{freeAddr(t), freeAddr(t), freeAddr(t)}
	var peers strings.Builder
	for i, a := range raft {
		fmt.Fprintf(&peers, "    - {id: n%d, address: %q}\n", i+1, a)
	}
	dirs := make([]string, 3)
	cfgs := make([]string, 3)
	for i := range dirs {
		dirs[i] = filepath.Join(root, fmt.Sprintf("n%d", i+1))
		if err := os.MkdirAll(dirs[i], 0o750); err != nil {
			t.Fatal(err)
		}
		cfgs[i] = writeConfig(t, dirs[i], listen[i], fmt.Sprintf("cluster:\n  node_id: n%d\n  raft_listen: %q\n  peers:\n%s", i+1, raft[i], peers.String()))
	}

	// Without certificates a cluster node refuses to start, saying why.
	cmd := exec.Command(binary, "serve", "--config", cfgs[1])
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "engram cluster init") {
		t.Fatalf("serve without cluster certificates: %v\n%s", err, out)
	}

	if o, e, code := runTool(t, dirs[0], nil, "cluster", "init", "--config", cfgs[0]); code != 0 || !strings.Contains(o, "add-node") {
		t.Fatalf("cluster init: %d\n%s\n%s", code, o, e)
	}
	if _, _, code := runTool(t, dirs[0], nil, "cluster", "init", "--config", cfgs[0]); code == 0 {
		t.Fatal("a second cluster init succeeded (it must not replace the CA)")
	}
	for i := 1; i < 3; i++ {
		outDir := filepath.Join(dirs[i], "data", clusterDirName)
		if o, e, code := runTool(t, dirs[0], nil, "cluster", "add-node", "--config", cfgs[0], "--node-id", fmt.Sprintf("n%d", i+1), "--out", outDir); code != 0 {
			t.Fatalf("cluster add-node: %d\n%s\n%s", code, o, e)
		}
		if _, err := os.Stat(filepath.Join(outDir, "ca.key")); err == nil {
			t.Fatal("add-node copied the CA key to another node")
		}
	}
	procs := make([]*proc, 3)
	for i := range procs {
		procs[i] = startServerAsync(t, dirs[i], "--config", cfgs[i])
	}
	for i := range procs {
		waitServing(t, procs[i], listen[i])
	}
	// The nodes elect a leader over TLS: one of them takes a write.
	deadline := time.Now().Add(30 * time.Second)
	for registered := false; !registered; {
		for i := range procs {
			if _, _, code := runTool(t, dirs[i], nil, "register-user", "--config", cfgs[i], "--user", "alice", "--password", "pw-alice"); code == 0 {
				registered = true
				break
			}
		}
		if !registered && time.Now().After(deadline) {
			t.Fatalf("no node took a write within 30 s:\n%s\n%s\n%s", procs[0].stderr, procs[1].stderr, procs[2].stderr)
		}
	}
	// The running cluster's view, and a leadership transfer.
	leaderOf := func() string {
		t.Helper()
		o, e, code := runTool(t, dirs[0], nil, "cluster", "status", "--config", cfgs[0])
		m := regexp.MustCompile(`leader: (n\d)`).FindStringSubmatch(o)
		if code != 0 || strings.Count(o, "Voter") != 3 {
			t.Fatalf("cluster status: %d\n%s\n%s", code, o, e)
		}
		if m == nil {
			return "" // an election under way
		}
		return m[1]
	}
	was := leaderOf()
	for ; was == ""; was = leaderOf() {
		time.Sleep(50 * time.Millisecond)
	}
	li := int(was[1] - '1')
	if o, e, code := runTool(t, dirs[li], nil, "cluster", "transfer-leadership", "--config", cfgs[li]); code != 0 {
		t.Fatalf("cluster transfer-leadership: %d\n%s\n%s", code, o, e)
	}
	deadline = time.Now().Add(10 * time.Second)
	now := leaderOf()
	for ; now == was || now == ""; now = leaderOf() {
		if time.Now().After(deadline) {
			t.Fatalf("leadership stayed on %s", was)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// A logout on the leader ends the session on a follower too, whose
	// session cache had the token: every node folds the logout.
	leader, follower := listen[now[1]-'1'], listen[(now[1]-'1'+1)%3]
	code, token := loginToken(t, leader, "alice", "pw-alice")
	if code != 200 {
		t.Fatalf("login on the leader: %d", code)
	}
	waitWhoami(t, follower, token, 200)
	req, _ := http.NewRequest("POST", "http://"+leader+"/_matrix/client/v3/logout", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("logout on the leader: %d", resp.StatusCode)
	}
	waitWhoami(t, follower, token, 401)
	for i := range procs {
		procs[i].stop()
		if strings.Contains(procs[i].stderr.String(), "without a valid cluster certificate") {
			t.Fatalf("n%d dropped a peer's connection:\n%s", i+1, procs[i].stderr)
		}
	}
}

// waitWhoami waits (for replication, at most 30 s) until whoami with
// token on the node at listen answers want.
func waitWhoami(t *testing.T, listen, token string, want int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		req, _ := http.NewRequest("GET", "http://"+listen+"/_matrix/client/v3/account/whoami", nil)
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("whoami on %s: %d, want %d", listen, resp.StatusCode, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// startServerAsync starts `engram serve` without waiting (a cluster node
// serves only once its peers are up).
func startServerAsync(t *testing.T, dir string, args ...string) *proc {
	t.Helper()
	p := &proc{t: t, stdout: &syncBuffer{}, stderr: &syncBuffer{}, done: make(chan error, 1)}
	p.cmd = exec.Command(binary, append([]string{"serve"}, args...)...)
	p.cmd.Dir = dir
	p.cmd.Stdout, p.cmd.Stderr = p.stdout, p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.done <- p.cmd.Wait() }()
	t.Cleanup(func() {
		if p.cmd.ProcessState == nil {
			p.cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}
