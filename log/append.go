package log

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/raft"
)

// Group commit limits. A raft command holds at most this many entries or
// bytes; at most maxInflightCmds commands are in raft at once, so while one
// is being made durable the next ones fill up with waiting appends.
const (
	maxCmdEntries   = 4096
	maxCmdBytes     = 4 << 20
	maxInflightCmds = 4
	// Payloads shorter than this are stored raw and left to Pebble's zstd
	// block compression, which compresses neighbouring entries together
	// and so does far better on typical events (a few hundred bytes of
	// JSON) than compressing each alone. Bigger payloads are compressed
	// on their own, once, by the proposer: that also shrinks the raft log
	// and what travels to followers.
	compressMin = 2048
	// applyTimeout bounds how long raft may take to accept a command into
	// its queue (not to commit it).
	applyTimeout = 10 * time.Second
)

type appendReq struct {
	body []byte // encoded entries, ready to splice into a command
	n    int
	resp chan appendResp
}

type appendResp struct {
	first uint64
	err   error
}

type inflightCmd struct {
	f    raft.ApplyFuture
	reqs []*appendReq
}

// Append proposes the entries as one unit and returns their offsets once
// they are committed, durable and readable.
func (n *Node) Append(ctx context.Context, props ...Proposal) ([]uint64, error) {
	if len(props) == 0 {
		return nil, nil
	}
	start := time.Now()
	if n.raft == nil {
		return nil, ErrOffline
	}
	if err := n.guard.failed(); err != nil {
		return nil, err
	}
	if !n.IsLeader() {
		return n.forward(ctx, props)
	}
	if err := n.space.writable(false); err != nil {
		return nil, err
	}
	size := 0
	for _, p := range props {
		size += 4 + binary.MaxVarintLen32 + len(p.Payload)
	}
	body := make([]byte, 0, size)
	for _, p := range props {
		flags, payload := byte(0), p.Payload
		if len(payload) >= compressMin {
			if c := n.enc.EncodeAll(payload, nil); len(c) < len(payload) {
				flags, payload = flagZstd, c
			}
		}
		body = appendCmdEntry(body, flags, p.Kind, payload)
	}
	req := &appendReq{body: body, n: len(props), resp: make(chan appendResp, 1)}

	n.closeMu.RLock()
	if n.closed {
		n.closeMu.RUnlock()
		return nil, ErrClosed
	}
	select {
	case n.reqs <- req:
	case <-ctx.Done():
		n.closeMu.RUnlock()
		return nil, ctx.Err()
	}
	n.closeMu.RUnlock()

	var r appendResp
	select {
	case r = <-req.resp:
	case <-ctx.Done():
		// Not acknowledged; the entries may still commit.
		return nil, ctx.Err()
	}
	if r.err != nil {
		return nil, r.err
	}
	offs := make([]uint64, len(props))
	for i := range offs {
		offs[i] = r.first + uint64(i)
	}
	if n.met != nil {
		n.met.appendSeconds.Observe(time.Since(start).Seconds())
	}
	return offs, nil
}

// forward sends a follower's proposals to the leader (Forwarding); without
// forwarding, a follower refuses writes.
func (n *Node) forward(ctx context.Context, props []Proposal) ([]uint64, error) {
	n.closeMu.RLock()
	closed := n.closed
	n.closeMu.RUnlock()
	if closed {
		return nil, ErrClosed
	}
	if err := n.space.writable(false); err != nil {
		// A leader whose disk is at the floor steps down (its raft log
		// store refuses commands); the disk is the news, not the election.
		return nil, err
	}
	n.fwdMu.Lock()
	f := n.fwd
	n.fwdMu.Unlock()
	if f == nil || f.trans == nil {
		return nil, ErrNotLeader
	}
	return f.forwardAppend(ctx, props)
}

