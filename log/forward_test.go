package log

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
	"time"
)

// forwardingCluster gives every node of c a Forwarding serving handler
// as "client" (the leader's side), and returns each node's client-facing
// handler (the follower's side).
func forwardingCluster(t *testing.T, c *testCluster, handler func(n *Node) http.Handler) []http.Handler {
	t.Helper()
	out := make([]http.Handler, len(c.nodes))
	for i, n := range c.nodes {
		f := n.Forwarding(nil)
		h := handler(n)
		f.Serve(map[string]http.Handler{"client": h})
		t.Cleanup(func() { f.Close(context.Background()) })
		out[i] = f.Handler("client", h)
	}
	return out
}

// appendHandler appends the request body on POST and answers the offset;
// GET /N answers the payload at offset N from this node's log.
func appendHandler(n *Node) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet {
			off, _ := strconv.ParseUint(r.URL.Path[1:], 10, 64)
			es, err := n.Read(off, 1)
			if err != nil || len(es) == 0 {
				http.Error(w, "not found", http.StatusNotFound)
				return
			}
			w.Write(es[0].Payload)
			return
		}
		body, _ := io.ReadAll(r.Body)
		offs, err := n.Append(r.Context(), Proposal{Kind: KindPDU, Payload: body})
		if err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		json.NewEncoder(w).Encode(map[string]any{"offset": offs[0], "by": n.cfg.NodeID, "client": r.RemoteAddr})
	})
}

func TestForwardedWritesAndReadYourWrites(t *testing.T) {
	c := newTestCluster(t)
	hs := forwardingCluster(t, c, appendHandler)
	l := c.leader()
	for k := 1; k <= 2; k++ {
		fi := (l + k) % 3
		for i := 0; i < 10; i++ {
			// Under load the 300 ms election timeout can pass and the
			// leadership move mid-test: the write is then answered by
			// the leader before or after the request.
			before := c.leader()
			payload := fmt.Sprintf("via %s #%d", c.peers[fi].ID, i)
			req := httptest.NewRequest("POST", "/", bytes.NewReader([]byte(payload)))
			req.RemoteAddr = "192.0.2.7:1234"
			rec := httptest.NewRecorder()
			hs[fi].ServeHTTP(rec, req)
			var ans struct {
				Offset uint64
				By     string
				Client string
			}
			if rec.Code != 200 || json.Unmarshal(rec.Body.Bytes(), &ans) != nil {
				t.Fatalf("forwarded POST on %s: %d %s", c.peers[fi].ID, rec.Code, rec.Body)
			}
			after := c.leader()
			if (ans.By != c.peers[before].ID && ans.By != c.peers[after].ID) || ans.Client != "192.0.2.7:1234" {
				t.Fatalf("answered by %s for client %s, want the leader (%s before the request, %s after) for 192.0.2.7:1234", ans.By, ans.Client, c.peers[before].ID, c.peers[after].ID)
			}
			if rec.Header().Get(HeaderOffset) != "" {
				t.Fatal("the offset header between nodes reached the client")
			}
			// Read-your-writes: the follower that answered has the entry,
			// and so does the other follower for a read that follows.
			for _, ri := range []int{fi, (l + 3 - k) % 3} {
				if c.peers[ri].ID == ans.By {
					continue
				}
				rec := httptest.NewRecorder()
				hs[ri].ServeHTTP(rec, httptest.NewRequest("GET", fmt.Sprintf("/%d", ans.Offset), nil))
				if rec.Code != 200 || rec.Body.String() != payload {
					t.Fatalf("GET of offset %d on %s right after the write: %d %q", ans.Offset, c.peers[ri].ID, rec.Code, rec.Body)
				}
			}
		}
	}

	// A follower's own Append (a write a read makes: presence) goes to the
	// leader too, and is readable on the follower when it returns.
	fi := (l + 1) % 3
	offs, err := c.nodes[fi].Append(context.Background(), Proposal{Kind: KindPDU, Payload: []byte("appended on a follower")})
	if err != nil {
		t.Fatalf("Append on a follower: %v", err)
	}
	if es, err := c.nodes[fi].Read(offs[0], 1); err != nil || len(es) != 1 || string(es[0].Payload) != "appended on a follower" {
		t.Fatalf("the follower does not read its forwarded append at %d: %v %v", offs[0], es, err)
	}
}

