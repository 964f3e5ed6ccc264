// Command faults is a fault campaign against a three-node Engram cluster
// on loopback: real `engram serve` processes, concurrent senders spread
// over the nodes (so most write through a follower, by forwarding), and a
// fault per cycle, in turn: SIGKILL of the leader, of a follower, a
// partition isolating the leader, then a follower (through the TCP proxies
// every raft link goes through, proxy.go), and a slow disk under the
// leader, then a follower (a delaying FUSE filesystem under every data
// directory, slowdisk.go). After each cycle every node in turn is stopped,
// checked with `engram verify` and started again (--verify-each). At the
// end every acknowledged event must be on every node, in the same order,
// and `engram verify` must pass on every node. It prints one JSON line;
// see bench/README.md. It needs root (FUSE mounts and /proc of the nodes).
//
//	go build -o /tmp/engram ./cmd/engram
//	go run ./bench/faults --engram /tmp/engram --cycles 20 --senders 6
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// allKinds are the faults, one per cycle in this order.
var allKinds = []string{"leader_kill", "follower_kill", "leader_partition", "follower_partition", "leader_slow_disk", "follower_slow_disk"}

var opts struct {
	kinds              string
	partition          time.Duration
	slowDelay, slowFor time.Duration
	verifyEach         bool
	pause              time.Duration
}

func main() {
	bin := flag.String("engram", "", "the engram binary (required)")
	cycles := flag.Int("cycles", 10, "fault cycles")
	senders := flag.Int("senders", 6, "concurrent senders")
	keep := flag.Bool("keep", false, "keep the data directories")
	flag.StringVar(&opts.kinds, "faults", strings.Join(allKinds, ","), "fault kinds, one per cycle in turn")
	flag.DurationVar(&opts.partition, "partition", 3*time.Second, "how long a partition lasts (at least until every sender writes again)")
	flag.DurationVar(&opts.slowDelay, "slow-disk-delay", 100*time.Millisecond, "a slow disk's wait per fsync (a tenth of it per write)")
	flag.DurationVar(&opts.slowFor, "slow-disk-for", 4*time.Second, "how long a disk stays slow")
	flag.BoolVar(&opts.verifyEach, "verify-each", true, "after each cycle, stop, verify and restart every node in turn")
	flag.DurationVar(&opts.pause, "pause", 0, "each sender's wait between sends (bounds the log's growth, and so verify's time per cycle)")
	flag.Parse()
	if *bin == "" {
		fmt.Fprintln(os.Stderr, "faults: --engram BINARY is required")
		os.Exit(2)
	}
	if err := run(*bin, *cycles, *senders, *keep); err != nil {
		fmt.Fprintln(os.Stderr, "faults:", err)
		os.Exit(1)
	}
}

type node struct {
	dir, cfg, listen, raft string
	cmd                    *exec.Cmd
	log                    *os.File
	proxy                  *proxy    // what the other nodes dial to reach this one
	disk                   *slowDisk // under dir/data
}

type cluster struct {
	bin   string
	nodes []*node
	nw    *network
	mu    sync.Mutex // guards pids
	pids  [3]int
}

func (c *cluster) pid(i int) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.pids[i]
}

func (c *cluster) setPid(i, pid int) {
	c.mu.Lock()
	c.pids[i] = pid
	c.mu.Unlock()
}

func freeAddr() string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func (c *cluster) tool(i int, args ...string) (string, error) {
	cmd := exec.Command(c.bin, args...)
	cmd.Dir = c.nodes[i].dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("engram %s on n%d: %v\n%s", strings.Join(args, " "), i+1, err, out)
	}
	return string(out), nil
}

