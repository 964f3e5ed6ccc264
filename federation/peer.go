package federation

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"

	"github.com/engram-hs/engram/federation/transport"
)

// peer is the receiver's view of a remote server (receive.Peer): the
// server-server requests it needs to fill gaps, over the outbound client.
type peer struct{ c *transport.Client }

func (p peer) MissingEvents(ctx context.Context, origin, roomID string, earliest, latest []string, limit int) ([]json.RawMessage, error) {
	if earliest == nil {
		earliest = []string{}
	}
	var out struct {
		Events []json.RawMessage `json:"events"`
	}
	err := p.c.DoJSON(ctx, transport.Request{Destination: origin, Method: "POST",
		Path: "/_matrix/federation/v1/get_missing_events/" + transport.PathEscape(roomID),
		Body: map[string]any{"earliest_events": earliest, "latest_events": latest, "limit": limit}}, &out)
	return out.Events, err
}

func (p peer) StateIDs(ctx context.Context, origin, roomID, eventID string) ([]string, []string, error) {
	var out struct {
		PDUIDs       []string `json:"pdu_ids"`
		AuthChainIDs []string `json:"auth_chain_ids"`
	}
	err := p.c.DoJSON(ctx, transport.Request{Destination: origin, Method: "GET",
		Path: "/_matrix/federation/v1/state_ids/" + transport.PathEscape(roomID) + "?event_id=" + url.QueryEscape(eventID)}, &out)
	return out.PDUIDs, out.AuthChainIDs, err
}

func (p peer) Event(ctx context.Context, origin, eventID string) (json.RawMessage, error) {
	var out struct {
		PDUs []json.RawMessage `json:"pdus"`
	}
	if err := p.c.DoJSON(ctx, transport.Request{Destination: origin, Method: "GET",
		Path: "/_matrix/federation/v1/event/" + transport.PathEscape(eventID)}, &out); err != nil {
		return nil, err
	}
	if len(out.PDUs) != 1 {
		return nil, fmt.Errorf("%s answered /event/%s with %d PDUs, not 1", origin, eventID, len(out.PDUs))
	}
	return out.PDUs[0], nil
}