// batcher packs waiting appends into raft commands.
func (n *Node) batcher() {
	defer n.done.Done()
	defer close(n.inflight)
	sem := n.release
	var lastStamp int64
	for {
		// Take a slot first: while all slots are busy, appends pile up in
		// n.reqs and leave together in the next command.
		select {
		case sem <- struct{}{}:
		case <-n.stop:
			n.failQueued()
			return
		}
		var first *appendReq
		select {
		case first = <-n.reqs:
		case <-n.stop:
			n.failQueued()
			return
		}
		batch := []*appendReq{first}
		count, size := first.n, len(first.body)
	fill:
		for count < maxCmdEntries && size < maxCmdBytes {
			select {
			case r := <-n.reqs:
				batch = append(batch, r)
				count += r.n
				size += len(r.body)
			default:
				break fill
			}
		}
		// The leader stamps the time before proposing (apply must not read
		// a clock), here in the one batcher goroutine so Entry.Time never
		// goes backwards along the log even if the wall clock does.
		ms := n.cfg.Now().UnixMilli()
		if last := n.fsm.lastTime.Load(); ms < last {
			ms = last
		}
		if ms < lastStamp {
			ms = lastStamp
		}
		lastStamp = ms
		if err := n.space.writable(true); err != nil {
			for _, r := range batch {
				r.resp <- appendResp{err: err}
			}
			<-sem
			continue
		}
		cmd := make([]byte, 0, 9+binary.MaxVarintLen64+size)
		cmd = append(cmd, cmdVersion)
		cmd = binary.BigEndian.AppendUint64(cmd, uint64(ms))
		cmd = binary.AppendUvarint(cmd, uint64(count))
		for _, r := range batch {
			cmd = append(cmd, r.body...)
		}
		if n.met != nil {
			n.met.entriesPerBatch.Observe(float64(count))
		}
		n.inflight <- inflightCmd{f: n.raft.Apply(cmd, applyTimeout), reqs: batch}
	}
}

func (n *Node) failQueued() {
	for {
		select {
		case r := <-n.reqs:
			r.resp <- appendResp{err: ErrClosed}
		default:
			return
		}
	}
}

// completer collects raft's verdicts in commit order and hands them to
// the acker.
func (n *Node) completer() {
	defer n.done.Done()
	defer close(n.acks)
	for c := range n.inflight {
		err := c.f.Error()
		var res applyResult
		if err == nil {
			var ok bool
			if res, ok = c.f.Response().(applyResult); !ok {
				err = fmt.Errorf("log: raft returned %T for a command", c.f.Response())
			} else {
				err = res.err
			}
		}
		<-n.release
		n.acks <- ackBatch{reqs: c.reqs, first: res.first, err: mapRaftErr(err)}
	}
}

// ackBatch is one committed (or failed) raft command's appends.
type ackBatch struct {
	reqs  []*appendReq
	first uint64
	err   error
}

// acker records the newest acknowledged offset in the state file, synced,
// before answering the appends: it is what start compares the log with
// to find acknowledged entries that a damaged WAL lost. Every command that
// committed meanwhile shares one sync.
func (n *Node) acker() {
	defer n.done.Done()
	for b := range n.acks {
		batch := []ackBatch{b}
	drain:
		for {
			select {
			case more, ok := <-n.acks:
				if !ok {
					break drain
				}
				batch = append(batch, more)
			default:
				break drain
			}
		}
		var last uint64
		for _, b := range batch {
			if b.err == nil {
				for _, r := range b.reqs {
					last = max(last, b.first+uint64(r.n)-1)
				}
			}
		}
		var recErr error
		if last > 0 {
			if err := n.state.set(keyAcked, u64Bytes(last)); err != nil {
				recErr = fmt.Errorf("log: the entries committed, but recording them as acknowledged failed, so they are not acknowledged (a retry may add them twice): %w", err)
			}
		}
		for _, b := range batch {
			err := b.err
			if err == nil {
				err = recErr
			}
			off := b.first
			for _, r := range b.reqs {
				r.resp <- appendResp{first: off, err: err}
				off += uint64(r.n)
			}
		}
	}
}

