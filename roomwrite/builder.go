package roomwrite

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/engram-hs/engram/internal/mxerr"
	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/stateres"
	"github.com/engram-hs/engram/stateres/auth"
)

// maxPDUSize is the spec's limit on a PDU's canonical JSON.
const maxPDUSize = 65536

// Builder builds a chain of events in one room: each event's prev event
// is the one before, and each is authorised against the state the
// previous ones produced. Nothing is appended until its proposals are
// committed (Writer.Commit), so a chain goes in entirely or not at all.
type Builder struct {
	w       *Writer
	version *stateres.RoomVersion
	roomID  string
	state   *stateOverlay
	prev    []stateres.PDU
	built   []*stateres.Event
	now     int64
}

// NewRoom starts a room that does not exist yet, at the given version.
// roomID is "" from v12 on (the create event's ID names the room); Add
// of the create event then sets it.
func (w *Writer) NewRoom(version *stateres.RoomVersion, roomID string) (*Builder, error) {
	if err := w.leader(); err != nil {
		return nil, err
	}
	return &Builder{w: w, version: version, roomID: roomID, state: &stateOverlay{}, now: eventClock()}, nil
}

// Extend starts a chain on an existing room's current state, read afresh
// from the projection. The caller holds Lock(roomID) until Commit
// returns. An unknown room is 404 M_NOT_FOUND.
func (w *Writer) Extend(roomID string) (*Builder, error) {
	if err := w.leader(); err != nil {
		return nil, err
	}
	rs, err := loadRoomState(w.View(), roomID)
	if err != nil {
		return nil, err
	}
	return w.builderOn(rs), nil
}

// builderOn starts a chain of events on a room's state; rs is only read.
func (w *Writer) builderOn(rs *roomState) *Builder {
	return &Builder{w: w, version: rs.version, roomID: rs.roomID, state: &stateOverlay{base: rs.lookup},
		prev: rs.prevEvents(), now: eventClock()}
}

// eventClock is the origin_server_ts of a local event built now: the
// current time in milliseconds, rounded up. A client that read its own
// clock just before asking for the event (to find it later with
// /timestamp_to_event, say) may have read the same millisecond;
// truncating would date the event at or before that reading, and a
// backward search from it would find the room's new events (Complement's
// TestJumpToDateEndpoint "should find nothing before the earliest
// timestamp" failed so). Rounding up dates an event no earlier than
// the instant it was built.
func eventClock() int64 {
	const ms = int64(time.Millisecond)
	return (time.Now().UnixNano() + ms - 1) / ms
}

// RoomID is the room the chain is in ("" until a v12 create is added).
func (b *Builder) RoomID() string { return b.roomID }

// Version is the room's version.
func (b *Builder) Version() *stateres.RoomVersion { return b.version }

// Now is the origin_server_ts given to events that carry none; chains
// built for one request share it.
func (b *Builder) Now() int64 { return b.now }

// SetNow sets the timestamp of the following events (an upgrade gives
// both rooms' events the same one).
func (b *Builder) SetNow(ms int64) { b.now = ms }

// Add builds, signs and authorises one event. The state its auth needs is
// read first, each read with its error: a failed read fails Add (500),
// never counts as "absent". An unauthorised event is 403 M_FORBIDDEN, one
// over the size limit 413 M_TOO_LARGE, a malformed one 400 M_BAD_JSON;
// after an error the builder must not be committed.
func (b *Builder) Add(proto stateres.ProtoEvent) (*stateres.Event, error) {
	proto.RoomID = b.roomID
	if proto.OriginServerTS == 0 {
		proto.OriginServerTS = b.now
	}
	if proto.Content == nil {
		proto.Content = json.RawMessage("{}")
	}
	if err := b.withAuthoriser(&proto); err != nil {
		return nil, err
	}
	if err := b.loadAuthState(&proto); err != nil {
		return nil, err
	}
	cfg := &b.w.cfg
	ev, err := stateres.BuildEvent(b.version, &proto, b.state, b.prev, cfg.ServerName, cfg.SigningKeyID, cfg.SigningKey)
	if err == nil && b.state.err != nil {
		err = b.state.err
	}
	if err != nil {
		if errors.Is(err, stateres.ErrEventTooLarge) {
			return nil, mxerr.TooLarge("Event is larger than %d bytes", maxPDUSize)
		}
		if errors.Is(err, stateres.ErrInvalidEvent) {
			return nil, mxerr.BadJSON("%v", err)
		}
		return nil, err
	}
	if len(ev.JSON()) > maxPDUSize {
		return nil, mxerr.TooLarge("Event is larger than %d bytes", maxPDUSize)
	}
	authErr := auth.Check(ev, auth.StateFunc(b.state.StateEvent))
	if b.state.err != nil {
		// A verdict reached on a failed read is no verdict.
		return nil, b.state.err
	}
	if authErr != nil {
		var rej *auth.Rejection
		if errors.As(authErr, &rej) {
			return nil, mxerr.Forbidden("%s", rej.Reason)
		}
		return nil, mxerr.Forbidden("%v", authErr)
	}
	b.state.add(ev)
	b.prev = []stateres.PDU{ev}
	b.built = append(b.built, ev)
	if b.roomID == "" {
		b.roomID = ev.RoomID()
	}
	return ev, nil
}

