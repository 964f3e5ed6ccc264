package federation

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"github.com/engram-hs/engram/federation/receive"
	"github.com/engram-hs/engram/federation/transport"
	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/stateres"
	"github.com/engram-hs/engram/stateres/canonicaljson"
)

// The client side of joins: a local user joins a room this server is not
// in, through a resident server (server-server API, "Joining Rooms").

// RemoteError is a failure the client API reports with a Matrix error
// code: what the resident server answered, or why its answer was refused.
type RemoteError struct {
	Status  int
	Errcode string
	Message string
}

func (e *RemoteError) Error() string { return e.Errcode + ": " + e.Message }

// MatrixError gives the client API the status and errcode to answer with.
func (e *RemoteError) MatrixError() (int, string, string) { return e.Status, e.Errcode, e.Message }

func remoteErr(err error, server string) error {
	var he *transport.HTTPError
	if errors.As(err, &he) && he.Errcode != "" {
		return &RemoteError{Status: he.Status, Errcode: he.Errcode, Message: fmt.Sprintf("%s answered: %s", server, he.Message)}
	}
	return &RemoteError{Status: http.StatusBadGateway, Errcode: "M_UNKNOWN", Message: fmt.Sprintf("%s could not be reached: %v", server, err)}
}

// ResolveAlias asks the alias's server for the room it names (query
// directory): the room ID and the servers to join through.
func (s *Server) ResolveAlias(ctx context.Context, alias string) (string, []string, error) {
	if s.deps.Client == nil {
		return "", nil, errNoClient
	}
	server := domainOf(alias)
	var out struct {
		RoomID  string   `json:"room_id"`
		Servers []string `json:"servers"`
	}
	err := s.deps.Client.DoJSON(ctx, transport.Request{Destination: server, Method: "GET",
		Path: "/_matrix/federation/v1/query/directory?room_alias=" + url.QueryEscape(alias)}, &out)
	if err != nil {
		return "", nil, remoteErr(err, server)
	}
	if out.RoomID == "" {
		return "", nil, &RemoteError{Status: http.StatusNotFound, Errcode: "M_NOT_FOUND", Message: "Room alias " + alias + " not found"}
	}
	return out.RoomID, out.Servers, nil
}

// JoinRoom joins the local user to roomID through the first of servers
// that lets it (make_join, build and sign, send_join, check and record the
// state it returns), adding extra (reason, displayname...) to the join's
// content. It returns once the rooms projection has folded the join.
func (s *Server) JoinRoom(ctx context.Context, roomID string, servers []string, userID string, extra map[string]any) error {
	if s.deps.Client == nil {
		return errNoClient
	}
	var last error = &RemoteError{Status: http.StatusNotFound, Errcode: "M_NOT_FOUND", Message: "No server to join " + roomID + " through: give server_name or via"}
	for _, server := range servers {
		if server == "" || server == s.cfg.ServerName {
			continue
		}
		err := s.joinThrough(ctx, server, roomID, userID, extra)
		if err == nil {
			return nil
		}
		last = err
		var re *RemoteError
		if errors.As(err, &re) && re.Status == http.StatusForbidden {
			return err // refused, not unreachable: another server would say the same
		}
	}
	return last
}

func (s *Server) joinThrough(ctx context.Context, server, roomID, userID string, extra map[string]any) error {
	q := url.Values{}
	for _, v := range stateres.KnownVersions() {
		q.Add("ver", v)
	}
	version, ev, err := s.buildFromTemplate(ctx, server, "make_join", roomID, userID, "join", "?"+q.Encode(), extra)
	if err != nil {
		return err
	}
	var sj struct {
		State     []json.RawMessage `json:"state"`
		AuthChain []json.RawMessage `json:"auth_chain"`
		Event     json.RawMessage   `json:"event"`
	}
	if err := s.deps.Client.DoJSON(ctx, transport.Request{Destination: server, Method: "PUT",
		Path: "/_matrix/federation/v2/send_join/" + transport.PathEscape(roomID) + "/" + transport.PathEscape(ev.EventID()), Body: json.RawMessage(ev.JSON())}, &sj); err != nil {
		return remoteErr(err, server)
	}
	resp := receive.JoinResponse{State: sj.State, AuthChain: sj.AuthChain}
	if len(sj.Event) > 0 && string(sj.Event) != "null" {
		resp.Event = sj.Event
	}
	v, err := s.receiver().Join(ctx, server, version, ev, resp)
	if err != nil {
		return err
	}
	if v.Outcome != receive.Accepted {
		return &RemoteError{Status: http.StatusBadGateway, Errcode: "M_UNKNOWN", Message: fmt.Sprintf("The room state %s sent does not allow the join: %s", server, v.Reason)}
	}
	return nil
}