// TestForwardingWithoutLeader: with no leader a write waits for an
// election, then gets 503 with Retry-After and M_UNKNOWN; nothing is
// appended. A node left alone answers once it has been without a leader
// for cutOffAfter (it is cut off, not in an election), before leaderWait.
// Reads still work from what the node has.
func TestForwardingWithoutLeader(t *testing.T) {
	c := newTestCluster(t)
	hs := forwardingCluster(t, c, appendHandler)
	l := c.leader()
	rec := httptest.NewRecorder()
	hs[l].ServeHTTP(rec, httptest.NewRequest("POST", "/", bytes.NewReader([]byte("first"))))
	if rec.Code != 200 {
		// A loaded machine may re-elect under the short test timeouts.
		t.Skipf("POST on the leader: %d %s", rec.Code, rec.Body)
	}
	alone := (l + 1) % 3
	if err := c.nodes[alone].waitOffset(context.Background(), 1); err != nil {
		t.Fatal(err)
	}
	for i := range c.nodes {
		if i != alone {
			c.stop(i)
		}
	}
	started := time.Now()
	rec = httptest.NewRecorder()
	hs[alone].ServeHTTP(rec, httptest.NewRequest("POST", "/", bytes.NewReader([]byte("second"))))
	var e struct{ Errcode string }
	json.Unmarshal(rec.Body.Bytes(), &e)
	if rec.Code != http.StatusServiceUnavailable || rec.Header().Get("Retry-After") == "" || e.Errcode != "M_UNKNOWN" {
		t.Fatalf("POST without a leader: %d %q %s", rec.Code, rec.Header().Get("Retry-After"), rec.Body)
	}
	lost := c.nodes[alone].fwd.leaderless.Load()
	if lost == 0 {
		t.Fatal("the node alone never saw its leader go")
	}
	if waited := time.Since(time.Unix(0, lost)); waited < cutOffAfter {
		t.Fatalf("gave up %s after losing its leader, without waiting for an election (%s)", waited, cutOffAfter)
	}
	if took := time.Since(started); took >= leaderWait {
		t.Fatalf("answered after %s: a node cut off from the others waited out leaderWait (%s)", took, leaderWait)
	}
	if last := c.nodes[alone].LastOffset(); last != 1 {
		t.Fatalf("log at %d after a refused write, want 1", last)
	}
	rec = httptest.NewRecorder()
	hs[alone].ServeHTTP(rec, httptest.NewRequest("GET", "/1", nil))
	if rec.Code != 200 || rec.Body.String() != "first" {
		t.Fatalf("read without a leader: %d %s", rec.Code, rec.Body)
	}
}

// TestForwardingNeedsTheClusterCertificate: the forwarding protocol on
// the raft port refuses a client without a certificate from the cluster
// CA, like raft does.
func TestForwardingNeedsTheClusterCertificate(t *testing.T) {
	c := newTestCluster(t)
	forwardingCluster(t, c, appendHandler)
	l := c.leader()
	otherCA, otherKey, err := NewClusterCA("other", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	for name, conf := range map[string]*tls.Config{
		"no certificate":           {InsecureSkipVerify: true, NextProtos: []string{forwardProto}},
		"another CA's certificate": withInsecure(testClusterTLS(t, otherCA, otherKey, "n9")),
	} {
		tr := &http.Transport{
			DialTLSContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				return tls.DialWithDialer(&net.Dialer{Timeout: time.Second}, network, addr, conf)
			},
			TLSNextProto: map[string]func(string, *tls.Conn) http.RoundTripper{},
		}
		req, _ := http.NewRequest("POST", "https://"+c.peers[l].Addr+"/", bytes.NewReader([]byte("forged")))
		req.Header.Set(hdrListener, "client")
		resp, err := tr.RoundTrip(req)
		if err == nil {
			resp.Body.Close()
			t.Fatalf("%s: a forwarded request was answered %s", name, resp.Status)
		}
	}
	if last := c.nodes[l].LastOffset(); last != 0 {
		t.Fatalf("forged requests appended: log at %d", last)
	}
}

func withInsecure(c *tls.Config) *tls.Config {
	c = c.Clone()
	c.InsecureSkipVerify = true
	c.NextProtos = []string{forwardProto}
	return c
}
