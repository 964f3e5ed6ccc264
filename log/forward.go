package log

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/http/httputil"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	"github.com/rs/zerolog"
)

// Write forwarding. Any node accepts any request: a follower sends each
// client write (POST, PUT, DELETE) to the leader as it came, and answers
// with the leader's answer, so every decision is made where the log is
// written. The requests travel over the raft port as HTTP/1.1, told from
// raft's own traffic by ALPN: only a holder of a cluster certificate can
// forward.
//
// Read-your-writes: the leader's answer names the log offset it had
// applied when it answered (HeaderOffset); the follower answers only once
// its own projections have applied that offset. A read on a follower first
// asks the leader for its offset (a read index, shared by the reads that
// arrive meanwhile) and waits for it, so a write on any node is seen by a
// later read on any other.

// forwardProto is the ALPN protocol of forwarded requests.
const forwardProto = "engram-forward/1"

// HeaderOffset carries, on a forwarded answer, the leader's applied log
// offset when it answered.
const HeaderOffset = "X-Engram-Offset"

// Headers between nodes only: the channel is mutual TLS with the cluster
// CA, so the leader believes them.
const (
	hdrListener   = "X-Engram-Forward-Listener" // which of the leader's handlers serves it
	hdrClientAddr = "X-Engram-Client-Addr"      // the client's address as the follower saw it
	hdrNotLeader  = "X-Engram-Not-Leader"       // "I am not the leader": nothing was done, retry elsewhere
	hdrAppendErr  = "X-Engram-Append-Error"     // kind of a forwarded Append's failure
)

const (
	pathReadIndex = "/_engram/forward/read-index"
	pathAppend    = "/_engram/forward/append"

	// leaderWait bounds how long a forwarded request waits for a leader
	// (an election, a leader's crash noticed by heartbeat timeout).
	leaderWait = 6 * time.Second
	// replayableBody: request bodies up to this size are buffered, so a
	// request can be sent again when the node it reached was no longer the
	// leader. Larger ones (media uploads) are streamed, once.
	replayableBody = 1 << 20
	// applyWait bounds the wait for this node's projections to apply a
	// forwarded write before answering anyway.
	applyWait = 10 * time.Second
	// readIndexWait bounds a read's wait for the leader's offset; without
	// an answer the read is served from what this node has.
	readIndexWait = 2 * time.Second
)

// Forwarding sends a follower's writes to the leader and serves the
// writes other nodes forward. It is a no-op on a single node.
type Forwarding struct {
	n     *Node
	wait  func(ctx context.Context, offset uint64) error
	log   zerolog.Logger
	trans *http.Transport
	ri    readIndex

	mu  sync.Mutex
	srv *http.Server

	// leaderless is when this node last lost its leader (unix ns), 0
	// while it has one or has not lost one since it started.
	leaderless atomic.Int64
}

// cutOffAfter: a node that has been without a leader this long is taken
// to be cut off from the others rather than in an election (one takes
// 0.5-2 s: a heartbeat timeout, then a vote), and answers a write at once
// that it cannot take it, so a client or load balancer tries another node
// instead of waiting out leaderWait.
const cutOffAfter = 2 * time.Second

// watchLeader keeps leaderless up to date from raft's leader changes.
func (f *Forwarding) watchLeader() {
	ch := make(chan raft.Observation, 64)
	obs := raft.NewObserver(ch, false, func(o *raft.Observation) bool {
		_, ok := o.Data.(raft.LeaderObservation)
		return ok
	})
	f.n.raft.RegisterObserver(obs)
	go func() {
		defer f.n.raft.DeregisterObserver(obs)
		for {
			select {
			case o := <-ch:
				if o.Data.(raft.LeaderObservation).LeaderAddr == "" {
					f.leaderless.Store(time.Now().UnixNano())
				} else {
					f.leaderless.Store(0)
				}
			case <-f.n.stop:
				return
			}
		}
	}()
}

