package federation_test

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"testing"

	"github.com/engram-hs/engram/federation/transport"
	"github.com/engram-hs/engram/internal/testca"
	"github.com/engram-hs/engram/stateres"
)

// In a room whose history is visible to joined members only, a server
// whose user joined later gets the events from before the join redacted
// (/event, /backfill, /get_missing_events) and is refused the state at
// them (/state_ids, /state, /event_auth); from its join on it sees
// everything.
func TestHistoryVisibilityTowardsServers(t *testing.T) {
	ca := testca.New(t)
	a := startRoomPeer(t, ca)
	b := startRoomPeer(t, ca)
	alice, bob := "@alice:"+a.Name, "@bob:"+b.Name

	create := a.local(t, "", stateres.MRoomCreate, alice, sk(""), `{"room_version":"11"}`)
	roomID := create.RoomID()
	a.local(t, roomID, stateres.MRoomMember, alice, sk(alice), `{"membership":"join"}`)
	a.local(t, roomID, stateres.MRoomPowerLevels, alice, sk(""), `{"users":{"`+alice+`":100},"state_default":50,"events_default":0,"invite":0}`)
	a.local(t, roomID, stateres.MRoomJoinRules, alice, sk(""), `{"join_rule":"public"}`)
	a.local(t, roomID, stateres.MRoomHistoryVisibility, alice, sk(""), `{"history_visibility":"joined"}`)
	secret := a.local(t, roomID, "m.room.message", alice, nil, `{"msgtype":"m.text","body":"before bob"}`)

	join := b.handshake(t, a, "join", roomID, bob)
	if err := b.do(t, a.Name, "PUT", "/_matrix/federation/v2/send_join/"+url.PathEscape(roomID)+"/"+url.PathEscape(join.EventID()), json.RawMessage(join.JSON()), nil); err != nil {
		t.Fatalf("send_join: %v", err)
	}
	after := a.local(t, roomID, "m.room.message", alice, nil, `{"msgtype":"m.text","body":"after bob"}`)

	body := func(raw json.RawMessage) any {
		var e struct {
			Content map[string]any `json:"content"`
		}
		if err := json.Unmarshal(raw, &e); err != nil {
			t.Fatal(err)
		}
		return e.Content["body"]
	}
	var ev struct {
		PDUs []json.RawMessage `json:"pdus"`
	}
	if err := b.do(t, a.Name, "GET", "/_matrix/federation/v1/event/"+url.PathEscape(secret.EventID()), nil, &ev); err != nil || len(ev.PDUs) != 1 {
		t.Fatalf("/event before the join: %v %d", err, len(ev.PDUs))
	}
	if got := body(ev.PDUs[0]); got != nil {
		t.Fatalf("/event before the join served its body %v; want it redacted", got)
	}
	if err := b.do(t, a.Name, "GET", "/_matrix/federation/v1/event/"+url.PathEscape(after.EventID()), nil, &ev); err != nil || len(ev.PDUs) != 1 || body(ev.PDUs[0]) != "after bob" {
		t.Fatalf("/event after the join: %v %s", err, ev.PDUs)
	}

	var bf struct {
		PDUs []json.RawMessage `json:"pdus"`
	}
	if err := b.do(t, a.Name, "GET", "/_matrix/federation/v1/backfill/"+url.PathEscape(roomID)+"?v="+url.QueryEscape(after.EventID())+"&limit=3", nil, &bf); err != nil || len(bf.PDUs) != 3 {
		t.Fatalf("/backfill: %v, %d events", err, len(bf.PDUs))
	}
	bodies := map[any]bool{}
	for _, p := range bf.PDUs {
		bodies[body(p)] = true
	}
	if !bodies["after bob"] || bodies["before bob"] {
		t.Fatalf("/backfill served bodies %v: want the one after the join only", bodies)
	}
	var gme struct {
		Events []json.RawMessage `json:"events"`
	}
	if err := b.do(t, a.Name, "POST", "/_matrix/federation/v1/get_missing_events/"+url.PathEscape(roomID),
		map[string]any{"earliest_events": []string{}, "latest_events": []string{join.EventID()}, "limit": 10}, &gme); err != nil || len(gme.Events) == 0 {
		t.Fatalf("/get_missing_events: %v, %d events", err, len(gme.Events))
	}
	for _, p := range gme.Events {
		if body(p) == "before bob" {
			t.Fatal("/get_missing_events served the message from before the join unredacted")
		}
	}

	var he *transport.HTTPError
	for _, path := range []string{
		"/_matrix/federation/v1/state_ids/" + url.PathEscape(roomID) + "?event_id=" + url.QueryEscape(secret.EventID()),
		"/_matrix/federation/v1/state/" + url.PathEscape(roomID) + "?event_id=" + url.QueryEscape(secret.EventID()),
		"/_matrix/federation/v1/event_auth/" + url.PathEscape(roomID) + "/" + url.PathEscape(secret.EventID()),
	} {
		if err := b.do(t, a.Name, "GET", path, nil, nil); !errors.As(err, &he) || he.Status != http.StatusForbidden {
			t.Errorf("GET %s before the join: %v, want 403", path, err)
		}
	}
	if err := b.do(t, a.Name, "GET", "/_matrix/federation/v1/state_ids/"+url.PathEscape(roomID)+"?event_id="+url.QueryEscape(after.EventID()), nil, nil); err != nil {
		t.Fatalf("/state_ids after the join: %v", err)
	}
}
