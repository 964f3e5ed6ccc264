// Package rooms folds room events out of the log: "events by ID, each
// room's timeline, current state and members, each user's memberships,
// transaction IDs, and the alias directory".
//
// The stream position of an event is the log offset of the entry that
// carried it, so timelines, sync tokens and pagination tokens are all log
// offsets.
package rooms

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"

	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/projections"
	"github.com/engram-hs/engram/stateres"
)

// Key prefixes; parts are separated by 0x00 and offsets are 8 bytes big
// endian so that keys sort by stream position.
const (
	pEvent      = 'e' // e eventID -> Event, binary (records.go); or a placeholder holding redactions seen before it
	pTimeline   = 't' // t room 0 offset -> eventID; t room 0 offset seq -> eventID for a historical event placed after offset (facts.TimelinePlace)
	pState      = 's' // s room 0 type 0 stateKey -> eventID
	pRoom       = 'R' // R room -> Room
	pMember     = 'm' // m user 0 room -> Membership
	pTxn        = 'x' // x user 0 device 0 room 0 send|redact 0 type|target 0 txn -> eventID
	pForgotten  = 'F' // F user 0 room -> ""
	pAlias      = 'a' // a alias -> AliasRecord
	pRoomAlias  = 'A' // A room 0 alias -> ""
	pPublic     = 'P' // P room -> "" (published in the room directory)
	pStateHist  = 'h' // h room 0 type 0 stateKey 0 offset -> eventID (every state change)
	pChanged    = 'C' // C room -> offset (8 bytes) of the room's newest timeline event
	pUnfoldable = 'U' // U offset -> Unfoldable (a PDU entry this fold refused to fold)
	pTimeTS     = 'o' // o room 0 origin_server_ts (8 bytes, sign flipped) offset [seq] -> eventID: the timeline by its events' timestamps (timestamp.go)
	sep         = 0
)

// Event is a stored room event.
type Event struct {
	EventID string `json:"event_id"`
	RoomID  string `json:"room_id"`
	Offset  uint64 `json:"offset"`
	// JSON is the PDU as stored (canonical), redacted once a redaction
	// applies to it. View.Event loads it from the log.
	JSON json.RawMessage `json:"json"`
	// Rejected/SoftFailed events are stored (for auth chains and
	// federation) but never in a timeline or in current state.
	Rejected   string        `json:"rejected,omitempty"`
	SoftFailed bool          `json:"soft_failed,omitempty"`
	Outlier    bool          `json:"outlier,omitempty"`
	Txn        *facts.TxnRef `json:"txn,omitempty"`
	RedactedBy string        `json:"redacted_by,omitempty"`
	Replaces   string        `json:"replaces,omitempty"` // the state event this one replaced
	Version    string        `json:"room_version"`

	pdu *stateres.Event // JSON parsed, when View.Event parsed it from the log
}

// Room is what the projection knows about a room as a whole.
type Room struct {
	RoomID  string `json:"room_id"`
	Version string `json:"room_version"`
	Creator string `json:"creator"`
	// Extremities are the forward extremities: the prev_events of the
	// next local event. ExtremityGroups are the state groups after each
	// (stategroups.go), and StateGroup is the current state: the
	// resolution of theirs.
	Extremities     []string `json:"extremities"`
	ExtremityGroups []string `json:"extremity_groups,omitempty"`
	StateGroup      string   `json:"state_group,omitempty"`

	// Bookkeeping of the fold, so that most events need no read of their
	// own key (a random key: a block read and decompression per level):
	// MaxTS is the newest origin_server_ts of the room's stored events. A
	// duplicate has its original's room and origin_server_ts (both are
	// hashed into the event ID), so an event newer than MaxTS is new.
	// PendingRedactions counts the redactions sent in this room whose
	// target has not been seen yet (placeholders to look for).
	MaxTS             int64 `json:"max_ts,omitempty"`
	PendingRedactions int   `json:"pending_redactions,omitempty"`
}

// Membership is one user's current membership of one room.
type Membership struct {
	RoomID     string `json:"room_id"`
	Membership string `json:"membership"`
	EventID    string `json:"event_id"`
	Offset     uint64 `json:"offset"`
}

// AliasRecord maps an alias to its room.
type AliasRecord struct {
	RoomID  string `json:"room_id"`
	Creator string `json:"creator"`
}