// Forwarding returns the node's forwarding. wait blocks until what this
// node answers from (its projections) has applied the offset; nil waits
// for the log only.
func (n *Node) Forwarding(wait func(ctx context.Context, offset uint64) error) *Forwarding {
	if wait == nil {
		wait = func(ctx context.Context, off uint64) error { return n.waitOffset(ctx, off) }
	}
	f := &Forwarding{n: n, wait: wait, log: n.log.With().Str("subsystem", "forward").Logger()}
	if n.stream != nil && n.raft != nil {
		f.trans = n.forwardTransport()
		f.watchLeader()
	}
	f.ri.query = f.queryReadIndex
	n.fwdMu.Lock()
	n.fwd = f
	n.fwdMu.Unlock()
	return f
}

// waitOffset blocks until LastOffset() >= off.
func (n *Node) waitOffset(ctx context.Context, off uint64) error {
	for n.LastOffset() < off {
		if err := n.Wait(ctx, n.LastOffset()); err != nil {
			return err
		}
	}
	return nil
}

// forwardTransport dials peers' raft ports with the forwarding protocol.
// Connections are kept alive and reused per leader address.
func (n *Node) forwardTransport() *http.Transport {
	conf := n.stream.conf.Clone()
	conf.NextProtos = []string{forwardProto}
	return &http.Transport{
		DialTLSContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: 2 * time.Second}, Config: conf}
			c, err := d.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			if p := c.(*tls.Conn).ConnectionState().NegotiatedProtocol; p != forwardProto {
				c.Close()
				return nil, fmt.Errorf("log: the node at %s does not accept forwarded requests (ALPN %q; an older Engram?)", addr, p)
			}
			return c, nil
		},
		TLSNextProto:        map[string]func(string, *tls.Conn) http.RoundTripper{}, // HTTP/1.1 only
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     90 * time.Second,
	}
}

// Handler serves a request on this node: locally on the leader; on a
// follower, writes go to the leader and reads first catch up with the
// leader's offset. name names local among the handlers given to Serve on
// every node (the leader serves a forwarded request with its own).
func (f *Forwarding) Handler(name string, local http.Handler) http.Handler {
	if f.trans == nil {
		return local
	}
	proxy := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.Out.URL.Scheme = "https"
			pr.Out.URL.Host = "leader" // the leaderTripper puts the leader's address here
			pr.Out.Host = pr.In.Host
			// Rewrite drops these; a load balancer in front of us set them.
			for _, h := range []string{"X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto"} {
				if v := pr.In.Header.Values(h); len(v) > 0 {
					pr.Out.Header[h] = v
				}
			}
			pr.Out.Header.Set(hdrListener, name)
			pr.Out.Header.Set(hdrClientAddr, pr.In.RemoteAddr)
		},
		Transport:      leaderTripper{f},
		FlushInterval:  -1,
		ModifyResponse: f.awaitAnswer,
		ErrorHandler:   f.answerError,
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if f.n.IsLeader() {
			local.ServeHTTP(w, r)
			return
		}
		if !forwarded(r) {
			f.catchUp(r.Context())
			local.ServeHTTP(w, r)
			return
		}
		if err := bufferBody(r); err != nil {
			writeUnavailable(w, http.StatusBadRequest, "M_UNKNOWN", "reading the request body: "+err.Error(), false)
			return
		}
		proxy.ServeHTTP(w, r)
	})
}

// forwarded says whether a request goes to the leader: every write, and
// the shared-secret registration nonce (kept in the memory of the node
// that checks it).
func forwarded(r *http.Request) bool {
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
		return r.URL.Path == "/_synapse/admin/v1/register"
	}
	return true
}

// bufferBody reads a small body into memory so the request can be sent
// again (GetBody); a large one stays streamed.
func bufferBody(r *http.Request) error {
	if r.Body == nil || r.Body == http.NoBody {
		r.GetBody = func() (io.ReadCloser, error) { return http.NoBody, nil }
		return nil
	}
	if r.ContentLength > replayableBody {
		return nil
	}
	b, err := io.ReadAll(io.LimitReader(r.Body, replayableBody+1))
	if err != nil {
		return err
	}
	if len(b) > replayableBody {
		r.Body = struct {
			io.Reader
			io.Closer
		}{io.MultiReader(bytes.NewReader(b), r.Body), r.Body}
		return nil
	}
	r.Body.Close()
	r.Body = io.NopCloser(bytes.NewReader(b))
	r.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }
	r.ContentLength = int64(len(b))
	return nil
}

