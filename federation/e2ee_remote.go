package federation

import (
	"context"
	"encoding/json"

	"github.com/engram-hs/engram/federation/transport"
)

// The end-to-end encryption questions the client API asks other servers
// for its users (api/keys uses them through its Remote interface).

func (rm *Remote) post(ctx context.Context, server, path string, body, out any) error {
	err := rm.Client.DoJSON(ctx, transport.Request{Destination: server, Method: "POST", Path: path, Body: body}, out)
	if err == nil && rm.Acted != nil {
		rm.Acted(server)
	}
	return err
}

// QueryKeys is POST /_matrix/federation/v1/user/keys/query: the device
// and cross-signing keys of server's users (user -> device IDs, empty
// for all).
func (rm *Remote) QueryKeys(ctx context.Context, server string, deviceKeys map[string][]string) (json.RawMessage, error) {
	var out json.RawMessage
	if err := rm.post(ctx, server, "/_matrix/federation/v1/user/keys/query", map[string]any{"device_keys": deviceKeys}, &out); err != nil {
		return nil, err
	}
	return out, nil
}

// ClaimKeys is POST /_matrix/federation/v1/user/keys/claim (user ->
// device -> algorithm).
func (rm *Remote) ClaimKeys(ctx context.Context, server string, oneTimeKeys map[string]map[string]string) (json.RawMessage, error) {
	var out json.RawMessage
	if err := rm.post(ctx, server, "/_matrix/federation/v1/user/keys/claim", map[string]any{"one_time_keys": oneTimeKeys}, &out); err != nil {
		return nil, err
	}
	return out, nil
}
