package rooms

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/projections"
	"github.com/engram-hs/engram/stateres"
)

// View answers queries over a Reader (live or snapshot).
type View struct {
	r     projections.Reader
	log   EventLog
	cache *EventCache
	// joined, when set, answers JoinedServers for one room
	// (WithJoinedServers).
	joined *joinedServers
}

type joinedServers struct {
	roomID, skip string
	servers      []string
}

// EventLog reads the log the projection folds (englog.Log is one): event
// records point at the entry that carried the event instead of copying
// its JSON. Entries never change, so a View over a snapshot reads the live
// log safely.
type EventLog interface {
	Read(from uint64, max int) ([]englog.Entry, error)
}

// NewView wraps a reader of this projection's keyspace and the log it
// was folded from.
func NewView(r projections.Reader, log EventLog) View { return View{r: r, log: log} }

// WithCache returns the view reading events through c: an event parsed
// once is served from memory while its record (offset, redaction) is
// unchanged.
func (v View) WithCache(c *EventCache) View {
	v.cache = c
	return v
}

// WithJoinedServers has JoinedServers(roomID, skip) answer servers, which
// the caller read through JoinedServers and knows to be current (the
// room writer's state cache: the room has not changed since), instead of
// reading the room's members again.
func (v View) WithJoinedServers(roomID, skip string, servers []string) View {
	v.joined = &joinedServers{roomID: roomID, skip: skip, servers: servers}
	return v
}

// ChangedAt is the offset of the room's newest timeline event (0 when it
// has none): a sync token at or after it has seen the whole timeline.
func (v View) ChangedAt(roomID string) (uint64, error) {
	return v.offsetRecord(projections.Key(pChanged, roomID))
}

// offsetRecord reads an 8-byte offset record (0 when absent); anything
// else stored there is corruption, never 0.
func (v View) offsetRecord(k []byte) (uint64, error) {
	b, ok, err := v.r.Get(k)
	if err != nil {
		return 0, fmt.Errorf("rooms projection: reading %q: %w", k, err)
	}
	if !ok {
		return 0, nil
	}
	if len(b) != 8 {
		return 0, fmt.Errorf("rooms projection: corrupt offset record %q (%d bytes, want 8); rebuild it with `engram rebuild --projection rooms`", k, len(b))
	}
	return binary.BigEndian.Uint64(b), nil
}

// MemberIDs lists the users whose current membership of the room is one
// of the given memberships ("join", "invite", ...), in user ID order. It
// reads the membership records, not the member events.
func (v View) MemberIDs(roomID string, memberships ...string) ([]string, error) {
	lower := append(projections.Key(pState, roomID, stateres.MRoomMember), sep)
	it := v.r.Iter(lower, projections.PrefixEnd(lower))
	var users []string
	for ok := it.First(); ok; ok = it.Next() {
		users = append(users, string(it.Key()[len(lower):]))
	}
	if err := it.Close(); err != nil {
		return nil, err
	}
	out := users[:0]
	for _, u := range users {
		m, err := v.Membership(u, roomID)
		if err != nil {
			return nil, err
		}
		if m != nil && slices.Contains(memberships, m.Membership) {
			out = append(out, u)
		}
	}
	return out, nil
}

// HasJoinedMember reports whether a user of server is joined to the
// room. Only that server's users' memberships are read, up to the first
// joined one.
func (v View) HasJoinedMember(roomID, server string) (bool, error) {
	lower := append(projections.Key(pState, roomID, stateres.MRoomMember), sep)
	it := v.r.Iter(lower, projections.PrefixEnd(lower))
	var users []string
	for ok := it.First(); ok; ok = it.Next() {
		if u := string(it.Key()[len(lower):]); strings.HasSuffix(u, ":"+server) && strings.IndexByte(u, ':') == len(u)-len(server)-1 {
			users = append(users, u)
		}
	}
	if err := it.Close(); err != nil {
		return false, err
	}
	for _, u := range users {
		m, err := v.Membership(u, roomID)
		if err != nil {
			return false, err
		}
		if m != nil && m.Membership == "join" {
			return true, nil
		}
	}
	return false, nil
}