// errNoLeader: no leader within leaderWait; nothing was done.
var errNoLeader = errors.New("no cluster leader")

// lostError: the connection to the leader failed after the request was
// sent; it may or may not have taken effect.
type lostError struct{ err error }

func (e *lostError) Error() string { return e.err.Error() }

// leaderTripper sends a request to the current leader, again to the next
// one while nothing was done (no leader yet, a refused connection, a node
// that answers it is no longer leader).
type leaderTripper struct{ f *Forwarding }

func (t leaderTripper) RoundTrip(req *http.Request) (*http.Response, error) {
	deadline := time.Now().Add(leaderWait)
	for attempt := 0; ; attempt++ {
		addr, err := t.f.awaitLeader(req.Context(), deadline)
		if err != nil {
			return nil, err
		}
		out := req.Clone(req.Context())
		out.URL.Host = addr
		if attempt > 0 {
			if req.GetBody == nil {
				return nil, errNoLeader // the body is spent: the client sends it again
			}
			if out.Body, err = req.GetBody(); err != nil {
				return nil, err
			}
		}
		var wrote atomic.Bool
		out = out.WithContext(httptrace.WithClientTrace(out.Context(), &httptrace.ClientTrace{WroteHeaders: func() { wrote.Store(true) }}))
		resp, err := t.f.sendToLeader(out, addr)
		switch {
		case err != nil && wrote.Load():
			return nil, &lostError{err}
		case err != nil:
			t.f.log.Debug().Err(err).Str("leader", addr).Msg("forwarding: the leader did not take the connection; waiting for the next")
		case resp.StatusCode == http.StatusMisdirectedRequest && resp.Header.Get(hdrNotLeader) != "":
			resp.Body.Close()
		default:
			return resp, nil
		}
		if req.Context().Err() != nil {
			return nil, req.Context().Err()
		}
		if time.Now().After(deadline) {
			return nil, errNoLeader
		}
		// A heartbeat timeout or an election: let raft learn of the change.
		time.Sleep(min(time.Duration(attempt+1)*20*time.Millisecond, 200*time.Millisecond))
	}
}

// errLeaderMoved: while a request was on its way to the leader, this
// node's raft stopped following that leader (an election, or this node
// cut off from it).
var errLeaderMoved = errors.New("this node stopped following the leader the request went to")

// leaderPoll is how often a forwarded request in flight checks that its
// node still follows the leader it went to.
const leaderPoll = 50 * time.Millisecond

// sendToLeader sends req to the leader at addr, and gives up once this
// node no longer follows addr before the answer's headers arrive. A
// leader behind a partition never answers and TCP would not notice for
// minutes, while raft notices within a heartbeat timeout: the client is
// then told to retry (the request may or may not have taken effect)
// instead of waiting out its own timeout.
func (f *Forwarding) sendToLeader(req *http.Request, addr string) (*http.Response, error) {
	ctx, cancel := context.WithCancelCause(req.Context())
	answered := make(chan struct{})
	go func() {
		t := time.NewTicker(leaderPoll)
		defer t.Stop()
		for {
			select {
			case <-answered:
				return
			case <-ctx.Done():
				return
			case <-t.C:
				if a, _ := f.n.raft.LeaderWithID(); string(a) != addr {
					cancel(errLeaderMoved)
					return
				}
			}
		}
	}()
	resp, err := f.trans.RoundTrip(req.WithContext(ctx))
	close(answered)
	if err != nil {
		if cause := context.Cause(ctx); errors.Is(cause, errLeaderMoved) && req.Context().Err() == nil {
			err = fmt.Errorf("%w (%s): %v", errLeaderMoved, addr, err)
		}
		cancel(nil)
		return nil, err
	}
	// The body is read after this returns: cancel once it is closed.
	resp.Body = cancelOnClose{resp.Body, func() { cancel(nil) }}
	return resp, nil
}

type cancelOnClose struct {
	io.ReadCloser
	cancel func()
}

func (c cancelOnClose) Close() error {
	err := c.ReadCloser.Close()
	c.cancel()
	return err
}

