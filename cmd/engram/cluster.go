package main

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	englog "github.com/engram-hs/engram/log"
)

// Raft between nodes runs over mutual TLS with a cluster CA. The files
// live in <data_dir>/cluster/:
//
//	ca.crt     the cluster CA certificate (every node)
//	ca.key     the CA key (only where `engram cluster init` ran; it issues
//	           the other nodes' certificates)
//	node.crt   this node's certificate, issued by the CA
//	node.key   its key
const clusterDirName = "cluster"

func clusterDir(cfg Config) string { return filepath.Join(cfg.DataDir, clusterDirName) }

// clusterTLS loads this node's raft TLS configuration; nil for a single
// node (no cluster.raft_listen).
func clusterTLS(cfg Config) (*tls.Config, error) {
	if cfg.ClusterRaftListen == "" {
		return nil, nil
	}
	dir := clusterDir(cfg)
	var pems [3][]byte
	for i, name := range []string{"ca.crt", "node.crt", "node.key"} {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			return nil, fmt.Errorf("cluster.raft_listen is set, but %s cannot be read (%v): raft runs only over mutual TLS; "+
				"run `engram cluster init` on the first node and `engram cluster add-node --node-id ID --out DIR` there for each other node, "+
				"then copy DIR to that node's %s", filepath.Join(dir, name), err, filepath.Join("<data_dir>", clusterDirName))
		}
		pems[i] = b
	}
	conf, err := englog.ClusterTLS(pems[0], pems[1], pems[2])
	if err != nil {
		return nil, fmt.Errorf("%s: %w", dir, err)
	}
	return conf, nil
}

func clusterCmd(args []string) int {
	sub := map[string]func([]string) int{
		"init":                clusterInitCmd,
		"add-node":            clusterAddNodeCmd,
		"status":              clusterOpCmd("status"),
		"add":                 clusterOpCmd("add"),
		"remove":              clusterOpCmd("remove"),
		"transfer-leadership": clusterOpCmd("transfer-leadership"),
	}
	if len(args) > 0 && (args[0] == "-h" || args[0] == "--help" || args[0] == "help") {
		clusterUsage(os.Stdout)
		return 0
	}
	if len(args) == 0 || sub[args[0]] == nil {
		clusterUsage(os.Stderr)
		return 2
	}
	return sub[args[0]](args[1:])
}

func clusterUsage(w io.Writer) {
	fmt.Fprint(w, `Usage: engram cluster <command> [flags]

Commands:
  init       create the cluster CA and this (first) node's certificate in <data_dir>/cluster
  add-node   issue another node's certificate: --node-id ID --out DIR (run where init ran)
  status     a running node's view: leader, term, voters
  add        add a voter to the running cluster: --node-id ID --address HOST:PORT (on the leader)
  remove     remove a node: --node-id ID (on the leader)
  transfer-leadership  hand leadership to another node (--node-id ID --address HOST:PORT, or any)
`)
}

func clusterInitCmd(args []string) int {
	cf := newConfigFlags("cluster init", false)
	nodeID := cf.fs.String("node-id", "", "this node's ID (default: cluster.node_id, or node1)")
	if code, ok := parseFlags(cf.fs, args); !ok {
		return code
	}
	l, err := cf.load(true)
	if err != nil {
		return fail(2, "%v", err)
	}
	id := firstNonEmpty(*nodeID, l.cfg.ClusterNodeID, "node1")
	dir := clusterDir(l.cfg)
	if _, err := os.Stat(filepath.Join(dir, "ca.crt")); err == nil {
		return fail(1, "%s already holds a cluster CA; to add a node run `engram cluster add-node --node-id ID --out DIR`", dir)
	}
	now := time.Now()
	caCert, caKey, err := englog.NewClusterCA(l.cfg.ServerName, now)
	if err != nil {
		return fail(1, "creating the cluster CA: %v", err)
	}
	cert, key, err := englog.IssueNodeCert(caCert, caKey, id, now)
	if err != nil {
		return fail(1, "issuing %s's certificate: %v", id, err)
	}
	if err := writeClusterFiles(dir, map[string][]byte{"ca.crt": caCert, "ca.key": caKey, "node.crt": cert, "node.key": key}); err != nil {
		return fail(1, "%v", err)
	}
	fmt.Printf(`Created the cluster CA and %s's certificate in %s.
Keep ca.key safe: it issues the other nodes' certificates. For each, run here:

    engram cluster add-node --config %s --node-id node2 --out node2-cluster

and copy node2-cluster/ to that node's <data_dir>/%s/.
`, id, dir, l.path, clusterDirName)
	return 0
}

func clusterAddNodeCmd(args []string) int {
	cf := newConfigFlags("cluster add-node", false)
	nodeID := cf.fs.String("node-id", "", "the new node's ID (required)")
	out := cf.fs.String("out", "", "directory to write ca.crt, node.crt and node.key into (required)")
	if code, ok := parseFlags(cf.fs, args); !ok {
		return code
	}
	if *nodeID == "" || *out == "" {
		return fail(2, "--node-id and --out are required")
	}
	l, err := cf.load(false)
	if err != nil {
		return fail(2, "%v", err)
	}
	dir := clusterDir(l.cfg)
	caCert, err := os.ReadFile(filepath.Join(dir, "ca.crt"))
	if err != nil {
		return fail(1, "no cluster CA here (%v): run add-node where `engram cluster init` ran", err)
	}
	caKey, err := os.ReadFile(filepath.Join(dir, "ca.key"))
	if err != nil {
		return fail(1, "the CA key is not here (%v): run add-node where `engram cluster init` ran", err)
	}
	cert, key, err := englog.IssueNodeCert(caCert, caKey, *nodeID, time.Now())
	if err != nil {
		return fail(1, "issuing %s's certificate: %v", *nodeID, err)
	}
	if err := writeClusterFiles(*out, map[string][]byte{"ca.crt": caCert, "node.crt": cert, "node.key": key}); err != nil {
		return fail(1, "%v", err)
	}
	fmt.Printf("Issued %s's certificate in %s: copy that directory to %s's <data_dir>/%s/ and start it.\n", *nodeID, *out, *nodeID, clusterDirName)
	return 0
}

// writeClusterFiles writes new files (never overwriting), keys readable
// by the owner only.
func writeClusterFiles(dir string, files map[string][]byte) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("creating %s: %w", dir, err)
	}
	for name := range files {
		if _, err := os.Stat(filepath.Join(dir, name)); err == nil {
			return fmt.Errorf("%s already exists; not overwriting it", filepath.Join(dir, name))
		} else if !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	for name, b := range files {
		if err := writeFileAtomic(filepath.Join(dir, name), b, 0o600); err != nil {
			return fmt.Errorf("writing %s: %w", filepath.Join(dir, name), err)
		}
	}
	return nil
}

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}
