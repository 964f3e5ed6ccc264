// Package roomwrite is the one write path for room events: it reads a
// room's state, builds, signs and authorises events on it, and appends
// them to the log, under one lock per room. The client API (api) and
// federation both write room events through a Writer, so they cannot
// disagree on how a room moves; api and federation never import each
// other.
//
// Rules it keeps (issue 15):
//   - A failed read is never "absent": every state event an event's
//     auth needs is loaded, with its error, before the event is built;
//     a read or decode error fails the write (500 M_UNKNOWN, the error
//     names the projection and key) and nothing is appended.
//   - Room events are built on the leader only (Writer.leader is the
//     one place that decides it): a follower's proposals would be built
//     on a view that may lag the log, and two nodes building on the same
//     state would fork a room that has only one server in it.
//
// The checks made here under the room lock are a fast path, not the
// guarantee: what is appended is folded by the rooms projection
// (projections/rooms), and a rule that must hold across a cluster belongs
// to that fold, decided in log order: one event per transaction ID
// (Send answers from the fold's mapping), the first claim of an alias.
// TestClusterInvariantsUnderRaces shows them on three Raft nodes.
//
// Federation seam: federation records the remote PDUs it has checked
// (format, signatures, hashes, auth against their auth events and the
// state before them, soft-fail) through Receive (receive.go), with its
// verdict in facts.PDU (Rejected, SoftFailed, Outlier, StateBefore): it
// takes the room lock, appends, and drops the room's cached state (the
// cache reloads whenever the room's ChangedAt moves, so a remote event
// can never leave it stale). Local events of a room with remote members
// keep being built by Builder.Add here.
package roomwrite

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"sync"

	"github.com/engram-hs/engram/internal/keyedmutex"
	"github.com/engram-hs/engram/internal/mxerr"
	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/projections"
	"github.com/engram-hs/engram/projections/rooms"
	"github.com/engram-hs/engram/stateres"
	"github.com/rs/zerolog"
)

// eventCacheSize bounds the parsed events kept in memory for every reader
// of the rooms projection (rooms.EventCache). Each costs about 1.8 KiB of
// live heap: its log entry's whole payload (the JSON is a slice of it,
// ~1 KiB for a message) and its parsed form (~0.7 KiB). At 16,384 the
// cache was 27-30 MiB, the largest part of the server's live heap under
// message load, and so about twice that of RSS at the GC's default pace.
// 4,096 keeps the last 2,048-4,096 events, a second or more of that load:
// the receivers' syncs read an event within a few hundred milliseconds of
// its send, and a miss costs one log read and parse.
const eventCacheSize = 4_096

// Config is what a Writer signs with.
type Config struct {
	ServerName string
	// SigningKeyID ("ed25519:<id>") and SigningKey sign every event built
	// here. A nil key gets an ephemeral one: for tests and tools that never
	// build events for others to check.
	SigningKeyID string
	SigningKey   ed25519.PrivateKey
	Logger       zerolog.Logger
}

// Writer owns the rooms projection's handle, the parsed-event cache, the
// room-state cache and the per-room lock. Make one per process, before
// the projection engine starts, and hand it to every adapter.
type Writer struct {
	cfg    Config
	log    englog.Log
	logger zerolog.Logger
	roomsH *projections.Handle
	events *rooms.EventCache
	states stateCache
	locks  keyedmutex.Mutex

	subMu sync.RWMutex
	subs  []func(rooms.Touched)

	outbound Outbound

	// faults, when set (by tests), wraps every read the write path makes
	// of the rooms projection and of the log.
	faults *faults
}

// faults injects read errors into the write path's reads (tests).
type faults struct {
	reader func(projections.Reader) projections.Reader
	log    func(rooms.EventLog) rooms.EventLog
}

// Outbound, when set (SetOutbound), turns the local events of a Commit
// into the entries that deliver them to the rooms' other servers
// (federation/queue), given the rooms projection as it was before them:
// events[i] is entry at[i] of the append, and the returned entries go
// after the append's others, the first at index total.
type Outbound func(view rooms.View, events []facts.PDU, at []int, total int) ([]englog.Proposal, error)