// buildFromTemplate asks server for a membership template (make_join,
// make_leave; query is appended to the path), checks it and builds and
// signs the event from it. The spec's room version is "1" when the answer
// names none.
func (s *Server) buildFromTemplate(ctx context.Context, server, endpoint, roomID, userID, membership, query string, extra map[string]any) (*stateres.RoomVersion, *stateres.Event, error) {
	var mt struct {
		Event       json.RawMessage `json:"event"`
		RoomVersion string          `json:"room_version"`
	}
	if err := s.deps.Client.DoJSON(ctx, transport.Request{Destination: server, Method: "GET",
		Path: "/_matrix/federation/v1/" + endpoint + "/" + transport.PathEscape(roomID) + "/" + transport.PathEscape(userID) + query}, &mt); err != nil {
		return nil, nil, remoteErr(err, server)
	}
	if mt.RoomVersion == "" {
		mt.RoomVersion = "1"
	}
	version, ok := stateres.Version(mt.RoomVersion)
	if !ok {
		return nil, nil, &RemoteError{Status: http.StatusBadRequest, Errcode: "M_UNSUPPORTED_ROOM_VERSION", Message: "Room version " + mt.RoomVersion + " is not supported here"}
	}
	tmpl, err := checkTemplate(mt.Event, roomID, userID, membership, extra)
	if err != nil {
		return nil, nil, &RemoteError{Status: http.StatusBadGateway, Errcode: "M_UNKNOWN", Message: fmt.Sprintf("%s sent a bad %s template: %v", server, membership, err)}
	}
	ev, err := stateres.BuildFromTemplate(version, tmpl, s.cfg.Now().UnixMilli(), s.cfg.ServerName, s.cfg.Key.ID, s.cfg.Key.Private)
	if err != nil {
		return nil, nil, &RemoteError{Status: http.StatusBadGateway, Errcode: "M_UNKNOWN", Message: fmt.Sprintf("%s sent a %s template that does not build: %v", server, membership, err)}
	}
	return version, ev, nil
}

// checkTemplate checks that a make_join (make_leave, ...) template is the
// membership event asked for, and merges extra into its content.
func checkTemplate(raw json.RawMessage, roomID, userID, membership string, extra map[string]any) (json.RawMessage, error) {
	var t map[string]json.RawMessage
	if err := json.Unmarshal(raw, &t); err != nil {
		return nil, err
	}
	var head struct {
		Type     string         `json:"type"`
		RoomID   string         `json:"room_id"`
		Sender   string         `json:"sender"`
		StateKey *string        `json:"state_key"`
		Content  map[string]any `json:"content"`
	}
	if err := json.Unmarshal(raw, &head); err != nil {
		return nil, err
	}
	if head.Type != stateres.MRoomMember || head.Sender != userID || head.StateKey == nil || *head.StateKey != userID || (head.RoomID != "" && head.RoomID != roomID) {
		return nil, fmt.Errorf("the template is not %s's m.room.member event in %s", userID, roomID)
	}
	if m, _ := head.Content["membership"].(string); m != membership {
		return nil, fmt.Errorf("the template's membership is %q, not %q", m, membership)
	}
	content := head.Content
	for k, v := range extra {
		if k != "membership" && !strings.HasPrefix(k, "join_authorised") {
			content[k] = v
		}
	}
	t["content"], _ = json.Marshal(content)
	return json.Marshal(t)
}

