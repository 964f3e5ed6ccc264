package federation_test

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"strconv"
	"testing"

	"github.com/engram-hs/engram/federation/transport"
	"github.com/engram-hs/engram/internal/testca"
	"github.com/engram-hs/engram/stateres"
)

// /_matrix/federation/v1/timestamp_to_event answers a server in the room
// only, refuses bad parameters, and finds the earliest event at or after
// ts going forwards, the latest at or before it going backwards, and
// nothing past the room's ends.
func TestTimestampToEventForAServerInTheRoom(t *testing.T) {
	ca := testca.New(t)
	a := startRoomPeer(t, ca)
	b := startRoomPeer(t, ca)
	alice, bob := "@alice:"+a.Name, "@bob:"+b.Name
	create := a.local(t, "", stateres.MRoomCreate, alice, sk(""), `{"room_version":"11"}`)
	roomID := create.RoomID()
	a.local(t, roomID, stateres.MRoomMember, alice, sk(alice), `{"membership":"join"}`)
	a.local(t, roomID, stateres.MRoomPowerLevels, alice, sk(""), `{"users":{"`+alice+`":100}}`)
	a.local(t, roomID, stateres.MRoomJoinRules, alice, sk(""), `{"join_rule":"public"}`)
	hello := a.local(t, roomID, "m.room.message", alice, nil, `{"msgtype":"m.text","body":"hello"}`)

	path := func(q string) string {
		return "/_matrix/federation/v1/timestamp_to_event/" + url.PathEscape(roomID) + "?" + q
	}
	var he *transport.HTTPError
	if err := b.do(t, a.Name, "GET", path("ts=0&dir=f"), nil, nil); !errors.As(err, &he) || he.Status != http.StatusForbidden || he.Errcode != "M_FORBIDDEN" {
		t.Fatalf("a server not in the room: %v", err)
	}
	join := b.handshake(t, a, "join", roomID, bob)
	if err := b.do(t, a.Name, "PUT", "/_matrix/federation/v2/send_join/"+url.PathEscape(roomID)+"/"+url.PathEscape(join.EventID()), json.RawMessage(join.JSON()), nil); err != nil {
		t.Fatalf("send_join: %v", err)
	}
	for _, q := range []string{"dir=f", "ts=x&dir=f", "ts=0", "ts=0&dir=up"} {
		if err := b.do(t, a.Name, "GET", path(q), nil, nil); !errors.As(err, &he) || he.Status != http.StatusBadRequest || he.Errcode != "M_INVALID_PARAM" {
			t.Fatalf("%s: %v, want 400 M_INVALID_PARAM", q, err)
		}
	}
	var out struct {
		EventID string `json:"event_id"`
		TS      int64  `json:"origin_server_ts"`
	}
	if err := b.do(t, a.Name, "GET", path("ts=0&dir=f"), nil, &out); err != nil || out.EventID != create.EventID() || out.TS != create.OriginServerTS() {
		t.Fatalf("forwards from 0: %v %+v, want the create event", err, out)
	}
	far := "ts=" + "99999999999999"
	if err := b.do(t, a.Name, "GET", path(far+"&dir=b"), nil, &out); err != nil || out.EventID != join.EventID() {
		t.Fatalf("backwards from the far future: %v %+v, want bob's join (the latest event)", err, out)
	}
	if err := b.do(t, a.Name, "GET", path("ts="+strconv.FormatInt(hello.OriginServerTS(), 10)+"&dir=b"), nil, &out); err != nil || out.TS > hello.OriginServerTS() {
		t.Fatalf("backwards from the message's time: %v %+v", err, out)
	}
	if err := b.do(t, a.Name, "GET", path(far+"&dir=f"), nil, nil); !errors.As(err, &he) || he.Status != http.StatusNotFound || he.Errcode != "M_NOT_FOUND" {
		t.Fatalf("forwards from the far future: %v, want 404 M_NOT_FOUND", err)
	}
	if err := b.do(t, a.Name, "GET", path("ts=0&dir=b"), nil, nil); !errors.As(err, &he) || he.Status != http.StatusNotFound {
		t.Fatalf("backwards from 0: %v, want 404", err)
	}
}
