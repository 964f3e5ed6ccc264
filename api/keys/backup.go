package keys

import (
	"encoding/json"
	"net/http"
	"strconv"

	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/projections/e2ee"
	"github.com/engram-hs/engram/stateres/canonicaljson"
)

// Server-side key backup (spec: "Server-side key backups"). Versions are
// numbered per user by the fold; the highest live one is current, and
// keys may be written only to it.

func (s *Service) createBackup(w http.ResponseWriter, r *http.Request, c Caller) error {
	var req struct {
		Algorithm string          `json:"algorithm"`
		AuthData  json.RawMessage `json:"auth_data"`
	}
	if err := s.d.ReadJSON(r, &req); err != nil {
		return err
	}
	if req.Algorithm == "" || len(req.AuthData) == 0 || req.AuthData[0] != '{' {
		return missingParam("algorithm and auth_data (an object) are required")
	}
	verdict, err := s.commitFact(r.Context(), facts.MustEncode(englog.KindBackupVersionChanged, facts.BackupVersionChanged{
		UserID: c.UserID, Op: facts.BackupCreate, Algorithm: req.Algorithm, AuthData: req.AuthData,
	}))
	if err != nil {
		return err
	}
	if err := verdictError(verdict); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]string{"version": verdict.Version})
	return nil
}

// backupVersion resolves the version of a request: the path's, or the
// current one.
func (s *Service) backupVersion(c Caller, version string) (string, *e2ee.BackupVersion, error) {
	b, err := s.view().Backups(c.UserID)
	if err != nil {
		return "", nil, err
	}
	if version == "" {
		v, bv := b.Current()
		if bv == nil {
			return "", nil, notFound("No current backup version")
		}
		return v, bv, nil
	}
	bv := b.Versions[version]
	if bv == nil {
		return "", nil, notFound("Unknown backup version")
	}
	return version, bv, nil
}

func (s *Service) getBackup(w http.ResponseWriter, r *http.Request, c Caller) error {
	v, bv, err := s.backupVersion(c, r.PathValue("version"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"algorithm": bv.Algorithm, "auth_data": bv.AuthData, "count": bv.Count,
		"etag": strconv.FormatUint(bv.Etag, 10), "version": v,
	})
	return nil
}

func (s *Service) updateBackup(w http.ResponseWriter, r *http.Request, c Caller) error {
	var req struct {
		Algorithm string          `json:"algorithm"`
		AuthData  json.RawMessage `json:"auth_data"`
		Version   string          `json:"version"`
	}
	if err := s.d.ReadJSON(r, &req); err != nil {
		return err
	}
	version := r.PathValue("version")
	if req.Version != "" && req.Version != version {
		return invalidParam("The version in the body does not match the version in the path")
	}
	if req.Algorithm == "" || len(req.AuthData) == 0 || req.AuthData[0] != '{' {
		return missingParam("algorithm and auth_data (an object) are required")
	}
	if _, bv, err := s.backupVersion(c, version); err != nil {
		return err
	} else if bv.Algorithm != req.Algorithm {
		return invalidParam("Algorithm does not match")
	}
	verdict, err := s.commitFact(r.Context(), facts.MustEncode(englog.KindBackupVersionChanged, facts.BackupVersionChanged{
		UserID: c.UserID, Op: facts.BackupUpdate, Version: version, Algorithm: req.Algorithm, AuthData: req.AuthData,
	}))
	if err != nil {
		return err
	}
	if err := verdictError(verdict); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, struct{}{})
	return nil
}

func (s *Service) deleteBackup(w http.ResponseWriter, r *http.Request, c Caller) error {
	version := r.PathValue("version")
	if _, _, err := s.backupVersion(c, version); err != nil {
		return err
	}
	verdict, err := s.commitFact(r.Context(), facts.MustEncode(englog.KindBackupVersionChanged, facts.BackupVersionChanged{
		UserID: c.UserID, Op: facts.BackupDelete, Version: version,
	}))
	if err != nil {
		return err
	}
	if err := verdictError(verdict); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, struct{}{})
	return nil
}

// keyBackupData is the spec's KeyBackupData, as far as the server reads it.
type keyBackupData struct {
	FirstMessageIndex *int64          `json:"first_message_index"`
	ForwardedCount    *int64          `json:"forwarded_count"`
	IsVerified        *bool           `json:"is_verified"`
	SessionData       json.RawMessage `json:"session_data"`
}

