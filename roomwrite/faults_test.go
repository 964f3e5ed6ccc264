package roomwrite

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/engram-hs/engram/internal/mxerr"
	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/projections"
	"github.com/engram-hs/engram/projections/rooms"
	"github.com/engram-hs/engram/stateres"
)

var errInjected = errors.New("injected read error")

// failingReader fails every read of one key of the rooms projection.
type failingReader struct {
	projections.Reader
	key []byte
}

func (f failingReader) Get(k []byte) ([]byte, bool, error) {
	if bytes.Equal(k, f.key) {
		return nil, false, errInjected
	}
	return f.Reader.Get(k)
}

// failingLog fails reads of the log at one offset.
type failingLog struct {
	rooms.EventLog
	offset uint64
}

func (f failingLog) Read(from uint64, max int) ([]englog.Entry, error) {
	if from == f.offset {
		return nil, errInjected
	}
	return f.EventLog.Read(from, max)
}

// Key layout of the rooms projection (projections/rooms/rooms.go).
const (
	keyEvent   = 'e'
	keyState   = 's'
	keyRoom    = 'R'
	keyTxn     = 'x'
	keyChanged = 'C'
)

// A failed read on the write path is never "absent": whichever record a
// send needs (the room, its changed-at label, the transaction ID, each
// state event its auth reads, their records, their JSON in the log)
// fails to read, the send fails with an internal error (api answers 500
// M_UNKNOWN and logs it) and nothing is appended. The sender is muted
// (events_default 50): were a failed power-levels read taken as absent,
// the defaults would let the message through.
func TestSendFailsOnEveryReadError(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	alice, bob := user("alice"), user("bob")
	room := r.createRoom(t, alice, "12")
	r.join(t, room, bob)
	if _, err := r.w.Send(ctx, stateres.ProtoEvent{Type: stateres.MRoomPowerLevels, StateKey: strptr(""), Sender: alice, RoomID: room,
		Content: mustJSON(map[string]any{"events_default": 50, "state_default": 50})}, nil); err != nil {
		t.Fatal(err)
	}
	send := func() (string, error) {
		return r.w.Send(ctx, stateres.ProtoEvent{Type: "m.room.message", Sender: bob, RoomID: room,
			Content: mustJSON(map[string]string{"msgtype": "m.text", "body": "muted"})}, &facts.TxnRef{UserID: bob, DeviceID: "DEV", TxnID: "t1"})
	}
	if _, err := send(); !forbidden(err) {
		t.Fatalf("a muted user's message: got %v, want M_FORBIDDEN", err)
	}

	v := r.w.View()
	stateRecord := func(typ, sk string) (string, uint64) {
		e, err := v.StateEvent(room, typ, sk)
		if err != nil || e == nil {
			t.Fatalf("state (%s, %q): %v", typ, sk, err)
		}
		return e.EventID, e.Offset
	}
	plID, plOff := stateRecord(stateres.MRoomPowerLevels, "")
	createID, createOff := stateRecord(stateres.MRoomCreate, "")
	memberID, memberOff := stateRecord(stateres.MRoomMember, bob)
	ext, err := v.Room(room)
	if err != nil {
		t.Fatal(err)
	}
	extID := ext.Extremities[len(ext.Extremities)-1]
	cases := []struct {
		name   string
		key    []byte // a rooms projection key whose read fails
		offset uint64 // or a log offset whose read fails
	}{
		{name: "changed-at label", key: projections.Key(keyChanged, room)},
		{name: "room record", key: projections.Key(keyRoom, room)},
		{name: "transaction ID", key: projections.Key(keyTxn, bob, "DEV", room, "send", "m.room.message", "t1")},
		{name: "forward extremity record", key: projections.Key(keyEvent, extID)},
		{name: "power levels state", key: projections.Key(keyState, room, stateres.MRoomPowerLevels, "")},
		{name: "power levels record", key: projections.Key(keyEvent, plID)},
		{name: "power levels JSON in the log", offset: plOff},
		{name: "create state", key: projections.Key(keyState, room, stateres.MRoomCreate, "")},
		{name: "create record", key: projections.Key(keyEvent, createID)},
		{name: "create JSON in the log", offset: createOff},
		{name: "sender's membership state", key: projections.Key(keyState, room, stateres.MRoomMember, bob)},
		{name: "sender's membership record", key: projections.Key(keyEvent, memberID)},
		{name: "sender's membership JSON in the log", offset: memberOff},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			// Cold caches: every record is read from the projection.
			r.w.states = stateCache{}
			r.w.events = rooms.NewEventCache(eventCacheSize)
			r.w.faults = &faults{
				reader: func(pr projections.Reader) projections.Reader { return failingReader{pr, c.key} },
				log:    func(l rooms.EventLog) rooms.EventLog { return failingLog{l, c.offset} },
			}
			defer func() { r.w.faults = nil }()
			before := r.node.LastOffset()
			id, err := send()
			var me *mxerr.Error
			switch {
			case err == nil:
				t.Fatalf("the send succeeded (event %s) although a read failed", id)
			case errors.As(err, &me):
				t.Fatalf("the send answered %v: a failed read must be an internal error (500), not a verdict", err)
			case !errors.Is(err, errInjected):
				t.Fatalf("the error %v does not wrap the read error", err)
			case !strings.Contains(err.Error(), "rooms projection"):
				t.Fatalf("the error %q does not name the projection", err)
			}
			if after := r.node.LastOffset(); after != before {
				t.Fatalf("the log moved from offset %d to %d: something was appended", before, after)
			}
		})
	}
	// Without faults the verdict is the right one again.
	r.w.states = stateCache{}
	if _, err := send(); !forbidden(err) {
		t.Fatalf("a muted user's message: got %v, want M_FORBIDDEN", err)
	}
	if _, err := r.sendText(room, alice); err != nil {
		t.Fatal(err)
	}
}