// awaitLeader is the leader's raft address, waiting for an election.
func (f *Forwarding) awaitLeader(ctx context.Context, deadline time.Time) (string, error) {
	for {
		if addr, _ := f.n.raft.LeaderWithID(); addr != "" {
			return string(addr), nil
		}
		if time.Now().After(deadline) {
			return "", errNoLeader
		}
		if since := f.leaderless.Load(); since != 0 && time.Since(time.Unix(0, since)) > cutOffAfter {
			return "", errNoLeader
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// awaitAnswer holds the leader's answer until this node has applied what
// the leader had when it answered (read-your-writes on this node).
func (f *Forwarding) awaitAnswer(resp *http.Response) error {
	off, err := strconv.ParseUint(resp.Header.Get(HeaderOffset), 10, 64)
	resp.Header.Del(HeaderOffset)
	if err != nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(resp.Request.Context(), applyWait)
	defer cancel()
	// A node cut off from the leader right after it answered would wait
	// out applyWait for entries that cannot reach it: the write is done,
	// so say so at once.
	ctx, stopWatch := f.untilLeaderless(ctx)
	defer stopWatch()
	if err := f.wait(ctx, off); err != nil {
		if resp.Request.Context().Err() != nil {
			return err
		}
		f.log.Warn().Err(err).Uint64("offset", off).Uint64("applied", f.n.LastOffset()).
			Msg("forwarding: answering before this node applied the leader's write (is it far behind or cut off from the leader? see its log)")
	}
	return nil
}

// untilLeaderless is ctx, cancelled once this node follows no leader.
func (f *Forwarding) untilLeaderless(ctx context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(ctx)
	go func() {
		t := time.NewTicker(leaderPoll)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if a, _ := f.n.raft.LeaderWithID(); a == "" {
					cancel()
					return
				}
			}
		}
	}()
	return ctx, cancel
}

func (f *Forwarding) answerError(w http.ResponseWriter, r *http.Request, err error) {
	var lost *lostError
	switch {
	case r.Context().Err() != nil:
		return // the client is gone
	case errors.As(err, &lost):
		f.log.Warn().Err(lost.err).Str("path", r.URL.Path).Msg("forwarding: lost the leader while it handled a request")
		writeUnavailable(w, http.StatusServiceUnavailable, "M_UNKNOWN",
			"The cluster leader went away while handling this request; it may or may not have taken effect. Retry it (a retried send with the same transaction ID is not duplicated)", true)
	case errors.Is(err, errNoLeader):
		writeUnavailable(w, http.StatusServiceUnavailable, "M_UNKNOWN", "The cluster is electing a leader and cannot take writes for a moment; nothing was done: retry shortly", true)
	default:
		f.log.Warn().Err(err).Str("path", r.URL.Path).Msg("forwarding a request to the leader failed")
		writeUnavailable(w, http.StatusServiceUnavailable, "M_UNKNOWN", "This node could not reach the cluster leader; nothing was done: retry shortly", true)
	}
}

// writeUnavailable writes a Matrix error.
func writeUnavailable(w http.ResponseWriter, status int, errcode, msg string, retry bool) {
	w.Header().Set("Content-Type", "application/json")
	if retry {
		w.Header().Set("Retry-After", "1")
	}
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]string{"errcode": errcode, "error": msg})
}

// catchUp waits until this node has applied what the leader had applied
// when the read arrived. Without a leader the read is served from what
// this node has (reads work during an election).
func (f *Forwarding) catchUp(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, readIndexWait)
	defer cancel()
	off, err := f.ri.get(ctx)
	if err == nil {
		err = f.wait(ctx, off)
	}
	if err != nil && ctx.Err() == nil {
		f.log.Debug().Err(err).Msg("forwarding: serving a read without the leader's offset")
	}
}

// readIndex shares one question to the leader among the reads that
// arrive while the previous one is on its way: each read waits for a
// question asked after it arrived.
type readIndex struct {
	query func(context.Context) (uint64, error)

	mu      sync.Mutex
	next    *riCall
	running bool
}

type riCall struct {
	done chan struct{}
	off  uint64
	err  error
}

