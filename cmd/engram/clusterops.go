package main

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/raft"

	englog "github.com/engram-hs/engram/log"
)

// `engram cluster status|add|remove|transfer-leadership` talk to a running
// node: POST /_engram/cluster/<op> on its client listener, signed (as
// backups are) with an HMAC of registration_shared_secret over the
// operation, its arguments and a timestamp.

func clusterOpMAC(secret string, ts int64, op, id, addr string) string {
	m := hmac.New(sha256.New, []byte(secret))
	fmt.Fprintf(m, "engram-cluster\x00%d\x00%s\x00%s\x00%s", ts, op, id, addr)
	return hex.EncodeToString(m.Sum(nil))
}

// clusterStatus is what status answers.
type clusterStatus struct {
	Node       string            `json:"node"`
	State      string            `json:"state"`
	Leader     string            `json:"leader_id"`
	LeaderAddr string            `json:"leader_address"`
	Term       string            `json:"term"`
	LastOffset uint64            `json:"last_offset"`
	Servers    []clusterServer   `json:"servers"`
	Stats      map[string]string `json:"raft"`
}

type clusterServer struct {
	ID       string `json:"id"`
	Address  string `json:"address"`
	Suffrage string `json:"suffrage"`
}

func clusterOpsHandler(secret string, node *englog.Node) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		op := strings.TrimPrefix(r.URL.Path, "/_engram/cluster/")
		id, addr := r.URL.Query().Get("id"), r.URL.Query().Get("address")
		tsStr, mac, _ := strings.Cut(r.Header.Get("X-Engram-Cluster"), ":")
		ts, err := strconv.ParseInt(tsStr, 10, 64)
		if secret == "" || err != nil || time.Since(time.UnixMilli(ts)).Abs() > 5*time.Minute ||
			!hmac.Equal([]byte(mac), []byte(clusterOpMAC(secret, ts, op, id, addr))) {
			http.Error(w, "cluster requests are signed with registration_shared_secret (engram cluster does it)", http.StatusForbidden)
			return
		}
		rf := node.Raft()
		if rf == nil {
			http.Error(w, "this node runs no raft", http.StatusConflict)
			return
		}
		var ferr error
		switch op {
		case "status":
			la, lid := rf.LeaderWithID()
			st := clusterStatus{Node: string(rf.String()), State: rf.State().String(), Leader: string(lid), LeaderAddr: string(la),
				Term: rf.Stats()["term"], LastOffset: node.LastOffset(), Stats: rf.Stats()}
			if f := rf.GetConfiguration(); f.Error() == nil {
				for _, s := range f.Configuration().Servers {
					st.Servers = append(st.Servers, clusterServer{ID: string(s.ID), Address: string(s.Address), Suffrage: s.Suffrage.String()})
				}
			}
			w.Header().Set("Content-Type", "application/json")
			json.NewEncoder(w).Encode(st)
			return
		case "add":
			if id == "" || addr == "" {
				http.Error(w, "add needs --node-id and --address", http.StatusBadRequest)
				return
			}
			ferr = rf.AddVoter(raft.ServerID(id), raft.ServerAddress(addr), 0, 30*time.Second).Error()
		case "remove":
			if id == "" {
				http.Error(w, "remove needs --node-id", http.StatusBadRequest)
				return
			}
			ferr = rf.RemoveServer(raft.ServerID(id), 0, 30*time.Second).Error()
		case "transfer-leadership":
			if id != "" {
				ferr = rf.LeadershipTransferToServer(raft.ServerID(id), raft.ServerAddress(addr)).Error()
			} else {
				ferr = rf.LeadershipTransfer().Error()
			}
		default:
			http.Error(w, "unknown cluster operation "+op, http.StatusNotFound)
			return
		}
		if ferr != nil {
			la, lid := rf.LeaderWithID()
			http.Error(w, fmt.Sprintf("%s failed: %v (run it on the leader, %s at %s)", op, ferr, lid, la), http.StatusConflict)
			return
		}
		io.WriteString(w, "ok\n")
	})
}

func clusterOpCmd(op string) func([]string) int {
	return func(args []string) int {
		cf := newConfigFlags("cluster "+op, false)
		url := cf.fs.String("url", "", "the node's URL (default: http://<listen>)")
		var id, addr *string
		if op != "status" {
			id = cf.fs.String("node-id", "", "the node's raft ID")
		}
		if op == "add" || op == "transfer-leadership" {
			addr = cf.fs.String("address", "", "the node's raft address host:port")
		}
		if code, ok := parseFlags(cf.fs, args); !ok {
			return code
		}
		l, err := cf.load(false)
		if err != nil {
			return fail(2, "%v", err)
		}
		base := *url
		if base == "" {
			host, port, _ := net.SplitHostPort(l.cfg.Listen)
			if host == "" || host == "0.0.0.0" || host == "::" {
				host = "127.0.0.1"
			}
			base = "http://" + net.JoinHostPort(host, port)
		}
		idV, addrV := "", ""
		if id != nil {
			idV = *id
		}
		if addr != nil {
			addrV = *addr
		}
		req, err := http.NewRequest("POST", fmt.Sprintf("%s/_engram/cluster/%s?id=%s&address=%s", strings.TrimRight(base, "/"), op, idV, addrV), nil)
		if err != nil {
			return fail(2, "%v", err)
		}
		ts := time.Now().UnixMilli()
		req.Header.Set("X-Engram-Cluster", fmt.Sprintf("%d:%s", ts, clusterOpMAC(l.cfg.RegistrationSharedSecret, ts, op, idV, addrV)))
		resp, err := (&http.Client{Timeout: time.Minute}).Do(req)
		if err != nil {
			return fail(1, "asking %s (is the server running?): %v", base, err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		if resp.StatusCode != http.StatusOK {
			return fail(1, "%s: %s", resp.Status, strings.TrimSpace(string(body)))
		}
		if op != "status" {
			fmt.Print(string(body))
			return 0
		}
		var st clusterStatus
		if err := json.Unmarshal(body, &st); err != nil {
			return fail(1, "%v", err)
		}
		fmt.Printf("this node: %s, leader: %s (%s), term %s, log offset %d\n", st.State, st.Leader, st.LeaderAddr, st.Term, st.LastOffset)
		for _, s := range st.Servers {
			fmt.Printf("  %-12s %-22s %s\n", s.ID, s.Address, s.Suffrage)
		}
		return 0
	}
}
