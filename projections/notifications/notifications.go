// Package notifications folds push: which events notify which local user
// (the verdicts of their push rules, package push, for every event of a
// room they are in), how far each user has read each room and thread
// (receipts, and their own events), and their pushers with how far each
// pusher's gateway has been sent (KindPusherSet, KindPushDelivered).
//
// /sync's unread counts, GET /notifications and push gateway delivery
// (push/gateway) all read it; nothing here talks to the network. The
// verdicts are a pure function of the log: the fold keeps the room state
// the conditions read (members and display names, member count, power
// levels) and each user's push rules (their m.push_rules account data
// merged with this build's defaults, push.Merge) itself, so it never reads
// another projection.
//
// Room state is followed in log order: a state event that enters the DAG
// replaces the previous one of its type and key, and a room joined over
// federation starts from the state the resident server sent. That is the
// resolved state in every room without concurrent state changes; in a room
// with a forked history the verdicts use the state last written.
package notifications

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"

	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/projections"
	"github.com/engram-hs/engram/push"
	"github.com/engram-hs/engram/stateres"
	"github.com/engram-hs/engram/stateres/auth"
)

// Name is the projection's name.
const Name = "notifications"

const (
	pRoom    = 'r' // r room -> roomRec
	pMember  = 'm' // m room 0 user -> memberRec
	pLocal   = 'j' // j room 0 user -> display name (local users joined)
	pEvent   = 'e' // e eventKey(eventID) -> eventRec: events folded, and the state a later federated join may name
	pRules   = 'u' // u user -> m.push_rules content
	pNotif   = 'a' // a user 0 offset(8) -> at(8) variant(1): the user's notification by the event's pVariant record
	pOldest  = 'b' // b user -> at(8): the log time of the user's first notification kept
	pVariant = 'v' // v offset(8) variant(1) -> at(8) Notification: the event's notification for the members one set of actions notified
	pVarOld  = 'w' // w -> at(8): the log time of the first pVariant record kept
	pUnread  = 'n' // n user 0 room 0 offset(8) -> highlight(1) thread
	pCount   = 'c' // c user 0 room 0 thread -> notifications(8) highlights(8): pUnread's entries above the thread's floor (never zero)
	pFloor   = 'f' // f user 0 room 0 thread -> offset(8) read up to ("" unthreaded)
	pPusher  = 'p' // p user 0 appID 0 pushkey -> Pusher
	pPushKey = 'k' // k appID 0 pushkey 0 user -> ""
)

// ScopeMain is the thread ID of the main timeline (spec: threaded read
// receipts).
const ScopeMain = "main"

// Notification is one event that notified a user.
type Notification struct {
	RoomID    string            `json:"room_id"`
	EventID   string            `json:"event_id"`
	Offset    uint64            `json:"offset"`
	TS        int64             `json:"ts"`
	Actions   []json.RawMessage `json:"actions"`
	Highlight bool              `json:"highlight,omitempty"`
	// ThreadID is the thread root, or ScopeMain.
	ThreadID string `json:"thread_id"`
	// Tweaks are the rule's set_tweak values, as sent to a gateway.
	Tweaks map[string]any `json:"tweaks,omitempty"`
	// Type and Sender, for the gateway's priority and body.
	Type   string `json:"type"`
	Sender string `json:"sender"`
	// At is the log time of the event's entry (Unix ms): what retention
	// counts from, since origin_server_ts is the sender's claim.
	At int64 `json:"at"`
}

// Retention is how long a notification stays listed by GET
// /notifications (Synapse keeps push actions for 30 days). Older ones are
// dropped by the fold as newer ones arrive for the same user, counted in
// log time, so a replay drops exactly the same ones; one may leave the
// listing earlier, once its event's record (pVariant) is dropped as newer
// events notify anyone.
const Retention int64 = 30 * 24 * 60 * 60 * 1000

// prunePerAdd bounds how many expired notifications one new notification
// removes, so that the first notification after a long silence does not
// make one huge batch; the rest go with the following ones.
const prunePerAdd = 64

// Pusher is a pusher of a user as folded.
type Pusher struct {
	facts.Pusher
	UserID  string `json:"user_id"`
	AppID   string `json:"app_id"`
	Pushkey string `json:"pushkey"`
	// TS is when it was set (entry time, Unix ms): the spec's pushkey_ts.
	TS int64 `json:"ts"`
	// Sent is the offset of the newest notification its gateway has been
	// sent (or given up on); notifications before the pusher was set are
	// never sent.
	Sent uint64 `json:"sent"`
}

type roomRec struct {
	Version string          `json:"v"`
	Create  json.RawMessage `json:"c,omitempty"`
	PL      json.RawMessage `json:"pl,omitempty"`
	Joined  int             `json:"n"`
}

type memberRec struct {
	Membership  string `json:"m"`
	DisplayName string `json:"d,omitempty"`
}

// Projection is the notifications projection.
type Projection struct {
	serverSuffix string // ":" + server name: local users' IDs end with it

	mu    sync.Mutex
	rules map[string]cachedRules // by user: compiled from the stored content
	rooms map[string]*roomMemo   // by room: the record as last read, decoded

	// Touched, when set, is called after each committed batch that changed
	// a pusher or added a notification for a user with pushers (the
	// gateway sender wakes on it). It must not block.
	Touched func()
}

