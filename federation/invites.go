package federation

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"

	"github.com/engram-hs/engram/federation/transport"
	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/projections/accounts"
	"github.com/engram-hs/engram/stateres"
	"github.com/engram-hs/engram/stateres/canonicaljson"
	"github.com/engram-hs/engram/stateres/signing"
)

// Invites across servers (server-server API, "Inviting to a room"): the
// inviting server builds the invite, the invitee's server signs it and
// records it, and the inviting server sends the doubly signed event into
// the room.

func (s *Server) inviteRoutes() {
	if s.deps.Rooms == nil || s.deps.Log == nil || s.deps.Keys == nil {
		return
	}
	s.HandleAuthed("PUT /_matrix/federation/v2/invite/{roomID}/{eventID}", s.inviteV2)
	s.HandleAuthed("PUT /_matrix/federation/v1/invite/{roomID}/{eventID}", s.inviteV1)
}

// inviteV2: the body carries the event, the room version and the stripped
// state the invitee will see.
func (s *Server) inviteV2(w http.ResponseWriter, r *http.Request, origin string) error {
	var req struct {
		Event           json.RawMessage   `json:"event"`
		RoomVersion     string            `json:"room_version"`
		InviteRoomState []json.RawMessage `json:"invite_room_state"`
	}
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		return Errorf(http.StatusBadRequest, "M_NOT_JSON", "The body is not JSON: %v", err)
	}
	signed, err := s.receiveInvite(r, origin, req.RoomVersion, req.Event, req.InviteRoomState)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]any{"event": json.RawMessage(signed.JSON())})
	return nil
}

// inviteV1 is the form rooms v1 and v2 servers still use: the body is the
// event, with the stripped state in its unsigned; the answer a pair.
func (s *Server) inviteV1(w http.ResponseWriter, r *http.Request, origin string) error {
	var raw json.RawMessage
	if err := json.NewDecoder(r.Body).Decode(&raw); err != nil {
		return Errorf(http.StatusBadRequest, "M_NOT_JSON", "The body is not JSON: %v", err)
	}
	var stripped []json.RawMessage
	if u := canonicaljson.Get(raw, "unsigned"); len(u) > 0 {
		var us struct {
			InviteRoomState []json.RawMessage `json:"invite_room_state"`
		}
		_ = json.Unmarshal(u, &us)
		stripped = us.InviteRoomState
	}
	signed, err := s.receiveInvite(r, origin, "1", raw, stripped)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, []any{200, map[string]any{"event": json.RawMessage(signed.JSON())}})
	return nil
}

// receiveInvite checks an invite of a local user, signs it and records it
// as an outlier carrying the stripped state (unsigned.invite_room_state),
// which the invitee's /sync shows.
func (s *Server) receiveInvite(r *http.Request, origin, roomVersion string, raw json.RawMessage, stripped []json.RawMessage) (*stateres.Event, error) {
	version, ok := stateres.Version(roomVersion)
	if !ok {
		return nil, &Error{Status: http.StatusBadRequest, Code: "M_INCOMPATIBLE_ROOM_VERSION", Msg: "Room version " + roomVersion + " is not supported here"}
	}
	ev, err := stateres.ParseEvent(version, raw)
	if err != nil {
		return nil, Errorf(http.StatusBadRequest, "M_BAD_JSON", "The invite does not parse: %v", err)
	}
	roomID, eventID := r.PathValue("roomID"), r.PathValue("eventID")
	var c struct {
		Membership string `json:"membership"`
	}
	_ = json.Unmarshal(ev.Content(), &c)
	if ev.EventID() != eventID || ev.RoomID() != roomID || ev.Type() != stateres.MRoomMember || ev.StateKey() == nil || c.Membership != "invite" {
		return nil, Errorf(http.StatusBadRequest, "M_BAD_JSON", "The event must be the invite %s in %s", eventID, roomID)
	}
	if domainOf(ev.Sender()) != origin {
		return nil, Errorf(http.StatusForbidden, "M_FORBIDDEN", "%s cannot send an invite from %s", origin, ev.Sender())
	}
	target := *ev.StateKey()
	if domainOf(target) != s.cfg.ServerName {
		return nil, Errorf(http.StatusBadRequest, "M_BAD_JSON", "%s is not a user of this server", target)
	}
	if err := s.CheckServerACL(r, roomID, origin); err != nil {
		return nil, err
	}
	if s.deps.Accounts != nil {
		acc, err := accounts.NewView(s.deps.Accounts.Reader()).Account(target)
		if err != nil {
			return nil, err
		}
		if acc == nil || acc.Deactivated {
			return nil, Errorf(http.StatusNotFound, "M_NOT_FOUND", "Unknown user %s", target)
		}
	}
	if err := s.deps.Keys.VerifyEvent(r.Context(), ev); err != nil {
		return nil, Errorf(http.StatusForbidden, "M_FORBIDDEN", "The invite's signatures do not check: %v", err)
	}
	if err := ev.CheckContentHash(); err != nil {
		return nil, Errorf(http.StatusBadRequest, "M_BAD_JSON", "The invite's content hash does not match")
	}
	signed, err := stateres.SignEvent(ev, s.cfg.ServerName, s.cfg.Key.ID, s.cfg.Key.Private)
	if err != nil {
		return nil, err
	}
	stored := signed.JSON()
	if len(stripped) > 0 {
		// unsigned is outside hashes and signatures.
		unsigned, _ := json.Marshal(map[string]any{"invite_room_state": stripped})
		var obj map[string]json.RawMessage
		if err := json.Unmarshal(stored, &obj); err == nil {
			obj["unsigned"] = unsigned
			if b, err := json.Marshal(obj); err == nil {
				if canon, err := canonicaljson.Canonicalize(b, version.StrictCanonicalJSON); err == nil {
					stored = canon
				}
			}
		}
	}
	// Our view of the room is this one event unless we are in it: the
	// receiver records what it can check (an outlier when the room is
	// not held here).
	if room, err := s.view().Room(roomID); err != nil {
		return nil, err
	} else if room == nil {
		if _, err := s.deps.Rooms.Receive(r.Context(), []facts.PDU{{RoomVersion: version.ID, Event: stored, EventID: signed.EventID(), Outlier: true}}); err != nil {
			return nil, err
		}
	} else if resident, err := s.view().HasJoinedMember(roomID, s.cfg.ServerName); err != nil {
		return nil, err
	} else if !resident {
		// Held from before all our users left (a banned user unbanned,
		// say): the inviting server sends the invite in no transaction,
		// as we have no joined member, so it is received here, checked
		// against our copy as any PDU (its prev events are usually
		// held: the room's servers send us what concerns our users).
		if _, err := s.receiver().Room(r.Context(), origin, roomID, []json.RawMessage{stored}); err != nil {
			return nil, err
		}
	}
	// In a room held here, the invite arrives with the room's events
	// (the inviting server sends it in a transaction next).
	return signed, nil
}

