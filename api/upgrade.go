package api

import (
	"encoding/json"
	"errors"
	"math"
	"net/http"
	"strconv"
	"strings"

	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/projections/rooms"
	"github.com/engram-hs/engram/roomwrite"
	"github.com/engram-hs/engram/stateres"
)

// Room upgrades (spec: modules/room_upgrades.md, room_upgrades.yaml).
//
// The replacement room is built with the same roomwrite.Builder createRoom uses,
// and everything (the new room's events, the old room's tombstone and
// restricted power levels, moved aliases, directory listing) is appended
// in one log append: an upgrade happens entirely or not at all.

// upgradeCopiedState are the state events (state key "") copied to the
// replacement room: the spec's recommended list plus the canonical alias,
// which follows the aliases that move.
var upgradeCopiedState = []string{
	"m.room.server_acl", "m.room.encryption", "m.room.name", "m.room.avatar", "m.room.topic",
	"m.room.guest_access", stateres.MRoomHistoryVisibility, stateres.MRoomJoinRules,
	"m.room.canonical_alias",
}

func (s *Server) upgradeRoutes() {
	s.client("POST", "/rooms/{roomId}/upgrade", s.authed(s.upgradeRoom))
}

func (s *Server) upgradeRoom(w http.ResponseWriter, r *http.Request, sess *session) error {
	oldRoomID, err := roomIDParam(r)
	if err != nil {
		return err
	}
	req, err := readUpgradeRequest(r)
	if err != nil {
		return err
	}
	if _, _, err := s.requireMember(oldRoomID, sess.UserID, false); err != nil {
		return err
	}
	if ok, err := s.hasPower(oldRoomID, sess.UserID, "state:m.room.tombstone"); err != nil {
		return err
	} else if !ok {
		return errForbidden("You need the power to send m.room.tombstone to upgrade this room")
	}

	defer s.roomWrite.Lock(oldRoomID)()
	old, err := s.roomWrite.Extend(oldRoomID)
	if err != nil {
		return err
	}
	v := s.roomsView()
	oldCreate, err := stateMap(v, oldRoomID, stateres.MRoomCreate)
	if err != nil {
		return err
	}
	oldPL, err := stateMap(v, oldRoomID, stateres.MRoomPowerLevels)
	if err != nil {
		return err
	}
	nb, newRoomID, err := s.startSuccessor(old, oldRoomID, oldCreate, req, sess.UserID)
	if err != nil {
		return err
	}
	setRoom(r, newRoomID)
	member, err := s.memberContent(sess.UserID, "join", "")
	if err != nil {
		return err
	}
	if _, err := nb.Add(stateres.ProtoEvent{Type: stateres.MRoomMember, StateKey: strptr(sess.UserID), Sender: sess.UserID, Content: member}); err != nil {
		return err
	}
	if err := copyUpgradedState(v, nb, oldRoomID, normalisePowerLevels(oldPL), req, sess.UserID); err != nil {
		return err
	}
	if err := s.restrictOldRoom(old, normalisePowerLevels(oldPL), sess.UserID); err != nil {
		return err
	}
	moves, err := movedListings(v, oldRoomID, newRoomID, sess.UserID)
	if err != nil {
		return err
	}
	props := append(append(nb.Proposals(nil), old.Proposals(nil)...), moves...)
	if _, err := s.roomWrite.Commit(r.Context(), props...); err != nil {
		return err
	}
	s.carryPushRules(r.Context(), sess.UserID, newRoomID)
	writeJSON(w, http.StatusOK, map[string]string{"replacement_room": newRoomID})
	return nil
}

// upgradeRequest is a checked POST /rooms/{roomId}/upgrade body.
type upgradeRequest struct {
	version            *stateres.RoomVersion
	additionalCreators []string
}

func readUpgradeRequest(r *http.Request) (upgradeRequest, error) {
	var req struct {
		NewVersion         string   `json:"new_version"`
		AdditionalCreators []string `json:"additional_creators"`
	}
	if err := readJSON(r, &req); err != nil {
		return upgradeRequest{}, err
	}
	if req.NewVersion == "" {
		return upgradeRequest{}, errMissingParam("new_version is required")
	}
	version, ok := stateres.Version(req.NewVersion)
	if !ok {
		return upgradeRequest{}, merr(http.StatusBadRequest, "M_UNSUPPORTED_ROOM_VERSION", "Room version %q is not supported by this server; use one of %v", req.NewVersion, stateres.KnownVersions())
	}
	for _, u := range req.AdditionalCreators {
		if !strings.HasPrefix(u, "@") || !strings.Contains(u, ":") {
			return upgradeRequest{}, errInvalidParam("Invalid user ID %q in additional_creators", u)
		}
	}
	return upgradeRequest{version: version, additionalCreators: req.AdditionalCreators}, nil
}