// SetOutbound installs the delivery of local events to other servers;
// call it before the server serves.
func (w *Writer) SetOutbound(o Outbound) { w.outbound = o }

// New registers the rooms projection on eng; call it before eng starts.
func New(cfg Config, log englog.Log, eng *projections.Engine) (*Writer, error) {
	if cfg.ServerName == "" {
		return nil, errors.New("roomwrite: server_name is empty; set server_name in the config")
	}
	if log == nil || eng == nil {
		return nil, errors.New("roomwrite: a log and a projection engine are required")
	}
	if cfg.SigningKey == nil {
		_, cfg.SigningKey, _ = ed25519.GenerateKey(nil)
		cfg.SigningKeyID = "ed25519:ephemeral"
	}
	if cfg.SigningKeyID == "" {
		cfg.SigningKeyID = "ed25519:auto"
	}
	w := &Writer{cfg: cfg, log: log, logger: cfg.Logger.With().Str("component", "roomwrite").Logger(),
		events: rooms.NewEventCache(eventCacheSize)}
	w.roomsH = eng.Register(rooms.New(log, w.touched))
	return w, nil
}

// OnTouched adds fn to the functions told, after each committed batch of
// the rooms projection, what it touched (to wake long-polls, to queue
// outbound federation). Call it before the engine starts.
func (w *Writer) OnTouched(fn func(rooms.Touched)) {
	w.subMu.Lock()
	defer w.subMu.Unlock()
	w.subs = append(w.subs, fn)
}

func (w *Writer) touched(t rooms.Touched) {
	w.subMu.RLock()
	defer w.subMu.RUnlock()
	for _, fn := range w.subs {
		fn(t)
	}
}

// ServerName is the server events are built for.
func (w *Writer) ServerName() string { return w.cfg.ServerName }

// Handle is the rooms projection's handle (to wait for an offset).
func (w *Writer) Handle() *projections.Handle { return w.roomsH }

// View reads the rooms projection through the shared event cache.
func (w *Writer) View() rooms.View {
	var r projections.Reader = w.roomsH.Reader()
	var l rooms.EventLog = w.log
	if w.faults != nil {
		r, l = w.faults.reader(r), w.faults.log(l)
	}
	return rooms.NewView(r, l).WithCache(w.events)
}

// EventCacheStats reports the parsed-event cache's hits and misses.
func (w *Writer) EventCacheStats() (hits, misses uint64) { return w.events.Stats() }

// Lock takes the room's lock and returns its unlock. Hold it from before
// Extend until Commit returns; Send takes it itself.
func (w *Writer) Lock(roomID string) (unlock func()) { return w.locks.Lock(roomID) }

// leaderChecker is the part of log.Node that says whether this node may
// append now. Logs without it (tools, fakes) are taken as leaders: their
// Append is the judge.
type leaderChecker interface{ IsLeader() bool }

// leader is the one place that decides whether this node may build room
// events: only the Raft leader does. Write forwarding (followers handing
// the whole request to the leader) hooks in before this, at the HTTP
// layer; a request that still arrives here on a follower is refused with
// 503 before anything is built.
func (w *Writer) leader() error {
	if lc, ok := w.log.(leaderChecker); ok && !lc.IsLeader() {
		return mxerr.NotLeader()
	}
	return nil
}