// Projection is the rooms read model.
type Projection struct {
	log      EventLog
	onCommit func(Touched)

	// members: the users whose membership the last applied batch changed
	// (batch.members), handed from Apply to AfterCommit. The engine calls
	// them one after the other for a batch; the mutex is for the race
	// detector's sake and for a shadow rebuild's Apply.
	mu                               sync.Mutex
	members, memberRooms, stateRooms []string
}

// Touched is what a committed batch may have changed, so that only the
// long-polls it concerns wake: the rooms that received events and the
// users whose membership changed (an invite or a join of a room they are
// not polling yet; state resolution may change anyone's). First and Last
// bound the batch: a First that does not follow the previous Last means
// the batch made more visible at once (a rebuilt generation took over),
// and whoever keeps a copy of what Touched reports must start over.
type Touched struct {
	First uint64 // the batch's first offset
	Last  uint64 // the batch's last offset
	Rooms []string
	Users []string
	// StateRooms are the rooms whose current state changed, and
	// MemberRooms those whose members did.
	StateRooms, MemberRooms []string
}

// New returns the projection of the given log (the fold reads events
// back from it to resolve state); onCommit (may be nil) is called after
// each committed batch with what it touched, to wake long-polls.
func New(log EventLog, onCommit func(Touched)) *Projection {
	return &Projection{log: log, onCommit: onCommit}
}

func (*Projection) Name() string { return "rooms" }

// Version 6: state at every event (state groups, stategroups.go) and
// current state as the resolution over the forward extremities.
//
// Version 10: an outlier leave of a room not held here (an invite
// rejected through the inviting server) replaces the pending invite or
// knock.
//
// Version 11: the notification counters (n, N, g, G, l, T records) are
// gone; unread counts come from the notifications projection.
//
// Version 12: a transaction ID is scoped to the request path as well as
// the device (the room and event type it was sent to, or the event it
// redacts), as the spec asks: the same ID in another room is a new event.
//
// Version 13: an outlier knock of a room not held here (a knock sent
// through the room's server) is the knocker's membership.
//
// Version 14: the timeline indexed by origin_server_ts (o records), so
// timestamp_to_event seeks instead of reading the whole room.
func (*Projection) Version() int { return 14 }

// AfterCommit tells onCommit what the batch touched. It decodes only the
// few fields it needs, so the fold pays nothing for it.
func (p *Projection) AfterCommit(entries []englog.Entry) {
	if p.onCommit == nil || len(entries) == 0 {
		return
	}
	t := Touched{First: entries[0].Offset, Last: entries[len(entries)-1].Offset}
	seenRoom, seenUser := map[string]bool{}, map[string]bool{}
	p.mu.Lock()
	for _, u := range p.members {
		if !seenUser[u] {
			seenUser[u] = true
			t.Users = append(t.Users, u)
		}
	}
	t.MemberRooms, t.StateRooms = p.memberRooms, p.stateRooms
	p.members, p.memberRooms, p.stateRooms = nil, nil, nil
	p.mu.Unlock()
	for _, e := range entries {
		if e.Kind != englog.KindPDU {
			continue
		}
		f, err := decodePDU(e)
		if err != nil {
			continue
		}
		room := contentString(f.Event, "room_id")
		if room != "" && !seenRoom[room] {
			seenRoom[room] = true
			t.Rooms = append(t.Rooms, room)
		}
		if contentString(f.Event, "type") == stateres.MRoomMember {
			if u := contentString(f.Event, "state_key"); u != "" && !seenUser[u] {
				seenUser[u] = true
				t.Users = append(t.Users, u)
			}
		}
	}
	p.onCommit(t)
}

func offsetKey(prefix byte, room string, off uint64) []byte {
	k := projections.Key(prefix, room)
	k = append(k, sep)
	return binary.BigEndian.AppendUint64(k, off)
}

// placeKey is the timeline key of a historical event: the key of the
// offset it follows with its sequence number appended, so that it sorts
// after that offset's own event and before the next offset's.
func placeKey(room string, p facts.TimelinePlace) []byte {
	return binary.BigEndian.AppendUint64(offsetKey(pTimeline, room, p.After), p.Seq)
}

