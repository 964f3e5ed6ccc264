package auth

import (
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"testing"

	"github.com/engram-hs/engram/stateres"
)

// benchRoom is a v12 and a v10 room with 10,000 joined members and a power
// levels event listing 100 of them, built from real signed events.
func benchRoom(b *testing.B, version string) (state map[stateres.StateKeyTuple]stateres.PDU, join, message *stateres.Event) {
	v := mustVersion(b, version)
	key := ed25519.NewKeyFromSeed(make([]byte, 32))
	state = map[stateres.StateKeyTuple]stateres.PDU{}
	lookup := StateFunc(func(typ, k string) stateres.PDU { return state[stateres.StateKeyTuple{Type: typ, StateKey: k}] })
	var last stateres.PDU
	roomID := "!bench:s.test"
	build := func(typ, sender string, stateKey *string, content any) *stateres.Event {
		var prev []stateres.PDU
		if last != nil {
			prev = []stateres.PDU{last}
		}
		ev, err := stateres.BuildEvent(v, &stateres.ProtoEvent{Type: typ, StateKey: stateKey, Sender: sender, Content: mustJSON(content), RoomID: roomID, OriginServerTS: 1}, stateByLookup(lookup), prev, "s.test", "ed25519:1", key)
		if err != nil {
			b.Fatal(err)
		}
		return ev
	}
	accept := func(ev *stateres.Event) {
		if err := Check(ev, lookup); err != nil {
			b.Fatalf("set-up: %v", err)
		}
		state[stateres.StateKeyTuple{Type: ev.Type(), StateKey: *ev.StateKey()}] = ev
		last = ev
	}
	creator := "@creator:s.test"
	create := build(stateres.MRoomCreate, creator, sk(""), map[string]any{"room_version": version, "creator": creator})
	if v.RoomIDFromCreate {
		roomID = create.RoomID()
	}
	accept(create)
	accept(build(stateres.MRoomMember, creator, sk(creator), map[string]any{"membership": "join"}))
	users := map[string]any{}
	for i := 0; i < 100; i++ {
		users[fmt.Sprintf("@mod%d:s.test", i)] = 50
	}
	if !v.PrivilegedCreators {
		users[creator] = 100
	}
	accept(build(stateres.MRoomPowerLevels, creator, sk(""), map[string]any{"users": users, "events": map[string]any{"m.room.name": 50, "m.room.power_levels": 100}}))
	accept(build(stateres.MRoomJoinRules, creator, sk(""), map[string]any{"join_rule": "public"}))
	// 10,000 members: state entries only (their own auth is not what is measured).
	member := build(stateres.MRoomMember, "@m0:s.test", sk("@m0:s.test"), map[string]any{"membership": "join"})
	for i := 0; i < 10000; i++ {
		u := fmt.Sprintf("@m%d:s.test", i)
		state[stateres.StateKeyTuple{Type: stateres.MRoomMember, StateKey: u}] = renamedMember{member, u}
	}
	join = build(stateres.MRoomMember, "@newcomer:s.test", sk("@newcomer:s.test"), map[string]any{"membership": "join"})
	message = build("m.room.message", "@m42:s.test", nil, map[string]any{"msgtype": "m.text", "body": "hello"})
	return state, join, message
}

// renamedMember reuses one parsed join event as another user's.
type renamedMember struct {
	*stateres.Event
	user string
}

func (r renamedMember) StateKey() *string { return &r.user }
func (r renamedMember) Sender() string    { return r.user }

type stateByLookup StateFunc

func (s stateByLookup) StateEvent(typ, key string) stateres.PDU { return s(typ, key) }

func BenchmarkCheck(b *testing.B) {
	for _, version := range []string{"10", "12"} {
		state, join, message := benchRoom(b, version)
		lookup := StateFunc(func(typ, k string) stateres.PDU { return state[stateres.StateKeyTuple{Type: typ, StateKey: k}] })
		for _, c := range []struct {
			name string
			ev   stateres.PDU
		}{{"join", join}, {"message", message}} {
			b.Run(c.name+"/v"+version, func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					if err := Check(c.ev, lookup); err != nil {
						b.Fatal(err)
					}
				}
				perSec := float64(b.N) / b.Elapsed().Seconds()
				line, _ := json.Marshal(map[string]any{"benchmark": "auth.Check", "event": c.name, "room_version": version, "members": 10000, "checks_per_second": int64(perSec)})
				b.Log(string(line))
				fmt.Println(string(line))
			})
		}
	}
}