// loadAuthState reads every state event the proto's auth events are
// chosen from (stateres.AuthEventTuples: create, power levels, join
// rules, sender's and target's membership, third-party invite, the
// authorising user of a restricted join), so that building and
// authorising read only what is already loaded, and a failed read stops
// the event before it exists.
func (b *Builder) loadAuthState(proto *stateres.ProtoEvent) error {
	tuples, err := stateres.AuthEventTuples(b.version, proto)
	if err != nil {
		if errors.Is(err, stateres.ErrInvalidEvent) {
			return mxerr.BadJSON("%v", err)
		}
		return err
	}
	for _, t := range tuples {
		if _, err := b.state.lookup(t.Type, t.StateKey); err != nil {
			return err
		}
	}
	return nil
}

// Built are the events added so far, in order.
func (b *Builder) Built() []*stateres.Event { return b.built }

// Proposals turns the built events into log proposals; txn (may be nil)
// is recorded on the last one.
func (b *Builder) Proposals(txn *facts.TxnRef) []englog.Proposal {
	props := make([]englog.Proposal, len(b.built))
	for i, ev := range b.built {
		f := facts.PDU{RoomVersion: b.version.ID, Event: ev.JSON(), EventID: ev.EventID()}
		if i == len(b.built)-1 {
			f.Txn = txn
		}
		props[i] = pduProposal(f)
	}
	return props
}

// pduProposal encodes a PDU fact as facts.MustEncode does, but puts the
// event's JSON in as it is: the builder made it canonical (compact,
// valid), so encoding/json's pass over it (validating and compacting an
// event's worth of bytes again, for a RawMessage) adds nothing. The event
// goes in without encoding/json's HTML escaping of <, > and &, which
// canonical JSON does not do either.
func pduProposal(f facts.PDU) englog.Proposal {
	ev := f.Event
	f.Event = json.RawMessage("0")
	head := facts.MustEncode(englog.KindPDU, f).Payload
	// The room version before "event" is a short JSON string, so the
	// first `,"event":0` is the field.
	i := bytes.Index(head, []byte(`,"event":0`))
	if i < 0 {
		panic("roomwrite: facts.PDU no longer encodes event after room_version")
	}
	i += len(`,"event":`)
	out := make([]byte, 0, len(head)-1+len(ev))
	out = append(append(append(out, head[:i]...), ev...), head[i+1:]...)
	return englog.Proposal{Kind: englog.KindPDU, Payload: out}
}

// stateOverlay is the state events are built and authorised against: the
// room's current state from the projection, overlaid with the events
// built in this chain but not yet committed.
type stateOverlay struct {
	base    func(typ, stateKey string) (stateres.PDU, error) // nil: a new room
	overlay map[stateres.StateKeyTuple]stateres.PDU
	err     error // the first failed read through StateEvent
}

func (o *stateOverlay) lookup(typ, stateKey string) (stateres.PDU, error) {
	if ev, ok := o.overlay[stateres.StateKeyTuple{Type: typ, StateKey: stateKey}]; ok {
		return ev, nil
	}
	if o.base == nil {
		return nil, nil
	}
	return o.base(typ, stateKey)
}

// StateEvent is lookup for stateres and auth, which take no errors: a
// failed read answers nil and is kept in o.err, which Add checks before
// it trusts anything built or decided on it.
func (o *stateOverlay) StateEvent(typ, stateKey string) stateres.PDU {
	p, err := o.lookup(typ, stateKey)
	if err != nil {
		if o.err == nil {
			o.err = fmt.Errorf("roomwrite: %w", err)
		}
		return nil
	}
	return p
}

func (o *stateOverlay) add(ev stateres.PDU) {
	if sk := ev.StateKey(); sk != nil {
		if o.overlay == nil {
			o.overlay = map[stateres.StateKeyTuple]stateres.PDU{}
		}
		o.overlay[stateres.StateKeyTuple{Type: ev.Type(), StateKey: *sk}] = ev
	}
}