type cachedRules struct {
	raw string
	c   *push.Compiled
}

// roomMemo is a room's record as some batch last read it, decoded, and
// the power levels parsed from its create and power levels events. Under
// live traffic a batch holds a few events per room, so without it every
// batch decoded the record and parsed (hashing for the event ID) both
// events again: a fifth of the fold's CPU. Each part is keyed by the bytes
// it was made from and is only ever a memo of a pure function of them: a
// record that changed (in any batch, committed or not) is a miss, and the
// fold's writes never depend on whether it hit.
type roomMemo struct {
	raw     string // the stored record
	rec     roomRec
	version *stateres.RoomVersion

	create, plRaw string // what pl was parsed from, with plVer
	plVer         *stateres.RoomVersion
	pl            *auth.PowerLevels
}

// maxRoomMemos bounds the memo (a record holds two events, about 1-2 KiB).
const maxRoomMemos = 4096

// New returns the projection for a server named serverName.
func New(serverName string) *Projection {
	return &Projection{serverSuffix: ":" + serverName, rules: map[string]cachedRules{}, rooms: map[string]*roomMemo{}}
}

func (*Projection) Name() string { return Name }

// Version 2: notifications carry their log time (At) for retention, and
// unread entries below the unthreaded floor are deleted. Version 3: the
// legacy mention rules are server defaults again (push.Defaults). Version
// 4: a joined local member's row holds their display name, and each user
// with notifications has the log time of the first one kept (pOldest), so
// that evaluating an event reads no member record per target and adding a
// notification scans for expired ones only when one has expired. Version
// 5: each room's unread notifications of a user are counted per thread
// as they are added and read (pCount), so that /sync's counts read the
// counts, not every unread entry of the room on every sync. Version 6:
// one e record per event, keyed by a hash of its ID, holding its offset
// and, for a state event the fold follows, only what the fold reads of it
// (was: an e key by event ID with the offset, and an o key by event ID
// with a copy of the state event's JSON). Version 7: a notification is
// stored once per event and set of actions (pVariant), and each member's
// row (pNotif) names it, instead of a copy per member.
func (*Projection) Version() int { return 7 }

// ReadsVersion: the views read no e or o key, and version 6 changed no
// other record, so version 5 serves while a later version is rebuilt; the
// views read version 7's pNotif rows and the copies versions 5 and 6
// stored alike (notificationOf).
func (*Projection) ReadsVersion(stored int) bool { return stored == 5 || stored == 6 }

// AfterCommit wakes the gateway sender.
func (p *Projection) AfterCommit(entries []englog.Entry) {
	if p.Touched == nil {
		return
	}
	for _, e := range entries {
		if e.Kind == englog.KindPDU || e.Kind == englog.KindPusherSet {
			p.Touched()
			return
		}
	}
}

func (p *Projection) local(userID string) bool { return strings.HasSuffix(userID, p.serverSuffix) }

func offsetBytes(off uint64) []byte { return binary.BigEndian.AppendUint64(nil, off) }

func withOffset(k []byte, off uint64) []byte {
	k = append(k, 0)
	return binary.BigEndian.AppendUint64(k, off)
}

func getOffset(r projections.Reader, k []byte) (uint64, bool, error) {
	b, ok, err := r.Get(k)
	if err != nil || !ok || len(b) != 8 {
		return 0, false, err
	}
	return binary.BigEndian.Uint64(b), true, nil
}

// Apply folds a batch.
func (p *Projection) Apply(w projections.Writer, entries []englog.Entry) error {
	b := &batch{p: p, w: w, rooms: map[string]*roomState{}, rules: map[string]*push.Compiled{},
		oldest: map[string]int64{}, counts: map[string]map[string]Count{}}
	for _, e := range entries {
		var err error
		switch e.Kind {
		case englog.KindPDU:
			err = b.applyPDU(e)
		case englog.KindEDU:
			err = b.applyEDU(e)
		case englog.KindAccountDataSet:
			var f facts.AccountDataSet
			if err = facts.Decode(e, &f); err == nil && f.RoomID == "" && f.Type == "m.push_rules" && p.local(f.UserID) {
				delete(b.rules, f.UserID)
				err = w.Set(projections.Key(pRules, f.UserID), f.Content)
			}
		case englog.KindPusherSet:
			var f facts.PusherSet
			if err = facts.Decode(e, &f); err == nil {
				err = b.applyPusherSet(e, f)
			}
		case englog.KindPushDelivered:
			var f facts.PushDelivered
			if err = facts.Decode(e, &f); err == nil {
				err = b.applyDelivered(f)
			}
		case englog.KindDeviceRemoved:
			var f facts.DeviceRemoved
			if err = facts.Decode(e, &f); err == nil {
				err = b.removeDevicePushers(f.UserID, func(d string) bool {
					for _, x := range f.DeviceIDs {
						if x == d {
							return true
						}
					}
					return false
				})
			}
		case englog.KindPasswordChanged:
			// Spec: changing the password may log out every other device;
			// their pushers go with them (Synapse removes them too).
			var f facts.PasswordChanged
			if err = facts.Decode(e, &f); err == nil && f.LogoutDevices {
				err = b.removeDevicePushers(f.UserID, func(d string) bool { return d != f.KeepDeviceID })
			}
		case englog.KindAccountDeactivated:
			var f facts.AccountDeactivated
			if err = facts.Decode(e, &f); err == nil {
				err = b.removeDevicePushers(f.UserID, func(string) bool { return true })
			}
		}
		if err != nil {
			return err
		}
	}
	return b.flushCounts()
}