func (ri *readIndex) get(ctx context.Context) (uint64, error) {
	ri.mu.Lock()
	c := ri.next
	if c == nil {
		c = &riCall{done: make(chan struct{})}
		ri.next = c
		if !ri.running {
			ri.running = true
			go ri.run()
		}
	}
	ri.mu.Unlock()
	select {
	case <-c.done:
		return c.off, c.err
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

func (ri *readIndex) run() {
	for {
		ri.mu.Lock()
		c := ri.next
		ri.next = nil
		if c == nil {
			ri.running = false
			ri.mu.Unlock()
			return
		}
		ri.mu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), readIndexWait)
		c.off, c.err = ri.query(ctx)
		cancel()
		close(c.done)
	}
}

// queryReadIndex asks the leader for its applied offset; the leader
// confirms it still leads first.
func (f *Forwarding) queryReadIndex(ctx context.Context) (uint64, error) {
	if f.n.IsLeader() {
		return f.n.LastOffset(), nil
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://leader"+pathReadIndex, nil)
	if err != nil {
		return 0, err
	}
	req.GetBody = func() (io.ReadCloser, error) { return http.NoBody, nil }
	resp, err := leaderTripper{f}.RoundTrip(req)
	if err != nil {
		return 0, err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("read index: %s", resp.Status)
	}
	return strconv.ParseUint(resp.Header.Get(HeaderOffset), 10, 64)
}

// forwardAppend is Append on a follower: the leader appends the
// proposals, and the answer comes once this node has them too (Append's
// promise that Read sees them).
func (f *Forwarding) forwardAppend(ctx context.Context, props []Proposal) ([]uint64, error) {
	var body []byte
	for _, p := range props {
		body = binary.BigEndian.AppendUint16(body, uint16(p.Kind))
		body = binary.AppendUvarint(body, uint64(len(p.Payload)))
		body = append(body, p.Payload...)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "https://leader"+pathAppend, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
	resp, err := leaderTripper{f}.RoundTrip(req)
	var lost *lostError
	switch {
	case errors.Is(err, errNoLeader):
		return nil, ErrNotLeader
	case errors.As(err, &lost):
		return nil, fmt.Errorf("%w (the leader went away while appending; the entries may or may not be in the log): %v", ErrNotLeader, lost.err)
	case err != nil:
		return nil, err
	}
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		switch resp.Header.Get(hdrAppendErr) {
		case "not_leader":
			return nil, fmt.Errorf("%w (the leader: %s)", ErrNotLeader, msg)
		case "disk_full":
			return nil, fmt.Errorf("%w (on the leader: %s)", ErrDiskFull, msg)
		}
		return nil, fmt.Errorf("log: the leader refused a forwarded append: %s: %s", resp.Status, msg)
	}
	first, err := strconv.ParseUint(string(msg), 10, 64)
	if err != nil {
		return nil, fmt.Errorf("log: the leader's answer to a forwarded append: %q", msg)
	}
	offs := make([]uint64, len(props))
	for i := range offs {
		offs[i] = first + uint64(i)
	}
	if err := f.n.waitOffset(ctx, offs[len(offs)-1]); err != nil {
		return nil, err
	}
	return offs, nil
}

// Serve answers what other nodes forward, with handlers by the names
// given to Handler, until Close. It returns at once on a single node.
func (f *Forwarding) Serve(handlers map[string]http.Handler) {
	if f.n.stream == nil {
		return
	}
	srv := &http.Server{
		Handler:           f.leaderHandler(handlers),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
	}
	f.mu.Lock()
	f.srv = srv
	f.mu.Unlock()
	go func() {
		if err := srv.Serve(&forwardListener{s: f.n.stream, closed: make(chan struct{})}); err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
			f.log.Error().Err(err).Msg("forwarding: serving forwarded requests stopped")
		}
	}()
}

// Close stops serving forwarded requests, letting those in progress end
// within ctx.
func (f *Forwarding) Close(ctx context.Context) error {
	f.mu.Lock()
	srv := f.srv
	f.mu.Unlock()
	if srv == nil {
		return nil
	}
	err := srv.Shutdown(ctx)
	if err != nil {
		srv.Close()
	}
	return err
}

