package federation_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/engram-hs/engram/federation"
	"github.com/engram-hs/engram/federation/fedtest"
	"github.com/engram-hs/engram/federation/transport"
	"github.com/engram-hs/engram/internal/testca"
	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/projections"
	"github.com/engram-hs/engram/projections/rooms"
	"github.com/engram-hs/engram/roomwrite"
	"github.com/engram-hs/engram/stateres"
	"github.com/engram-hs/engram/stateres/resolve"
)

// roomPeer is a federation peer with the rooms projection, the way
// engram serve runs it.
type roomPeer struct {
	*fedtest.Peer
	writer *roomwrite.Writer
	rooms  *projections.Handle
}

func startRoomPeer(t *testing.T, ca *testca.CA) *roomPeer { return startRoomPeerTB(t, ca) }

func startRoomPeerTB(t testing.TB, ca *testca.CA) *roomPeer {
	rp := &roomPeer{}
	rp.Peer = fedtest.Start(t, ca, fedtest.Options{
		Register: func(p *fedtest.Peer, e *projections.Engine) {
			w, err := roomwrite.New(roomwrite.Config{ServerName: p.Name, SigningKeyID: p.Key.ID, SigningKey: p.Key.Private}, p.Log, e)
			if err != nil {
				t.Fatal(err)
			}
			rp.writer, rp.rooms = w, w.Handle()
		},
		Deps: func(p *fedtest.Peer, d *federation.Deps) {
			d.Rooms = rp.writer
			d.Client = p.Client
		},
	})
	return rp
}

func (p *roomPeer) view() rooms.View { return rooms.NewView(p.rooms.Reader(), p.Log) }

// local builds, signs and appends an event of this server on the room's
// current state and extremities, as the client API's write path does.
func (p *roomPeer) local(t *testing.T, roomID, typ, sender string, stateKey *string, content string) *stateres.Event {
	t.Helper()
	v := p.view()
	version := mustVersion("11")
	var prevs []stateres.PDU
	cur := rooms.StateMap{}
	if roomID != "" {
		room, err := v.Room(roomID)
		if err != nil || room == nil {
			t.Fatalf("room %s: %v", roomID, err)
		}
		version, _ = stateres.Version(room.Version)
		for _, id := range room.Extremities {
			e, _ := v.Event(id)
			pdu, _ := e.PDU()
			prevs = append(prevs, pdu)
		}
		if cur, err = v.CurrentStateIDs(roomID); err != nil {
			t.Fatal(err)
		}
	} else {
		roomID = "!fed" + fmt.Sprint(time.Now().UnixNano()) + ":" + p.Name
		var c struct {
			RoomVersion string `json:"room_version"`
		}
		if json.Unmarshal([]byte(content), &c) == nil && c.RoomVersion != "" {
			version = mustVersion(c.RoomVersion)
		}
	}
	lookup := v.LookupIn(cur)
	ev, err := stateres.BuildEvent(version, &stateres.ProtoEvent{Type: typ, StateKey: stateKey, Sender: sender, Content: json.RawMessage(content), RoomID: roomID, OriginServerTS: time.Now().UnixMilli()},
		stateFunc(lookup), prevs, p.Name, p.Key.ID, p.Key.Private)
	if err != nil {
		t.Fatal(err)
	}
	prop, err := facts.Encode(englog.KindPDU, facts.PDU{RoomVersion: version.ID, Event: ev.JSON(), EventID: ev.EventID()})
	if err != nil {
		t.Fatal(err)
	}
	offs, err := p.Log.Append(context.Background(), prop)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.rooms.WaitApplied(context.Background(), offs[0]); err != nil {
		t.Fatal(err)
	}
	return ev
}

type stateFunc func(typ, sk string) stateres.PDU

func (f stateFunc) StateEvent(typ, sk string) stateres.PDU { return f(typ, sk) }

func sk(s string) *string { return &s }

func (p *roomPeer) do(t *testing.T, dest, method, path string, body, out any) error {
	t.Helper()
	return p.Client.DoJSON(context.Background(), transport.Request{Destination: dest, Method: method, Path: path, Body: body}, out)
}