// checkAcknowledged compares the log with the offset this node last
// acknowledged. Fewer entries than that means a damaged or truncated WAL
// lost acknowledged writes (Pebble drops a damaged WAL tail silently). A
// single node refuses to start unless the operator accepts the loss; a
// cluster node gets the entries back from its peers.
func (n *Node) checkAcknowledged(single bool) error {
	acked, last := n.state.getU64(keyAcked), n.LastOffset()
	if acked <= last {
		return nil
	}
	if !single {
		// A cluster node writes its event log without syncing: its raft
		// log is the durable copy, and raft applies what the event log
		// lost again once it learns the commit index from the leader,
		// after Open. So a short event log here is expected after a
		// crash; it is news only if it stays short.
		n.done.Add(1)
		go n.awaitRefill(acked, last)
		return nil
	}
	if !n.cfg.AcceptDataLoss {
		return &LostError{From: last + 1, To: acked, Dir: n.cfg.Dir}
	}
	n.log.Error().Uint64("missing_from", last+1).Uint64("missing_to", acked).
		Msg("log: acknowledged entries are missing and the operator accepted their loss; later entries take their offsets")
	return n.state.set(keyAcked, u64Bytes(last))
}

// refillPatience is how long a cluster node waits, after opening short of
// what it acknowledged, for raft to apply those entries again before it
// warns.
const refillPatience = 2 * time.Minute

// awaitRefill waits until the entries up to acked, acknowledged before a
// crash and missing from the event log at Open, are applied again, and
// says what happened: an info line once they are back, a warning if they
// are not back within refillPatience.
func (n *Node) awaitRefill(acked, last uint64) {
	defer n.done.Done()
	ctx, cancel := context.WithTimeout(context.Background(), refillPatience)
	defer cancel()
	err := n.Wait(ctx, acked-1)
	switch {
	case err == nil:
		n.log.Info().Uint64("from", last+1).Uint64("to", acked).
			Msg("log: the acknowledged entries the event log lost at the last stop (its unsynced tail) were applied again from the raft log")
	case errors.Is(err, context.DeadlineExceeded):
		n.log.Warn().Uint64("acknowledged", acked).Uint64("last_offset", n.LastOffset()).
			Uint64("missing_from", n.LastOffset()+1).Uint64("missing_to", acked).Dur("waited", refillPatience).
			Msg("log: this node acknowledged entries its log still does not hold; they come back from the cluster's peers once this node reaches the leader: check that it does (engram cluster status), and if its raft log was damaged, wipe its data directory and let it resync")
	}
}

// ErrLostAcknowledged: entries this node acknowledged are missing from its
// log. Errors carrying it are *LostError.
var ErrLostAcknowledged = errors.New("log: acknowledged entries are missing")

// LostError names the missing acknowledged offsets.
type LostError struct {
	From, To uint64
	Dir      string
}

func (e *LostError) Error() string {
	return fmt.Sprintf("log: entries %d..%d (%d entries) were acknowledged to clients but are missing from the log in %s: its write-ahead log was damaged or truncated. "+
		"Restore the data directory from a backup, or start with --accept-data-loss to serve without them (later writes then reuse their offsets)",
		e.From, e.To, e.To-e.From+1, e.Dir)
}

func (e *LostError) Unwrap() error { return ErrLostAcknowledged }

func mapRaftErr(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, raft.ErrNotLeader):
		return ErrNotLeader
	case errors.Is(err, raft.ErrLeadershipLost), errors.Is(err, raft.ErrLeadershipTransferInProgress):
		return fmt.Errorf("%w (leadership lost while committing; the entries may or may not be in the log)", ErrNotLeader)
	case errors.Is(err, raft.ErrRaftShutdown):
		return ErrClosed
	default:
		return fmt.Errorf("log: append failed, nothing acknowledged: %w", err)
	}
}
