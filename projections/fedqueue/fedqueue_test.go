package fedqueue_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"

	"github.com/rs/zerolog"

	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/projections"
	"github.com/engram-hs/engram/projections/fedqueue"
)

func edu(typ string, n int) facts.OutboundItem {
	return facts.OutboundItem{EDU: &facts.OutboundEDU{Type: typ, Content: json.RawMessage(fmt.Sprintf(`{"n":%d}`, n))}}
}

// The fold: items per destination in log order, Back resolved within the
// batch, deliveries remove through a position, and a down destination
// keeps at most MaxPendingWhileDown items and no typing or presence.
func TestFold(t *testing.T) {
	node, err := englog.Open(englog.Config{Dir: t.TempDir(), Logger: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close()
	e := projections.NewEngine(node, node.DB(), zerolog.Nop(), nil)
	h := e.Register(fedqueue.New(nil))
	if err := e.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	ctx := context.Background()
	app := func(ps ...englog.Proposal) []uint64 {
		t.Helper()
		offs, err := node.Append(ctx, ps...)
		if err != nil {
			t.Fatal(err)
		}
		if err := h.WaitApplied(ctx, offs[len(offs)-1]); err != nil {
			t.Fatal(err)
		}
		return offs
	}
	v := fedqueue.NewView(h.Reader())
	offs := app(facts.MustEncode(englog.KindPDU, facts.PDU{Event: json.RawMessage(`{}`)}),
		facts.MustEncode(englog.KindFederationOutbound, facts.FederationOutbound{Destinations: []string{"a", "b"}, Items: []facts.OutboundItem{{Back: 1}, edu("m.typing", 1)}}))
	q, _ := v.Pending("a", 50, 100)
	if len(q) != 2 || !q[0].Item.PDU || q[0].Item.Offset != offs[0] || q[1].Item.EDU == nil {
		t.Fatalf("a: %+v", q)
	}
	// Limits keep order: at most 1 PDU stops before the second PDU even
	// when EDUs follow.
	app(facts.MustEncode(englog.KindFederationOutbound, facts.FederationOutbound{Destinations: []string{"a"}, Items: []facts.OutboundItem{{Offset: offs[0]}, edu("x", 2)}}))
	if q, _ = v.Pending("a", 1, 100); len(q) != 2 {
		t.Fatalf("limit: %d items", len(q))
	}
	app(facts.MustEncode(englog.KindFederationDelivered, facts.FederationDelivered{Destination: "a", TxnID: "t", Through: q[1].Position.String()}))
	if st, _ := v.Destination("a"); st.Pending != 2 || st.Delivered != 1 {
		t.Fatalf("after delivery: %+v", st)
	}
	if st, _ := v.Destination("b"); st.Pending != 2 {
		t.Fatalf("b untouched: %+v", st)
	}
	// b goes down.
	app(facts.MustEncode(englog.KindFederationDestinationSet, facts.FederationDestinationSet{Destination: "b", Down: true}))
	var items []facts.OutboundItem
	for i := 0; i < fedqueue.MaxPendingWhileDown+10; i++ {
		items = append(items, edu("m.room_key_request", i), edu("m.typing", i))
	}
	app(facts.MustEncode(englog.KindFederationOutbound, facts.FederationOutbound{Destinations: []string{"b"}, Items: items}))
	st, _ := v.Destination("b")
	if st.Pending != fedqueue.MaxPendingWhileDown || st.Dropped != 12 {
		t.Fatalf("down destination: %+v", st)
	}
	q, _ = v.Pending("b", 50, 100)
	var first struct{ N int }
	json.Unmarshal(q[0].Item.EDU.Content, &first)
	if q[0].Item.EDU.Type != "m.room_key_request" || first.N != 10 {
		t.Fatalf("oldest kept: %s %s", q[0].Item.EDU.Type, q[0].Item.EDU.Content)
	}
}