// TestRoomOverFederation: server B joins a room on server A through
// make_join/send_join over real TLS, sends messages in transactions
// (one forged, one over the PDU limit), reads A's state, events, auth
// chains and history, leaves through make_leave/send_leave, and is then
// shut out by a server ACL. A's rooms projection ends as a rebuild from
// its log gives it.
func TestRoomOverFederation(t *testing.T) {
	ca := testca.New(t)
	a := startRoomPeer(t, ca)
	b := startRoomPeer(t, ca)
	alice, bob := "@alice:"+a.Name, "@bob:"+b.Name

	create := a.local(t, "", stateres.MRoomCreate, alice, sk(""), `{"room_version":"11"}`)
	roomID := create.RoomID()
	a.local(t, roomID, stateres.MRoomMember, alice, sk(alice), `{"membership":"join"}`)
	a.local(t, roomID, stateres.MRoomPowerLevels, alice, sk(""), `{"users":{"`+alice+`":100},"state_default":50,"events_default":0,"ban":50,"kick":50,"redact":50,"invite":0,"users_default":0}`)
	a.local(t, roomID, stateres.MRoomJoinRules, alice, sk(""), `{"join_rule":"public"}`)
	hello := a.local(t, roomID, "m.room.message", alice, nil, `{"msgtype":"m.text","body":"hello"}`)

	// A room version B does not claim is refused with the room's version.
	var he *transport.HTTPError
	err := b.do(t, a.Name, "GET", "/_matrix/federation/v1/make_join/"+url.PathEscape(roomID)+"/"+url.PathEscape(bob)+"?ver=10", nil, nil)
	if !errors.As(err, &he) || he.Errcode != "M_INCOMPATIBLE_ROOM_VERSION" {
		t.Fatalf("make_join with ver=10: %v", err)
	}
	// A user of another server cannot be joined by B.
	err = b.do(t, a.Name, "GET", "/_matrix/federation/v1/make_join/"+url.PathEscape(roomID)+"/"+url.PathEscape("@mallory:elsewhere.test")+"?ver=11", nil, nil)
	if !errors.As(err, &he) || he.Status != http.StatusForbidden {
		t.Fatalf("make_join for another server's user: %v", err)
	}

	join := b.handshake(t, a, "join", roomID, bob)
	var sj struct {
		State     []json.RawMessage `json:"state"`
		AuthChain []json.RawMessage `json:"auth_chain"`
		Servers   []string          `json:"servers_in_room"`
	}
	if err := b.do(t, a.Name, "PUT", "/_matrix/federation/v2/send_join/"+url.PathEscape(roomID)+"/"+url.PathEscape(join.EventID()), json.RawMessage(join.JSON()), &sj); err != nil {
		t.Fatalf("send_join: %v", err)
	}
	if len(sj.State) != 4 || len(sj.AuthChain) < 3 || !slices.Contains(sj.Servers, a.Name) || !slices.Contains(sj.Servers, b.Name) {
		t.Fatalf("send_join answered %d state events, %d auth events, servers %v", len(sj.State), len(sj.AuthChain), sj.Servers)
	}
	if m, _ := a.view().Membership(bob, roomID); m == nil || m.Membership != "join" {
		t.Fatalf("bob's membership on A after send_join: %+v", m)
	}

	// Messages in a transaction: one good, one with a forged signature.
	v11 := mustVersion("11")
	state, _ := a.view().CurrentStateIDs(roomID)
	authFor := func(typ string) stateFunc {
		return stateFunc(func(t, k string) stateres.PDU {
			id := state[stateres.StateKeyTuple{Type: t, StateKey: k}]
			if id == "" {
				return nil
			}
			e, _ := a.view().Event(id)
			p, _ := e.PDU()
			return p
		})
	}
	msg, err := stateres.BuildEvent(v11, &stateres.ProtoEvent{Type: "m.room.message", Sender: bob, Content: json.RawMessage(`{"msgtype":"m.text","body":"hi from B"}`), RoomID: roomID, OriginServerTS: time.Now().UnixMilli()},
		authFor("m.room.message"), []stateres.PDU{join}, b.Name, b.Key.ID, b.Key.Private)
	if err != nil {
		t.Fatal(err)
	}
	forgedKey := fedtest.Start(t, ca, fedtest.Options{}).Key // another server's key, under B's name
	forged, err := stateres.BuildEvent(v11, &stateres.ProtoEvent{Type: "m.room.message", Sender: bob, Content: json.RawMessage(`{"msgtype":"m.text","body":"forged"}`), RoomID: roomID, OriginServerTS: time.Now().UnixMilli()},
		authFor("m.room.message"), []stateres.PDU{msg}, b.Name, b.Key.ID, forgedKey.Private)
	if err != nil {
		t.Fatal(err)
	}
	var res struct {
		PDUs map[string]map[string]string `json:"pdus"`
	}
	txn := map[string]any{"origin": b.Name, "origin_server_ts": time.Now().UnixMilli(), "pdus": []json.RawMessage{msg.JSON(), forged.JSON()}, "edus": []any{
		map[string]any{"edu_type": "m.typing", "content": map[string]any{"room_id": roomID, "user_id": bob, "typing": true}},
	}}
	if err := b.do(t, a.Name, "PUT", "/_matrix/federation/v1/send/txn1", txn, &res); err != nil {
		t.Fatalf("send: %v", err)
	}
	if r, ok := res.PDUs[msg.EventID()]; !ok || r["error"] != "" {
		t.Fatalf("result for the good PDU: %v (all: %v)", r, res.PDUs)
	}
	if r := res.PDUs[forged.EventID()]; r["error"] == "" {
		t.Fatalf("the forged PDU was not refused: %v", res.PDUs)
	}
	if e, _ := a.view().Event(forged.EventID()); e == nil || e.Rejected == "" {
		t.Fatalf("the forged PDU is not recorded as rejected: %+v", e)
	}
	tl, _ := a.view().Timeline(roomID, 0, true, 100, 0)
	var ids []string
	for _, te := range tl {
		ids = append(ids, te.EventID)
	}
	if !slices.Contains(ids, msg.EventID()) || slices.Contains(ids, forged.EventID()) {
		t.Fatalf("A's timeline %v: want the message, not the forged one", ids)
	}
	// A correctly signed PDU that fails the authorization rules (its
	// sender never joined) is processed: recorded as rejected, and the
	// result carries no error, as for every PDU that was processed.
	mallory := "@mallory:" + b.Name
	unauthorised, err := stateres.BuildEvent(v11, &stateres.ProtoEvent{Type: "m.room.message", Sender: mallory, Content: json.RawMessage(`{"msgtype":"m.text","body":"not a member"}`), RoomID: roomID, OriginServerTS: time.Now().UnixMilli()},
		authFor("m.room.message"), []stateres.PDU{msg}, b.Name, b.Key.ID, b.Key.Private)
	if err != nil {
		t.Fatal(err)
	}
	res.PDUs = nil
	if err := b.do(t, a.Name, "PUT", "/_matrix/federation/v1/send/txn-unauthorised", map[string]any{"origin": b.Name, "origin_server_ts": time.Now().UnixMilli(), "pdus": []json.RawMessage{unauthorised.JSON()}}, &res); err != nil {
		t.Fatalf("send: %v", err)
	}
	if r, ok := res.PDUs[unauthorised.EventID()]; !ok || r["error"] != "" {
		t.Fatalf("result for the unauthorised PDU: %v (all: %v)", r, res.PDUs)
	}
	if e, _ := a.view().Event(unauthorised.EventID()); e == nil || e.Rejected == "" {
		t.Fatalf("the unauthorised PDU is not recorded as rejected: %+v", e)
	}

	// The typing EDU was recorded.
	entries, _ := a.Log.Read(1, int(a.Log.LastOffset()))
	typing := false
	for _, e := range entries {
		if e.Kind == englog.KindEDU {
			var f facts.EDU
			if facts.Decode(e, &f) == nil && f.Type == facts.EDUTyping && f.Origin == b.Name {
				typing = true
			}
		}
	}
	if !typing {
		t.Fatal("the typing EDU was not recorded")
	}

	// More than 50 PDUs in a transaction: refused whole.
	many := make([]json.RawMessage, 51)
	for i := range many {
		many[i] = msg.JSON()
	}
	err = b.do(t, a.Name, "PUT", "/_matrix/federation/v1/send/txn2", map[string]any{"origin": b.Name, "origin_server_ts": 1, "pdus": many}, nil)
	if !errors.As(err, &he) || he.Status != http.StatusBadRequest {
		t.Fatalf("51 PDUs: %v", err)
	}

	// Reads: state_ids, state, event, event_auth, backfill, get_missing_events.
	var sids struct {
		PDUIDs  []string `json:"pdu_ids"`
		ChainID []string `json:"auth_chain_ids"`
	}
	if err := b.do(t, a.Name, "GET", "/_matrix/federation/v1/state_ids/"+url.PathEscape(roomID)+"?event_id="+url.QueryEscape(msg.EventID()), nil, &sids); err != nil {
		t.Fatal(err)
	}
	if len(sids.PDUIDs) != 5 || !slices.Contains(sids.PDUIDs, join.EventID()) || !slices.Contains(sids.ChainID, create.EventID()) {
		t.Fatalf("state_ids at the message: %+v", sids)
	}
	var evResp struct {
		PDUs []json.RawMessage `json:"pdus"`
	}
	if err := b.do(t, a.Name, "GET", "/_matrix/federation/v1/event/"+url.PathEscape(hello.EventID()), nil, &evResp); err != nil || len(evResp.PDUs) != 1 {
		t.Fatalf("/event: %v %d", err, len(evResp.PDUs))
	}
	var ea struct {
		AuthChain []json.RawMessage `json:"auth_chain"`
	}
	if err := b.do(t, a.Name, "GET", "/_matrix/federation/v1/event_auth/"+url.PathEscape(roomID)+"/"+url.PathEscape(msg.EventID()), nil, &ea); err != nil || len(ea.AuthChain) < 4 {
		t.Fatalf("/event_auth: %v, %d events", err, len(ea.AuthChain))
	}
	var bf struct {
		PDUs []json.RawMessage `json:"pdus"`
	}
	if err := b.do(t, a.Name, "GET", "/_matrix/federation/v1/backfill/"+url.PathEscape(roomID)+"?v="+url.QueryEscape(msg.EventID())+"&limit=3", nil, &bf); err != nil || len(bf.PDUs) != 3 {
		t.Fatalf("/backfill: %v, %d events", err, len(bf.PDUs))
	}
	var gme struct {
		Events []json.RawMessage `json:"events"`
	}
	if err := b.do(t, a.Name, "POST", "/_matrix/federation/v1/get_missing_events/"+url.PathEscape(roomID),
		map[string]any{"earliest_events": []string{hello.EventID()}, "latest_events": []string{msg.EventID()}, "limit": 10}, &gme); err != nil || len(gme.Events) != 1 {
		t.Fatalf("/get_missing_events: %v, %d events (want the join only)", err, len(gme.Events))
	}

	// A send_leave (v1) of a message is refused.
	var pair []json.RawMessage
	err = b.do(t, a.Name, "PUT", "/_matrix/federation/v1/send_leave/"+url.PathEscape(roomID)+"/"+url.PathEscape(msg.EventID()), json.RawMessage(msg.JSON()), &pair)
	if !errors.As(err, &he) || he.Status != http.StatusBadRequest {
		t.Fatalf("send_leave v1 of a message: %v", err)
	}
	// Leave through make_leave/send_leave (v1: a [200, {}] pair).
	leave := b.handshake(t, a, "leave", roomID, bob)
	if err := b.do(t, a.Name, "PUT", "/_matrix/federation/v1/send_leave/"+url.PathEscape(roomID)+"/"+url.PathEscape(leave.EventID()), json.RawMessage(leave.JSON()), &pair); err != nil || len(pair) != 2 || string(pair[0]) != "200" {
		t.Fatalf("send_leave v1: %v %s", err, pair)
	}
	if m, _ := a.view().Membership(bob, roomID); m == nil || m.Membership != "leave" {
		t.Fatalf("bob's membership on A after send_leave: %+v", m)
	}
	// B has left: it may not read the room any more.
	if err := b.do(t, a.Name, "GET", "/_matrix/federation/v1/event/"+url.PathEscape(hello.EventID()), nil, nil); !errors.As(err, &he) || he.Status != http.StatusForbidden {
		t.Fatalf("/event after leaving: %v", err)
	}

	// A server ACL denying B: make_join is refused.
	a.local(t, roomID, stateres.MRoomServerACL, alice, sk(""), `{"allow":["*"],"deny":["127.0.0.1"],"allow_ip_literals":true}`)
	err = b.do(t, a.Name, "GET", "/_matrix/federation/v1/make_join/"+url.PathEscape(roomID)+"/"+url.PathEscape(bob)+"?ver=11", nil, nil)
	if !errors.As(err, &he) || he.Status != http.StatusForbidden {
		t.Fatalf("make_join under a server ACL denying B: %v", err)
	}
}