// JoinedServers lists the servers other than skip with a joined member
// in the room, in no order. A server's membership is read only until one
// of its users is found joined, and skip's users are never read: for a
// room of this server's own users (skip), no membership read at all,
// where MemberIDs reads one per member.
func (v View) JoinedServers(roomID, skip string) ([]string, error) {
	if j := v.joined; j != nil && j.roomID == roomID && j.skip == skip {
		return slices.Clone(j.servers), nil
	}
	lower := append(projections.Key(pState, roomID, stateres.MRoomMember), sep)
	it := v.r.Iter(lower, projections.PrefixEnd(lower))
	var users []string
	for ok := it.First(); ok; ok = it.Next() {
		users = append(users, string(it.Key()[len(lower):]))
	}
	if err := it.Close(); err != nil {
		return nil, err
	}
	found := map[string]bool{}
	var out []string
	for _, u := range users {
		_, d, ok := strings.Cut(u, ":")
		if !ok || d == skip || found[d] {
			continue
		}
		m, err := v.Membership(u, roomID)
		if err != nil {
			return nil, err
		}
		if m != nil && m.Membership == "join" {
			found[d] = true
			out = append(out, d)
		}
	}
	return out, nil
}

// Room returns a room, or nil when unknown.
func (v View) Room(roomID string) (*Room, error) {
	return projections.GetJSON[Room](v.r, projections.Key(pRoom, roomID))
}

// Event returns a stored event, or nil.
func (v View) Event(eventID string) (*Event, error) {
	e, err := getEvent(v.r, eventID)
	if err != nil || e == nil || e.placeholder {
		return nil, err
	}
	if len(e.JSON) == 0 {
		if hit := v.cache.get(&e.Event); hit != nil {
			return hit, nil
		}
		if err := v.loadJSON(&e.Event); errors.Is(err, errErased) {
			// An admin's purge erased it from the log; this projection
			// is being rebuilt without it (projections/heal.go) and
			// serves its older state meanwhile: the event is gone.
			return nil, nil
		} else if err != nil {
			return nil, err
		}
		v.cache.put(&e.Event)
	}
	return &e.Event, nil
}

// errErased: the log entry that carried an event was erased.
var errErased = errors.New("rooms: the event's log entry was erased")

// loadJSON reads the event's JSON from the log entry that carried it,
// redacted when a redaction applies.
func (v View) loadJSON(e *Event) error {
	if v.log == nil {
		return fmt.Errorf("rooms: reading event %s: this View has no log (pass the log to rooms.NewView)", e.EventID)
	}
	mismatch := func(why string) error {
		return fmt.Errorf("rooms: event %s: log offset %d %s; the rooms projection does not match this log: rebuild it with `engram rebuild --projection rooms`", e.EventID, e.Offset, why)
	}
	es, err := v.log.Read(e.Offset, 1)
	if err != nil {
		return fmt.Errorf("rooms: reading event %s at log offset %d: %w", e.EventID, e.Offset, err)
	}
	if len(es) == 1 && es[0].Offset == e.Offset && es[0].Kind == englog.KindErased {
		return errErased
	}
	if len(es) != 1 || es[0].Offset != e.Offset || es[0].Kind != englog.KindPDU {
		return mismatch("holds no PDU")
	}
	f, err := decodePDU(es[0])
	if err != nil {
		return mismatch(err.Error())
	}
	ver, ok := stateres.Version(f.RoomVersion)
	if !ok {
		return mismatch("has an unknown room version")
	}
	// The entry's recorded event ID (absent from older entries, which are
	// hashed instead) must be the one this record names.
	ev, err := stateres.ParseTrustedEvent(ver, f.Event, f.EventID)
	if err != nil || ev.EventID() != e.EventID {
		return mismatch("holds another event")
	}
	e.JSON = ev.JSON()
	if e.RedactedBy == "" {
		e.pdu = ev
		return nil
	}
	// A redacted event must never be served whole: fail closed. Parsed
	// once here, so that readers of its fields (Event.PDU) do not parse it
	// again.
	red, err := stateres.Redact(ver, e.JSON)
	if err != nil {
		return mismatch("cannot be redacted: " + err.Error())
	}
	rev, err := stateres.ParseTrustedEvent(ver, red, e.EventID)
	if err != nil {
		return mismatch("cannot be parsed once redacted: " + err.Error())
	}
	e.JSON, e.pdu = rev.JSON(), rev
	return nil
}

