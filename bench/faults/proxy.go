package main

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
)

// network is the test-controlled network between the nodes: every node's
// raft port (raft and forwarded requests, one mutual-TLS channel) is
// reached only through a TCP proxy run by this process, and every node
// advertises its proxy's address. A partition cuts the links between two
// sides both ways: bytes already in flight on a cut link are held (a black
// hole, as on a real network: the sender gets no error, only silence), new
// connections across the cut are accepted and hang, and when the partition
// heals the cut links are closed, as their peers' TCP timeouts would have.
//
// Traffic is TLS, so the proxy cannot read who connects; it asks the
// kernel instead: the connecting socket's inode (from /proc/net/tcp) is
// found among the file descriptors of each node's process.
type network struct {
	mu     sync.Mutex
	side   [3]int        // nodes on different sides cannot reach each other
	healed chan struct{} // closed when the current partition heals
	links  map[*link]struct{}
	pid    func(i int) int // a node's process, 0 when it is down
}

type link struct {
	from, to int // node indexes; from -1 when the source is not a node
	a, b     net.Conn
	cut      chan struct{} // non-nil once the link is cut: its partition's healed
}

func newNetwork(pid func(int) int) *network {
	return &network{links: map[*link]struct{}{}, pid: pid, healed: make(chan struct{})}
}

// isolate cuts node i off from the other two.
func (nw *network) isolate(i int) {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	nw.side = [3]int{}
	nw.side[i] = 1
	nw.healed = make(chan struct{})
	for l := range nw.links {
		nw.markLocked(l)
	}
}

// heal joins the sides again and closes every link the partition cut.
func (nw *network) heal() {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	nw.side = [3]int{}
	close(nw.healed)
	for l := range nw.links {
		if l.cut != nil {
			l.close()
			delete(nw.links, l)
		}
	}
}

func (nw *network) markLocked(l *link) {
	if l.cut == nil && l.from >= 0 && nw.side[l.from] != nw.side[l.to] {
		l.cut = nw.healed
	}
}

func (l *link) close() {
	l.a.Close()
	if l.b != nil {
		l.b.Close()
	}
}

// proxy forwards connections for node to to its real raft address.
type proxy struct {
	nw     *network
	to     int
	ln     net.Listener
	target string
}

func newProxy(nw *network, to int, target string) (*proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &proxy{nw: nw, to: to, ln: ln, target: target}
	go p.serve()
	return p, nil
}

func (p *proxy) addr() string { return p.ln.Addr().String() }

func (p *proxy) serve() {
	for {
		a, err := p.ln.Accept()
		if err != nil {
			return
		}
		go p.handle(a)
	}
}

func (p *proxy) handle(a net.Conn) {
	from := p.nw.sourceNode(a.RemoteAddr().(*net.TCPAddr).Port, p.ln.Addr().(*net.TCPAddr).Port)
	l := &link{from: from, to: p.to, a: a}
	p.nw.mu.Lock()
	p.nw.links[l] = struct{}{}
	p.nw.markLocked(l)
	cut := l.cut
	p.nw.mu.Unlock()
	if cut != nil {
		<-cut // hangs until the heal closes it
		return
	}
	b, err := net.Dial("tcp", p.target)
	p.nw.mu.Lock()
	if err != nil || l.cut != nil {
		delete(p.nw.links, l)
		p.nw.mu.Unlock()
		a.Close()
		if b != nil {
			b.Close()
		}
		return
	}
	l.b = b
	p.nw.mu.Unlock()
	done := make(chan struct{}, 2)
	go p.pipe(l, b, a, done)
	go p.pipe(l, a, b, done)
	<-done
	p.nw.mu.Lock()
	cut = l.cut
	p.nw.mu.Unlock()
	if cut != nil {
		return // the heal closes it
	}
	l.close()
	<-done
	p.nw.mu.Lock()
	delete(p.nw.links, l)
	p.nw.mu.Unlock()
}

// pipe copies src to dst until either fails; once the link is cut, what
// it reads is dropped.
func (p *proxy) pipe(l *link, dst, src net.Conn, done chan<- struct{}) {
	defer func() { done <- struct{}{} }()
	buf := make([]byte, 64<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.nw.mu.Lock()
			cut := l.cut
			p.nw.mu.Unlock()
			if cut != nil {
				<-cut
				return
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// sourceNode is the node whose process holds the socket connected from
// 127.0.0.1:port to the proxy's port, or -1.
func (nw *network) sourceNode(port, proxyPort int) int {
	inode := socketInode(port, proxyPort)
	if inode == "" {
		return -1
	}
	want := "socket:[" + inode + "]"
	for i := 0; i < 3; i++ {
		pid := nw.pid(i)
		if pid == 0 {
			continue
		}
		fdDir := fmt.Sprintf("/proc/%d/fd", pid)
		ents, err := os.ReadDir(fdDir)
		if err != nil {
			continue
		}
		for _, e := range ents {
			if t, err := os.Readlink(filepath.Join(fdDir, e.Name())); err == nil && t == want {
				return i
			}
		}
	}
	return -1
}

// socketInode finds, in /proc/net/tcp, the IPv4 socket whose local port is
// port and whose remote port is remotePort.
func socketInode(port, remotePort int) string {
	f, err := os.Open("/proc/net/tcp")
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fl := strings.Fields(sc.Text())
		if len(fl) < 10 || !strings.Contains(fl[1], ":") {
			continue
		}
		if hexPort(fl[1]) == port && hexPort(fl[2]) == remotePort {
			return fl[9]
		}
	}
	return ""
}

func hexPort(addr string) int {
	i := strings.LastIndexByte(addr, ':')
	v, err := strconv.ParseUint(addr[i+1:], 16, 32)
	if err != nil {
		return -1
	}
	return int(v)
}