// handshake runs make_<membership> against the resident server and
// completes the template as this server.
func (p *roomPeer) handshake(t *testing.T, resident *roomPeer, membership, roomID, userID string) *stateres.Event {
	t.Helper()
	var mj struct {
		Event       json.RawMessage `json:"event"`
		RoomVersion string          `json:"room_version"`
	}
	if err := p.do(t, resident.Name, "GET", "/_matrix/federation/v1/make_"+membership+"/"+url.PathEscape(roomID)+"/"+url.PathEscape(userID)+"?ver=11&ver=12", nil, &mj); err != nil {
		t.Fatalf("make_%s: %v", membership, err)
	}
	version, ok := stateres.Version(mj.RoomVersion)
	if !ok {
		t.Fatalf("make_%s: room version %q", membership, mj.RoomVersion)
	}
	ev, err := stateres.BuildFromTemplate(version, mj.Event, time.Now().UnixMilli(), p.Name, p.Key.ID, p.Key.Private)
	if err != nil {
		t.Fatal(err)
	}
	return ev
}

func mustVersion(id string) *stateres.RoomVersion {
	v, ok := stateres.Version(id)
	if !ok {
		panic("unknown room version " + id)
	}
	return v
}

// TestJoinRoomThroughAResidentServer: B's user joins A's room with
// JoinRoom (make_join, sign, send_join, check and record); B's rooms
// projection then holds the room with A's state, and A's next message,
// sent to B in a transaction, is accepted on top of the join. A rebuild
// of B's projection gives the same bytes.
func TestJoinRoomThroughAResidentServer(t *testing.T) {
	ca := testca.New(t)
	a := startRoomPeer(t, ca)
	b := startRoomPeer(t, ca)
	alice, bob := "@alice:"+a.Name, "@bob:"+b.Name
	ctx := context.Background()

	create := a.local(t, "", stateres.MRoomCreate, alice, sk(""), `{"room_version":"11"}`)
	roomID := create.RoomID()
	a.local(t, roomID, stateres.MRoomMember, alice, sk(alice), `{"membership":"join"}`)
	a.local(t, roomID, stateres.MRoomPowerLevels, alice, sk(""), `{"users":{"`+alice+`":100},"state_default":50,"events_default":0,"ban":50,"kick":50,"redact":50,"invite":0,"users_default":0}`)
	a.local(t, roomID, stateres.MRoomJoinRules, alice, sk(""), `{"join_rule":"public"}`)
	a.local(t, roomID, "m.room.name", alice, sk(""), `{"name":"over the wire"}`)

	if err := b.Server.JoinRoom(ctx, roomID, []string{"unreachable.invalid", a.Name}, bob, map[string]any{"displayname": "Bob"}); err != nil {
		t.Fatalf("JoinRoom: %v", err)
	}
	bv := b.view()
	if m, _ := bv.Membership(bob, roomID); m == nil || m.Membership != "join" {
		t.Fatalf("bob's membership on B: %+v", m)
	}
	if name, _ := bv.StateEvent(roomID, "m.room.name", ""); name == nil {
		t.Fatal("B has no m.room.name after the join")
	}
	if m, _ := bv.Membership(alice, roomID); m == nil || m.Membership != "join" {
		t.Fatalf("alice's membership as B sees it: %+v", m)
	}
	if m, _ := a.view().Membership(bob, roomID); m == nil || m.Membership != "join" {
		t.Fatalf("bob's membership on A: %+v", m)
	}

	// A's next message reaches B in a transaction.
	msg := a.local(t, roomID, "m.room.message", alice, nil, `{"msgtype":"m.text","body":"welcome"}`)
	var res struct {
		PDUs map[string]map[string]string `json:"pdus"`
	}
	if err := a.do(t, b.Name, "PUT", "/_matrix/federation/v1/send/t1", map[string]any{"origin": a.Name, "origin_server_ts": time.Now().UnixMilli(), "pdus": []json.RawMessage{msg.JSON()}}, &res); err != nil {
		t.Fatal(err)
	}
	if r, ok := res.PDUs[msg.EventID()]; !ok || r["error"] != "" {
		t.Fatalf("B's result for A's message: %v", res.PDUs)
	}
	if e, _ := bv.Event(msg.EventID()); e == nil || e.Rejected != "" || e.SoftFailed || e.Outlier {
		t.Fatalf("A's message on B: %+v", e)
	}
	if ext, _ := bv.ForwardExtremities(roomID); len(ext) != 1 || ext[0] != msg.EventID() {
		t.Fatalf("B's extremities %v, want A's message", ext)
	}
}