// LeaveRoom rejects (or rescinds a knock on) a room this server does not
// hold: make_leave and send_leave through the first of servers that
// answers (the inviting server first), and the leave is recorded as an
// outlier, as the invite was, so the local user's membership becomes
// leave.
func (s *Server) LeaveRoom(ctx context.Context, roomID string, servers []string, userID string) error {
	if s.deps.Client == nil {
		return &RemoteError{Status: http.StatusNotFound, Errcode: "M_NOT_FOUND", Message: "Room " + roomID + " is not held here and this server has no federation client"}
	}
	if len(servers) == 0 {
		return &RemoteError{Status: http.StatusNotFound, Errcode: "M_NOT_FOUND", Message: "No server to leave " + roomID + " through"}
	}
	var last error
	for _, server := range servers {
		if server == s.cfg.ServerName {
			continue
		}
		if last = s.leaveThrough(ctx, server, roomID, userID); last == nil {
			return nil
		}
	}
	return last
}

func (s *Server) leaveThrough(ctx context.Context, server, roomID, userID string) error {
	version, ev, err := s.buildFromTemplate(ctx, server, "make_leave", roomID, userID, "leave", "", nil)
	if err != nil {
		return err
	}
	if err := s.deps.Client.DoJSON(ctx, transport.Request{Destination: server, Method: "PUT",
		Path: "/_matrix/federation/v2/send_leave/" + transport.PathEscape(roomID) + "/" + transport.PathEscape(ev.EventID()), Body: json.RawMessage(ev.JSON())}, nil); err != nil {
		return remoteErr(err, server)
	}
	_, err = s.deps.Rooms.Receive(ctx, []facts.PDU{{RoomVersion: version.ID, Event: ev.JSON(), EventID: ev.EventID(), Outlier: true}})
	return err
}

// KnockRoom knocks for the local user on a room this server does not
// hold, through the first of servers that answers (make_knock, build and
// sign, send_knock), adding extra (reason, displayname...) to the knock's
// content. The knock is recorded as an outlier carrying the stripped
// state the resident server answered with (unsigned.invite_room_state,
// as an invite's), so the user's membership becomes knock and /sync shows
// the room under knock. A refusal (403) is not retried elsewhere.
func (s *Server) KnockRoom(ctx context.Context, roomID string, servers []string, userID string, extra map[string]any) error {
	if s.deps.Client == nil {
		return errNoClient
	}
	var last error = &RemoteError{Status: http.StatusNotFound, Errcode: "M_NOT_FOUND", Message: "No server to knock on " + roomID + " through: give server_name or via"}
	for _, server := range servers {
		if server == "" || server == s.cfg.ServerName {
			continue
		}
		err := s.knockThrough(ctx, server, roomID, userID, extra)
		if err == nil {
			return nil
		}
		last = err
		var re *RemoteError
		if errors.As(err, &re) && re.Status == http.StatusForbidden {
			return err
		}
	}
	return last
}

func (s *Server) knockThrough(ctx context.Context, server, roomID, userID string, extra map[string]any) error {
	q := url.Values{}
	for _, v := range stateres.KnownVersions() {
		q.Add("ver", v)
	}
	version, ev, err := s.buildFromTemplate(ctx, server, "make_knock", roomID, userID, "knock", "?"+q.Encode(), extra)
	if err != nil {
		return err
	}
	var out struct {
		KnockRoomState []json.RawMessage `json:"knock_room_state"`
	}
	if err := s.deps.Client.DoJSON(ctx, transport.Request{Destination: server, Method: "PUT",
		Path: "/_matrix/federation/v1/send_knock/" + transport.PathEscape(roomID) + "/" + transport.PathEscape(ev.EventID()), Body: json.RawMessage(ev.JSON())}, &out); err != nil {
		return remoteErr(err, server)
	}
	stored := ev.JSON()
	if len(out.KnockRoomState) > 0 {
		// unsigned is outside hashes and signatures.
		var obj map[string]json.RawMessage
		if err := json.Unmarshal(stored, &obj); err == nil {
			obj["unsigned"], _ = json.Marshal(map[string]any{"invite_room_state": out.KnockRoomState})
			if b, err := json.Marshal(obj); err == nil {
				if canon, err := canonicaljson.Canonicalize(b, version.StrictCanonicalJSON); err == nil {
					stored = canon
				}
			}
		}
	}
	_, err = s.deps.Rooms.Receive(ctx, []facts.PDU{{RoomVersion: version.ID, Event: stored, EventID: ev.EventID(), Outlier: true}})
	return err
}