// stateMap is the content of a room's state event (type, "") as a map;
// nil when the room has none. A failed read is an error, never "none".
func stateMap(v rooms.View, roomID, typ string) (map[string]any, error) {
	var c map[string]any
	if _, err := stateContent(v, roomID, typ, "", &c); err != nil {
		return nil, err
	}
	return c, nil
}

// startSuccessor adds the tombstone to the old room and starts the new
// room with its create event. Before v12 we choose the new room's ID, so
// the tombstone can come first and the predecessor can name it; from v12
// the ID comes from the create event, which then cannot name the
// tombstone (the spec lets event_id be omitted there).
func (s *Server) startSuccessor(old *roomwrite.Builder, oldRoomID string, oldCreate map[string]any, req upgradeRequest, upgrader string) (*roomwrite.Builder, string, error) {
	version := req.version
	newRoomID := ""
	if !version.RoomIDFromCreate {
		newRoomID = "!" + randomString(12) + ":" + s.cfg.ServerName
	}
	tombstone := func() (*stateres.Event, error) {
		return old.Add(stateres.ProtoEvent{Type: "m.room.tombstone", StateKey: strptr(""), Sender: upgrader,
			Content: mustJSON(map[string]string{"body": "This room has been replaced", "replacement_room": newRoomID})})
	}
	predecessor := map[string]any{"room_id": oldRoomID}
	if newRoomID != "" {
		ts, err := tombstone()
		if err != nil {
			return nil, "", err
		}
		predecessor["event_id"] = ts.EventID()
	}
	createContent := map[string]any{"room_version": version.ID, "predecessor": predecessor}
	for _, k := range []string{"type", "m.federate"} {
		if val, ok := oldCreate[k]; ok {
			createContent[k] = val
		}
	}
	if !version.V11Semantics {
		createContent["creator"] = upgrader
	}
	if version.PrivilegedCreators && len(req.additionalCreators) > 0 {
		createContent["additional_creators"] = req.additionalCreators
	}
	nb, err := s.roomWrite.NewRoom(version, newRoomID)
	if err != nil {
		return nil, "", err
	}
	nb.SetNow(old.Now())
	createEv, err := nb.Add(stateres.ProtoEvent{Type: stateres.MRoomCreate, StateKey: strptr(""), Sender: upgrader, Content: mustJSON(createContent)})
	if err != nil {
		return nil, "", err
	}
	if newRoomID == "" {
		newRoomID = createEv.RoomID()
		if _, err := tombstone(); err != nil {
			return nil, "", err
		}
	}
	return nb, newRoomID, nil
}

// copyUpgradedState gives the new room the old one's power levels and the
// state of upgradeCopiedState. Power levels are copied as integers (string
// levels of old versions are refused from v10). Creators of a v12 room
// have a fixed level and must not be listed. Before v12 the upgrader may
// need more power than the copy gives to copy the other state: they get
// it in a first power levels event, replaced by the exact copy at the end.
func copyUpgradedState(v rooms.View, nb *roomwrite.Builder, oldRoomID string, pl map[string]any, req upgradeRequest, upgrader string) error {
	if pl == nil {
		pl = map[string]any{}
	}
	users, _ := pl["users"].(map[string]any)
	if users == nil {
		users = map[string]any{}
	}
	if req.version.PrivilegedCreators {
		delete(users, upgrader)
		for _, u := range req.additionalCreators {
			delete(users, u)
		}
	}
	pl["users"] = users
	setPL := func(content map[string]any) error {
		_, err := nb.Add(stateres.ProtoEvent{Type: stateres.MRoomPowerLevels, StateKey: strptr(""), Sender: upgrader, Content: mustJSON(content)})
		return err
	}
	raise := false
	if !req.version.PrivilegedCreators {
		have, ok := users[upgrader].(int64)
		raise = !ok || have < maxLevel(pl)
	}
	first := pl
	if raise {
		first = cloneJSONMap(pl)
		raisedUsers := cloneJSONMap(users)
		raisedUsers[upgrader] = maxLevel(pl)
		first["users"] = raisedUsers
	}
	if err := setPL(first); err != nil {
		return err
	}
	for _, typ := range upgradeCopiedState {
		e, err := v.StateEvent(oldRoomID, typ, "")
		if err != nil {
			return err
		}
		if e == nil {
			continue
		}
		if _, err := nb.Add(stateres.ProtoEvent{Type: typ, StateKey: strptr(""), Sender: upgrader, Content: headOf(e).Content}); err != nil {
			return err
		}
	}
	if raise {
		return setPL(pl)
	}
	return nil
}