func checkKeyBackupData(raw json.RawMessage) (json.RawMessage, error) {
	var k keyBackupData
	if len(raw) == 0 || raw[0] != '{' || json.Unmarshal(raw, &k) != nil ||
		k.FirstMessageIndex == nil || k.ForwardedCount == nil || k.IsVerified == nil || len(k.SessionData) == 0 || k.SessionData[0] != '{' {
		return nil, badJSON("A key must be a KeyBackupData object with first_message_index, forwarded_count, is_verified and session_data")
	}
	return canonicaljson.Canonicalize(raw, false)
}

type roomKeyBackup struct {
	Sessions map[string]json.RawMessage `json:"sessions"`
}

func (s *Service) putRoomKeys(w http.ResponseWriter, r *http.Request, c Caller) error {
	version := r.URL.Query().Get("version")
	if version == "" {
		return missingParam("version is required")
	}
	room, session := r.PathValue("roomId"), r.PathValue("sessionId")
	rooms := map[string]map[string]json.RawMessage{}
	switch {
	case session != "":
		var raw json.RawMessage
		if err := s.d.ReadJSON(r, &raw); err != nil {
			return err
		}
		rooms[room] = map[string]json.RawMessage{session: raw}
	case room != "":
		var req roomKeyBackup
		if err := s.d.ReadJSON(r, &req); err != nil {
			return err
		}
		rooms[room] = req.Sessions
	default:
		var req struct {
			Rooms map[string]roomKeyBackup `json:"rooms"`
		}
		if err := s.d.ReadJSON(r, &req); err != nil {
			return err
		}
		for id, rk := range req.Rooms {
			rooms[id] = rk.Sessions
		}
	}
	for id, sessions := range rooms {
		for sid, raw := range sessions {
			canon, err := checkKeyBackupData(raw)
			if err != nil {
				return err
			}
			sessions[sid] = canon
		}
		if len(sessions) == 0 {
			delete(rooms, id)
		}
	}
	// The usual refusal without a log entry; the fold checks again.
	b, err := s.view().Backups(c.UserID)
	if err != nil {
		return err
	}
	if cur, _ := b.Current(); b.Versions[version] == nil {
		return notFound("Unknown backup version")
	} else if cur != version {
		return errorf(http.StatusForbidden, "M_WRONG_ROOM_KEYS_VERSION", "Wrong backup version").With("current_version", cur)
	}
	verdict, err := s.commitFact(r.Context(), facts.MustEncode(englog.KindRoomKeysBackedUp, facts.RoomKeysBackedUp{
		UserID: c.UserID, Version: version, Rooms: rooms,
	}))
	if err != nil {
		return err
	}
	if err := verdictError(verdict); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]any{"etag": verdict.Etag, "count": verdict.Count})
	return nil
}

func (s *Service) getRoomKeys(w http.ResponseWriter, r *http.Request, c Caller) error {
	version := r.URL.Query().Get("version")
	if version == "" {
		return missingParam("version is required")
	}
	if _, _, err := s.backupVersion(c, version); err != nil {
		return err
	}
	room, session := r.PathValue("roomId"), r.PathValue("sessionId")
	keys, err := s.view().RoomKeys(c.UserID, version, room, session)
	if err != nil {
		return err
	}
	switch {
	case session != "":
		k := keys[room][session]
		if k == nil {
			return notFound("No key for this session")
		}
		writeJSON(w, http.StatusOK, k)
	case room != "":
		sessions := keys[room]
		if sessions == nil {
			sessions = map[string]json.RawMessage{}
		}
		writeJSON(w, http.StatusOK, roomKeyBackup{Sessions: sessions})
	default:
		out := map[string]roomKeyBackup{}
		for id, sessions := range keys {
			out[id] = roomKeyBackup{Sessions: sessions}
		}
		writeJSON(w, http.StatusOK, map[string]any{"rooms": out})
	}
	return nil
}

func (s *Service) deleteRoomKeys(w http.ResponseWriter, r *http.Request, c Caller) error {
	version := r.URL.Query().Get("version")
	if version == "" {
		return missingParam("version is required")
	}
	if _, _, err := s.backupVersion(c, version); err != nil {
		return err
	}
	verdict, err := s.commitFact(r.Context(), facts.MustEncode(englog.KindRoomKeysDeleted, facts.RoomKeysDeleted{
		UserID: c.UserID, Version: version, RoomID: r.PathValue("roomId"), SessionID: r.PathValue("sessionId"),
	}))
	if err != nil {
		return err
	}
	if err := verdictError(verdict); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]any{"etag": verdict.Etag, "count": verdict.Count})
	return nil
}