// Send builds one event in a room under the room lock, authorises it,
// appends it (with extra, in the same append) and waits until the rooms
// projection has folded it. With a txn it is idempotent: a retried
// transaction returns the first event's ID. The room's state comes from
// the state cache (see roomState for why that is never stale).
func (w *Writer) Send(ctx context.Context, proto stateres.ProtoEvent, txn *facts.TxnRef, extra ...englog.Proposal) (string, error) {
	if err := w.leader(); err != nil {
		return "", err
	}
	unlock := w.locks.Lock(proto.RoomID)
	defer unlock()
	if txn != nil {
		id, err := w.View().TxnEvent(txn.UserID, txn.DeviceID, rooms.TxnScopeOf(proto.RoomID, proto.Type, proto.Redacts), txn.TxnID)
		if err != nil {
			return "", fmt.Errorf("rooms projection: transaction %s of %s/%s: %w", txn.TxnID, txn.UserID, txn.DeviceID, err)
		}
		if id != "" {
			return id, nil
		}
	}
	rs, err := w.states.get(w.View(), proto.RoomID)
	if err != nil {
		return "", err
	}
	b := w.builderOn(rs)
	ev, err := b.Add(proto)
	if err != nil {
		return "", err
	}
	view := w.View()
	if w.outbound != nil {
		servers, err := rs.joinedServers(w.cfg.ServerName)
		if err != nil {
			w.states.drop(proto.RoomID)
			return "", err
		}
		view = view.WithJoinedServers(rs.roomID, w.cfg.ServerName, servers)
	}
	offs, err := w.commit(ctx, view, append(b.Proposals(txn), extra...))
	if err != nil {
		// Appended or not, the room may have moved: read it afresh.
		w.states.drop(proto.RoomID)
		return "", err
	}
	w.states.committed(rs, b.built, offs)
	for i, ev := range b.built {
		w.events.Built(ev, offs[i])
	}
	if txn != nil {
		// The fold decides which event a transaction ID names (the first
		// in log order): answer from its verdict.
		id, err := w.View().TxnEvent(txn.UserID, txn.DeviceID, rooms.TxnScopeOf(proto.RoomID, proto.Type, proto.Redacts), txn.TxnID)
		if err != nil {
			return "", fmt.Errorf("rooms projection: transaction %s of %s/%s: %w", txn.TxnID, txn.UserID, txn.DeviceID, err)
		}
		if id != "" {
			return id, nil
		}
	}
	return ev.EventID(), nil
}

// Commit appends proposals (a Builder's, plus any facts of the rooms
// projection) as one unit and waits until the rooms projection has folded
// them, so the caller can answer from it.
func (w *Writer) Commit(ctx context.Context, props ...englog.Proposal) ([]uint64, error) {
	return w.commit(ctx, w.View(), props)
}

// commit is Commit with the view outbound federation reads the rooms'
// servers through (Send's knows them from its cached state).
func (w *Writer) commit(ctx context.Context, view rooms.View, props []englog.Proposal) ([]uint64, error) {
	n := len(props)
	if w.outbound != nil {
		// The delivery goes in the same append as the events: queued
		// exactly when they are recorded, whatever crashes after.
		var pdus []facts.PDU
		var at []int
		for i, p := range props {
			if p.Kind != englog.KindPDU {
				continue
			}
			f, err := projections.DecodePDU(englog.Entry{Kind: p.Kind, Payload: p.Payload})
			if err != nil {
				return nil, fmt.Errorf("roomwrite: a PDU proposal does not decode: %w", err)
			}
			pdus = append(pdus, f)
			at = append(at, i)
		}
		if len(pdus) > 0 {
			outs, err := w.outbound(view, pdus, at, n)
			if err != nil {
				return nil, err
			}
			props = append(props[:n:n], outs...)
		}
	}
	offs, err := w.appendAndWait(ctx, props)
	if err != nil {
		return nil, err
	}
	return offs[:n], nil
}

// appendAndWait appends the proposals as one unit and waits until the
// rooms projection has folded them, so the caller (and the next write to
// the room) reads them back.
func (w *Writer) appendAndWait(ctx context.Context, props []englog.Proposal) ([]uint64, error) {
	offs, err := w.log.Append(ctx, props...)
	if err != nil {
		if errors.Is(err, englog.ErrNotLeader) {
			return nil, mxerr.NotLeader()
		}
		return nil, fmt.Errorf("append to log: %w", err)
	}
	last := offs[len(offs)-1]
	if err := w.roomsH.WaitApplied(ctx, last); err != nil {
		return nil, fmt.Errorf("wait for projection %s to apply offset %d: %w", w.roomsH.Name(), last, err)
	}
	return offs, nil
}