// Apply folds a batch.
func (p *Projection) Apply(w projections.Writer, entries []englog.Entry) error {
	b := newBatch(w, p.log)
	for _, e := range entries {
		var err error
		switch e.Kind {
		case englog.KindPDU:
			err = b.applyPDU(e)
		case englog.KindRoomForgotten:
			var f facts.RoomForgotten
			if err = facts.Decode(e, &f); err == nil {
				err = w.Set(projections.Key(pForgotten, f.UserID, f.RoomID), nil)
			}
		case englog.KindAliasSet:
			var f facts.AliasSet
			if err = facts.Decode(e, &f); err == nil {
				err = applyAliasSet(w, f)
			}
		case englog.KindAliasRemoved:
			var f facts.AliasRemoved
			if err = facts.Decode(e, &f); err == nil {
				var a *AliasRecord
				if a, err = projections.GetJSON[AliasRecord](w, projections.Key(pAlias, f.Alias)); err == nil && a != nil {
					if err = w.Delete(projections.Key(pAlias, f.Alias)); err == nil {
						err = w.Delete(projections.Key(pRoomAlias, a.RoomID, f.Alias))
					}
				}
			}
		case englog.KindExtremitiesDropped:
			var f facts.ExtremitiesDropped
			if err = facts.Decode(e, &f); err == nil {
				err = b.dropExtremities(e.Offset, f)
			}
		case englog.KindRoomVisibilitySet:
			var f facts.RoomVisibilitySet
			if err = facts.Decode(e, &f); err == nil {
				if f.Visibility == "public" {
					err = w.Set(projections.Key(pPublic, f.RoomID), nil)
				} else {
					err = w.Delete(projections.Key(pPublic, f.RoomID))
				}
			}
		}
		if err != nil {
			return err
		}
	}
	if err := b.flush(); err != nil {
		return err
	}
	p.mu.Lock()
	p.members, p.memberRooms, p.stateRooms = b.members, b.memberRooms, b.stateRooms
	p.mu.Unlock()
	return nil
}

