package api

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"

	"github.com/engram-hs/engram/api/admin"
	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/projections"
	"github.com/engram-hs/engram/projections/accounts"
	"github.com/engram-hs/engram/projections/adminstate"
	"github.com/engram-hs/engram/projections/reports"
	"github.com/engram-hs/engram/projections/rooms"
	"github.com/engram-hs/engram/stateres"
)

// adminRoutes mounts the admin API (api/admin) on this server.
func (s *Server) adminRoutes() {
	s.admin = admin.New(admin.Config{ServerName: s.cfg.ServerName, Version: s.cfg.ServerVersion, ServerNotices: s.cfg.ServerNotices, Media: s.mediaUsage()}, adminHost{s})
	s.admin.Register(func(method, path string, h admin.Handler) { s.handle(method, path, handlerFunc(h)) })
}

// AdminEndpoints lists the admin API's endpoints ("METHOD /path").
func (s *Server) AdminEndpoints() []string { return s.admin.Endpoints() }

func (s *Server) adminState() adminstate.View { return s.adminDecisions.View(s.adminH.Reader()) }

// adminHost is what the admin API gets of the server.
type adminHost struct{ s *Server }

func (h adminHost) Authenticate(r *http.Request) (admin.Caller, error) {
	sess, err := h.s.authenticate(r)
	if err != nil {
		return admin.Caller{}, err
	}
	return admin.Caller{UserID: sess.UserID, DeviceID: sess.DeviceID, Admin: sess.Admin}, nil
}

func (h adminHost) Commit(ctx context.Context, props ...englog.Proposal) ([]uint64, error) {
	s := h.s
	return s.commit(ctx, []*projections.Handle{s.accountsH, s.roomsH, s.userdataH, s.reportsH, s.adminH}, props...)
}

func (h adminHost) Log() englog.Log                        { return h.s.log }
func (h adminHost) Accounts() accounts.View                { return h.s.accountsView() }
func (h adminHost) Rooms() rooms.View                      { return h.s.roomsView() }
func (h adminHost) Reports() reports.View                  { return h.s.Reports() }
func (h adminHost) State() adminstate.View                 { return h.s.adminState() }
func (h adminHost) HashPassword(pw string) (string, error) { return h.s.hashPassword(pw) }

func (h adminHost) SendEvent(ctx context.Context, proto stateres.ProtoEvent, txn *facts.TxnRef) (string, error) {
	return h.s.roomWrite.Send(ctx, proto, txn)
}

func (h adminHost) LeaveAllRooms(ctx context.Context, userID string) error {
	return h.s.leaveAllRooms(ctx, userID)
}

func (h adminHost) PropagateProfile(ctx context.Context, userID string) error {
	return h.s.propagateProfile(ctx, userID)
}

func (h adminHost) DevicesWithKeys(userID string, devices []string) ([]string, error) {
	return h.s.keys.DevicesWithKeys(userID, devices)
}

func (h adminHost) AnnounceDevices(ctx context.Context, userID string, devices []string, deleted bool) {
	if len(devices) > 0 {
		h.s.keys.AnnounceDevices(ctx, userID, devices, deleted)
	}
}

// CreateRoom creates a room as the client API's createRoom does, with
// the same code: the request is handed to it in-process.
func (h adminHost) CreateRoom(ctx context.Context, req admin.CreateRoom) (string, error) {
	body := map[string]any{"preset": req.Preset}
	if req.Name != "" {
		body["name"] = req.Name
	}
	if req.Topic != "" {
		body["topic"] = req.Topic
	}
	if len(req.Invite) > 0 {
		body["invite"] = req.Invite
	}
	pl := map[string]any{}
	if req.PowerLevelUsers != nil {
		pl["users"] = req.PowerLevelUsers
	}
	if req.EventsDefault != nil {
		pl["events_default"] = *req.EventsDefault
	}
	if len(pl) > 0 {
		body["power_level_content_override"] = pl
	}
	b, err := json.Marshal(body)
	if err != nil {
		return "", err
	}
	r := httptest.NewRequest(http.MethodPost, "/_matrix/client/v3/createRoom", bytes.NewReader(b)).WithContext(ctx)
	rec := httptest.NewRecorder()
	if err := h.s.createRoom(rec, r, &session{UserID: req.Creator}); err != nil {
		return "", err
	}
	var out struct {
		RoomID string `json:"room_id"`
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil {
		return "", err
	}
	return out.RoomID, nil
}

// CheckServerName records the server name in the data on the first
// start, and refuses a later start under another name: every user ID,
// room alias and signature in the log carries the first one, so serving
// the data under a new name would break every login. Data written before
// the name was recorded is checked against its accounts.
func (s *Server) CheckServerName(ctx context.Context) error {
	name := s.cfg.ServerName
	recorded, err := s.adminState().ServerName()
	if err != nil {
		return err
	}
	refuse := func(was string) error {
		return fmt.Errorf("this data was created with server_name %q, but the configuration says server_name %q; a server name cannot change once users exist (their IDs end in :%s). Set server_name back to %q, or start with an empty data_dir for a new server", was, name, was, was)
	}
	if recorded != "" {
		if recorded != name {
			return refuse(recorded)
		}
		return nil
	}
	accs, err := s.accountsView().Accounts()
	if err != nil {
		return err
	}
	for _, a := range accs {
		if _, server, ok := strings.Cut(a.UserID, ":"); ok && server != name {
			return refuse(server)
		}
	}
	_, err = s.commit(ctx, []*projections.Handle{s.adminH}, facts.MustEncode(englog.KindServerNameSet, facts.ServerNameSet{ServerName: name}))
	return err
}