// batch caches what an Apply reads again and again: the rooms it touches,
// and for each user it evaluates events for, their compiled rules, the
// log time of their first notification kept, and their counts. A batch
// of a rebuild holds thousands of events, each evaluated for every local
// member, so these were a point read (and the counts a write) per member
// per event. Every write goes straight to w but the counts', which go at
// the batch's end.
type batch struct {
	p     *Projection
	w     projections.Writer
	rooms map[string]*roomState

	rules map[string]*push.Compiled // by user, as stored (pRules) now
	// oldest are the pOldest and pVarOld records as written now, by key.
	oldest map[string]int64
	// counts are the counts (pCount) of a user in a room by thread as
	// count left them, to be written by flushCounts, keyed by countsKey;
	// a recount, which writes them itself, drops them.
	counts map[string]map[string]Count
}

type roomState struct {
	rec     *roomRec
	version *stateres.RoomVersion
	pl      *auth.PowerLevels
	locals  []localMember // nil: not loaded
}

// localMember is a joined local member and their display name in the room
// (what contains_display_name matches).
type localMember struct {
	userID, displayName string
}

func (b *batch) room(roomID string) (*roomState, error) {
	if rs, ok := b.rooms[roomID]; ok {
		return rs, nil
	}
	k := projections.Key(pRoom, roomID)
	raw, ok, err := b.w.Get(k)
	if err != nil {
		return nil, err
	}
	var rs *roomState
	if ok {
		p := b.p
		p.mu.Lock()
		m := p.rooms[roomID]
		p.mu.Unlock()
		if m == nil || m.raw != string(raw) {
			m = &roomMemo{raw: string(raw)}
			if err := json.Unmarshal(raw, &m.rec); err != nil {
				return nil, fmt.Errorf("projections: corrupt record %q: %w", k, err)
			}
			m.version, _ = stateres.Version(m.rec.Version)
			p.mu.Lock()
			if len(p.rooms) >= maxRoomMemos {
				clear(p.rooms) // a bound, not state
			}
			p.rooms[roomID] = m
			p.mu.Unlock()
		}
		// A copy: the batch changes its record (Joined, PL) in place.
		rec := m.rec
		rs = &roomState{rec: &rec, version: m.version}
	}
	b.rooms[roomID] = rs
	return rs, nil
}

func (b *batch) powerLevels(roomID string, rs *roomState) *auth.PowerLevels {
	if rs.pl != nil {
		return rs.pl
	}
	p := b.p
	p.mu.Lock()
	m := p.rooms[roomID]
	if m != nil && m.pl != nil && m.plVer == rs.version && m.create == string(rs.rec.Create) && m.plRaw == string(rs.rec.PL) {
		rs.pl = m.pl
	}
	p.mu.Unlock()
	if rs.pl != nil {
		return rs.pl
	}
	var create, pl stateres.PDU
	if len(rs.rec.Create) > 0 {
		if ev, err := stateres.ParseEvent(rs.version, rs.rec.Create); err == nil {
			create = ev
		}
	}
	if len(rs.rec.PL) > 0 {
		if ev, err := stateres.ParseEvent(rs.version, rs.rec.PL); err == nil {
			pl = ev
		}
	}
	rs.pl = auth.ParsePowerLevels(rs.version, create, pl)
	if m != nil {
		p.mu.Lock()
		m.create, m.plRaw, m.plVer, m.pl = string(rs.rec.Create), string(rs.rec.PL), rs.version, rs.pl
		p.mu.Unlock()
	}
	return rs.pl
}

func (b *batch) locals(roomID string, rs *roomState) ([]localMember, error) {
	if rs.locals != nil {
		return rs.locals, nil
	}
	prefix := projections.Key(pLocal, roomID, "")
	it := b.w.Iter(prefix, projections.PrefixEnd(prefix))
	out := []localMember{}
	for ok := it.First(); ok; ok = it.Next() {
		out = append(out, localMember{userID: string(it.Key()[len(prefix):]), displayName: string(it.Value())})
	}
	rs.locals = out
	return out, it.Close()
}

func (b *batch) saveRoom(roomID string, rs *roomState) error {
	return projections.PutJSON(b.w, projections.Key(pRoom, roomID), rs.rec)
}