func (b *batch) applyPDU(e englog.Entry) error {
	pdu, err := projections.ReadPDU(b.w, e)
	if err != nil {
		return err
	}
	f := pdu.PDU
	version, ok, err := foldVersion(f.RoomVersion)
	if err != nil {
		return err
	}
	if !ok {
		return b.unfoldable(e.Offset, f, UnfoldableVersion)
	}
	ev, err := pdu.Parsed, pdu.ParseErr
	if version != pdu.Version {
		// Another version table than stateres's (a test's: versionTable).
		ev, err = stateres.ParseTrustedEvent(version, f.Event, f.EventID)
	}
	if err != nil {
		// Writers refuse malformed PDUs before proposing; one that got
		// into the log anyway is recorded, never folded.
		return b.unfoldable(e.Offset, f, UnfoldableMalformed)
	}
	w := b.w
	id := ev.EventID()
	roomID := ev.RoomID()
	old, err := b.previousRecord(ev)
	if err != nil || (old != nil && !old.placeholder && old.Rejected == "" && !old.Outlier) {
		return err // already folded: duplicates are no-ops
	}
	// The record holds no JSON: the log holds the event at rec.Offset
	// (View.Event reads it there), and copying it into every record made
	// the fold write, and Pebble compact, every event twice.
	rec := &storedEvent{Event: Event{EventID: id, RoomID: roomID, Offset: e.Offset, Rejected: f.Rejected,
		SoftFailed: f.SoftFailed, Outlier: f.Outlier, Txn: f.Txn, Version: version.ID}}
	if old != nil {
		rec.pending = old.pending
	}
	inDAG := f.Rejected == "" && !f.SoftFailed && !f.Outlier
	// A historical event (backfilled) is in the DAG with a state of its
	// own, at its place in the timeline, but older than the current state.
	historical := inDAG && f.Backfill != nil
	// Soft-failed events have a state (a later event may cite them as a
	// prev event) but do not advance the room's current state.
	hasState := f.Rejected == "" && !f.Outlier

	if hasState {
		room, err := b.room(roomID)
		if err != nil {
			return err
		}
		if inDAG && !historical && ev.Type() == stateres.MRoomCreate && ev.StateKey() != nil && *ev.StateKey() == "" {
			fresh := &Room{RoomID: roomID, Version: version.ID, Creator: ev.Sender()}
			if room != nil {
				fresh.MaxTS, fresh.PendingRedactions = room.MaxTS, room.PendingRedactions
			}
			room = fresh
			b.rooms[roomID] = room
		}
		if room == nil && inDAG && f.StateBefore != nil {
			// A room joined over federation: its first event here is the
			// join, with the state the resident server sent.
			room = &Room{RoomID: roomID, Version: version.ID, Creator: b.creatorIn(f.StateBefore)}
			b.rooms[roomID] = room
		}
		if room == nil {
			// An event of a room whose create event we have not folded:
			// keep it as an outlier until federation backfills.
			rec.Outlier, inDAG, hasState = true, false, false
		} else {
			b.folding = ev
			before, after, replaces, err := b.stateOf(room, ev, f)
			if err != nil {
				return err
			}
			rec.hasState, rec.before, rec.after, rec.Replaces = true, before, after, replaces
			if inDAG && !historical {
				changes, err := b.advanceCurrent(room, ev, before, after)
				if err != nil {
					return err
				}
				if err := b.applyCurrentChanges(roomID, ev, changes, e.Offset); err != nil {
					return err
				}
			}
			b.dirtyRoom(roomID)
		}
	}
	// The fold never reads the timelines (t, o) or the state history (h):
	// only the views do, so they are written unread (projections.SetUnread;
	// deleting one would take projections.DeleteUnread).
	if historical {
		// Before the events at later offsets, so neither /sync's position
		// nor any reader's wake-up moves.
		if err := projections.SetUnread(w, placeKey(roomID, *f.Backfill), []byte(id)); err != nil {
			return err
		}
		if err := projections.SetUnread(w, tsKey(roomID, ev.OriginServerTS(), placeKey(roomID, *f.Backfill)), []byte(id)); err != nil {
			return err
		}
	} else if inDAG {
		if err := projections.SetUnread(w, offsetKey(pTimeline, roomID, e.Offset), []byte(id)); err != nil {
			return err
		}
		if err := projections.SetUnread(w, tsKey(roomID, ev.OriginServerTS(), offsetKey(pTimeline, roomID, e.Offset)), []byte(id)); err != nil {
			return err
		}
		b.changed(roomID, e.Offset)
		if f.Txn != nil {
			// Invariant: one transaction ID maps to one event, the first
			// folded. Enforced here, in log order; roomwrite.Writer.Send
			// checks it before building (a fast path under the room lock)
			// and answers a retry from this mapping.
			k := txnKey(f.Txn.UserID, f.Txn.DeviceID, TxnScopeOf(ev.RoomID(), ev.Type(), ev.Redacts()), f.Txn.TxnID)
			if _, taken, err := w.Get(k); err != nil {
				return err
			} else if !taken {
				if err := w.Set(k, []byte(id)); err != nil {
					return err
				}
			}
		}
	}
	if err := b.stored(ev); err != nil {
		return err
	}
	if !inDAG {
		if rec.Outlier && f.Rejected == "" && ev.Type() == stateres.MRoomMember && ev.StateKey() != nil {
			// An invite to a room this server does not hold (received
			// over federation): the invitee's membership, so that their
			// /sync shows it, until they join or the room arrives. A
			// leave of such a room (the invitee rejected the invite
			// through the inviting server) replaces an invite or knock,
			// and nothing else: the outliers of a join's auth chain hold
			// old leaves that must not touch anyone's membership.
			switch contentString(ev.Content(), "membership") {
			case "knock":
				// A knock sent through another server (KnockRoom): the
				// knocker's membership, so that their /sync shows it
				// under knock. It replaces no invite, join or ban: an
				// old knock of a join's auth chain must not undo them.
				if room, err := b.room(roomID); err != nil {
					return err
				} else if room == nil {
					cur, err := projections.GetJSON[Membership](w, projections.Key(pMember, *ev.StateKey(), roomID))
					if err != nil {
						return err
					}
					if cur == nil || cur.Membership == "leave" || cur.Membership == "knock" {
						if err := applyMembership(w, ev, *ev.StateKey(), e.Offset); err != nil {
							return err
						}
					}
				}
			case "invite":
				if room, err := b.room(roomID); err != nil {
					return err
				} else if room == nil {
					if err := applyMembership(w, ev, *ev.StateKey(), e.Offset); err != nil {
						return err
					}
				}
			case "leave":
				if room, err := b.room(roomID); err != nil {
					return err
				} else if room == nil {
					cur, err := projections.GetJSON[Membership](w, projections.Key(pMember, *ev.StateKey(), roomID))
					if err != nil {
						return err
					}
					if cur != nil && (cur.Membership == "invite" || cur.Membership == "knock") {
						if err := applyMembership(w, ev, *ev.StateKey(), e.Offset); err != nil {
							return err
						}
					}
				}
			}
		}
		// Pending redactions stay with the record until the event is
		// folded into the DAG.
		return putEvent(w, rec)
	}
	// A redaction that arrived before this event applies now, the
	// redaction IDs in order, as the first one of the event's room wins.
	pending := rec.pending
	rec.pending = nil
	slices.SortFunc(pending, func(a, b pendingRedaction) int { return strings.Compare(a.redactionID, b.redactionID) })
	for _, pr := range pending {
		if pr.roomID == roomID && rec.RedactedBy == "" {
			rec.RedactedBy = pr.redactionID
		}
		if err := b.addPending(pr.roomID, -1); err != nil {
			return err
		}
	}
	if err := putEvent(w, rec); err != nil {
		return err
	}
	if ev.Type() == stateres.MRoomRedaction && ev.Redacts() != "" {
		return b.redact(ev.Redacts(), id, roomID)
	}
	return nil
}

