package api

import (
	"encoding/json"
	"net/http"

	"github.com/engram-hs/engram/api/keys"
	"github.com/engram-hs/engram/projections/e2ee"
)

// The end-to-end encryption endpoints live in api/keys; this file mounts
// them and lends them the API's authentication, body reading, UIA and
// long-poll wake-ups.

func (s *Server) newKeys() *keys.Service {
	remote, _ := s.remote.(keys.Remote) // federation.Remote is one
	return keys.New(keys.Deps{
		Remote:     remote,
		ServerName: s.cfg.ServerName,
		// Device names in the device list updates other servers get.
		DeviceNamesOverFederation: s.cfg.AllowDeviceNameLookupOverFederation,
		Engine:                    s.engine,
		Logger:                    s.logger,
		Commit:                    s.commit,
		ReadJSON:                  readJSON,
		ParseToken:                s.parseOffsetToken,
		Accounts:                  s.accountsView,
		Rooms:                     s.roomsView,
		PasswordUIA: func(auth json.RawMessage, c keys.Caller) error {
			return s.deviceUIA(auth, &session{UserID: c.UserID, DeviceID: c.DeviceID, Appservice: c.Appservice})
		},
		Touched: s.keysTouched,
	})
}

func (s *Server) keyRoutes() {
	for _, rt := range s.keys.Routes() {
		h := rt.Handler
		s.client(rt.Method, rt.Path, s.authed(func(w http.ResponseWriter, r *http.Request, sess *session) error {
			return h(w, r, keys.Caller{UserID: sess.UserID, DeviceID: sess.DeviceID, Appservice: sess.Appservice})
		}))
	}
}

// keysTouched wakes the long-polls of the users whose device lists
// changed and of everyone sharing a joined room with them.
func (s *Server) keysTouched(t e2ee.Touched) {
	v := s.roomsView()
	var rs []string
	for _, u := range t.Users {
		ms, err := v.Memberships(u)
		if err != nil {
			s.logger.Warn().Err(err).Str("user", u).Msg("could not read memberships to wake co-members after a device list change")
			continue
		}
		for _, m := range ms {
			if m.Membership == "join" {
				rs = append(rs, m.RoomID)
			}
		}
	}
	s.notifier.wake(t.Users, rs)
}

// e2eeSyncSection is the E2EE part of /sync; hint (may be nil) is what
// the sync cache knows of the user's rooms.
func (s *Server) e2eeSyncSection(sess *session, since, pos uint64, hint *keys.ListsHint) (map[string]any, bool, error) {
	return s.keys.SyncSection(keys.Caller{UserID: sess.UserID, DeviceID: sess.DeviceID}, since, pos, hint)
}
