package roomwrite

import (
	"context"
	"testing"

	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/projections/rooms"
	"github.com/engram-hs/engram/stateres"
)

// One transaction ID maps to one event, the first folded: two events
// appended with the same transaction (as two writers that both missed the
// other's would) leave the mapping on the first, and a retry of the
// transaction answers it.
func TestTransactionMapsToTheFirstEvent(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	alice := user("alice")
	room := r.createRoom(t, alice, "12")
	txn := &facts.TxnRef{UserID: alice, DeviceID: "DEV", TxnID: "once"}
	appendWithTxn := func(body string) string {
		t.Helper()
		b, err := r.w.Extend(room)
		if err != nil {
			t.Fatal(err)
		}
		ev, err := b.Add(stateres.ProtoEvent{Type: "m.room.message", Sender: alice, Content: mustJSON(map[string]string{"body": body})})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := r.w.Commit(ctx, b.Proposals(txn)...); err != nil {
			t.Fatal(err)
		}
		return ev.EventID()
	}
	first := appendWithTxn("first")
	appendWithTxn("second")
	got, err := r.w.View().TxnEvent(txn.UserID, txn.DeviceID, rooms.TxnScopeOf(room, "m.room.message", ""), txn.TxnID)
	if err != nil || got != first {
		t.Fatalf("the transaction maps to %q (%v), want the first event %s", got, err, first)
	}
	id, err := r.w.Send(ctx, stateres.ProtoEvent{Type: "m.room.message", Sender: alice, RoomID: room, Content: mustJSON(map[string]string{"body": "retry"})}, txn)
	if err != nil || id != first {
		t.Fatalf("a retry of the transaction answered %q (%v), want %s", id, err, first)
	}
}
