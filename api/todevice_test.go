package api_test

import (
	"context"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// login opens another device of an existing user.
func (ts *testServer) login(name string) *mautrix.Client {
	ts.t.Helper()
	cli, err := mautrix.NewClient(ts.URL, "", "")
	if err != nil {
		ts.t.Fatal(err)
	}
	resp, err := cli.Login(context.Background(), &mautrix.ReqLogin{
		Type: mautrix.AuthTypePassword, Identifier: mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: name},
		Password: "pw-" + name, StoreCredentials: true,
	})
	if err != nil {
		ts.t.Fatalf("login %s: %v", name, err)
	}
	cli.DeviceID = resp.DeviceID
	return cli
}

func toDeviceBodies(t *testing.T, s *mautrix.RespSync) []string {
	t.Helper()
	var out []string
	for _, e := range s.ToDevice.Events {
		if e.Type.Type != "org.example.ping" {
			t.Fatalf("to-device type %q", e.Type.Type)
		}
		out = append(out, e.Content.Raw["body"].(string)+"/"+e.Sender.String())
	}
	return out
}

func TestSendToDeviceInboxDeliveryAndAck(t *testing.T) {
	ts := startServer(t)
	ctx := context.Background()
	alice1, bob := ts.register("alice"), ts.register("bob")
	alice2 := ts.login("alice")

	send := func(txn string, msgs map[id.DeviceID]any) {
		t.Helper()
		req := &mautrix.ReqSendToDevice{Messages: map[id.UserID]map[id.DeviceID]*event.Content{alice1.UserID: {}}}
		for d, body := range msgs {
			req.Messages[alice1.UserID][d] = &event.Content{Raw: map[string]any{"body": body}}
		}
		code, _ := ts.do("PUT", "/_matrix/client/v3/sendToDevice/org.example.ping/"+txn, bob.AccessToken, req)
		if code != 200 {
			t.Fatalf("sendToDevice %s: %d", txn, code)
		}
	}
	send("t1", map[id.DeviceID]any{"*": "all"})
	send("t1", map[id.DeviceID]any{"*": "all-retried"}) // same txn: a no-op
	send("t2", map[id.DeviceID]any{alice2.DeviceID: "only-2", "NOSUCHDEVICE": "lost"})

	s1, err := alice1.SyncRequest(ctx, 0, "", "", false, "")
	if err != nil {
		t.Fatal(err)
	}
	if got := toDeviceBodies(t, s1); len(got) != 1 || got[0] != "all/"+bob.UserID.String() {
		t.Fatalf("device 1 got %v", got)
	}
	s2, err := alice2.SyncRequest(ctx, 0, "", "", false, "")
	if err != nil {
		t.Fatal(err)
	}
	if got := toDeviceBodies(t, s2); len(got) != 2 || got[0] != "all/"+bob.UserID.String() || got[1] != "only-2/"+bob.UserID.String() {
		t.Fatalf("device 2 got %v", got)
	}
	// Not acknowledged yet: an initial sync delivers them again.
	again, err := alice1.SyncRequest(ctx, 0, "", "", false, "")
	if err != nil || len(again.ToDevice.Events) != 1 {
		t.Fatalf("redelivery before ack: %v, %v", again.ToDevice.Events, err)
	}

	// The next sync carries since >= the delivery: acknowledged, deleted.
	send("t3", map[id.DeviceID]any{alice1.DeviceID: "later"})
	s3, err := alice1.SyncRequest(ctx, 0, s1.NextBatch, "", false, "")
	if err != nil {
		t.Fatal(err)
	}
	if got := toDeviceBodies(t, s3); len(got) != 1 || got[0] != "later/"+bob.UserID.String() {
		t.Fatalf("incremental to-device %v", got)
	}
	if _, err := alice1.SyncRequest(ctx, 0, s3.NextBatch, "", false, ""); err != nil {
		t.Fatal(err)
	}
	s4, err := alice1.SyncRequest(ctx, 0, "", "", false, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(s4.ToDevice.Events) != 0 {
		t.Fatalf("acknowledged messages were delivered again: %v", toDeviceBodies(t, s4))
	}
	// Device 2 never acknowledged: its messages are still there.
	s5, err := alice2.SyncRequest(ctx, 0, "", "", false, "")
	if err != nil || len(s5.ToDevice.Events) != 2 {
		t.Fatalf("device 2 inbox after device 1's ack: %v, %v", s5.ToDevice.Events, err)
	}
	if s5.FallbackKeys == nil {
		t.Fatal("device_unused_fallback_key_types missing")
	}

	// A long-poll wakes for a message.
	done := make(chan *mautrix.RespSync, 1)
	go func() {
		r, err := alice2.SyncRequest(ctx, 20000, s5.NextBatch, "", false, "")
		if err != nil {
			t.Error(err)
		}
		done <- r
	}()
	send("t4", map[id.DeviceID]any{alice2.DeviceID: "wake"})
	if r := <-done; r == nil || len(r.ToDevice.Events) != 1 {
		t.Fatalf("long-poll did not deliver the to-device message: %+v", r)
	}

	code, body := ts.do("PUT", "/_matrix/client/v3/sendToDevice/x/t9", bob.AccessToken, map[string]any{})
	if code != 400 || body["errcode"] != "M_MISSING_PARAM" {
		t.Fatalf("missing messages: %d %v", code, body)
	}
}