func (b *batch) applyPDU(e englog.Entry) error {
	f, err := projections.ReadPDU(b.w, e)
	if err != nil {
		return err
	}
	if f.Rejected != "" {
		return nil
	}
	version, ev := f.Version, f.Parsed
	if ev == nil {
		return nil // the rooms projection records it as unfoldable
	}
	roomID := ev.RoomID()
	st := stateOf(ev, f.Event)
	k := eventKey(ev.EventID())
	old, known, err := b.w.Get(k)
	if err != nil {
		return err
	}
	if known {
		if off, _, err := decodeEvent(k, old); err != nil || off != 0 {
			return err // a duplicate: already folded
		}
	}
	// keepState records a state event the fold follows without folding
	// it, for a later federated join whose state names it.
	keepState := func() error {
		if st.kind == 0 || known {
			return nil
		}
		return b.w.Set(k, encodeEvent(0, st))
	}
	if f.Outlier || f.SoftFailed || f.Backfill != nil {
		return keepState() // backfilled history notifies no one and moves no counts
	}
	rs, err := b.room(roomID)
	if err != nil {
		return err
	}
	if ev.Type() == stateres.MRoomCreate && ev.StateKey() != nil && *ev.StateKey() == "" {
		rs = &roomState{rec: &roomRec{Version: version.ID, Create: f.Event}, version: version}
		b.rooms[roomID] = rs
		if err := b.clearRoom(roomID); err != nil {
			return err
		}
	} else if f.StateBefore != nil {
		if rs, err = b.resetState(roomID, version, f.StateBefore); err != nil {
			return err
		}
	}
	if rs == nil {
		return keepState() // a room we do not hold
	}
	if err := b.w.Set(k, encodeEvent(e.Offset, st)); err != nil {
		return err
	}
	if err := b.evaluate(e, rs, ev); err != nil {
		return err
	}
	if st.kind != 0 {
		return b.applyState(roomID, rs, *ev.StateKey(), st)
	}
	return nil
}

// The state events the fold follows, as their e records name them.
const (
	stateCreate = 'c'
	statePL     = 'p'
	stateMember = 'm'
)

// stateRec is what the fold reads of a state event it follows: a create
// or power levels event whole (auth.ParsePowerLevels reads both), a
// member event's membership and display name. kind 0: none.
type stateRec struct {
	kind                    byte
	json                    json.RawMessage
	membership, displayName string
}

func (st stateRec) eventType() string {
	switch st.kind {
	case stateCreate:
		return stateres.MRoomCreate
	case statePL:
		return stateres.MRoomPowerLevels
	case stateMember:
		return stateres.MRoomMember
	}
	return ""
}

// stateOf is what the fold reads of ev (raw: its JSON as the log holds
// it): create and power levels events count only with the empty state
// key.
func stateOf(ev *stateres.Event, raw json.RawMessage) stateRec {
	sk := ev.StateKey()
	if sk == nil {
		return stateRec{}
	}
	switch ev.Type() {
	case stateres.MRoomCreate, stateres.MRoomPowerLevels:
		if *sk != "" {
			return stateRec{}
		}
		if ev.Type() == stateres.MRoomCreate {
			return stateRec{kind: stateCreate, json: raw}
		}
		return stateRec{kind: statePL, json: raw}
	case stateres.MRoomMember:
		var c struct {
			Membership  string `json:"membership"`
			DisplayName any    `json:"displayname"`
		}
		_ = json.Unmarshal(ev.Content(), &c)
		dn, _ := c.DisplayName.(string)
		return stateRec{kind: stateMember, membership: c.Membership, displayName: dn}
	}
	return stateRec{}
}

// eventKey is an event's e key: the first 16 bytes of the SHA-256 of its
// ID, not the ID (44 bytes of base64 that no compressor shrinks, for every
// event). Two IDs share a key only by a 128-bit collision, which an
// origin that chooses its events' IDs (or their content, for the hashed
// IDs) finds only with ~2^64 work.
func eventKey(eventID string) []byte {
	sum := sha256.Sum256([]byte(eventID))
	return append([]byte{pEvent}, sum[:16]...)
}

// encodeEvent is an e record: the event's offset (0: not folded, kept
// only for its state) as a uvarint, then its stateRec if any: the kind,
// then the JSON or, for a member event, the membership's length as a
// uvarint, the membership and the display name.
func encodeEvent(off uint64, st stateRec) []byte {
	b := binary.AppendUvarint(nil, off)
	if st.kind == 0 {
		return b
	}
	b = append(b, st.kind)
	if st.kind != stateMember {
		return append(b, st.json...)
	}
	b = binary.AppendUvarint(b, uint64(len(st.membership)))
	b = append(b, st.membership...)
	return append(b, st.displayName...)
}

// decodeEvent reads an e record (k: its key, for the error).
func decodeEvent(k, v []byte) (uint64, stateRec, error) {
	corrupt := fmt.Errorf("notifications: corrupt record %x", k)
	off, n := binary.Uvarint(v)
	if n <= 0 {
		return 0, stateRec{}, corrupt
	}
	v = v[n:]
	if len(v) == 0 {
		return off, stateRec{}, nil
	}
	st := stateRec{kind: v[0]}
	v = v[1:]
	switch st.kind {
	case stateCreate, statePL:
		st.json = v
	case stateMember:
		l, n := binary.Uvarint(v)
		if n <= 0 || uint64(len(v)-n) < l {
			return 0, stateRec{}, corrupt
		}
		st.membership, st.displayName = string(v[n:n+int(l)]), string(v[n+int(l):])
	default:
		return 0, stateRec{}, corrupt
	}
	return off, st, nil
}