// viewEvents lets resolve read a server's stored events.
type viewEvents struct{ v rooms.View }

func (l viewEvents) Event(id string) (stateres.PDU, bool) {
	e, err := l.v.Event(id)
	if err != nil || e == nil {
		return nil, false
	}
	p, err := e.PDU()
	return p, err == nil
}

// TestForkAcrossAPartition: A and B share a room; while they cannot
// reach each other, each changes the power levels and the topic; then
// each sends the other what it missed. Both end with the same current
// state, and it is what state resolution (the room version's algorithm)
// gives over the two branches; a merge event on A then has one
// extremity again, on both servers.
func TestForkAcrossAPartition(t *testing.T) {
	ca := testca.New(t)
	a := startRoomPeer(t, ca)
	b := startRoomPeer(t, ca)
	alice, bob := "@alice:"+a.Name, "@bob:"+b.Name
	ctx := context.Background()
	sendTo := func(from, to *roomPeer, evs ...*stateres.Event) {
		t.Helper()
		var pdus []json.RawMessage
		for _, ev := range evs {
			pdus = append(pdus, ev.JSON())
		}
		var res struct {
			PDUs map[string]map[string]string `json:"pdus"`
		}
		if err := from.do(t, to.Name, "PUT", fmt.Sprintf("/_matrix/federation/v1/send/%d", time.Now().UnixNano()), map[string]any{"origin": from.Name, "origin_server_ts": time.Now().UnixMilli(), "pdus": pdus}, &res); err != nil {
			t.Fatal(err)
		}
		for id, r := range res.PDUs {
			if r["error"] != "" {
				t.Fatalf("%s refused %s: %s", to.Name, id, r["error"])
			}
		}
	}
	pl := func(extra string) string {
		return `{"users":{"` + alice + `":100,"` + bob + `":100` + extra + `},"state_default":50,"events_default":0,"ban":50,"kick":50,"redact":50,"invite":0,"users_default":0}`
	}
	create := a.local(t, "", stateres.MRoomCreate, alice, sk(""), `{"room_version":"11"}`)
	roomID := create.RoomID()
	a.local(t, roomID, stateres.MRoomMember, alice, sk(alice), `{"membership":"join"}`)
	a.local(t, roomID, stateres.MRoomPowerLevels, alice, sk(""), pl(""))
	a.local(t, roomID, stateres.MRoomJoinRules, alice, sk(""), `{"join_rule":"public"}`)
	if err := b.Server.JoinRoom(ctx, roomID, []string{a.Name}, bob, nil); err != nil {
		t.Fatal(err)
	}

	// The partition: each side acts on what it has.
	a1 := a.local(t, roomID, stateres.MRoomPowerLevels, alice, sk(""), pl(`,"@carol:`+a.Name+`":50`))
	a2 := a.local(t, roomID, "m.room.topic", alice, sk(""), `{"topic":"from A"}`)
	b1 := b.local(t, roomID, stateres.MRoomPowerLevels, bob, sk(""), pl(`,"@dave:`+b.Name+`":50`))
	b2 := b.local(t, roomID, "m.room.topic", bob, sk(""), `{"topic":"from B"}`)

	// The heal.
	sendTo(a, b, a1, a2)
	sendTo(b, a, b1, b2)

	stateA, err := a.view().CurrentStateIDs(roomID)
	if err != nil {
		t.Fatal(err)
	}
	stateB, err := b.view().CurrentStateIDs(roomID)
	if err != nil {
		t.Fatal(err)
	}
	afterA, _, _ := a.view().StateIDsAfter(a2.EventID())
	afterB, _, _ := a.view().StateIDsAfter(b2.EventID())
	want, err := resolve.Resolve(mustVersion("11"), []map[stateres.StateKeyTuple]string{afterA, afterB}, viewEvents{a.view()})
	if err != nil {
		t.Fatal(err)
	}
	if !maps.Equal(stateA, want) || !maps.Equal(stateB, want) {
		t.Fatalf("after the heal:\nA   %v\nB   %v\nwant %v", stateA, stateB, want)
	}
	if want[stateres.StateKeyTuple{Type: stateres.MRoomPowerLevels}] == "" || want[stateres.StateKeyTuple{Type: "m.room.topic"}] == "" {
		t.Fatalf("resolution lost the power levels or the topic: %v", want)
	}
	for _, p := range []*roomPeer{a, b} {
		if ext, _ := p.view().ForwardExtremities(roomID); len(ext) != 2 {
			t.Fatalf("%s: extremities %v, want both branch tips", p.Name, ext)
		}
	}
	// A merge from A, on both tips, sent to B.
	merge := a.local(t, roomID, "m.room.message", alice, nil, `{"msgtype":"m.text","body":"healed"}`)
	if len(merge.PrevEventIDs()) != 2 {
		t.Fatalf("the merge's prev_events: %v", merge.PrevEventIDs())
	}
	sendTo(a, b, merge)
	for _, p := range []*roomPeer{a, b} {
		if ext, _ := p.view().ForwardExtremities(roomID); len(ext) != 1 || ext[0] != merge.EventID() {
			t.Fatalf("%s: extremities %v after the merge", p.Name, ext)
		}
		before, _, _ := p.view().StateIDsBefore(merge.EventID())
		if !maps.Equal(before, want) {
			t.Fatalf("%s: the state before the merge is not the resolved state", p.Name)
		}
	}
}

