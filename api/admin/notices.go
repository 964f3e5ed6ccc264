package admin

import (
	"encoding/json"
	"net/http"

	"github.com/engram-hs/engram/internal/mxerr"
	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/stateres"
)

// Server notices (Synapse's server_notices): a system user sends notices
// to a user in a room of the user's own, created on the first notice and
// tagged m.server_notice.

func (a *API) noticeEndpoints() []endpoint {
	return []endpoint{
		{"POST", "/v1/send_server_notice", a.sendServerNotice},
		{"PUT", "/v1/send_server_notice/{txnId}", a.sendServerNotice},
	}
}

func (a *API) systemUser() string {
	return "@" + a.cfg.ServerNotices.SystemMXIDLocalpart + ":" + a.cfg.ServerName
}

func (a *API) sendServerNotice(w http.ResponseWriter, r *http.Request, c Caller) error {
	if a.cfg.ServerNotices.SystemMXIDLocalpart == "" {
		return mxerr.New(http.StatusBadRequest, "M_UNKNOWN", "Server notices are not enabled on this server; set server_notices.system_mxid_localpart in the config")
	}
	var req struct {
		UserID   string          `json:"user_id"`
		Content  json.RawMessage `json:"content"`
		Type     string          `json:"type"`
		StateKey *string         `json:"state_key"`
	}
	if err := readJSON(r, &req); err != nil {
		return err
	}
	if req.UserID == "" || len(req.Content) == 0 {
		return mxerr.MissingParam("user_id and content are required")
	}
	if !a.isLocal(req.UserID) {
		return mxerr.InvalidParam("Server notices can only be sent to local users")
	}
	acc, err := a.host.Accounts().Account(req.UserID)
	if err != nil {
		return err
	}
	if acc == nil || acc.Deactivated {
		return mxerr.NotFound("User not found")
	}
	if req.Type == "" {
		req.Type = "m.room.message"
	}
	sys, err := a.ensureSystemUser(r, c)
	if err != nil {
		return err
	}
	roomID, err := a.noticesRoom(r, c, sys, req.UserID)
	if err != nil {
		return err
	}
	// PUT with a transaction ID: a retry answers the notice it sent
	// (scoped to the admin's device and, through the room, the user).
	var txn *facts.TxnRef
	if id := r.PathValue("txnId"); id != "" {
		txn = &facts.TxnRef{UserID: c.UserID, DeviceID: c.DeviceID, TxnID: "send_server_notice/" + id}
	}
	eventID, err := a.host.SendEvent(r.Context(), stateres.ProtoEvent{RoomID: roomID, Type: req.Type, StateKey: req.StateKey, Sender: sys, Content: req.Content}, txn)
	if err != nil {
		return err
	}
	if err := a.commit(r.Context(), c, "send_server_notice", req.UserID, map[string]any{"room_id": roomID, "event_id": eventID}); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]string{"event_id": eventID})
	return nil
}

// ensureSystemUser registers the notices user (no password: nobody logs
// in as it) on first use, and keeps its profile as configured.
func (a *API) ensureSystemUser(r *http.Request, c Caller) (string, error) {
	sys := a.systemUser()
	acc, err := a.host.Accounts().Account(sys)
	if err != nil {
		return "", err
	}
	if acc != nil {
		return sys, nil
	}
	n := a.cfg.ServerNotices
	props := []englog.Proposal{facts.MustEncode(englog.KindAccountRegistered, facts.AccountRegistered{UserID: sys, DisplayName: n.SystemMXIDDisplayName, Registration: randomID()})}
	if n.SystemMXIDAvatarURL != "" {
		av := n.SystemMXIDAvatarURL
		props = append(props, facts.MustEncode(englog.KindProfileSet, facts.ProfileSet{UserID: sys, AvatarURL: &av}))
	}
	if err := a.commit(r.Context(), c, "create_server_notices_user", sys, nil, props...); err != nil {
		return "", err
	}
	return sys, nil
}

// noticesRoom returns the user's notices room: the one they have, with a
// new invite when they left it (as Synapse does: one room per user, so
// earlier notices stay together), or a new one with the user invited
// when there is none (or the system user is no longer in it).
func (a *API) noticesRoom(r *http.Request, c Caller, sys, userID string) (string, error) {
	roomID, err := a.host.State().NoticesRoom(userID)
	if err != nil {
		return "", err
	}
	if roomID != "" {
		rv := a.host.Rooms()
		m, err := rv.Membership(userID, roomID)
		if err != nil {
			return "", err
		}
		if m != nil && (m.Membership == "join" || m.Membership == "invite") {
			return roomID, nil
		}
		sm, err := rv.Membership(sys, roomID)
		if err != nil {
			return "", err
		}
		if sm != nil && sm.Membership == "join" && (m == nil || m.Membership == "leave") {
			if _, err := a.host.SendEvent(r.Context(), stateres.ProtoEvent{RoomID: roomID, Type: stateres.MRoomMember, StateKey: &userID, Sender: sys,
				Content: mustJSON(map[string]string{"membership": "invite"})}, nil); err != nil {
				return "", err
			}
			return roomID, nil
		}
	}
	n := a.cfg.ServerNotices
	roomID, err = a.host.CreateRoom(r.Context(), CreateRoom{Creator: sys, Name: n.RoomName, Topic: n.RoomTopic, Preset: "private_chat", Invite: []string{userID}})
	if err != nil {
		return "", err
	}
	tag := facts.AccountDataSet{UserID: userID, RoomID: roomID, Type: "m.tag", Content: mustJSON(map[string]any{"tags": map[string]any{"m.server_notice": map[string]any{}}})}
	if err := a.commit(r.Context(), c, "create_server_notices_room", userID, map[string]any{"room_id": roomID},
		facts.MustEncode(englog.KindServerNoticeRoom, facts.ServerNoticeRoom{UserID: userID, RoomID: roomID}),
		facts.MustEncode(englog.KindAccountDataSet, tag)); err != nil {
		return "", err
	}
	return roomID, nil
}
