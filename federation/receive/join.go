package receive

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"runtime"
	"sync"

	"github.com/engram-hs/engram/projections/rooms"
	"github.com/engram-hs/engram/stateres"
)

// JoinResponse is what a resident server answered send_join with.
type JoinResponse struct {
	State     []json.RawMessage
	AuthChain []json.RawMessage
	// Event is the join as the resident server returned it (it adds its
	// signature to a restricted join); nil: our own join as sent.
	Event json.RawMessage
}

// Join decides on a join of a room this server is not in yet: the join
// event it built from origin's make_join template and sent to origin, and
// the room state and auth chain origin answered. Every event is checked
// (steps 1-4: format, signatures in parallel, hashes, its own auth
// events, each once: the auth chain is walked in order, never per event);
// the state and auth chain are recorded as outliers and the join with the
// state before it (facts.PDU.StateBefore), so the rooms projection starts
// the room from it. The join itself must be accepted: its verdict says
// why not otherwise, and nothing is appended then.
func (r *Receiver) Join(ctx context.Context, origin string, version *stateres.RoomVersion, join *stateres.Event, resp JoinResponse) (Verdict, error) {
	roomID := join.RoomID()
	lock := r.roomLock(roomID)
	lock.Lock()
	defer lock.Unlock()
	view := r.view()
	d, err := newDecider(view, version, roomID)
	if err != nil {
		return Verdict{}, err
	}
	// The state origin sent is the room's current state before the join,
	// also when this server held the room before (a rejoin after its last
	// user left): what it held then is stale.
	d.fresh, d.extremities = true, nil
	if resp.Event != nil {
		ev, err := stateres.ParseEvent(version, resp.Event)
		if err != nil || ev.EventID() != join.EventID() {
			return Verdict{EventID: join.EventID(), Outcome: Rejected, Reason: fmt.Sprintf("%s returned another join event than the one sent", origin)}, nil
		}
		join = ev
	}
	raws := append(append([]json.RawMessage{}, resp.AuthChain...), resp.State...)
	cands, err := parseAndVerify(ctx, r.Verify, version, roomID, raws)
	if err != nil {
		return Verdict{}, err
	}
	byID := map[string]*candidate{}
	var list []*candidate
	for _, c := range cands {
		if c == nil || byID[c.ev.EventID()] != nil {
			continue
		}
		c.outlier = true
		byID[c.ev.EventID()] = c
		list = append(list, c)
	}
	for _, i := range authOrder(list) {
		c := list[i]
		if !d.known(c.ev.EventID()) {
			d.decide(c)
		}
	}
	// The state before the join: the state origin sent, minus what failed
	// its checks.
	before := rooms.StateMap{}
	for _, raw := range resp.State {
		var head struct {
			Type     string  `json:"type"`
			StateKey *string `json:"state_key"`
		}
		if json.Unmarshal(raw, &head) != nil || head.StateKey == nil {
			continue
		}
		ev, err := stateres.ParseEvent(version, raw)
		if err != nil || d.Rejected(ev.EventID()) || !d.known(ev.EventID()) {
			continue
		}
		before[stateres.StateKeyTuple{Type: head.Type, StateKey: *head.StateKey}] = ev.EventID()
	}
	c := &candidate{ev: join}
	if err := verify(ctx, r.Verify, c); err != nil {
		return Verdict{EventID: join.EventID(), Dropped: true, Reason: err.Error()}, nil
	}
	checkHash(c)
	d.given = map[string]rooms.StateMap{join.EventID(): before}
	v := d.decide(c)
	if v.Outcome != Accepted {
		return v, nil
	}
	return v, r.Append(ctx, d.entries)
}

// parseAndVerify runs steps 1-3 on many events, checking signatures on
// every core: a big room's join carries tens of thousands. Events that do
// not parse are left nil; keys that cannot be obtained fail the whole.
func parseAndVerify(ctx context.Context, v Verifier, version *stateres.RoomVersion, roomID string, raws []json.RawMessage) ([]*candidate, error) {
	out, errs := parseAndVerifyEach(ctx, v, version, roomID, raws)
	for i, err := range errs {
		if err != nil && !errors.Is(err, errFormat) {
			return nil, err
		}
		if err != nil {
			out[i] = nil
		}
	}
	return out, nil
}

// parseAndVerifyEach runs steps 1-3 on each event, in parallel; errs[i]
// wraps errFormat when raws[i] failed step 1 (out[i] nil), or says that
// its keys could not be obtained (out[i] set).
func parseAndVerifyEach(ctx context.Context, v Verifier, version *stateres.RoomVersion, roomID string, raws []json.RawMessage) ([]*candidate, []error) {
	out := make([]*candidate, len(raws))
	errs := make([]error, len(raws))
	work := func(i int) {
		c, err := parse(version, roomID, raws[i])
		if err != nil {
			errs[i] = err
			return
		}
		out[i] = c
		if err := verify(ctx, v, c); err != nil {
			errs[i] = err
			return
		}
		checkHash(c)
	}
	workers := min(runtime.GOMAXPROCS(0), len(raws))
	if workers <= 1 {
		for i := range raws {
			work(i)
		}
		return out, errs
	}
	var wg sync.WaitGroup
	next := make(chan int)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				work(i)
			}
		}()
	}
	for i := range raws {
		next <- i
	}
	close(next)
	wg.Wait()
	return out, errs
}