// clearRoom drops what a previous create event of the room left (a room
// ID reused: never in practice, but the fold must not mix two rooms).
func (b *batch) clearRoom(roomID string) error {
	for _, pre := range []byte{pMember, pLocal} {
		k := projections.Key(pre, roomID, "")
		if err := b.w.DeleteRange(k, projections.PrefixEnd(k)); err != nil {
			return err
		}
	}
	return b.saveRoom(roomID, b.rooms[roomID])
}

// resetState starts a room over from the state a resident server sent
// with our join (facts.PDU.StateBefore).
func (b *batch) resetState(roomID string, version *stateres.RoomVersion, state [][3]string) (*roomState, error) {
	rs := &roomState{rec: &roomRec{Version: version.ID}, version: version}
	b.rooms[roomID] = rs
	if err := b.clearRoom(roomID); err != nil {
		return nil, err
	}
	for _, t := range state {
		if t[0] != stateres.MRoomMember && t[0] != stateres.MRoomPowerLevels && t[0] != stateres.MRoomCreate {
			continue
		}
		k := eventKey(t[2])
		raw, ok, err := b.w.Get(k)
		if err != nil {
			return nil, err
		}
		if !ok {
			continue
		}
		_, st, err := decodeEvent(k, raw)
		if err != nil {
			return nil, err
		}
		if st.eventType() != t[0] {
			continue // not one the fold follows (a create or power levels event with a state key)
		}
		if err := b.applyState(roomID, rs, t[1], st); err != nil {
			return nil, err
		}
	}
	return rs, nil
}

func (b *batch) applyState(roomID string, rs *roomState, stateKey string, st stateRec) error {
	switch st.kind {
	case stateCreate:
		rs.rec.Create, rs.pl = st.json, nil
		return b.saveRoom(roomID, rs)
	case statePL:
		rs.rec.PL, rs.pl = st.json, nil
		return b.saveRoom(roomID, rs)
	case stateMember:
		k := projections.Key(pMember, roomID, stateKey)
		old, err := projections.GetJSON[memberRec](b.w, k)
		if err != nil {
			return err
		}
		wasJoined := old != nil && old.Membership == "join"
		dn := st.displayName
		if err := projections.PutJSON(b.w, k, memberRec{Membership: st.membership, DisplayName: dn}); err != nil {
			return err
		}
		joined := st.membership == "join"
		if b.p.local(stateKey) && (joined != wasJoined || joined && old.DisplayName != dn) {
			rs.locals = nil
			lk := projections.Key(pLocal, roomID, stateKey)
			if joined {
				err = b.w.Set(lk, []byte(dn))
			} else {
				err = b.w.Delete(lk)
			}
			if err != nil {
				return err
			}
		}
		if joined != wasJoined {
			if joined {
				rs.rec.Joined++
			} else {
				rs.rec.Joined--
			}
			return b.saveRoom(roomID, rs)
		}
	}
	return nil
}

// evaluate runs the push rules of every local user the event may notify
// (the joined members but the sender, and a local invitee) against the
// room as it was before the event, and records the notifications.
func (b *batch) evaluate(e englog.Entry, rs *roomState, ev *stateres.Event) error {
	roomID, sender := ev.RoomID(), ev.Sender()
	users, err := b.locals(roomID, rs)
	if err != nil {
		return err
	}
	if b.p.local(sender) && ev.StateKey() == nil {
		// Sending in a room reads it up to there.
		if err := b.readUpTo(sender, roomID, e.Offset); err != nil {
			return err
		}
	}
	targets := make([]localMember, 0, len(users)+1)
	for _, u := range users {
		if u.userID != sender {
			targets = append(targets, u)
		}
	}
	if ev.Type() == stateres.MRoomMember && ev.StateKey() != nil && b.p.local(*ev.StateKey()) && *ev.StateKey() != sender &&
		strings.Contains(string(ev.Content()), `"invite"`) {
		var c struct {
			Membership string `json:"membership"`
		}
		if json.Unmarshal(ev.Content(), &c) == nil && c.Membership == "invite" {
			// Not joined, so not among the locals: their display name is
			// the one their member record holds, if any.
			invitee := localMember{userID: *ev.StateKey()}
			m, err := projections.GetJSON[memberRec](b.w, projections.Key(pMember, roomID, invitee.userID))
			if err != nil {
				return err
			}
			if m != nil {
				invitee.displayName = m.DisplayName
			}
			targets = append(targets, invitee)
		}
	}
	if len(targets) == 0 {
		return nil
	}
	pev, err := push.ParseEvent(ev.JSON())
	if err != nil {
		return nil
	}
	pl := b.powerLevels(roomID, rs)
	ctx := push.Context{
		MemberCount:       rs.rec.Joined,
		SenderPower:       pl.UserLevel(sender).Int64(),
		NotificationPower: map[string]int64{"room": pl.Notifications("room").Int64()},
	}
	thread := ScopeMain
	var rel struct {
		RelatesTo struct {
			RelType string `json:"rel_type"`
			EventID string `json:"event_id"`
		} `json:"m.relates_to"`
	}
	if json.Unmarshal(ev.Content(), &rel) == nil && rel.RelatesTo.RelType == "m.thread" && rel.RelatesTo.EventID != "" {
		thread = rel.RelatesTo.EventID
	}
	// variants are the event's pVariant records written, by set of
	// actions: members the same rules notified the same way share one.
	variants := map[string]byte{}
	for _, t := range targets {
		u := t.userID
		rules := b.rules[u]
		if rules == nil {
			if rules, err = b.p.compiled(b.w, u); err != nil {
				return err
			}
			b.rules[u] = rules
		}
		ctx.UserID, ctx.DisplayName = u, t.displayName
		res, ok := rules.Evaluate(pev, &ctx)
		if !ok || !res.Notify {
			continue
		}
		// The notification is the event's but for the actions (and the
		// highlight and tweaks they carry: push.Result): one record per
		// set of actions, which each member's row names. A copy per
		// member was ~330 bytes each, 9x the event JSON on disk in rooms
		// of a hundred local members.
		rk := string(slices.Concat(res.Actions...)) // self-delimiting JSON values
		variant, ok := variants[rk]
		row := append(offsetBytes(uint64(e.Time)), variant)
		if !ok {
			n := Notification{RoomID: roomID, EventID: ev.EventID(), Offset: e.Offset, TS: ev.OriginServerTS(),
				Actions: res.Actions, Highlight: res.Highlight, ThreadID: thread, Tweaks: res.Tweaks,
				Type: ev.Type(), Sender: sender, At: e.Time}
			rec, err := json.Marshal(n)
			if err != nil {
				return err
			}
			if len(variants) > 0xff {
				// Members' own rules (a sound each, say) made more ways
				// than a row can name: this member's row holds the
				// notification itself, as versions 5 and 6 did.
				row = rec
			} else {
				variant = byte(len(variants))
				variants[rk] = variant
				row[8] = variant
				if err := b.prune([]byte{pVarOld}, []byte{pVariant}, e.Time-Retention, e.Time); err != nil {
					return err
				}
				if err := b.w.Set(variantKey(e.Offset, variant), append(offsetBytes(uint64(e.Time)), rec...)); err != nil {
					return err
				}
			}
		}
		if err := b.prune(projections.Key(pOldest, u), projections.Key(pNotif, u, ""), e.Time-Retention, e.Time); err != nil {
			return err
		}
		if err := b.w.Set(withOffset(projections.Key(pNotif, u), e.Offset), row); err != nil {
			return err
		}
		v := []byte{0}
		if res.Highlight {
			v[0] = 1
		}
		if err := b.w.Set(withOffset(projections.Key(pUnread, u, roomID), e.Offset), append(v, thread...)); err != nil {
			return err
		}
		if err := b.count(u, roomID, thread, res.Highlight); err != nil {
			return err
		}
	}
	return nil
}