// Invite asks the invitee's server to sign an invite this server built
// (server-server API v2 invite; v1 for rooms v1 and v2), and returns the
// event with both signatures, to be sent into the room.
func (s *Server) Invite(ctx context.Context, ev *stateres.Event, strippedState []json.RawMessage) (*stateres.Event, error) {
	if s.deps.Client == nil {
		return nil, errNoClient
	}
	if ev.StateKey() == nil {
		return nil, fmt.Errorf("federation: %s is not a membership event", ev.EventID())
	}
	server := domainOf(*ev.StateKey())
	version := ev.Version()
	var signedRaw json.RawMessage
	path := transport.PathEscape(ev.RoomID()) + "/" + transport.PathEscape(ev.EventID())
	if version.ID == "1" || version.ID == "2" {
		var out []json.RawMessage
		body := ev.JSON()
		if len(strippedState) > 0 {
			var obj map[string]json.RawMessage
			_ = json.Unmarshal(body, &obj)
			obj["unsigned"], _ = json.Marshal(map[string]any{"invite_room_state": strippedState})
			body, _ = json.Marshal(obj)
		}
		if err := s.deps.Client.DoJSON(ctx, transport.Request{Destination: server, Method: "PUT", Path: "/_matrix/federation/v1/invite/" + path, Body: json.RawMessage(body)}, &out); err != nil {
			return nil, remoteErr(err, server)
		}
		if len(out) != 2 {
			return nil, &RemoteError{Status: http.StatusBadGateway, Errcode: "M_UNKNOWN", Message: server + " answered the invite with a malformed body"}
		}
		var inner struct {
			Event json.RawMessage `json:"event"`
		}
		_ = json.Unmarshal(out[1], &inner)
		signedRaw = inner.Event
	} else {
		if strippedState == nil {
			strippedState = []json.RawMessage{}
		}
		var out struct {
			Event json.RawMessage `json:"event"`
		}
		if err := s.deps.Client.DoJSON(ctx, transport.Request{Destination: server, Method: "PUT", Path: "/_matrix/federation/v2/invite/" + path,
			Body: map[string]any{"event": json.RawMessage(ev.JSON()), "room_version": version.ID, "invite_room_state": strippedState}}, &out); err != nil {
			return nil, remoteErr(err, server)
		}
		signedRaw = out.Event
	}
	signed, err := stateres.ParseEvent(version, signedRaw)
	if err != nil || signed.EventID() != ev.EventID() {
		return nil, &RemoteError{Status: http.StatusBadGateway, Errcode: "M_UNKNOWN", Message: server + " returned another event than the invite sent"}
	}
	if err := s.deps.Keys.VerifyEvent(ctx, signed); err != nil {
		return nil, &RemoteError{Status: http.StatusBadGateway, Errcode: "M_UNKNOWN", Message: fmt.Sprintf("The signatures on the invite %s returned do not check: %v", server, err)}
	}
	if len(signing.KeyIDs(signed.Signatures(), server)) == 0 {
		return nil, &RemoteError{Status: http.StatusBadGateway, Errcode: "M_UNKNOWN", Message: server + " did not sign the invite"}
	}
	return signed, nil
}
