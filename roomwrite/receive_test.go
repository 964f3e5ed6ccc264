package roomwrite

import (
	"context"
	"crypto/ed25519"
	"slices"
	"testing"
	"time"

	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/projections/rooms"
	"github.com/engram-hs/engram/stateres"
)

// remoteJoin builds @bob:remote.test's join of roomID on its current
// state, signed by remote.test, as a remote server would send it.
func remoteJoin(t *testing.T, w *Writer, roomID string) *stateres.Event {
	t.Helper()
	v := w.View()
	room, err := v.Room(roomID)
	if err != nil || room == nil {
		t.Fatalf("room %s: %v", roomID, err)
	}
	version, _ := stateres.Version(room.Version)
	var prevs []stateres.PDU
	for _, id := range room.Extremities {
		e, err := v.Event(id)
		if err != nil || e == nil {
			t.Fatalf("extremity %s: %v", id, err)
		}
		p, err := e.PDU()
		if err != nil {
			t.Fatal(err)
		}
		prevs = append(prevs, p)
	}
	cur, err := v.CurrentStateIDs(roomID)
	if err != nil {
		t.Fatal(err)
	}
	lookup := v.LookupIn(cur)
	_, key, _ := ed25519.GenerateKey(nil)
	bob := "@bob:remote.test"
	ev, err := stateres.BuildEvent(version, &stateres.ProtoEvent{Type: stateres.MRoomMember, StateKey: &bob, Sender: bob, RoomID: roomID,
		Content: mustJSON(map[string]string{"membership": "join"}), OriginServerTS: time.Now().UnixMilli()},
		lookupFunc(lookup), prevs, "remote.test", "ed25519:r", key)
	if err != nil {
		t.Fatal(err)
	}
	return ev
}

type lookupFunc func(typ, sk string) stateres.PDU

func (f lookupFunc) StateEvent(typ, sk string) stateres.PDU { return f(typ, sk) }

// A received PDU goes through the room lock: Receive waits for a local
// write in progress, the next Send builds on the received event, and the
// received event is never handed to Outbound (only the local one is).
func TestReceiveSharesTheRoomLockAndSkipsOutbound(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	alice := user("alice")
	room := r.createRoom(t, alice, "11")
	var delivered []string
	r.w.SetOutbound(func(_ rooms.View, events []facts.PDU, _ []int, _ int) ([]englog.Proposal, error) {
		for _, e := range events {
			delivered = append(delivered, e.EventID)
		}
		return nil, nil
	})
	join := remoteJoin(t, r.w, room)

	unlock := r.w.Lock(room)
	done := make(chan error, 1)
	go func() {
		_, err := r.w.Receive(ctx, []facts.PDU{{RoomVersion: "11", Event: join.JSON(), EventID: join.EventID()}})
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("Receive returned (%v) while a local write held the room lock", err)
	case <-time.After(200 * time.Millisecond):
	}
	unlock()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if m, err := r.w.View().Membership("@bob:remote.test", room); err != nil || m == nil || m.Membership != "join" {
		t.Fatalf("after Receive, bob's membership is %+v (%v), want join", m, err)
	}

	id, err := r.sendText(room, alice)
	if err != nil {
		t.Fatal(err)
	}
	e, err := r.w.View().Event(id)
	if err != nil || e == nil {
		t.Fatalf("event %s: %v", id, err)
	}
	p, err := e.PDU()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(p.PrevEventIDs(), join.EventID()) {
		t.Fatalf("the local message's prev_events %v miss the received join %s", p.PrevEventIDs(), join.EventID())
	}
	if !slices.Equal(delivered, []string{id}) {
		t.Fatalf("Outbound was given %v, want only the local message %s", delivered, id)
	}
}

// An entry the receiver did not fill in is refused before anything is
// appended.
func TestReceiveRefusesIncompleteEntries(t *testing.T) {
	r := newRig(t)
	alice := user("alice")
	room := r.createRoom(t, alice, "11")
	join := remoteJoin(t, r.w, room)
	before := r.node.LastOffset()
	for name, e := range map[string]facts.PDU{
		"no event":        {RoomVersion: "11", EventID: join.EventID()},
		"no room version": {Event: join.JSON(), EventID: join.EventID()},
	} {
		ok := facts.PDU{RoomVersion: "11", Event: join.JSON(), EventID: join.EventID()}
		if _, err := r.w.Receive(context.Background(), []facts.PDU{ok, e}); err == nil {
			t.Errorf("%s: Receive accepted the entry", name)
		}
	}
	if after := r.node.LastOffset(); after != before {
		t.Fatalf("the log moved from %d to %d on refused entries", before, after)
	}
}

// A room version 12 room joined over federation: its create event has no
// room_id (the room ID is its hash), and a malformed PDU recorded as
// rejected has no event ID; both are recorded.
func TestReceiveTakesCreateEventsAndMalformedPDUs(t *testing.T) {
	r := newRig(t)
	create := mustJSON(map[string]any{"type": "m.room.create", "state_key": "", "sender": "@bob:remote.test", "content": map[string]any{"room_version": "12"}})
	offs, err := r.w.Receive(context.Background(), []facts.PDU{
		{RoomVersion: "12", Event: create, EventID: "$abc", Outlier: true},
		{RoomVersion: "12", Event: mustJSON(map[string]any{"type": 5}), Rejected: "format: type is not a string"},
	})
	if err != nil || len(offs) != 2 {
		t.Fatalf("Receive: %v %v", offs, err)
	}
}

// Outbound federation sees the servers joined before each local event,
// which Send keeps with the room's cached state: none in a room of local
// users; the remote server once its user's join is received; still it for
// the kick of that user, and none after the kick.
func TestSendRoutesToTheServersJoinedBeforeIt(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	alice := user("alice")
	room := r.createRoom(t, alice, "11")
	var got, want [][]string
	r.w.SetOutbound(func(view rooms.View, _ []facts.PDU, _ []int, _ int) ([]englog.Proposal, error) {
		servers, err := view.JoinedServers(room, testServer)
		if err != nil {
			return nil, err
		}
		fresh, err := rooms.NewView(r.w.Handle().Reader(), r.node).JoinedServers(room, testServer)
		if err != nil {
			return nil, err
		}
		got, want = append(got, servers), append(want, fresh)
		return nil, nil
	})
	send := func() {
		t.Helper()
		if _, err := r.sendText(room, alice); err != nil {
			t.Fatal(err)
		}
	}
	send()
	send()
	join := remoteJoin(t, r.w, room)
	if _, err := r.w.Receive(ctx, []facts.PDU{{RoomVersion: "11", Event: join.JSON(), EventID: join.EventID()}}); err != nil {
		t.Fatal(err)
	}
	send()
	send()
	bob := "@bob:remote.test"
	if _, err := r.w.Send(ctx, stateres.ProtoEvent{Type: stateres.MRoomMember, StateKey: &bob, Sender: alice, RoomID: room,
		Content: mustJSON(map[string]string{"membership": "leave"})}, nil); err != nil {
		t.Fatal(err)
	}
	send()
	remote := []string{"remote.test"}
	expected := [][]string{nil, nil, remote, remote, remote, nil}
	eq := func(a, b [][]string) bool {
		return slices.EqualFunc(a, b, func(x, y []string) bool { return slices.Equal(x, y) })
	}
	if !eq(want, expected) || !eq(got, want) {
		t.Fatalf("outbound saw the joined servers %q, the projection holds %q, want %q", got, want, expected)
	}
}