func (p *Projection) compiled(r projections.Reader, userID string) (*push.Compiled, error) {
	raw, _, err := r.Get(projections.Key(pRules, userID))
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	c, ok := p.rules[userID]
	p.mu.Unlock()
	if ok && c.raw == string(raw) {
		return c.c, nil
	}
	var stored *push.Ruleset
	if len(raw) > 0 {
		var content struct {
			Global push.Ruleset `json:"global"`
		}
		// The API writes m.push_rules; content it cannot read means the
		// defaults, as the API serves them then.
		if json.Unmarshal(raw, &content) == nil {
			stored = &content.Global
		}
	}
	comp := push.Compile(push.Merge(userID, stored))
	p.mu.Lock()
	if len(p.rules) > 10_000 {
		p.rules = map[string]cachedRules{} // a bound, not state
	}
	p.rules[userID] = cachedRules{raw: string(raw), c: comp}
	p.mu.Unlock()
	return comp, nil
}

func variantKey(off uint64, variant byte) []byte {
	return append(binary.BigEndian.AppendUint64([]byte{pVariant}, off), variant)
}

// prune deletes the oldest records under prefix (a user's pNotif rows, or
// every pVariant record) from before cutoff (log time), at most
// prunePerAdd of them, before one at log time at is added. Their oldest
// record (pOldest, pVarOld: the log time of the first one kept) says
// whether any has expired without reading them: under live traffic none
// has, and the scan it saves (an iterator per notification) was a sixth
// of the fold's evaluation. Both kinds of record start with their log
// time.
func (b *batch) prune(oldestKey, prefix []byte, cutoff, at int64) error {
	if oldest, ok := b.oldest[string(oldestKey)]; ok && oldest >= cutoff {
		return nil
	}
	oldest, kept, err := getOffset(b.w, oldestKey)
	if err != nil {
		return err
	}
	if kept && int64(oldest) >= cutoff {
		b.oldest[string(oldestKey)] = int64(oldest)
		return nil
	}
	first, _, err := b.deleteLeading(prefix, projections.PrefixEnd(prefix), prunePerAdd, func(k, v []byte) (bool, error) {
		t, err := recordAt(k, v)
		return t < cutoff, err
	})
	if err != nil {
		return err
	}
	next := at // none left: the one being added is the first
	if first != nil {
		if next, err = recordAt(first.key, first.value); err != nil {
			return err
		}
	}
	b.oldest[string(oldestKey)] = next
	return b.w.Set(oldestKey, offsetBytes(uint64(next)))
}