// applyAliasSet claims an alias for a room.
//
// Invariant: an alias names one room, and the first claim in log order
// wins; a claim of an alias that is taken changes nothing (an alias moves
// only by AliasRemoved then AliasSet, as an upgrade appends them).
// Enforced here, so every node of a cluster folds the same owner whatever
// each API node saw when it decided; the API's check before appending is
// a fast path, and it answers from the record read back after the append
// (api putAlias, createRoom).
func applyAliasSet(w projections.Writer, f facts.AliasSet) error {
	k := projections.Key(pAlias, f.Alias)
	if _, taken, err := w.Get(k); err != nil || taken {
		return err
	}
	if err := projections.PutJSON(w, k, AliasRecord{RoomID: f.RoomID, Creator: f.Creator}); err != nil {
		return err
	}
	return w.Set(projections.Key(pRoomAlias, f.RoomID, f.Alias), nil)
}

// foldVersions are the room versions this fold folds, pinned with the
// projection's Version: what the fold does with a PDU must depend on the
// log alone, not on the room versions the running build's stateres
// knows, or a newer build would fold the same log into different bytes.
// Adding a version here is a change of the fold: bump Version() with it,
// so that stores rebuild.
var foldVersions = map[string]bool{"1": true, "2": true, "3": true, "4": true, "5": true, "6": true,
	"7": true, "8": true, "9": true, "10": true, "11": true, "12": true}

// versionTable is stateres.Version; tests swap it for another build's.
var versionTable = stateres.Version

// foldVersion is the room version a PDU is folded with; false when the
// fold does not fold that version. A pinned version this build's stateres
// does not know is an error: this build cannot fold its own log.
func foldVersion(id string) (*stateres.RoomVersion, bool, error) {
	if !foldVersions[id] {
		return nil, false, nil
	}
	v, ok := versionTable(id)
	if !ok {
		return nil, false, fmt.Errorf("rooms: room version %s is folded by rooms projection version %d but unknown to this build's stateres", id, (&Projection{}).Version())
	}
	return v, true, nil
}

// Reasons a PDU entry is recorded as unfoldable. They are stored: never
// change one, only add new ones (with a bump of Version()).
const (
	UnfoldableVersion   = "unsupported room version"
	UnfoldableMalformed = "malformed PDU"
)

// Unfoldable is a PDU entry the fold recorded instead of folding: what
// the entry says of itself, and why. Its key is the entry's offset.
type Unfoldable struct {
	Offset      uint64 `json:"offset"`
	EventID     string `json:"event_id,omitempty"`
	RoomVersion string `json:"room_version"`
	Reason      string `json:"reason"`
}

// unfoldable records a PDU entry that is not folded: it is in no room,
// timeline or state, and every build reads the record the same way.
func (b *batch) unfoldable(off uint64, f facts.PDU, reason string) error {
	return projections.PutJSON(b.w, binary.BigEndian.AppendUint64([]byte{pUnfoldable}, off),
		Unfoldable{Offset: off, EventID: f.EventID, RoomVersion: f.RoomVersion, Reason: reason})
}

// previousRecord is the record already stored under the event's ID: a
// duplicate, an outlier or rejected copy to fold again, a placeholder
// holding redactions; nil when there is none.
func (b *batch) previousRecord(ev stateres.PDU) (*storedEvent, error) {
	room, err := b.room(ev.RoomID())
	if err != nil {
		return nil, err
	}
	if room != nil && ev.OriginServerTS() > room.MaxTS && room.PendingRedactions == 0 {
		return nil, nil // newer than every event of the room, and no placeholder to find
	}
	return getEvent(b.w, ev.EventID())
}

// stored notes that a record of the event is stored, for previousRecord.
func (b *batch) stored(ev stateres.PDU) error {
	room, err := b.room(ev.RoomID())
	if err != nil || room == nil || ev.OriginServerTS() <= room.MaxTS {
		return err
	}
	room.MaxTS = ev.OriginServerTS()
	b.dirtyRoom(ev.RoomID())
	return nil
}