func (c *cluster) start(i int) error {
	n := c.nodes[i]
	f, err := os.OpenFile(filepath.Join(n.dir, "serve.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	n.log = f
	n.cmd = exec.Command(c.bin, "serve", "--config", n.cfg)
	n.cmd.Dir = n.dir
	n.cmd.Stdout, n.cmd.Stderr = f, f
	if err := n.cmd.Start(); err != nil {
		return err
	}
	c.setPid(i, n.cmd.Process.Pid)
	return nil
}

func (c *cluster) kill(i int) {
	n := c.nodes[i]
	c.setPid(i, 0)
	n.cmd.Process.Signal(syscall.SIGKILL)
	n.cmd.Wait()
	n.log.Close()
	n.cmd = nil
}

func (c *cluster) stop(i int) {
	n := c.nodes[i]
	if n.cmd == nil {
		return
	}
	n.cmd.Process.Signal(syscall.SIGTERM)
	n.cmd.Wait()
	c.setPid(i, 0)
	n.log.Close()
	n.cmd = nil
}

func waitServing(listen string, d time.Duration) error {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if resp, err := http.Get("http://" + listen + "/_matrix/client/versions"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("%s did not serve within %s", listen, d)
}

var leaderRe = regexp.MustCompile(`leader: n(\d)`)

// leader asks a running node who leads.
func (c *cluster) leader() (int, error) {
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		for i, n := range c.nodes {
			if n.cmd == nil {
				continue
			}
			out, err := c.tool(i, "cluster", "status", "--config", n.cfg)
			if m := leaderRe.FindStringSubmatch(out); err == nil && m != nil {
				if l := int(m[1][0] - '1'); c.nodes[l].cmd != nil {
					return l, nil
				}
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return -1, errors.New("no leader within 30 s")
}

var offsetRe = regexp.MustCompile(`log offset (\d+)`)

// offset is node i's log offset as it reports it.
func (c *cluster) offset(i int) (uint64, error) {
	out, err := c.tool(i, "cluster", "status", "--config", c.nodes[i].cfg)
	if err != nil {
		return 0, err
	}
	m := offsetRe.FindStringSubmatch(out)
	if m == nil {
		return 0, fmt.Errorf("cluster status on n%d: no offset in %q", i+1, out)
	}
	return strconv.ParseUint(m[1], 10, 64)
}

// caughtUp waits until node i serves and has what the leader had when it
// started serving, so the next fault does not take a quorum's last copy.
func (c *cluster) caughtUp(i int) error {
	if err := waitServing(c.nodes[i].listen, 60*time.Second); err != nil {
		return err
	}
	var target uint64
	deadline := time.Now().Add(60 * time.Second)
	for target == 0 {
		l, err := c.leader()
		if err != nil {
			return err
		}
		if target, err = c.offset(l); err != nil && time.Now().After(deadline) {
			return err
		}
	}
	for {
		off, err := c.offset(i)
		if err == nil && off >= target {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("n%d did not catch up with offset %d within 60 s (at %d, %v)", i+1, target, off, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// verifyRunning stops node i, runs engram verify on its data directory,
// starts it again and waits until it has caught up.
func (c *cluster) verifyRunning(i int) (time.Duration, error) {
	c.stop(i)
	t := time.Now()
	out, verr := c.tool(i, "verify", "--config", c.nodes[i].cfg)
	d := time.Since(t)
	if verr == nil && !strings.Contains(out, "all projections match") {
		verr = fmt.Errorf("verify n%d: %s", i+1, out)
	}
	if err := c.start(i); err != nil {
		return d, err
	}
	if err := c.caughtUp(i); err != nil {
		return d, err
	}
	return d, verr
}

func setup(bin string) (*cluster, string, error) {
	root, err := os.MkdirTemp("", "engram-faults-")
	if err != nil {
		return nil, "", err
	}

	c := &cluster{bin: bin}
	c.nw = newNetwork(c.pid)
	var peers strings.Builder
	for i := 0; i < 3; i++ {
		n := &node{dir: filepath.Join(root, fmt.Sprintf("n%d", i+1)), listen: freeAddr(), raft: freeAddr()}
		c.nodes = append(c.nodes, n)
		if n.proxy, err = newProxy(c.nw, i, n.raft); err != nil {
			return c, root, err
		}
		// Peers dial (and the node advertises) the proxy; it listens on raft.
		fmt.Fprintf(&peers, "    - {id: n%d, address: %q}\n", i+1, n.proxy.addr())
	}
	for i, n := range c.nodes {
		for _, d := range []string{"disk", "data"} {
			if err := os.MkdirAll(filepath.Join(n.dir, d), 0o750); err != nil {
				return c, root, err
			}
		}
		if n.disk, err = mountSlowDisk(filepath.Join(n.dir, "disk"), filepath.Join(n.dir, "data")); err != nil {
			return c, root, err
		}
		n.cfg = filepath.Join(n.dir, "engram.yaml")
		conf := fmt.Sprintf("server_name: \"faults.local\"\ndata_dir: \"data\"\nlisten: %q\nregistration_shared_secret: \"s3cret\"\nbcrypt_rounds: 4\nrate_limiting_enabled: false\nlog_level: warn\ncluster:\n  node_id: n%d\n  raft_listen: %q\n  peers:\n%s",
			n.listen, i+1, n.raft, peers.String())
		if err := os.WriteFile(n.cfg, []byte(conf), 0o600); err != nil {
			return c, root, err
		}
	}
	if _, err := c.tool(0, "cluster", "init", "--config", c.nodes[0].cfg); err != nil {
		return c, root, err
	}
	for i := 1; i < 3; i++ {
		if _, err := c.tool(0, "cluster", "add-node", "--config", c.nodes[0].cfg, "--node-id", fmt.Sprintf("n%d", i+1), "--out", filepath.Join(c.nodes[i].dir, "data", "cluster")); err != nil {
			return c, root, err
		}
	}
	for i := range c.nodes {
		if err := c.start(i); err != nil {
			return c, root, err
		}
	}
	for _, n := range c.nodes {
		if err := waitServing(n.listen, 60*time.Second); err != nil {
			return c, root, err
		}
	}
	return c, root, nil
}

// call does one client API request; a transport error is status 0.
func call(client *http.Client, method, url, token string, body any) (int, []byte) {
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, url, rd)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return 0, []byte(err.Error())
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

type ack struct {
	id string
	at time.Time
}

func run(bin string, cycles, senders int, keep bool) error {
	c, root, err := setup(bin)
	if root != "" && !keep {
		defer os.RemoveAll(root)
	}
	defer func() {
		if c != nil {
			for i, n := range c.nodes {
				c.stop(i)
				if n.disk != nil {
					n.disk.unmount()
				}
			}
		}
	}()
	if err != nil {
		return err
	}
	// Interrupted: the nodes must not outlive the FUSE filesystems this
	// process serves under them (they would hang on their disks).
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		<-sig
		for i, n := range c.nodes {
			if pid := c.pid(i); pid != 0 {
				syscall.Kill(pid, syscall.SIGKILL)
			}
			n.disk.unmount()
		}
		if !keep {
			os.RemoveAll(root)
		}
		fmt.Fprintln(os.Stderr, "faults: interrupted")
		os.Exit(1)
	}()
	l, err := c.leader()
	if err != nil {
		return err
	}
	if _, err := c.tool(l, "register-user", "--config", c.nodes[l].cfg, "--user", "alice", "--password", "pw"); err != nil {
		return err
	}
	client := &http.Client{Timeout: 15 * time.Second}
	st, b := call(client, "POST", "http://"+c.nodes[l].listen+"/_matrix/client/v3/login", "", map[string]any{
		"type": "m.login.password", "identifier": map[string]string{"type": "m.id.user", "user": "alice"}, "password": "pw"})
	var login struct {
		AccessToken string `json:"access_token"`
	}
	if st != 200 || json.Unmarshal(b, &login) != nil {
		return fmt.Errorf("login: %d %s", st, b)
	}
	st, b = call(client, "POST", "http://"+c.nodes[l].listen+"/_matrix/client/v3/createRoom", login.AccessToken, map[string]any{"preset": "private_chat"})
	var room struct {
		RoomID string `json:"room_id"`
	}
	if st != 200 || json.Unmarshal(b, &room) != nil {
		return fmt.Errorf("createRoom: %d %s", st, b)
	}

	// Senders: each starts on its own node and moves on when that one
	// does not answer; a failed send is retried with the same transaction
	// ID, so an event acknowledged twice is the same event.
	var stop atomic.Bool
	var wg sync.WaitGroup
	acks := make([][]ack, senders)
	var errs503 atomic.Int64
	var acksMu sync.Mutex
	for s := 0; s < senders; s++ {
		wg.Add(1)
		go func(s int) {
			defer wg.Done()
			at := s % 3
			for k := 0; !stop.Load(); k++ {
				txn := fmt.Sprintf("s%d-%d", s, k)
				for !stop.Load() {
					u := fmt.Sprintf("http://%s/_matrix/client/v3/rooms/%s/send/m.room.message/%s", c.nodes[at].listen, url.PathEscape(room.RoomID), txn)
					st, b := call(client, "PUT", u, login.AccessToken, map[string]any{"msgtype": "m.text", "body": txn})
					var out struct {
						EventID string `json:"event_id"`
					}
					if st == 200 && json.Unmarshal(b, &out) == nil && out.EventID != "" {
						acksMu.Lock()
						acks[s] = append(acks[s], ack{out.EventID, time.Now()})
						acksMu.Unlock()
						time.Sleep(opts.pause)
						break
					}
					if st == 503 {
						errs503.Add(1)
					}
					if st == 0 || st == 503 {
						// Down, cut off or without a leader: as a
						// load balancer would, try the next node.
						at = (at + 1) % 3
					}
					time.Sleep(20 * time.Millisecond)
				}
			}
		}(s)
	}

	kinds := strings.Split(opts.kinds, ",")
	gaps := map[string][]time.Duration{} // per kind: until every sender wrote again
	counts := map[string]int{}
	var slowRatios []float64 // write rate with a slow disk / before
	var verifyTimes []time.Duration
	verifyFailures := 0
	// acksSince counts acknowledgements in [from, to).
	acksSince := func(from, to time.Time) int {
		acksMu.Lock()
		defer acksMu.Unlock()
		k := 0
		for _, a := range acks {
			for _, x := range a {
				if !x.at.Before(from) && x.at.Before(to) {
					k++
				}
			}
		}
		return k
	}
	// writesBack waits until every sender has an acknowledgement after t.
	writesBack := func(t time.Time) (time.Duration, error) {
		deadline := t.Add(60 * time.Second)
		var gap time.Duration
		for s := 0; s < senders; s++ {
			for {
				acksMu.Lock()
				a := acks[s]
				acksMu.Unlock()
				if n := len(a); n > 0 && a[n-1].at.After(t) {
					gap = max(gap, a[n-1].at.Sub(t))
					break
				}
				if time.Now().After(deadline) {
					return 0, fmt.Errorf("sender %d got no acknowledgement within 60 s", s)
				}
				time.Sleep(10 * time.Millisecond)
			}
		}
		return gap, nil
	}
	fail := func(err error) error {
		stop.Store(true)
		wg.Wait()
		return err
	}
	for cy := 0; cy < cycles; cy++ {
		quiet := time.Now()
		time.Sleep(1500 * time.Millisecond)
		l, err := c.leader()
		if err != nil {
			return fail(err)
		}
		kind := kinds[cy%len(kinds)]
		victim := l
		if strings.HasPrefix(kind, "follower_") {
			victim = (l + 1 + cy/len(kinds)%2) % 3
		}
		counts[kind]++
		t := time.Now()
		var gap time.Duration
		switch {
		case strings.HasSuffix(kind, "_kill"):
			c.kill(victim)
			if gap, err = writesBack(t); err == nil {
				if err = c.start(victim); err == nil {
					err = c.caughtUp(victim)
				}
			}
		case strings.HasSuffix(kind, "_partition"):
			c.nw.isolate(victim)
			gap, err = writesBack(t)
			time.Sleep(time.Until(t.Add(opts.partition)))
			c.nw.heal()
			if err == nil {
				err = c.caughtUp(victim)
			}
		case strings.HasSuffix(kind, "_slow_disk"):
			before := float64(acksSince(quiet, t)) / t.Sub(quiet).Seconds()
			c.nodes[victim].disk.set(opts.slowDelay)
			gap, err = writesBack(t)
			time.Sleep(time.Until(t.Add(opts.slowFor)))
			c.nodes[victim].disk.set(0)
			if during := float64(acksSince(t, t.Add(opts.slowFor))) / opts.slowFor.Seconds(); before > 0 {
				slowRatios = append(slowRatios, during/before)
			}
		default:
			return fail(fmt.Errorf("unknown fault kind %q (known: %s)", kind, strings.Join(allKinds, ", ")))
		}
		if err != nil {
			return fail(fmt.Errorf("cycle %d (%s n%d): %w", cy, kind, victim+1, err))
		}
		gaps[kind] = append(gaps[kind], gap)
		fmt.Fprintf(os.Stderr, "cycle %d: %s n%d, writes back for every sender after %s\n", cy, kind, victim+1, gap.Round(time.Millisecond))
		if opts.verifyEach {
			for i := range c.nodes {
				d, err := c.verifyRunning(i)
				verifyTimes = append(verifyTimes, d)
				if err != nil {
					verifyFailures++
					fmt.Fprintf(os.Stderr, "cycle %d: %v\n", cy, err)
				}
			}
		}
	}
	time.Sleep(time.Second)
	stop.Store(true)
	wg.Wait()

	// Every node: the room's timeline, in order, must hold every
	// acknowledged event, and be the same everywhere.
	acked := map[string]bool{}
	total := 0
	for _, a := range acks {
		for _, x := range a {
			acked[x.id] = true
			total++
		}
	}
	var timelines [][]string
	for i, n := range c.nodes {
		var ids []string
		from := ""
		for {
			u := fmt.Sprintf("http://%s/_matrix/client/v3/rooms/%s/messages?dir=f&limit=1000&from=%s", n.listen, url.PathEscape(room.RoomID), url.QueryEscape(from))
			st, b := call(client, "GET", u, login.AccessToken, nil)
			var page struct {
				Chunk []struct {
					EventID string `json:"event_id"`
					Type    string `json:"type"`
				} `json:"chunk"`
				End string `json:"end"`
			}
			if st != 200 || json.Unmarshal(b, &page) != nil {
				return fmt.Errorf("/messages on n%d: %d %s", i+1, st, b)
			}
			for _, e := range page.Chunk {
				if e.Type == "m.room.message" {
					ids = append(ids, e.EventID)
				}
			}
			if page.End == "" || len(page.Chunk) == 0 {
				break
			}
			from = page.End
		}
		timelines = append(timelines, ids)
	}
	lost := 0
	seen := map[string]bool{}
	for _, id := range timelines[0] {
		seen[id] = true
	}
	for id := range acked {
		if !seen[id] {
			lost++
		}
	}
	sameOrder := true
	for i := 1; i < 3; i++ {
		if strings.Join(timelines[i], ",") != strings.Join(timelines[0], ",") {
			sameOrder = false
		}
	}
	verified := 0
	for i := range c.nodes {
		c.stop(i)
		if out, err := c.tool(i, "verify", "--config", c.nodes[i].cfg); err == nil && strings.Contains(out, "all projections match") {
			verified++
		} else {
			fmt.Fprintf(os.Stderr, "verify n%d: %v\n%s\n", i+1, err, out)
		}
	}
	pct := func(ds []time.Duration, p float64) float64 {
		if len(ds) == 0 {
			return 0
		}
		ds = append([]time.Duration(nil), ds...)
		sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
		return ds[min(len(ds)-1, int(p*float64(len(ds))))].Seconds()
	}
	perKind := map[string]any{}
	for k, ds := range gaps {
		perKind[k] = map[string]float64{"p50_s": pct(ds, 0.5), "p99_s": pct(ds, 0.99), "max_s": pct(ds, 1)}
	}
	// Failover: the leader went away (killed or cut off) until every
	// sender, wherever it was, wrote again.
	failovers := append(append([]time.Duration(nil), gaps["leader_kill"]...), gaps["leader_partition"]...)
	sort.Float64s(slowRatios)
	medianRatio := 0.0
	if len(slowRatios) > 0 {
		medianRatio = slowRatios[len(slowRatios)/2]
	}
	line, _ := json.Marshal(map[string]any{
		"bench": "faults", "cycles": cycles, "faults": counts, "senders": senders,
		"partition_s": opts.partition.Seconds(), "slow_disk_delay_ms": opts.slowDelay.Milliseconds(), "pause_ms": opts.pause.Milliseconds(),
		"acknowledged": total, "distinct_acknowledged": len(acked), "timeline": len(timelines[0]),
		"lost": lost, "same_order_on_every_node": sameOrder, "verify_passed": verified,
		"verify_each_cycle": opts.verifyEach, "verify_runs": len(verifyTimes), "verify_failures": verifyFailures,
		"verify_p50_s": pct(verifyTimes, 0.5), "verify_max_s": pct(verifyTimes, 1),
		"failover_p50_s": pct(failovers, 0.5), "failover_p99_s": pct(failovers, 0.99), "failover_max_s": pct(failovers, 1),
		"writes_back_per_kind": perKind, "slow_disk_write_rate_ratio_median": medianRatio,
		"answers_503": errs503.Load(),
	})
	fmt.Println(string(line))
	if lost > 0 || !sameOrder || verified != 3 || verifyFailures > 0 {
		return errors.New("the campaign found a failure (see the JSON line)")
	}
	return nil
}
