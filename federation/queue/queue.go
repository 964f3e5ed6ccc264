// Package queue delivers PDUs and EDUs to other servers. What to send is
// in the log (KindFederationOutbound) and folded by projections/fedqueue,
// together with each destination's acknowledgements and down marks; this
// package only decides when to send. Only the log's leader sends, one
// sender per destination, in transactions of at most 50 PDUs and 100 EDUs
// (spec, "Transactions"), retrying with exponential backoff; a destination
// unreachable for longer than GiveUpAfter is marked down and left alone
// until it contacts us or a local user acts towards it.
package queue

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/engram-hs/engram/federation/transport"
	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/projections"
	"github.com/engram-hs/engram/projections/fedqueue"
)

// Transaction limits (spec, "Transactions").
const (
	MaxPDUs = 50
	MaxEDUs = 100
)

// Sender sends federation requests (transport.Client).
type Sender interface {
	DoJSON(ctx context.Context, r transport.Request, out any) error
}

// Config wires a queue.
type Config struct {
	ServerName string
	Log        englog.Log
	// Projection is the fedqueue projection, registered on the engine
	// (Queue is its handle); New hooks its commits to wake senders, so
	// call New before the engine starts.
	Projection *fedqueue.Projection
	Queue      *projections.Handle
	Sender     Sender
	// Leader says whether this node may send; nil means always (a single
	// node).
	Leader func() bool
	// Backoff: the first retry after MinRetry, each next one Multiplier
	// times later, at most MaxRetry apart; after GiveUpAfter of failures
	// the destination is marked down.
	MinRetry    time.Duration
	Multiplier  float64
	MaxRetry    time.Duration
	GiveUpAfter time.Duration
	Logger      zerolog.Logger
	Now         func() time.Time
	// Metrics, when set, receives the queue's counters.
	Metrics prometheus.Registerer
}

// Queue is the outbound delivery queue.
type Queue struct {
	cfg Config

	mu      sync.Mutex
	dests   map[string]*dest
	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	started bool
	leader  bool
	marking map[string]bool // MarkUp appends in flight
	epoch   string          // see logEpoch

	txns   *prometheus.CounterVec
	downed prometheus.Counter
}

// dest is a destination's in-memory sending state. Backoff lives here,
// not in the log: a new leader starts retrying afresh, and only the
// decision to give up is recorded.
type dest struct {
	name         string
	running      bool
	wake         chan struct{}
	failures     int
	firstFailure time.Time
	next         time.Time
}

// New builds a queue; Start runs it.
func New(cfg Config) (*Queue, error) {
	if cfg.ServerName == "" || cfg.Log == nil || cfg.Queue == nil || cfg.Sender == nil {
		return nil, errors.New("queue: ServerName, Log, Queue and Sender are required")
	}
	if cfg.MinRetry <= 0 {
		cfg.MinRetry = 30 * time.Second
	}
	if cfg.Multiplier < 1 {
		cfg.Multiplier = 2
	}
	if cfg.MaxRetry < cfg.MinRetry {
		cfg.MaxRetry = max(cfg.MinRetry, time.Hour)
	}
	if cfg.GiveUpAfter <= 0 {
		cfg.GiveUpAfter = 24 * time.Hour
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	q := &Queue{cfg: cfg, dests: map[string]*dest{}, marking: map[string]bool{},
		txns: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "engram", Subsystem: "federation", Name: "transactions_total",
			Help: "Outbound federation transactions by result (ok, failed)."}, []string{"result"}),
		downed: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "engram", Subsystem: "federation", Name: "destinations_marked_down_total",
			Help: "Destinations given up after federation.destination_give_up_after of failures."}),
	}
	if cfg.Metrics != nil {
		for _, c := range []prometheus.Collector{q.txns, q.downed} {
			if err := cfg.Metrics.Register(c); err != nil {
				return nil, fmt.Errorf("queue: registering metrics: %w", err)
			}
		}
	}
	if cfg.Projection != nil {
		cfg.Projection.Touched = q.wakeAll
	}
	return q, nil
}

