package main

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// serveCluster is three `engram serve` processes forming a cluster over
// mutual TLS on loopback, with certificates from `engram cluster init`
// and `engram cluster add-node`.
type serveCluster struct {
	t      *testing.T
	dirs   []string
	cfgs   []string
	listen []string // client API addresses
	raft   []string // raft addresses
	procs  []*proc  // nil while a node is down
}

// newServeCluster starts three nodes and waits until each serves; extra
// is appended to every node's configuration.
func newServeCluster(t *testing.T, extra string) *serveCluster {
	t.Helper()
	root := t.TempDir()
	c := &serveCluster{t: t}
	var peers strings.Builder
	for i := 0; i < 3; i++ {
		c.raft = append(c.raft, freeAddr(t))
		c.listen = append(c.listen, freeAddr(t))
		fmt.Fprintf(&peers, "    - {id: n%d, address: %q}\n", i+1, c.raft[i])
	}
	for i := 0; i < 3; i++ {
		dir := filepath.Join(root, fmt.Sprintf("n%d", i+1))
		if err := os.MkdirAll(dir, 0o750); err != nil {
			t.Fatal(err)
		}
		c.dirs = append(c.dirs, dir)
		c.cfgs = append(c.cfgs, writeConfig(t, dir, c.listen[i], fmt.Sprintf("cluster:\n  node_id: n%d\n  raft_listen: %q\n  peers:\n%s%s", i+1, c.raft[i], peers.String(), extra)))
	}
	if o, e, code := runTool(t, c.dirs[0], nil, "cluster", "init", "--config", c.cfgs[0]); code != 0 {
		t.Fatalf("cluster init: %d\n%s\n%s", code, o, e)
	}
	for i := 1; i < 3; i++ {
		out := filepath.Join(c.dirs[i], "data", clusterDirName)
		if o, e, code := runTool(t, c.dirs[0], nil, "cluster", "add-node", "--config", c.cfgs[0], "--node-id", fmt.Sprintf("n%d", i+1), "--out", out); code != 0 {
			t.Fatalf("cluster add-node: %d\n%s\n%s", code, o, e)
		}
	}
	c.procs = make([]*proc, 3)
	for i := range c.procs {
		c.procs[i] = startServerAsync(t, c.dirs[i], "--config", c.cfgs[i])
	}
	for i := range c.procs {
		waitServing(t, c.procs[i], c.listen[i])
	}
	return c
}

// start restarts node i and waits until it serves.
func (c *serveCluster) start(i int) {
	c.t.Helper()
	c.procs[i] = startServerAsync(c.t, c.dirs[i], "--config", c.cfgs[i])
	waitServing(c.t, c.procs[i], c.listen[i])
}

// stop stops node i cleanly.
func (c *serveCluster) stop(i int) {
	c.t.Helper()
	if c.procs[i] != nil {
		c.procs[i].stop()
		c.procs[i] = nil
	}
}

// leader is the index of the node `engram cluster status` names as
// leader, waiting up to 30 s for an election.
func (c *serveCluster) leader() int {
	c.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		for i := range c.procs {
			if c.procs[i] == nil {
				continue
			}
			o, _, code := runTool(c.t, c.dirs[i], nil, "cluster", "status", "--config", c.cfgs[i])
			if m := regexp.MustCompile(`leader: n(\d)`).FindStringSubmatch(o); code == 0 && m != nil {
				if l := int(m[1][0] - '1'); c.procs[l] != nil {
					return l
				}
			}
		}
		if time.Now().After(deadline) {
			c.t.Fatal("no leader within 30 s")
		}
		time.Sleep(100 * time.Millisecond)
	}
}