// addPending counts redactions of the room waiting for their targets.
func (b *batch) addPending(roomID string, n int) error {
	room, err := b.room(roomID)
	if err != nil || room == nil {
		return err
	}
	room.PendingRedactions = max(0, room.PendingRedactions+n)
	b.dirtyRoom(roomID)
	return nil
}

func getEvent(r projections.Reader, id string) (*storedEvent, error) {
	k := projections.Key(pEvent, id)
	v, ok, err := r.Get(k)
	if err != nil || !ok {
		return nil, err
	}
	return decodeEvent(k, v)
}

func putEvent(w projections.Writer, e *storedEvent) error {
	return w.Set(projections.Key(pEvent, e.EventID), encodeEvent(e))
}

func applyMembership(w projections.Writer, ev stateres.PDU, userID string, off uint64) error {
	membership := contentString(ev.Content(), "membership")
	if membership == "join" || membership == "invite" || membership == "knock" {
		if err := w.Delete(projections.Key(pForgotten, userID, ev.RoomID())); err != nil {
			return err
		}
	}
	return projections.PutJSON(w, projections.Key(pMember, userID, ev.RoomID()), Membership{RoomID: ev.RoomID(), Membership: membership, EventID: ev.EventID(), Offset: off})
}

// redact replaces the target's JSON by its redacted form, if the target is
// in the same room; a redaction of a target not seen yet waits in a
// placeholder record under the target's key.
func (b *batch) redact(targetID, redactionID, roomID string) error {
	w := b.w
	t, err := getEvent(w, targetID)
	if err != nil {
		return err
	}
	if t == nil {
		t = &storedEvent{Event: Event{EventID: targetID}, placeholder: true}
	}
	if t.placeholder {
		t.pending = append(t.pending, pendingRedaction{redactionID: redactionID, roomID: roomID})
		if err := b.addPending(roomID, 1); err != nil {
			return err
		}
		return putEvent(w, t)
	}
	if t.RoomID != roomID || t.RedactedBy != "" {
		return nil
	}
	// Readers redact the event's JSON when they load it (View.Event):
	// stateres.Redact is a function of the event and its room version.
	t.RedactedBy = redactionID
	return putEvent(w, t)
}

// applyCurrentChanges writes changes to the room's current state (made
// at offset off, while folding ev): the state entries, their history and
// the memberships they set. A change is usually ev itself; state
// resolution may also bring back an older event or remove a key.
func (b *batch) applyCurrentChanges(roomID string, ev stateres.PDU, changes []stateEntry, off uint64) error {
	w := b.w
	for _, c := range changes {
		sKey := projections.Key(pState, roomID, c.Key.Type, c.Key.StateKey)
		var err error
		if c.EventID == "" {
			err = w.Delete(sKey)
		} else {
			err = w.Set(sKey, []byte(c.EventID))
		}
		if err != nil {
			return err
		}
		// "" in the history: the key left the state at off.
		hKey := binary.BigEndian.AppendUint64(append(projections.Key(pStateHist, roomID, c.Key.Type, c.Key.StateKey), sep), off)
		if err := projections.SetUnread(w, hKey, []byte(c.EventID)); err != nil {
			return err
		}
		if k := "s" + roomID; !b.memberSeen[k] {
			b.memberSeen[k] = true
			b.stateRooms = append(b.stateRooms, roomID)
		}
		if c.Key.Type != stateres.MRoomMember {
			continue
		}
		if k := "u" + c.Key.StateKey; !b.memberSeen[k] {
			b.memberSeen[k] = true
			b.members = append(b.members, c.Key.StateKey)
		}
		if k := "r" + roomID; !b.memberSeen[k] {
			b.memberSeen[k] = true
			b.memberRooms = append(b.memberRooms, roomID)
		}
		switch c.EventID {
		case ev.EventID():
			err = applyMembership(w, ev, c.Key.StateKey, off)
		case "":
			err = w.Delete(projections.Key(pMember, c.Key.StateKey, roomID))
		default:
			var rec *Event
			var pdu stateres.PDU
			if rec, pdu, err = b.storedEventAt(c.EventID); err == nil && pdu != nil {
				err = applyMembership(w, pdu, c.Key.StateKey, rec.Offset)
			}
		}
		if err != nil {
			return err
		}
	}
	return nil
}