// PDU parses a stored event.
func (e *Event) PDU() (*stateres.Event, error) {
	if e.pdu != nil {
		return e.pdu, nil
	}
	ver, ok := stateres.Version(e.Version)
	if !ok {
		return nil, fmt.Errorf("rooms: event %s has room version %q, which this build does not know", e.EventID, e.Version)
	}
	// e.JSON came from the log (loadJSON), whole or redacted; redaction
	// keeps the reference hash, so the recorded ID is still the event's.
	return stateres.ParseTrustedEvent(ver, e.JSON, e.EventID)
}

// StateEventID returns the ID of a current state event, or "".
func (v View) StateEventID(roomID, typ, stateKey string) (string, error) {
	b, ok, err := v.r.Get(projections.Key(pState, roomID, typ, stateKey))
	if err != nil || !ok {
		return "", err
	}
	return string(b), nil
}

// StateEvent returns a current state event, or nil.
func (v View) StateEvent(roomID, typ, stateKey string) (*Event, error) {
	id, err := v.StateEventID(roomID, typ, stateKey)
	if err != nil || id == "" {
		return nil, err
	}
	return v.Event(id)
}

// State returns the room's current state, optionally only of one type
// (typ != ""), ordered by (type, state key).
func (v View) State(roomID, typ string) ([]*Event, error) {
	lower := append(projections.Key(pState, roomID), sep)
	if typ != "" {
		lower = append(append(lower, typ...), sep)
	}
	it := v.r.Iter(lower, projections.PrefixEnd(lower))
	var ids []string
	for ok := it.First(); ok; ok = it.Next() {
		ids = append(ids, string(it.Value()))
	}
	if err := it.Close(); err != nil {
		return nil, err
	}
	out := make([]*Event, 0, len(ids))
	for _, id := range ids {
		e, err := v.Event(id)
		if err != nil {
			return nil, err
		}
		if e != nil {
			out = append(out, e)
		}
	}
	return out, nil
}

// Membership returns a user's membership of a room, or nil.
func (v View) Membership(userID, roomID string) (*Membership, error) {
	return projections.GetJSON[Membership](v.r, projections.Key(pMember, userID, roomID))
}

// Memberships lists every room a user has a membership event in.
func (v View) Memberships(userID string) ([]Membership, error) {
	return projections.ListJSON[Membership](v.r, append(projections.Key(pMember, userID), sep), nil)
}

// sharesByPointReads is the number of joined rooms up to which
// SharesJoinedRoom reads other's membership of each instead of listing
// all of other's memberships: a point read costs about what an iterator
// over a few records does.
const sharesByPointReads = 16

