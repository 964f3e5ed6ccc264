package federation_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/engram-hs/engram/internal/testca"
	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/projections/rooms"
	"github.com/engram-hs/engram/stateres"
)

// BenchmarkJoinLargeRoom: server A holds a room of ENGRAM_JOIN_MEMBERS
// (default 10,000) joined members; server B's user joins it through A
// over TLS on loopback (make_join, send_join answered with the full
// state, every event's signature checked in parallel, auth checked once
// each, recorded and folded). Prints the join's wall time and the
// process's peak RSS (both servers run in this process). Target (issue
// 8): <= 10 s and <= 500 MB.
func BenchmarkJoinLargeRoom(b *testing.B) {
	members := 10000
	if v := os.Getenv("ENGRAM_JOIN_MEMBERS"); v != "" {
		fmt.Sscan(v, &members)
	}
	ca := testca.New(b)
	a := startRoomPeerTB(b, ca)
	bb := startRoomPeerTB(b, ca)
	alice := "@alice:" + a.Name
	version := mustVersion("11")
	roomID := "!big:" + a.Name
	state := map[stateres.StateKeyTuple]stateres.PDU{}
	var prev []stateres.PDU
	var batch []englog.Proposal
	ts := time.Now().UnixMilli()
	flush := func() {
		if len(batch) == 0 {
			return
		}
		offs, err := a.Log.Append(context.Background(), batch...)
		if err != nil {
			b.Fatal(err)
		}
		if err := a.rooms.WaitApplied(context.Background(), offs[len(offs)-1]); err != nil {
			b.Fatal(err)
		}
		batch = batch[:0]
	}
	add := func(typ, sender string, stateKey *string, content string) {
		ts++
		ev, err := stateres.BuildEvent(version, &stateres.ProtoEvent{Type: typ, StateKey: stateKey, Sender: sender, Content: json.RawMessage(content), RoomID: roomID, OriginServerTS: ts},
			stateFunc(func(t, k string) stateres.PDU { return state[stateres.StateKeyTuple{Type: t, StateKey: k}] }), prev, a.Name, a.Key.ID, a.Key.Private)
		if err != nil {
			b.Fatal(err)
		}
		if stateKey != nil {
			state[stateres.StateKeyTuple{Type: typ, StateKey: *stateKey}] = ev
		}
		prev = []stateres.PDU{ev}
		batch = append(batch, facts.MustEncode(englog.KindPDU, facts.PDU{RoomVersion: version.ID, Event: ev.JSON(), EventID: ev.EventID()}))
		if len(batch) >= 500 {
			flush()
		}
	}
	add(stateres.MRoomCreate, alice, sk(""), `{"room_version":"11"}`)
	add(stateres.MRoomMember, alice, sk(alice), `{"membership":"join"}`)
	add(stateres.MRoomPowerLevels, alice, sk(""), `{"users":{"`+alice+`":100}}`)
	add(stateres.MRoomJoinRules, alice, sk(""), `{"join_rule":"public"}`)
	for i := range members - 1 {
		u := fmt.Sprintf("@u%d:%s", i, a.Name)
		add(stateres.MRoomMember, u, sk(u), `{"membership":"join","displayname":"User `+fmt.Sprint(i)+`"}`)
	}
	flush()
	runtime.GC()
	var took, cpu time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if i > 0 {
			continue // one join: the second would find the room held
		}
		t0, c0 := time.Now(), processCPU()
		if err := bb.Server.JoinRoom(context.Background(), roomID, []string{a.Name}, "@bob:"+bb.Name, nil); err != nil {
			b.Fatal(err)
		}
		took, cpu = time.Since(t0), processCPU()-c0
	}
	joined, err := rooms.NewView(bb.rooms.Reader(), bb.Log).MemberIDs(roomID, "join")
	if err != nil || len(joined) != members+1 {
		b.Fatalf("B sees %d joined members (%v), want %d", len(joined), err, members+1)
	}
	line, _ := json.Marshal(map[string]any{"bench": "join_large_room", "members": members, "seconds": took.Seconds(), "cpu_seconds": cpu.Seconds(), "peak_rss_mb": peakRSSMB(), "cores": runtime.GOMAXPROCS(0)})
	fmt.Println(string(line))
}

// peakRSSMB is this process's VmHWM.
func peakRSSMB() int {
	b, _ := os.ReadFile("/proc/self/status")
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmHWM:") {
			var kb int
			fmt.Sscan(strings.TrimSpace(strings.TrimPrefix(l, "VmHWM:")), &kb)
			return kb / 1024
		}
	}
	return 0
}

// processCPU is this process's user+system CPU time.
func processCPU() time.Duration {
	b, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) < 15 {
		return 0
	}
	var ut, st int64
	fmt.Sscan(f[13], &ut)
	fmt.Sscan(f[14], &st)
	return time.Duration(ut+st) * (time.Second / 100)
}
