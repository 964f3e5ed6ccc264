package media_test

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"golang.org/x/crypto/bcrypt"
	"maunium.net/go/mautrix"

	"github.com/engram-hs/engram/api"
	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/projections"
	"github.com/engram-hs/engram/roomwrite"
)

type clusterNode struct {
	id   string
	url  string
	dir  string
	node *englog.Node
	srv  *http.Server
	api  *api.Server
	eng  *projections.Engine
}

func freeAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// A follower serves a file uploaded through the leader: it has the
// metadata from the replicated log, fetches the blob from its peer by
// hash, checks the hash, and keeps it.
func TestClusterFollowerServesLeaderUpload(t *testing.T) {
	logger := zerolog.New(io.Discard)
	var nodes []*clusterNode
	var peers []englog.Peer
	var lns []net.Listener
	for _, id := range []string{"n1", "n2"} {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		lns = append(lns, ln)
		n := &clusterNode{id: id, url: "http://" + ln.Addr().String(), dir: t.TempDir()}
		nodes = append(nodes, n)
		peers = append(peers, englog.Peer{ID: id, Addr: freeAddr(t)})
	}
	for i, n := range nodes {
		node, err := englog.Open(englog.Config{Dir: filepath.Join(n.dir, "db"), NodeID: n.id, RaftAddr: peers[i].Addr, Peers: peers, Logger: logger})
		if err != nil {
			t.Fatal(err)
		}
		n.node = node
		n.eng = projections.NewEngine(node, node.DB(), logger, prometheus.NewRegistry())
		cfg := api.Config{ServerName: serverName, EnableRegistration: true, BcryptCost: bcrypt.MinCost, MaxUploadSize: 1 << 20}
		cfg.Media.Repo.Dir = filepath.Join(n.dir, "media")
		cfg.Media.Repo.AuthenticatedMedia = true
		cfg.Media.Repo.JanitorInterval = time.Hour
		cfg.Media.Repo.Peers = []string{nodes[1-i].url}
		cfg.Media.Repo.PeerSecret = "cluster-secret"
		rw, err := roomwrite.New(roomwrite.Config{ServerName: cfg.ServerName, Logger: logger}, node, n.eng)
		if err != nil {
			t.Fatal(err)
		}
		n.api, err = api.New(cfg, api.Deps{Log: node, Engine: n.eng, Rooms: rw, Logger: logger})
		if err != nil {
			t.Fatal(err)
		}
		if err := n.eng.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		n.srv = &http.Server{Handler: n.api.Handler()}
		go n.srv.Serve(lns[i])
	}
	t.Cleanup(func() {
		for _, n := range nodes {
			n.srv.Close()
			n.api.Close()
			_ = n.eng.Close()
			_ = n.node.Close()
		}
	})
	var leader, follower *clusterNode
	for deadline := time.Now().Add(20 * time.Second); leader == nil; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no leader")
		}
		for i, n := range nodes {
			if n.node.IsLeader() {
				leader, follower = n, nodes[1-i]
			}
		}
	}
	ctx := context.Background()
	cli, _ := mautrix.NewClient(leader.url, "", "")
	reg, err := cli.RegisterDummy(ctx, &mautrix.ReqRegister[any]{Username: "alice", Password: "pw"})
	if err != nil {
		t.Fatal(err)
	}
	lts := &testServer{t: t, URL: leader.url}
	fts := &testServer{t: t, URL: follower.url}
	content := testPNG(t, 300, 200)
	// Uploaded first: once the follower sees the second, it knows both.
	tampered := lts.upload(reg.AccessToken, []byte("will be tampered with"), "text/plain", "t.txt")
	id := lts.upload(reg.AccessToken, content, "image/png", "pic.png")

	var r response
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		r = fts.do("GET", "/_matrix/client/v1/media/download/"+serverName+"/"+id, reg.AccessToken, nil)
		if r.Status == 200 || time.Now().After(deadline) {
			break
		}
	}
	if r.Status != 200 || !bytes.Equal(r.Body, content) {
		t.Fatalf("follower download: %d %s", r.Status, r.Body)
	}
	// Now the follower has its own copy.
	var kept int
	_ = filepath.Walk(filepath.Join(follower.dir, "media", "blobs"), func(p string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() && filepath.Base(filepath.Dir(filepath.Dir(filepath.Dir(p)))) == "blobs" {
			kept++
		}
		return nil
	})
	if kept != 1 {
		t.Errorf("the follower keeps %d blobs, want 1 (fetched on demand)", kept)
	}
	// The follower makes thumbnails too (it cannot record them: it serves
	// them anyway).
	r = fts.do("GET", "/_matrix/client/v1/media/thumbnail/"+serverName+"/"+id+"?width=32&height=32&method=crop", reg.AccessToken, nil)
	if w, h, _ := decodeDims(t, r.Body); r.Status != 200 || w != 32 || h != 32 {
		t.Errorf("follower thumbnail: %d %dx%d", r.Status, w, h)
	}

	// A peer that hands out other bytes than the hash names is refused.
	_ = filepath.Walk(filepath.Join(leader.dir, "media", "blobs"), func(p string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() {
			if b, _ := os.ReadFile(p); string(b) == "will be tampered with" {
				_ = os.WriteFile(p, []byte("WILL BE TAMPERED WITH"), 0o600)
			}
		}
		return nil
	})
	if r := fts.do("GET", "/_matrix/client/v1/media/download/"+serverName+"/"+tampered, reg.AccessToken, nil); r.Status != 404 {
		t.Errorf("download of a blob the peer corrupted: %d %s", r.Status, r.Body)
	}
	// Blobs are only for peers with the secret.
	if r := fts.do("GET", "/_engram/media/blob/0000000000000000000000000000000000000000000000000000000000000000", "", nil); r.Status != 403 {
		t.Errorf("blob fetch without the secret: %d", r.Status)
	}
}