func (f *Forwarding) leaderHandler(handlers map[string]http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !f.n.IsLeader() {
			// Nothing is done: the follower sends it to the new leader.
			_, id := f.n.raft.LeaderWithID()
			w.Header().Set(hdrNotLeader, f.n.cfg.NodeID)
			http.Error(w, fmt.Sprintf("%s is not the leader (the leader is %q)", f.n.cfg.NodeID, id), http.StatusMisdirectedRequest)
			return
		}
		switch r.URL.Path {
		case pathReadIndex:
			if err := f.n.raft.VerifyLeader().Error(); err != nil {
				w.Header().Set(hdrNotLeader, f.n.cfg.NodeID)
				http.Error(w, err.Error(), http.StatusMisdirectedRequest)
				return
			}
			w.Header().Set(HeaderOffset, strconv.FormatUint(f.n.LastOffset(), 10))
			return
		case pathAppend:
			f.serveAppend(w, r)
			return
		}
		h := handlers[r.Header.Get(hdrListener)]
		if h == nil {
			http.Error(w, "unknown forwarded listener "+strconv.Quote(r.Header.Get(hdrListener)), http.StatusNotFound)
			return
		}
		if a := r.Header.Get(hdrClientAddr); a != "" {
			r.RemoteAddr = a
		}
		r.Header.Del(hdrClientAddr)
		r.Header.Del(hdrListener)
		ow := &offsetWriter{ResponseWriter: w, n: f.n}
		h.ServeHTTP(ow, r)
		if !ow.wrote {
			ow.WriteHeader(http.StatusOK)
		}
	})
}

func (f *Forwarding) serveAppend(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, maxCmdBytes+1))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	var props []Proposal
	for len(body) > 0 {
		if len(body) < 2 {
			http.Error(w, "truncated proposal", http.StatusBadRequest)
			return
		}
		kind := Kind(binary.BigEndian.Uint16(body))
		n, k := binary.Uvarint(body[2:])
		if k <= 0 || uint64(len(body)-2-k) < n {
			http.Error(w, "truncated proposal", http.StatusBadRequest)
			return
		}
		props = append(props, Proposal{Kind: kind, Payload: body[2+k : 2+k+int(n)]})
		body = body[2+k+int(n):]
	}
	offs, err := f.n.Append(r.Context(), props...)
	if err != nil {
		kind := "other"
		switch {
		case errors.Is(err, ErrNotLeader):
			kind = "not_leader"
		case errors.Is(err, ErrDiskFull):
			kind = "disk_full"
		}
		w.Header().Set(hdrAppendErr, kind)
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	if len(offs) == 0 {
		http.Error(w, "no proposals", http.StatusBadRequest)
		return
	}
	io.WriteString(w, strconv.FormatUint(offs[0], 10))
}

// offsetWriter stamps the leader's applied offset on an answer as it is
// written: the handler has appended its writes by then (decide, record,
// answer).
type offsetWriter struct {
	http.ResponseWriter
	n     *Node
	wrote bool
}

func (w *offsetWriter) WriteHeader(code int) {
	if !w.wrote {
		w.wrote = true
		w.Header().Set(HeaderOffset, strconv.FormatUint(w.n.LastOffset(), 10))
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *offsetWriter) Write(p []byte) (int, error) {
	if !w.wrote {
		w.WriteHeader(http.StatusOK)
	}
	return w.ResponseWriter.Write(p)
}

func (w *offsetWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (w *offsetWriter) Flush() {
	if !w.wrote {
		w.WriteHeader(http.StatusOK)
	}
	if fl, ok := w.ResponseWriter.(http.Flusher); ok {
		fl.Flush()
	}
}

// forwardListener is the forwarded connections accepted on the raft port.
// Closing it stops Accept; the port stays open for raft.
type forwardListener struct {
	s      *tlsStream
	closed chan struct{}
	once   sync.Once
}

func (l *forwardListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.s.fwd:
		// Hidden from net/http as a *tls.Conn: it would close a connection
		// whose ALPN protocol is neither HTTP/1 nor in TLSNextProto. The
		// handshake (and the peer's certificate check) is already done.
		return plainConn{c}, nil
	case <-l.s.closed:
		return nil, net.ErrClosed
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *forwardListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *forwardListener) Addr() net.Addr { return l.s.adv }

type plainConn struct{ net.Conn }