// SharesJoinedRoom reports whether other is self or joined to one of
// self's joined rooms (joinedRooms, sorted): whose presence and device
// list changes self is told about.
func (v View) SharesJoinedRoom(self, other string, joinedRooms []string) (bool, error) {
	if other == self {
		return true, nil
	}
	// A viewer in few rooms asks each of them for other's membership (a
	// point read each); listing other's memberships instead costs an
	// iterator and a decode per room other is in, which for a user in 500
	// rooms was most of the CPU of every co-member's /sync after their
	// device or presence change (BenchmarkDeviceListFanout500Rooms).
	if len(joinedRooms) <= sharesByPointReads {
		for _, room := range joinedRooms {
			m, err := v.Membership(other, room)
			if err != nil {
				return false, err
			}
			if m != nil && m.Membership == "join" {
				return true, nil
			}
		}
		return false, nil
	}
	ms, err := v.Memberships(other)
	if err != nil {
		return false, err
	}
	for _, m := range ms {
		if _, found := slices.BinarySearch(joinedRooms, m.RoomID); found && m.Membership == "join" {
			return true, nil
		}
	}
	return false, nil
}

// Forgotten reports whether the user forgot the room (since they last
// joined or were invited).
func (v View) Forgotten(userID, roomID string) (bool, error) {
	_, ok, err := v.r.Get(projections.Key(pForgotten, userID, roomID))
	return ok, err
}

// TxnScope is where a client transaction ID applies besides its device:
// the request path it was sent on, which names the room and the event
// type (PUT /send) or the redacted event (PUT /redact).
type TxnScope struct{ room, verb, object string }

// TxnScopeOf is the scope of an event sent into roomID: a redaction's is
// its target, any other event's its type.
func TxnScopeOf(roomID, typ, redacts string) TxnScope {
	if typ == stateres.MRoomRedaction {
		return TxnScope{roomID, "redact", redacts}
	}
	return TxnScope{roomID, "send", typ}
}

func txnKey(userID, deviceID string, sc TxnScope, txnID string) []byte {
	return projections.Key(pTxn, userID, deviceID, sc.room, sc.verb, sc.object, txnID)
}

// TxnEvent returns the event a client transaction created in scope, or "".
func (v View) TxnEvent(userID, deviceID string, scope TxnScope, txnID string) (string, error) {
	b, ok, err := v.r.Get(txnKey(userID, deviceID, scope, txnID))
	if err != nil || !ok {
		return "", err
	}
	return string(b), nil
}

// TimelineEntry is one event's place in a room's timeline.
type TimelineEntry struct {
	Offset  uint64
	EventID string
	// Seq is non-zero for a historical (backfilled) event: it sits after
	// the event at Offset, ordered by Seq (facts.TimelinePlace).
	Seq uint64
}

// Pos is a position between timeline entries: after the entry at
// Offset and after the historical entries placed there with a Seq up to
// Seq. Seq 0 is just after the event at Offset itself; PosEnd after
// everything at Offset, which is what a stream token names.
type Pos struct {
	Offset, Seq uint64
}

// PosEnd is the Seq of the position after all entries at an offset.
const PosEnd = ^uint64(0)

// At is the position just after the entry (for the walk forwards).
func (te TimelineEntry) At() Pos { return Pos{te.Offset, te.Seq} }

// Before is the position just before the entry (for the walk backwards).
func (te TimelineEntry) Before() Pos {
	if te.Seq > 0 {
		return Pos{te.Offset, te.Seq - 1}
	}
	if te.Offset == 0 {
		return Pos{}
	}
	return Pos{te.Offset - 1, PosEnd}
}

// Less orders positions.
func (p Pos) Less(q Pos) bool {
	return p.Offset < q.Offset || (p.Offset == q.Offset && p.Seq < q.Seq)
}

// after reports whether the entry lies after the position.
func (te TimelineEntry) after(p Pos) bool { return p.Less(te.At()) }

// seekKey is the first key after position p.
func (p Pos) seekKey(roomID string) []byte {
	switch p.Seq {
	case PosEnd:
		return offsetKey(pTimeline, roomID, p.Offset+1)
	default:
		return binary.BigEndian.AppendUint64(offsetKey(pTimeline, roomID, p.Offset), p.Seq+1)
	}
}

