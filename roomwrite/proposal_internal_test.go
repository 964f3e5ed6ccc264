package roomwrite

import (
	"bytes"
	"encoding/json"
	"testing"

	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/projections"
)

// The hand-spliced PDU payload decodes to the fact it was made from, and
// is facts.MustEncode's bytes when the event has nothing encoding/json
// would escape.
func TestPDUProposalMatchesFactsEncoding(t *testing.T) {
	for _, f := range []facts.PDU{
		{RoomVersion: "10", Event: json.RawMessage(`{"content":{"body":"hi"},"type":"m.room.message"}`), EventID: "$abc"},
		{RoomVersion: "12", Event: json.RawMessage(`{"content":{},"event":0}`), EventID: "$x", Txn: &facts.TxnRef{UserID: "@u:x", DeviceID: "D", TxnID: "t,\"event\":0"}},
		{RoomVersion: "1", Event: json.RawMessage(`{}`)},
	} {
		got := pduProposal(f)
		want := facts.MustEncode(englog.KindPDU, f)
		if got.Kind != want.Kind || !bytes.Equal(got.Payload, want.Payload) {
			t.Errorf("payload\n%s\nwant\n%s", got.Payload, want.Payload)
		}
		back, err := projections.DecodePDU(englog.Entry{Kind: got.Kind, Payload: got.Payload})
		if err != nil || back.EventID != f.EventID || !bytes.Equal(back.Event, f.Event) || (back.Txn == nil) != (f.Txn == nil) {
			t.Errorf("decoded %+v, %v; want %+v", back, err, f)
		}
	}
	// Canonical JSON keeps <, > and & as they are; so does the payload.
	f := facts.PDU{RoomVersion: "10", Event: json.RawMessage(`{"content":{"body":"a<b&c"}}`), EventID: "$e"}
	back, err := projections.DecodePDU(englog.Entry{Kind: englog.KindPDU, Payload: pduProposal(f).Payload})
	if err != nil || string(back.Event) != string(f.Event) {
		t.Errorf("decoded event %s, %v", back.Event, err)
	}
}
