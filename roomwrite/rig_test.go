package roomwrite

import (
	"context"
	"encoding/json"
	"io"
	"testing"
	"time"

	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/projections"
	"github.com/engram-hs/engram/stateres"
	"github.com/rs/zerolog"
)

const testServer = "rw.test"

// rig is a real Writer: the real log on a temporary Pebble directory and
// the real projection engine with the rooms projection.
type rig struct {
	w    *Writer
	node *englog.Node
	eng  *projections.Engine
}

func newRig(t testing.TB) *rig {
	t.Helper()
	logger := zerolog.New(io.Discard)
	node, err := englog.Open(englog.Config{Dir: t.TempDir(), Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	eng := projections.NewEngine(node, node.DB(), logger, nil)
	w, err := New(Config{ServerName: testServer, Logger: logger}, node, eng)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := eng.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = eng.Close()
		_ = node.Close()
	})
	return &rig{w: w, node: node, eng: eng}
}

func strptr(s string) *string { return &s }

func mustJSON(v any) json.RawMessage {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

func user(local string) string { return "@" + local + ":" + testServer }

// createRoom creates a public room (version ver) whose creator has power
// 100, through a Builder, and returns its ID.
func (r *rig) createRoom(t testing.TB, creator, ver string) string {
	t.Helper()
	version, ok := stateres.Version(ver)
	if !ok {
		t.Fatalf("unknown version %s", ver)
	}
	roomID := ""
	if !version.RoomIDFromCreate {
		roomID = "!room" + time.Now().Format("150405.000000000") + ":" + testServer
	}
	b, err := r.w.NewRoom(version, roomID)
	if err != nil {
		t.Fatal(err)
	}
	create := map[string]any{"room_version": ver}
	if !version.V11Semantics {
		create["creator"] = creator
	}
	users := map[string]any{}
	if !version.PrivilegedCreators {
		users[creator] = 100
	}
	for _, p := range []stateres.ProtoEvent{
		{Type: stateres.MRoomCreate, StateKey: strptr(""), Content: mustJSON(create)},
		{Type: stateres.MRoomMember, StateKey: strptr(creator), Content: mustJSON(map[string]string{"membership": "join"})},
		{Type: stateres.MRoomPowerLevels, StateKey: strptr(""), Content: mustJSON(map[string]any{"users": users, "events_default": 0, "state_default": 50})},
		{Type: stateres.MRoomJoinRules, StateKey: strptr(""), Content: mustJSON(map[string]string{"join_rule": "public"})},
	} {
		p.Sender = creator
		if _, err := b.Add(p); err != nil {
			t.Fatalf("building %s: %v", p.Type, err)
		}
	}
	if _, err := r.w.Commit(context.Background(), b.Proposals(nil)...); err != nil {
		t.Fatal(err)
	}
	return b.RoomID()
}

func (r *rig) join(t testing.TB, roomID, u string) {
	t.Helper()
	if _, err := r.w.Send(context.Background(), stateres.ProtoEvent{Type: stateres.MRoomMember, StateKey: strptr(u), Sender: u, RoomID: roomID,
		Content: mustJSON(map[string]string{"membership": "join"})}, nil); err != nil {
		t.Fatalf("%s joins: %v", u, err)
	}
}

func (r *rig) sendText(roomID, sender string) (string, error) {
	return r.w.Send(context.Background(), stateres.ProtoEvent{Type: "m.room.message", Sender: sender, RoomID: roomID,
		Content: mustJSON(map[string]string{"msgtype": "m.text", "body": "hi"})}, nil)
}