// Page returns up to limit timeline entries of a room, historical ones
// included, walking forwards from position from (entries after it, up to
// bound inclusive) or backwards (entries up to from, down to bound
// exclusive), in walking order.
func (v View) Page(roomID string, from Pos, forward bool, limit int, bound Pos) ([]TimelineEntry, error) {
	lower := append(projections.Key(pTimeline, roomID), sep)
	it := v.r.Iter(lower, projections.PrefixEnd(lower))
	var out []TimelineEntry
	read := func() TimelineEntry {
		k := it.Key()[len(lower):]
		te := TimelineEntry{Offset: binary.BigEndian.Uint64(k[:8]), EventID: string(it.Value())}
		if len(k) >= 16 {
			te.Seq = binary.BigEndian.Uint64(k[8:16])
		}
		return te
	}
	if forward {
		for ok := it.SeekGE(from.seekKey(roomID)); ok && len(out) < limit; ok = it.Next() {
			te := read()
			if te.after(bound) {
				break
			}
			out = append(out, te)
		}
	} else {
		for ok := it.SeekLT(from.seekKey(roomID)); ok && len(out) < limit; ok = it.Prev() {
			te := read()
			if !te.after(bound) {
				break
			}
			out = append(out, te)
		}
	}
	return out, it.Close()
}

// Timeline returns up to limit timeline entries of a room with offsets in
// (after, upTo] when forward, or in [.., before) walking backwards from
// before when !forward (upTo ignored). Entries are in the walking order.
func (v View) Timeline(roomID string, from uint64, forward bool, limit int, bound uint64) ([]TimelineEntry, error) {
	lower := append(projections.Key(pTimeline, roomID), sep)
	// Closed once, at the end: a second Close hands Pebble's pooled
	// iterator back twice, and two later readers then share it.
	it := v.r.Iter(lower, projections.PrefixEnd(lower))
	var out []TimelineEntry
	// Historical entries (longer keys) are left out: /sync and the
	// other stream readers show what arrived, not what was backfilled.
	historical := func() bool { return len(it.Key()) > len(lower)+8 }
	read := func() TimelineEntry {
		k := it.Key()
		return TimelineEntry{Offset: binary.BigEndian.Uint64(k[len(k)-8:]), EventID: string(it.Value())}
	}
	if forward {
		// Entries with offset > from and <= bound (0: unbounded).
		for ok := it.SeekGE(offsetKey(pTimeline, roomID, from+1)); ok && len(out) < limit; ok = it.Next() {
			if historical() {
				continue
			}
			te := read()
			if bound != 0 && te.Offset > bound {
				break
			}
			out = append(out, te)
		}
	} else {
		// Entries with offset < from and > bound, newest first.
		for ok := it.SeekLT(offsetKey(pTimeline, roomID, from)); ok && len(out) < limit; ok = it.Prev() {
			if historical() {
				continue
			}
			te := read()
			if te.Offset <= bound {
				break
			}
			out = append(out, te)
		}
	}
	return out, it.Close()
}

// Alias returns the room an alias points at, or nil.
func (v View) Alias(alias string) (*AliasRecord, error) {
	return projections.GetJSON[AliasRecord](v.r, projections.Key(pAlias, alias))
}

// Aliases lists a room's local aliases.
func (v View) Aliases(roomID string) ([]string, error) {
	lower := append(projections.Key(pRoomAlias, roomID), sep)
	it := v.r.Iter(lower, projections.PrefixEnd(lower))
	var out []string
	for ok := it.First(); ok; ok = it.Next() {
		out = append(out, string(it.Key()[len(lower):]))
	}
	return out, it.Close()
}

// Public reports whether the room is published in the room directory.
func (v View) Public(roomID string) (bool, error) {
	_, ok, err := v.r.Get(projections.Key(pPublic, roomID))
	return ok, err
}

// PublicRooms lists the published rooms.
func (v View) PublicRooms() ([]string, error) {
	lower := projections.Key(pPublic)
	it := v.r.Iter(lower, projections.PrefixEnd(lower))
	var out []string
	for ok := it.First(); ok; ok = it.Next() {
		out = append(out, string(it.Key()[1:]))
	}
	return out, it.Close()
}