// restrictOldRoom stops new messages and invites in the upgraded room,
// if the upgrader may change its power levels (the spec says "if
// possible"): a refusal is logged, not an error. oldPL is the room's
// power levels content, normalised (nil: none).
func (s *Server) restrictOldRoom(old *roomwrite.Builder, oldPL map[string]any, upgrader string) error {
	if oldPL == nil {
		return nil
	}
	usersDefault, _ := oldPL["users_default"].(int64)
	restricted := max(50, usersDefault+1)
	cur, _ := oldPL["events_default"].(int64)
	if inv, ok := oldPL["invite"].(int64); cur >= restricted && ok && inv >= restricted {
		return nil
	}
	oldPL["events_default"], oldPL["invite"] = max(cur, restricted), restricted
	if _, err := old.Add(stateres.ProtoEvent{Type: stateres.MRoomPowerLevels, StateKey: strptr(""), Sender: upgrader, Content: mustJSON(oldPL)}); err != nil {
		var me *matrixError
		if !errors.As(err, &me) {
			return err // a failed read is no refusal
		}
		s.logger.Info().Err(err).Str("room", old.RoomID()).Msg("upgrade: could not restrict the old room's power levels")
	}
	return nil
}

// movedListings are the entries that move the old room's local aliases
// (each keeping its creator) and its room directory listing to the new
// room.
func movedListings(v rooms.View, oldRoomID, newRoomID, upgrader string) ([]englog.Proposal, error) {
	var props []englog.Proposal
	aliases, err := v.Aliases(oldRoomID)
	if err != nil {
		return nil, err
	}
	for _, a := range aliases {
		rec, err := v.Alias(a)
		if err != nil {
			return nil, err
		}
		creator := upgrader
		if rec != nil {
			creator = rec.Creator
		}
		props = append(props,
			facts.MustEncode(englog.KindAliasRemoved, facts.AliasRemoved{Alias: a}),
			facts.MustEncode(englog.KindAliasSet, facts.AliasSet{Alias: a, RoomID: newRoomID, Creator: creator}))
	}
	pub, err := v.Public(oldRoomID)
	if err != nil {
		return nil, err
	}
	if pub {
		props = append(props,
			facts.MustEncode(englog.KindRoomVisibilitySet, facts.RoomVisibilitySet{RoomID: oldRoomID, Visibility: "private"}),
			facts.MustEncode(englog.KindRoomVisibilitySet, facts.RoomVisibilitySet{RoomID: newRoomID, Visibility: "public"}))
	}
	return props, nil
}

// normalisePowerLevels returns a copy of power levels content with every
// level an integer (int64); nil stays nil.
func normalisePowerLevels(c map[string]any) map[string]any {
	if c == nil {
		return nil
	}
	out := cloneJSONMap(c)
	for _, k := range []string{"ban", "kick", "redact", "invite", "events_default", "state_default", "users_default"} {
		if n, ok := asLevel(out[k]); ok {
			out[k] = n
		} else {
			delete(out, k)
		}
	}
	for _, k := range []string{"events", "users", "notifications"} {
		m, ok := out[k].(map[string]any)
		if !ok {
			delete(out, k)
			continue
		}
		nm := map[string]any{}
		for kk, vv := range m {
			if n, ok := asLevel(vv); ok {
				nm[kk] = n
			}
		}
		out[k] = nm
	}
	return out
}

func asLevel(v any) (int64, bool) {
	switch n := v.(type) {
	case float64:
		if n == math.Trunc(n) {
			return int64(n), true
		}
	case int64:
		return n, true
	case string:
		i, err := strconv.ParseInt(strings.TrimSpace(n), 10, 64)
		return i, err == nil
	}
	return 0, false
}

// maxLevel is the highest level any action needs under pl (defaults as in
// the spec when absent).
func maxLevel(pl map[string]any) int64 {
	need := int64(50) // state_default, ban, kick, redact defaults
	for _, k := range []string{"ban", "kick", "redact", "invite", "events_default", "state_default"} {
		if n, ok := pl[k].(int64); ok {
			need = max(need, n)
		}
	}
	if ev, ok := pl["events"].(map[string]any); ok {
		for _, v := range ev {
			if n, ok := v.(int64); ok {
				need = max(need, n)
			}
		}
	}
	return need
}

func cloneJSONMap(m map[string]any) map[string]any {
	var out map[string]any
	_ = json.Unmarshal(mustJSON(m), &out)
	if out == nil {
		out = map[string]any{}
	}
	// JSON numbers come back as float64; keep integers integral.
	for k, v := range out {
		if f, ok := v.(float64); ok && f == math.Trunc(f) {
			out[k] = int64(f)
		}
		if sub, ok := v.(map[string]any); ok {
			for kk, vv := range sub {
				if f, ok := vv.(float64); ok && f == math.Trunc(f) {
					sub[kk] = int64(f)
				}
			}
		}
	}
	return out
}