// Start runs the queue until Close: it follows leadership and starts a
// sender for every destination with pending items that is not down.
func (q *Queue) Start() {
	q.mu.Lock()
	if q.started {
		q.mu.Unlock()
		return
	}
	q.started = true
	q.ctx, q.cancel = context.WithCancel(context.Background())
	q.mu.Unlock()
	q.wg.Add(1)
	go q.supervise()
}

// Close stops every sender and waits for them.
func (q *Queue) Close() {
	q.mu.Lock()
	if q.cancel != nil {
		q.cancel()
	}
	q.mu.Unlock()
	q.wg.Wait()
}

func (q *Queue) isLeader() bool { return q.cfg.Leader == nil || q.cfg.Leader() }

// supervise starts senders when this node becomes the leader (on start,
// too: what was pending before a restart or a leader change resumes).
func (q *Queue) supervise() {
	defer q.wg.Done()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	ticks := 0
	for {
		leader := q.isLeader()
		q.mu.Lock()
		became := leader && !q.leader
		q.leader = leader
		q.mu.Unlock()
		ticks++
		// Also every 30 s as the leader: a sender that stopped on a read
		// error starts again.
		if became || leader && ticks%30 == 0 {
			if err := q.resumeAll(); err != nil {
				q.cfg.Logger.Error().Err(err).Msg("federation queue: reading pending destinations failed; retrying in a second")
				q.mu.Lock()
				q.leader = false
				q.mu.Unlock()
			}
		}
		select {
		case <-q.ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (q *Queue) view() fedqueue.View { return fedqueue.NewView(q.cfg.Queue.Reader()) }

func (q *Queue) resumeAll() error {
	all, err := q.view().Destinations()
	if err != nil {
		return err
	}
	var names []string
	for d, st := range all {
		if st.Pending > 0 && !st.Down {
			names = append(names, d)
		}
	}
	q.wakeAll(names)
	return nil
}

// wakeAll starts (or nudges) the senders of dests.
func (q *Queue) wakeAll(dests []string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if !q.started || q.ctx.Err() != nil || !q.leader {
		return
	}
	for _, name := range dests {
		if name == q.cfg.ServerName {
			continue
		}
		d := q.dests[name]
		if d == nil {
			d = &dest{name: name, wake: make(chan struct{}, 1)}
			q.dests[name] = d
		}
		if d.running {
			select {
			case d.wake <- struct{}{}:
			default:
			}
			continue
		}
		d.running = true
		q.wg.Add(1)
		go q.run(d)
	}
}

// Deliver queues items for destinations (our own name and duplicates
// are dropped) and returns once the queue has recorded them; delivery
// follows in the background. Items name PDU entries by Offset or carry an
// EDU inline.
func (q *Queue) Deliver(ctx context.Context, destinations []string, items ...facts.OutboundItem) error {
	p, ok, err := q.Proposal(destinations, items...)
	if err != nil || !ok {
		return err
	}
	offs, err := q.cfg.Log.Append(ctx, p)
	if err != nil {
		return fmt.Errorf("queue: recording outbound items: %w", err)
	}
	return q.cfg.Queue.WaitApplied(ctx, offs[0])
}

// Proposal is the log entry that queues items for destinations, for a
// caller that appends it in the same batch as the PDU it sends (name the
// PDU with OutboundItem.Back). ok is false when there is nothing to send.
func (q *Queue) Proposal(destinations []string, items ...facts.OutboundItem) (englog.Proposal, bool, error) {
	seen := map[string]bool{}
	var ds []string
	for _, d := range destinations {
		if d != "" && d != q.cfg.ServerName && !seen[d] {
			seen[d] = true
			ds = append(ds, d)
		}
	}
	if len(ds) == 0 || len(items) == 0 {
		return englog.Proposal{}, false, nil
	}
	p, err := facts.Encode(englog.KindFederationOutbound, facts.FederationOutbound{Destinations: ds, Items: items})
	return p, err == nil, err
}

// ServerName is this server's name, never a destination.
func (q *Queue) ServerName() string { return q.cfg.ServerName }

// MarkUp brings a destination back: a down mark is lifted (recorded in
// the log) and any backoff is forgotten, so pending items go now. Call it
// when the destination contacted us or a local user acted towards it. It
// returns without waiting for the log.
func (q *Queue) MarkUp(name string) {
	if name == "" || name == q.cfg.ServerName {
		return
	}
	q.mu.Lock()
	if d := q.dests[name]; d != nil {
		d.failures, d.firstFailure, d.next = 0, time.Time{}, time.Time{}
		if d.running {
			select {
			case d.wake <- struct{}{}:
			default:
			}
		}
	}
	st, err := q.view().Destination(name)
	if err != nil || !st.Down || q.marking[name] || q.ctx == nil || q.ctx.Err() != nil {
		q.mu.Unlock()
		return
	}
	q.marking[name] = true
	ctx := q.ctx
	q.mu.Unlock()
	q.wg.Add(1)
	go func() {
		defer q.wg.Done()
		defer func() { q.mu.Lock(); delete(q.marking, name); q.mu.Unlock() }()
		if _, err := q.cfg.Log.Append(ctx, facts.MustEncode(englog.KindFederationDestinationSet, facts.FederationDestinationSet{Destination: name, Down: false, Reason: "contacted"})); err != nil {
			q.cfg.Logger.Warn().Err(err).Str("destination", name).Msg("federation queue: recording that a destination is back failed")
			return
		}
		q.cfg.Logger.Info().Str("destination", name).Msg("federation destination is back up")
	}()
}

// run sends dest's pending items until none are left, the destination
// goes down, or this node stops being the leader.
func (q *Queue) run(d *dest) {
	defer q.wg.Done()
	defer func() {
		q.mu.Lock()
		d.running = false // (already false when the queue ran dry)
		q.mu.Unlock()
	}()
	log := q.cfg.Logger.With().Str("destination", d.name).Logger()
	for {
		if q.ctx.Err() != nil || !q.isLeader() {
			return
		}
		q.mu.Lock()
		wait := d.next.Sub(q.cfg.Now())
		q.mu.Unlock()
		if wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-q.ctx.Done():
				t.Stop()
				return
			case <-d.wake:
				t.Stop()
				continue // MarkUp may have cleared the backoff
			case <-t.C:
			}
			continue
		}
		st, err := q.view().Destination(d.name)
		if err != nil {
			log.Error().Err(err).Msg("federation queue: reading the queue failed")
			return
		}
		if st.Down {
			return
		}
		items, err := q.view().Pending(d.name, MaxPDUs, MaxEDUs)
		if err != nil {
			log.Error().Err(err).Msg("federation queue: reading the queue failed")
			return
		}
		if len(items) == 0 {
			// Decide to stop under the lock wakeAll holds: a wake sent
			// after the read above is either seen here or, once running
			// is false, starts a new sender.
			q.mu.Lock()
			select {
			case <-d.wake:
				q.mu.Unlock()
				continue
			default:
			}
			d.running = false
			q.mu.Unlock()
			return
		}
		txnID, sendErr := q.send(d.name, items)
		if sendErr == nil {
			q.txns.WithLabelValues("ok").Inc()
			through := items[len(items)-1].Position.String()
			offs, err := q.cfg.Log.Append(q.ctx, facts.MustEncode(englog.KindFederationDelivered, facts.FederationDelivered{Destination: d.name, TxnID: txnID, Through: through}))
			if err == nil {
				err = q.cfg.Queue.WaitApplied(q.ctx, offs[0])
			}
			if err != nil {
				if q.ctx.Err() == nil { // not a shutdown
					log.Warn().Err(err).Msg("federation queue: recording a delivery failed; the transaction will be sent again")
				}
				return
			}
			q.mu.Lock()
			d.failures, d.firstFailure, d.next = 0, time.Time{}, time.Time{}
			q.mu.Unlock()
			log.Debug().Str("txn_id", txnID).Int("items", len(items)).Msg("federation transaction delivered")
			continue
		}
		if q.ctx.Err() != nil {
			return
		}
		q.txns.WithLabelValues("failed").Inc()
		now := q.cfg.Now()
		q.mu.Lock()
		if d.failures == 0 {
			d.firstFailure = now
		}
		d.failures++
		failingFor := now.Sub(d.firstFailure)
		backoff := time.Duration(float64(q.cfg.MinRetry) * math.Pow(q.cfg.Multiplier, float64(d.failures-1)))
		if backoff > q.cfg.MaxRetry || backoff <= 0 {
			backoff = q.cfg.MaxRetry
		}
		d.next = now.Add(backoff)
		failures := d.failures
		q.mu.Unlock()
		if failingFor >= q.cfg.GiveUpAfter {
			log.Warn().Err(sendErr).Int("failures", failures).Dur("failing_for", failingFor).
				Msg("federation destination marked down: no more retries until it contacts us or a local user acts towards it")
			q.downed.Inc()
			_, err := q.cfg.Log.Append(q.ctx, facts.MustEncode(englog.KindFederationDestinationSet, facts.FederationDestinationSet{
				Destination: d.name, Down: true, Reason: fmt.Sprintf("unreachable for %s: %v", failingFor.Round(time.Second), sendErr)}))
			if err != nil {
				log.Warn().Err(err).Msg("federation queue: recording a down destination failed")
			}
			return
		}
		log.Info().Err(sendErr).Str("txn_id", txnID).Int("failures", failures).Dur("retry_in", backoff).Msg("federation transaction failed; retrying later")
	}
}

// logEpoch names this log: the time of its first entry, the same on every
// node and after every restart, different for a log created anew (a
// server rebuilt from scratch under the same name must not reuse
// transaction IDs its peers remember).
func (q *Queue) logEpoch() (string, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.epoch != "" {
		return q.epoch, nil
	}
	es, err := q.cfg.Log.Read(1, 1)
	if err != nil {
		return "", err
	}
	if len(es) == 0 {
		return "", errors.New("queue: the log is empty")
	}
	q.epoch = strconv.FormatInt(es[0].Time, 36)
	return q.epoch, nil
}

// send builds the transaction for items and PUTs it. The transaction ID
// is derived from the log's epoch and the first and last positions, so a
// retry of the same items carries the same ID, on any node, after any
// restart.
func (q *Queue) send(destination string, items []fedqueue.Queued) (string, error) {
	epoch, err := q.logEpoch()
	if err != nil {
		return "", err
	}
	txnID := epoch + "." + items[0].Position.String() + "-" + items[len(items)-1].Position.String()
	pdus := []json.RawMessage{}
	edus := []json.RawMessage{}
	for _, it := range items {
		if it.Item.PDU {
			ev, err := q.pduAt(it.Item.Offset)
			if err != nil {
				return txnID, err
			}
			if ev != nil {
				pdus = append(pdus, ev)
			}
			continue
		}
		if it.Item.EDU != nil {
			b, err := json.Marshal(it.Item.EDU)
			if err != nil {
				return txnID, err
			}
			edus = append(edus, b)
		}
	}
	if len(pdus) == 0 && len(edus) == 0 {
		return txnID, nil // nothing sendable: acknowledge the positions
	}
	body := map[string]any{"origin": q.cfg.ServerName, "origin_server_ts": q.cfg.Now().UnixMilli(), "pdus": pdus}
	if len(edus) > 0 {
		body["edus"] = edus
	}
	ctx, cancel := context.WithTimeout(q.ctx, 2*time.Minute)
	defer cancel()
	err = q.cfg.Sender.DoJSON(ctx, transport.Request{Destination: destination, Method: "PUT",
		Path: "/_matrix/federation/v1/send/" + transport.PathEscape(txnID), Body: body}, nil)
	return txnID, err
}

// pduAt reads the event of the PDU entry at offset (nil when the entry is
// not a PDU: nothing to send for it).
func (q *Queue) pduAt(offset uint64) (json.RawMessage, error) {
	es, err := q.cfg.Log.Read(offset, 1)
	if err != nil {
		return nil, err
	}
	if len(es) == 0 || es[0].Offset != offset || es[0].Kind != englog.KindPDU {
		return nil, nil
	}
	var p facts.PDU
	if err := facts.Decode(es[0], &p); err != nil {
		return nil, err
	}
	return p.Event, nil
}

// Handle is the fedqueue projection's handle.
func (q *Queue) Handle() *projections.Handle { return q.cfg.Queue }

// Status is a destination's queue state, for operators and tests.
func (q *Queue) Status(name string) (fedqueue.Destination, error) { return q.view().Destination(name) }