// StatePDU returns the parsed current state event, or nil when the room
// has none; a failed read or parse is an error, never "absent".
func (v View) StatePDU(roomID, typ, stateKey string) (stateres.PDU, error) {
	e, err := v.StateEvent(roomID, typ, stateKey)
	if err != nil || e == nil {
		return nil, err
	}
	p, err := e.PDU()
	if err != nil {
		return nil, fmt.Errorf("rooms projection: state event %s of %s: %w", e.EventID, roomID, err)
	}
	return p, nil
}

// Unfoldables lists the PDU entries the fold recorded instead of folding
// (an unsupported room version, a malformed PDU), in log order.
func (v View) Unfoldables() ([]Unfoldable, error) {
	return projections.ListJSON[Unfoldable](v.r, []byte{pUnfoldable}, nil)
}

// IsLocalServer helps callers filter user IDs by domain.
func IsLocalServer(userID, server string) bool {
	return strings.HasSuffix(userID, ":"+server)
}

// StateAt returns the ID of the state event that held (typ, stateKey) just
// before the timeline position before (offsets < before), or "". The
// rooms projection folds state in log order, so this is the state the
// event at offset before was sent against.
func (v View) StateAt(roomID, typ, stateKey string, before uint64) (string, error) {
	lower := append(projections.Key(pStateHist, roomID, typ, stateKey), sep)
	it := v.r.Iter(lower, projections.PrefixEnd(lower))
	id := ""
	if it.SeekLT(binary.BigEndian.AppendUint64(append([]byte(nil), lower...), before)) {
		id = string(it.Value())
	}
	return id, it.Close()
}

// StateHistory lists the offsets and event IDs of every change of one
// state key with offset > after, oldest first.
func (v View) StateHistory(roomID, typ, stateKey string, after uint64) ([]TimelineEntry, error) {
	lower := append(projections.Key(pStateHist, roomID, typ, stateKey), sep)
	it := v.r.Iter(lower, projections.PrefixEnd(lower))
	var out []TimelineEntry
	for ok := it.SeekGE(binary.BigEndian.AppendUint64(append([]byte(nil), lower...), after+1)); ok; ok = it.Next() {
		k := it.Key()
		out = append(out, TimelineEntry{Offset: binary.BigEndian.Uint64(k[len(k)-8:]), EventID: string(it.Value())})
	}
	return out, it.Close()
}

// StateBefore returns the room's state just before timeline position
// before (offsets < before), optionally of one type, ordered by (type,
// state key).
func (v View) StateBefore(roomID, typ string, before uint64) ([]*Event, error) {
	cur, err := v.State(roomID, typ)
	if err != nil {
		return nil, err
	}
	out := make([]*Event, 0, len(cur))
	for _, e := range cur {
		if e.Offset < before {
			out = append(out, e)
			continue
		}
		var h struct {
			Type     string `json:"type"`
			StateKey string `json:"state_key"`
		}
		if err := json.Unmarshal(e.JSON, &h); err != nil {
			return nil, fmt.Errorf("rooms projection: state event %s of %s does not decode: %w", e.EventID, roomID, err)
		}
		id, err := v.StateAt(roomID, h.Type, h.StateKey, before)
		if err != nil {
			return nil, err
		}
		if id == "" {
			continue
		}
		old, err := v.Event(id)
		if err != nil {
			return nil, err
		}
		if old != nil {
			out = append(out, old)
		}
	}
	return out, nil
}

// RoomIDs lists every room the server knows, in room ID order (for the
// admin API's room list).
func (v View) RoomIDs() ([]string, error) {
	it := v.r.Iter([]byte{pRoom}, []byte{pRoom + 1})
	var ids []string
	for ok := it.First(); ok; ok = it.Next() {
		ids = append(ids, string(it.Key()[1:]))
	}
	return ids, it.Close()
}