// recordAt is the log time a pNotif or pVariant record starts with, or
// that a pNotif row holding its notification whole names.
func recordAt(k, v []byte) (int64, error) {
	if len(v) > 0 && v[0] == '{' {
		var n struct {
			At int64 `json:"at"`
		}
		if err := json.Unmarshal(v, &n); err != nil {
			return 0, fmt.Errorf("notifications: corrupt record %q: %w", k, err)
		}
		return n.At, nil
	}
	if len(v) < 8 {
		return 0, fmt.Errorf("notifications: corrupt record %q (%d bytes); rebuild it with `engram rebuild --projection notifications`", k, len(v))
	}
	return int64(binary.BigEndian.Uint64(v)), nil
}

// keptKey is the first key deleteLeading kept, with its value.
type keptKey struct {
	key   []byte
	value []byte
}

// deleteLeading deletes the keys in [start, end) from the first one on,
// while del says so (nil: every key) and at most limit of them (0: no
// limit), and returns the first key it kept (nil: none is left) and how
// many it deleted. Point deletes, not a range deletion: reads of an
// indexed batch that holds range deletions re-fragment them on every Get.
func (b *batch) deleteLeading(start, end []byte, limit int, del func(k, v []byte) (bool, error)) (*keptKey, int, error) {
	it := b.w.Iter(start, end)
	var keys [][]byte
	var first *keptKey
	for ok := it.First(); ok; ok = it.Next() {
		yes := limit == 0 || len(keys) < limit
		if yes && del != nil {
			var err error
			if yes, err = del(it.Key(), it.Value()); err != nil {
				it.Close()
				return nil, 0, err
			}
		}
		if !yes {
			first = &keptKey{key: slices.Clone(it.Key()), value: slices.Clone(it.Value())}
			break
		}
		keys = append(keys, slices.Clone(it.Key()))
	}
	if err := it.Close(); err != nil {
		return nil, 0, err
	}
	for _, k := range keys {
		if err := b.w.Delete(k); err != nil {
			return nil, 0, err
		}
	}
	return first, len(keys), nil
}

func (b *batch) raiseFloor(userID, roomID, thread string, off uint64) error {
	k := projections.Key(pFloor, userID, roomID, thread)
	cur, _, err := getOffset(b.w, k)
	if err != nil || cur >= off {
		return err
	}
	if thread == "" {
		return b.readUpTo(userID, roomID, off)
	}
	if err := b.w.Set(k, offsetBytes(off)); err != nil {
		return err
	}
	// The thread's entries up to off no longer count.
	return b.recount(userID, roomID)
}

// readUpTo sets the user's unthreaded floor in the room to off, which
// must be above it: always so for the event being folded (every floor is
// the offset of an event folded before it), so a send needs no read of
// the floor. An unthreaded receipt reads every scope up to off: unread
// entries up to there never count again (View.Unread starts above the
// unthreaded floor), so they go.
func (b *batch) readUpTo(userID, roomID string, off uint64) error {
	prefix := projections.Key(pUnread, userID, roomID, "")
	_, deleted, err := b.deleteLeading(prefix, binary.BigEndian.AppendUint64(slices.Clone(prefix), off+1), 0, nil)
	if err != nil {
		return err
	}
	if err := b.w.Set(projections.Key(pFloor, userID, roomID, ""), offsetBytes(off)); err != nil {
		return err
	}
	if deleted == 0 {
		return nil // the counts count the same entries
	}
	return b.recount(userID, roomID)
}

// count adds a new unread entry of the user's in the room to its
// thread's count: it is above every floor, being the newest.
func (b *batch) count(userID, roomID, thread string, highlight bool) error {
	ck := countsKey(userID, roomID)
	room := b.counts[ck]
	if room == nil {
		room = map[string]Count{}
		b.counts[ck] = room
	}
	c, ok := room[thread]
	if !ok {
		k := projections.Key(pCount, userID, roomID, thread)
		raw, found, err := b.w.Get(k)
		if err != nil {
			return err
		}
		if found {
			if c, err = decodeCount(k, raw); err != nil {
				return err
			}
		}
	}
	c.Notifications++
	if highlight {
		c.Highlights++
	}
	room[thread] = c
	return nil
}

func countsKey(userID, roomID string) string { return userID + "\x00" + roomID }

// flushCounts writes the counts count changed.
func (b *batch) flushCounts() error {
	for ck, room := range b.counts {
		userID, roomID, _ := strings.Cut(ck, "\x00")
		for thread, c := range room {
			if err := b.w.Set(projections.Key(pCount, userID, roomID, thread), encodeCount(c)); err != nil {
				return err
			}
		}
	}
	return nil
}

// recount counts the user's unread entries in the room again, per
// thread, against the floors as they are now (after a receipt or a send
// read some of them).
func (b *batch) recount(userID, roomID string) error {
	// It counts the unread entries, count's among them.
	delete(b.counts, countsKey(userID, roomID))
	f, err := floorsOf(b.w, userID, roomID)
	if err != nil {
		return err
	}
	counts := map[string]Count{}
	prefix := projections.Key(pUnread, userID, roomID, "")
	it := b.w.Iter(prefix, projections.PrefixEnd(prefix))
	for ok := it.First(); ok; ok = it.Next() {
		off, thread, hl, ok := unreadEntry(prefix, it.Key(), it.Value())
		if !ok || off <= f[""] || off <= f[thread] {
			continue
		}
		c := counts[thread]
		c.Notifications++
		if hl {
			c.Highlights++
		}
		counts[thread] = c
	}
	if err := it.Close(); err != nil {
		return err
	}
	cp := projections.Key(pCount, userID, roomID, "")
	if _, _, err := b.deleteLeading(cp, projections.PrefixEnd(cp), 0, nil); err != nil {
		return err
	}
	for thread, c := range counts {
		if err := b.w.Set(projections.Key(pCount, userID, roomID, thread), encodeCount(c)); err != nil {
			return err
		}
	}
	return nil
}

