package roomwrite

import (
	"context"
	"errors"
	"strconv"
	"testing"

	"github.com/engram-hs/engram/internal/mxerr"
	"github.com/engram-hs/engram/stateres"
)

// appendBehindCache writes a state event straight to the log, as another
// server of the cluster would: built on the projection, never through
// Send, so the state cache is not told. It returns the event's offset
// once the rooms projection has folded it.
func appendBehindCache(t *testing.T, s *Writer, roomID string, proto stateres.ProtoEvent) (*stateres.Event, uint64) {
	t.Helper()
	b, err := s.Extend(roomID)
	if err != nil {
		t.Fatal(err)
	}
	ev, err := b.Add(proto)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	offs, err := s.log.Append(ctx, b.Proposals(nil)...)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.roomsH.WaitApplied(ctx, offs[0]); err != nil {
		t.Fatal(err)
	}
	return ev, offs[0]
}

func forbidden(err error) bool {
	var me *mxerr.Error
	return errors.As(err, &me) && me.Code == "M_FORBIDDEN"
}

// State that changes behind the cache's back (a raw append to the log)
// is seen by the very next send, both ways: a send is refused once the
// power levels forbid it or the sender left, and allowed again once they
// permit it.
func TestSendSeesStateChangedBehindTheCache(t *testing.T) {
	r := newRig(t)
	s := r.w
	alice, bob := user("alice"), user("bob")
	room := r.createRoom(t, alice, "12")
	r.join(t, room, bob)
	for range 3 {
		if _, err := r.sendText(room, bob); err != nil {
			t.Fatalf("bob's message: %v", err)
		}
	}
	// The cache followed bob's sends (the test below would prove nothing
	// if every send reloaded anyway).
	changed, err := s.View().ChangedAt(room)
	if err != nil {
		t.Fatal(err)
	}
	el := s.states.entries[room]
	if el == nil || el.Value.(*roomState).changedAt != changed {
		t.Fatalf("state cache does not hold the room at its latest change %d", changed)
	}

	powers := func(eventsDefault int) stateres.ProtoEvent {
		return stateres.ProtoEvent{Type: stateres.MRoomPowerLevels, StateKey: strptr(""), Sender: alice,
			Content: mustJSON(map[string]any{"events_default": eventsDefault})} // v12: the creator needs no level
	}
	appendBehindCache(t, s, room, powers(50))
	if _, err := r.sendText(room, bob); !forbidden(err) {
		t.Fatalf("bob sent after the power levels forbade it (err %v); the send was built on stale state", err)
	}
	appendBehindCache(t, s, room, powers(0))
	if _, err := r.sendText(room, bob); err != nil {
		t.Fatalf("bob may send again once the power levels allow it: %v", err)
	}
	appendBehindCache(t, s, room, stateres.ProtoEvent{Type: stateres.MRoomMember, StateKey: strptr(bob),
		Sender: bob, Content: mustJSON(map[string]string{"membership": "leave"})})
	if _, err := r.sendText(room, bob); !forbidden(err) {
		t.Fatalf("bob sent after leaving (err %v); the send was built on stale state", err)
	}
	if _, err := r.sendText(room, alice); err != nil {
		t.Fatalf("alice's message: %v", err)
	}
}

// The cache follows its own send only when nothing else reached the
// room's timeline in between; an interleaved event makes it drop the
// room.
func TestStateCacheFollowsOnlyUninterruptedSends(t *testing.T) {
	r := newRig(t)
	s := r.w
	alice := user("alice")
	roomID := r.createRoom(t, alice, "12")
	topic := func(s string) stateres.ProtoEvent {
		return stateres.ProtoEvent{Type: "m.room.topic", StateKey: strptr(""), Sender: alice, Content: mustJSON(map[string]string{"topic": s})}
	}

	// Uninterrupted: the entry moves to the appended event, with its state.
	rs, err := s.states.get(s.View(), roomID)
	if err != nil {
		t.Fatal(err)
	}
	ev, off := appendBehindCache(t, s, roomID, topic("one"))
	s.states.committed(rs, []*stateres.Event{ev}, []uint64{off})
	if el := s.states.entries[roomID]; el == nil || el.Value.(*roomState).changedAt != off {
		t.Fatalf("the entry did not follow an uninterrupted append to offset %d", off)
	}
	if got, err := rs.lookup("m.room.topic", ""); err != nil || got == nil || got.EventID() != ev.EventID() {
		t.Fatalf("the entry's topic is %v, want the appended %s", got, ev.EventID())
	}
	if got := rs.prevEvents(); len(got) != 1 || got[0].EventID() != ev.EventID() {
		t.Fatalf("the entry's prev events are %v, want only %s", got, ev.EventID())
	}

	// Interrupted: another event lands between the entry and ours.
	rs, err = s.states.get(s.View(), roomID)
	if err != nil {
		t.Fatal(err)
	}
	appendBehindCache(t, s, roomID, topic("theirs"))
	ours, off := appendBehindCache(t, s, roomID, topic("ours"))
	s.states.committed(rs, []*stateres.Event{ours}, []uint64{off})
	if s.states.entries[roomID] != nil {
		t.Fatal("the entry followed a send although another event was folded in between")
	}
}

// The cache holds at most roomStateCacheRooms rooms, dropping the least
// recently used.
func TestStateCacheIsBounded(t *testing.T) {
	var c stateCache
	for i := range roomStateCacheRooms + 10 {
		c.put(&roomState{roomID: "!r" + strconv.Itoa(i) + ":x"})
	}
	if len(c.entries) != roomStateCacheRooms || c.lru.Len() != roomStateCacheRooms {
		t.Fatalf("cache holds %d rooms (list %d), want %d", len(c.entries), c.lru.Len(), roomStateCacheRooms)
	}
	if c.entries["!r0:x"] != nil {
		t.Fatal("the least recently used room was kept")
	}
}
