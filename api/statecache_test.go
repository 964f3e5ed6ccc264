package api

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http/httptest"
	"strconv"
	"testing"
	"time"

	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/projections"
	"github.com/engram-hs/engram/stateres"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"golang.org/x/crypto/bcrypt"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// startCacheServer serves a real Server (real log in Pebble, real
// projections) on 127.0.0.1 and keeps the *Server for white-box checks.
func startCacheServer(t *testing.T) (*Server, string) {
	t.Helper()
	logger := zerolog.New(io.Discard)
	node, err := englog.Open(englog.Config{Dir: t.TempDir(), Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	eng := projections.NewEngine(node, node.DB(), logger, reg)
	s, err := New(Config{ServerName: "cache.test", EnableRegistration: true, BcryptCost: bcrypt.MinCost},
		Deps{Log: node, Engine: eng, Logger: logger, Metrics: reg})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := eng.Start(ctx); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewUnstartedServer(s.Handler())
	hs.Listener = ln
	hs.Start()
	t.Cleanup(func() {
		s.Close()
		hs.Close()
		_ = eng.Close()
		_ = node.Close()
	})
	return s, hs.URL
}

func cacheClient(t *testing.T, url, name string) *mautrix.Client {
	t.Helper()
	cli, err := mautrix.NewClient(url, "", "")
	if err != nil {
		t.Fatal(err)
	}
	resp, err := cli.RegisterDummy(context.Background(), &mautrix.ReqRegister[any]{Username: name, Password: "pw-" + name})
	if err != nil {
		t.Fatalf("register %s: %v", name, err)
	}
	cli.SetCredentials(resp.UserID, resp.AccessToken)
	return cli
}

// appendBehindCache writes a state event straight to the log, as another
// server of the cluster would: built on the projection, never through
// sendEvent, so the state cache is not told. It returns the event's offset
// once the rooms projection has folded it.
func appendBehindCache(t *testing.T, s *Server, roomID string, proto stateres.ProtoEvent) (*stateres.Event, uint64) {
	t.Helper()
	b, err := s.newRoomBuilder(roomID)
	if err != nil {
		t.Fatal(err)
	}
	ev, err := b.add(proto)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	offs, err := s.log.Append(ctx, b.proposals(nil)...)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.roomsH.WaitApplied(ctx, offs[0]); err != nil {
		t.Fatal(err)
	}
	return ev, offs[0]
}

func sendText(cli *mautrix.Client, roomID id.RoomID) error {
	_, err := cli.SendMessageEvent(context.Background(), roomID, event.EventMessage, map[string]any{"msgtype": "m.text", "body": "hi"})
	return err
}

func forbidden(err error) bool {
	var he mautrix.HTTPError
	return errors.As(err, &he) && he.RespError != nil && he.RespError.ErrCode == "M_FORBIDDEN"
}

// State that changes behind the cache's back (a raw append to the log)
// is seen by the very next send, both ways: a send is refused once the
// power levels forbid it or the sender left, and allowed again once they
// permit it.
func TestSendSeesStateChangedBehindTheCache(t *testing.T) {
	s, url := startCacheServer(t)
	alice, bob := cacheClient(t, url, "alice"), cacheClient(t, url, "bob")
	ctx := context.Background()
	created, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	if err != nil {
		t.Fatal(err)
	}
	room := created.RoomID
	if _, err := bob.JoinRoomByID(ctx, room); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if err := sendText(bob, room); err != nil {
			t.Fatalf("bob's message: %v", err)
		}
	}
	// The cache followed bob's sends (the test below would prove nothing
	// if every send reloaded anyway).
	changed, err := s.roomsView().ChangedAt(room.String())
	if err != nil {
		t.Fatal(err)
	}
	el := s.roomStates.entries[room.String()]
	if el == nil || el.Value.(*roomState).changedAt != changed {
		t.Fatalf("state cache does not hold the room at its latest change %d", changed)
	}

	powers := func(eventsDefault int) stateres.ProtoEvent {
		return stateres.ProtoEvent{Type: stateres.MRoomPowerLevels, StateKey: strptr(""), Sender: alice.UserID.String(),
			Content: mustJSON(map[string]any{"events_default": eventsDefault})} // v12: the creator needs no level
	}
	appendBehindCache(t, s, room.String(), powers(50))
	if err := sendText(bob, room); !forbidden(err) {
		t.Fatalf("bob sent after the power levels forbade it (err %v); the send was built on stale state", err)
	}
	appendBehindCache(t, s, room.String(), powers(0))
	if err := sendText(bob, room); err != nil {
		t.Fatalf("bob may send again once the power levels allow it: %v", err)
	}
	appendBehindCache(t, s, room.String(), stateres.ProtoEvent{Type: stateres.MRoomMember, StateKey: strptr(bob.UserID.String()),
		Sender: bob.UserID.String(), Content: mustJSON(map[string]string{"membership": "leave"})})
	if err := sendText(bob, room); !forbidden(err) {
		t.Fatalf("bob sent after leaving (err %v); the send was built on stale state", err)
	}
	if err := sendText(alice, room); err != nil {
		t.Fatalf("alice's message: %v", err)
	}
}

// The cache follows its own send only when nothing else reached the
// room's timeline in between; an interleaved event makes it drop the
// room.
func TestStateCacheFollowsOnlyUninterruptedSends(t *testing.T) {
	s, url := startCacheServer(t)
	alice := cacheClient(t, url, "alice")
	created, err := alice.CreateRoom(context.Background(), &mautrix.ReqCreateRoom{Preset: "private_chat"})
	if err != nil {
		t.Fatal(err)
	}
	roomID := created.RoomID.String()
	topic := func(s string) stateres.ProtoEvent {
		return stateres.ProtoEvent{Type: "m.room.topic", StateKey: strptr(""), Sender: alice.UserID.String(), Content: mustJSON(map[string]string{"topic": s})}
	}

	// Uninterrupted: the entry moves to the appended event, with its state.
	rs, err := s.roomStates.get(s.roomsView(), roomID)
	if err != nil {
		t.Fatal(err)
	}
	ev, off := appendBehindCache(t, s, roomID, topic("one"))
	s.roomStates.committed(rs, []*stateres.Event{ev}, []uint64{off})
	if el := s.roomStates.entries[roomID]; el == nil || el.Value.(*roomState).changedAt != off {
		t.Fatalf("the entry did not follow an uninterrupted append to offset %d", off)
	}
	if got := rs.StateEvent("m.room.topic", ""); got == nil || got.EventID() != ev.EventID() {
		t.Fatalf("the entry's topic is %v, want the appended %s", got, ev.EventID())
	}
	if got := rs.prevEvents(); len(got) != 1 || got[0].EventID() != ev.EventID() {
		t.Fatalf("the entry's prev events are %v, want only %s", got, ev.EventID())
	}

	// Interrupted: another event lands between the entry and ours.
	rs, err = s.roomStates.get(s.roomsView(), roomID)
	if err != nil {
		t.Fatal(err)
	}
	appendBehindCache(t, s, roomID, topic("theirs"))
	ours, off := appendBehindCache(t, s, roomID, topic("ours"))
	s.roomStates.committed(rs, []*stateres.Event{ours}, []uint64{off})
	if s.roomStates.entries[roomID] != nil {
		t.Fatal("the entry followed a send although another event was folded in between")
	}
}

// The cache holds at most roomStateCacheRooms rooms, dropping the least
// recently used.
func TestStateCacheIsBounded(t *testing.T) {
	var c roomStateCache
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