// In a v12 room events do not list the create event in auth_events (the
// room ID implies it); /event_auth still serves it as part of the chain.
func TestEventAuthHoldsTheImpliedCreateEvent(t *testing.T) {
	ca := testca.New(t)
	a := startRoomPeer(t, ca)
	b := startRoomPeer(t, ca)
	alice, bob := "@alice:"+a.Name, "@bob:"+b.Name
	create := a.local(t, "", stateres.MRoomCreate, alice, sk(""), `{"room_version":"12"}`)
	roomID := create.RoomID()
	if roomID != "!"+strings.TrimPrefix(create.EventID(), "$") {
		t.Fatalf("v12 room ID %s is not derived from the create event %s", roomID, create.EventID())
	}
	a.local(t, roomID, stateres.MRoomMember, alice, sk(alice), `{"membership":"join"}`)
	a.local(t, roomID, stateres.MRoomPowerLevels, alice, sk(""), `{"state_default":50,"events_default":0,"ban":50,"kick":50,"redact":50,"invite":0,"users_default":0}`)
	jr := a.local(t, roomID, stateres.MRoomJoinRules, alice, sk(""), `{"join_rule":"public"}`)
	if slices.Contains(jr.AuthEventIDs(), create.EventID()) {
		t.Fatal("the v12 event lists the create event in auth_events")
	}
	join := b.handshake(t, a, "join", roomID, bob)
	if err := b.do(t, a.Name, "PUT", "/_matrix/federation/v2/send_join/"+url.PathEscape(roomID)+"/"+url.PathEscape(join.EventID()), json.RawMessage(join.JSON()), nil); err != nil {
		t.Fatalf("send_join: %v", err)
	}
	var ea struct {
		AuthChain []json.RawMessage `json:"auth_chain"`
	}
	if err := b.do(t, a.Name, "GET", "/_matrix/federation/v1/event_auth/"+url.PathEscape(roomID)+"/"+url.PathEscape(jr.EventID()), nil, &ea); err != nil {
		t.Fatalf("/event_auth: %v", err)
	}
	var ids []string
	for _, raw := range ea.AuthChain {
		var e struct {
			Type string `json:"type"`
		}
		_ = json.Unmarshal(raw, &e)
		ids = append(ids, e.Type)
	}
	slices.Sort(ids)
	if want := []string{stateres.MRoomCreate, stateres.MRoomMember, stateres.MRoomPowerLevels}; !slices.Equal(ids, want) {
		t.Fatalf("/event_auth of the join rules: types %v, want %v", ids, want)
	}
	// The create event's own chain is empty.
	if err := b.do(t, a.Name, "GET", "/_matrix/federation/v1/event_auth/"+url.PathEscape(roomID)+"/"+url.PathEscape(create.EventID()), nil, &ea); err != nil || len(ea.AuthChain) != 0 {
		t.Fatalf("/event_auth of the create event: %v, %d events", err, len(ea.AuthChain))
	}
}