func encodeCount(c Count) []byte {
	return binary.BigEndian.AppendUint64(binary.BigEndian.AppendUint64(make([]byte, 0, 16), c.Notifications), c.Highlights)
}

// decodeCount reads a pCount value.
func decodeCount(k, v []byte) (Count, error) {
	if len(v) != 16 {
		return Count{}, fmt.Errorf("notifications: corrupt record %q: %d bytes, want 16", k, len(v))
	}
	return Count{Notifications: binary.BigEndian.Uint64(v), Highlights: binary.BigEndian.Uint64(v[8:])}, nil
}

// unreadEntry reads a pUnread entry under prefix (the user's and room's).
func unreadEntry(prefix, k, v []byte) (off uint64, thread string, highlight, ok bool) {
	if len(v) < 1 || len(k) < len(prefix)+8 {
		return 0, "", false, false
	}
	return binary.BigEndian.Uint64(k[len(prefix):]), string(v[1:]), v[0] == 1, true
}

func (b *batch) applyEDU(e englog.Entry) error {
	var f facts.EDU
	if err := facts.Decode(e, &f); err != nil {
		return err
	}
	if f.Type != facts.EDUReceipt {
		return nil
	}
	var c facts.ReceiptContent
	if json.Unmarshal(f.Content, &c) != nil || !b.p.local(c.UserID) {
		return nil
	}
	if c.ReceiptType != "m.read" && c.ReceiptType != "m.read.private" {
		return nil
	}
	k := eventKey(c.EventID)
	raw, ok, err := b.w.Get(k)
	if err != nil || !ok {
		return err
	}
	off, _, err := decodeEvent(k, raw)
	if err != nil || off == 0 {
		return err // an event not folded: it notified no one
	}
	return b.raiseFloor(c.UserID, c.RoomID, c.ThreadID, off)
}

func pusherKey(userID, appID, pushkey string) []byte {
	return projections.Key(pPusher, userID, appID, pushkey)
}

func (b *batch) deletePusher(userID, appID, pushkey string) error {
	if err := b.w.Delete(pusherKey(userID, appID, pushkey)); err != nil {
		return err
	}
	return b.w.Delete(projections.Key(pPushKey, appID, pushkey, userID))
}

func (b *batch) applyPusherSet(e englog.Entry, f facts.PusherSet) error {
	if f.Pusher == nil {
		return b.deletePusher(f.UserID, f.AppID, f.Pushkey)
	}
	if !f.Append {
		// Spec: without append, the same app ID and pushkey of other
		// users is removed.
		prefix := projections.Key(pPushKey, f.AppID, f.Pushkey, "")
		it := b.w.Iter(prefix, projections.PrefixEnd(prefix))
		var others []string
		for ok := it.First(); ok; ok = it.Next() {
			if u := string(it.Key()[len(prefix):]); u != f.UserID {
				others = append(others, u)
			}
		}
		if err := it.Close(); err != nil {
			return err
		}
		for _, u := range others {
			if err := b.deletePusher(u, f.AppID, f.Pushkey); err != nil {
				return err
			}
		}
	}
	rec := Pusher{Pusher: *f.Pusher, UserID: f.UserID, AppID: f.AppID, Pushkey: f.Pushkey, TS: e.Time, Sent: e.Offset}
	if old, err := projections.GetJSON[Pusher](b.w, pusherKey(f.UserID, f.AppID, f.Pushkey)); err != nil {
		return err
	} else if old != nil {
		// An update keeps its place in the stream and its pushkey_ts.
		rec.Sent, rec.TS = old.Sent, old.TS
	}
	if err := projections.PutJSON(b.w, pusherKey(f.UserID, f.AppID, f.Pushkey), rec); err != nil {
		return err
	}
	return b.w.Set(projections.Key(pPushKey, f.AppID, f.Pushkey, f.UserID), nil)
}

func (b *batch) applyDelivered(f facts.PushDelivered) error {
	k := pusherKey(f.UserID, f.AppID, f.Pushkey)
	rec, err := projections.GetJSON[Pusher](b.w, k)
	if err != nil || rec == nil || rec.Sent >= f.UpTo {
		return err
	}
	rec.Sent = f.UpTo
	return projections.PutJSON(b.w, k, rec)
}

func (b *batch) removeDevicePushers(userID string, remove func(deviceID string) bool) error {
	ps, err := pushersOf(b.w, userID)
	if err != nil {
		return err
	}
	for _, p := range ps {
		if remove(p.DeviceID) {
			if err := b.deletePusher(userID, p.AppID, p.Pushkey); err != nil {
				return err
			}
		}
	}
	return nil
}

func pushersOf(r projections.Reader, userID string) ([]Pusher, error) {
	return projections.ListJSON[Pusher](r, projections.Key(pPusher, userID, ""), nil)
}
