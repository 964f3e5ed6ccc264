package federation

import (
	"context"
	"encoding/json"
	"net/url"
	"strconv"

	"github.com/engram-hs/engram/federation/transport"
)

// Remote answers the client API's questions to other servers (it
// satisfies api.Remote; cmd/engram wires it). A successful answer from a
// server counts as a local user acting towards it: Acted (the queue's
// MarkUp) brings it back if it was marked down.
type Remote struct {
	Client *transport.Client
	Acted  func(server string)
}

func (rm *Remote) get(ctx context.Context, server, path string, q url.Values, out any) error {
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	err := rm.Client.DoJSON(ctx, transport.Request{Destination: server, Method: "GET", Path: path}, out)
	if err == nil && rm.Acted != nil {
		rm.Acted(server)
	}
	return err
}

// QueryProfile is GET /_matrix/federation/v1/query/profile.
func (rm *Remote) QueryProfile(ctx context.Context, server, userID, field string) (map[string]any, error) {
	q := url.Values{"user_id": {userID}}
	if field != "" {
		q.Set("field", field)
	}
	out := map[string]any{}
	if err := rm.get(ctx, server, "/_matrix/federation/v1/query/profile", q, &out); err != nil {
		return nil, err
	}
	return out, nil
}

// QueryDirectory is GET /_matrix/federation/v1/query/directory.
func (rm *Remote) QueryDirectory(ctx context.Context, server, alias string) (string, []string, error) {
	var out struct {
		RoomID  string   `json:"room_id"`
		Servers []string `json:"servers"`
	}
	if err := rm.get(ctx, server, "/_matrix/federation/v1/query/directory", url.Values{"room_alias": {alias}}, &out); err != nil {
		return "", nil, err
	}
	return out.RoomID, out.Servers, nil
}

// PublicRooms is GET (no filter) or POST /_matrix/federation/v1/publicRooms.
func (rm *Remote) PublicRooms(ctx context.Context, server string, limit int, since string, filter json.RawMessage) (json.RawMessage, error) {
	var out json.RawMessage
	if filter == nil {
		q := url.Values{}
		if limit > 0 {
			q.Set("limit", strconv.Itoa(limit))
		}
		if since != "" {
			q.Set("since", since)
		}
		if err := rm.get(ctx, server, "/_matrix/federation/v1/publicRooms", q, &out); err != nil {
			return nil, err
		}
		return out, nil
	}
	body := map[string]any{"filter": filter}
	if limit > 0 {
		body["limit"] = limit
	}
	if since != "" {
		body["since"] = since
	}
	err := rm.Client.DoJSON(ctx, transport.Request{Destination: server, Method: "POST", Path: "/_matrix/federation/v1/publicRooms", Body: body}, &out)
	if err == nil && rm.Acted != nil {
		rm.Acted(server)
	}
	return out, err
}
