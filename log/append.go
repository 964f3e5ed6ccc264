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
	if err := n.guard.failed(); err != nil {
		return nil, err
	}
	if !n.IsLeader() {
		return n.forward(ctx, props)
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

// forward is the seam for sending a follower's writes to the leader. Until
// that exists, followers refuse writes.
func (n *Node) forward(_ context.Context, _ []Proposal) ([]uint64, error) {
	n.closeMu.RLock()
	closed := n.closed
	n.closeMu.RUnlock()
	if closed {
		return nil, ErrClosed
	}
	return nil, ErrNotLeader
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

// completer answers appends in commit order.
func (n *Node) completer() {
	defer n.done.Done()
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
		err = mapRaftErr(err)
		off := res.first
		for _, r := range c.reqs {
			r.resp <- appendResp{first: off, err: err}
			off += uint64(r.n)
		}
	}
}

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
