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
	var req struct {
		NewVersion         string   `json:"new_version"`
		AdditionalCreators []string `json:"additional_creators"`
	}
	if err := readJSON(r, &req); err != nil {
		return err
	}
	if req.NewVersion == "" {
		return errMissingParam("new_version is required")
	}
	version, ok := stateres.Version(req.NewVersion)
	if !ok {
		return merr(http.StatusBadRequest, "M_UNSUPPORTED_ROOM_VERSION", "Room version %q is not supported by this server; use one of %v", req.NewVersion, stateres.KnownVersions())
	}
	for _, u := range req.AdditionalCreators {
		if !strings.HasPrefix(u, "@") || !strings.Contains(u, ":") {
			return errInvalidParam("Invalid user ID %q in additional_creators", u)
		}
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
	content := func(typ string) map[string]any {
		var c map[string]any
		_, _ = stateContent(v, oldRoomID, typ, "", &c)
		return c
	}

	// Before v12 we choose the new room's ID, so the tombstone can come
	// first and the predecessor can name it; from v12 the ID comes from
	// the create event, which then cannot name the tombstone (the spec
	// lets event_id be omitted there).
	newRoomID := ""
	if !version.RoomIDFromCreate {
		newRoomID = "!" + randomString(12) + ":" + s.cfg.ServerName
	}
	tombstone := func() (*stateres.Event, error) {
		return old.Add(stateres.ProtoEvent{Type: "m.room.tombstone", StateKey: strptr(""), Sender: sess.UserID,
			Content: mustJSON(map[string]string{"body": "This room has been replaced", "replacement_room": newRoomID})})
	}
	predecessor := map[string]any{"room_id": oldRoomID}
	if newRoomID != "" {
		ts, err := tombstone()
		if err != nil {
			return err
		}
		predecessor["event_id"] = ts.EventID()
	}

	createContent := map[string]any{"room_version": version.ID, "predecessor": predecessor}
	if oc := content(stateres.MRoomCreate); oc != nil {
		if t, ok := oc["type"]; ok {
			createContent["type"] = t
		}
		if f, ok := oc["m.federate"]; ok {
			createContent["m.federate"] = f
		}
	}
	if !version.V11Semantics {
		createContent["creator"] = sess.UserID
	}
	creators := map[string]bool{}
	if version.PrivilegedCreators {
		creators[sess.UserID] = true
		if len(req.AdditionalCreators) > 0 {
			createContent["additional_creators"] = req.AdditionalCreators
			for _, u := range req.AdditionalCreators {
				creators[u] = true
			}
		}
	}
	nb, err := s.roomWrite.NewRoom(version, newRoomID)
	if err != nil {
		return err
	}
	nb.SetNow(old.Now())
	createEv, err := nb.Add(stateres.ProtoEvent{Type: stateres.MRoomCreate, StateKey: strptr(""), Sender: sess.UserID, Content: mustJSON(createContent)})
	if err != nil {
		return err
	}
	if newRoomID == "" {
		newRoomID = createEv.RoomID()
		if _, err := tombstone(); err != nil {
			return err
		}
	}
	setRoom(r, newRoomID)

	member, err := s.memberContent(sess.UserID, "join", "")
	if err != nil {
		return err
	}
	if _, err := nb.Add(stateres.ProtoEvent{Type: stateres.MRoomMember, StateKey: strptr(sess.UserID), Sender: sess.UserID, Content: member}); err != nil {
		return err
	}

	// Power levels: the old room's, as integers (string levels of old
	// versions are refused from v10). Creators of a v12 room have a fixed
	// level and must not be listed. Before v12 the upgrader may need more
	// power than the copy gives to copy the other state: they get it in a
	// first power levels event, replaced by the exact copy at the end.
	pl := normalisePowerLevels(content(stateres.MRoomPowerLevels))
	if pl == nil {
		pl = map[string]any{}
	}
	users, _ := pl["users"].(map[string]any)
	if users == nil {
		users = map[string]any{}
	}
	for u := range creators {
		delete(users, u)
	}
	pl["users"] = users
	restore := false
	if !version.PrivilegedCreators {
		need := maxLevel(pl)
		if have, ok := users[sess.UserID].(int64); !ok || have < need {
			raised := cloneJSONMap(pl)
			raisedUsers := cloneJSONMap(users)
			raisedUsers[sess.UserID] = need
			raised["users"] = raisedUsers
			if _, err := nb.Add(stateres.ProtoEvent{Type: stateres.MRoomPowerLevels, StateKey: strptr(""), Sender: sess.UserID, Content: mustJSON(raised)}); err != nil {
				return err
			}
			restore = true
		}
	}
	if !restore {
		if _, err := nb.Add(stateres.ProtoEvent{Type: stateres.MRoomPowerLevels, StateKey: strptr(""), Sender: sess.UserID, Content: mustJSON(pl)}); err != nil {
			return err
		}
	}
	for _, typ := range upgradeCopiedState {
		e, err := v.StateEvent(oldRoomID, typ, "")
		if err != nil {
			return err
		}
		if e == nil {
			continue
		}
		if _, err := nb.Add(stateres.ProtoEvent{Type: typ, StateKey: strptr(""), Sender: sess.UserID, Content: headOf(e).Content}); err != nil {
			return err
		}
	}
	if restore {
		if _, err := nb.Add(stateres.ProtoEvent{Type: stateres.MRoomPowerLevels, StateKey: strptr(""), Sender: sess.UserID, Content: mustJSON(pl)}); err != nil {
			return err
		}
	}

	if err := s.restrictOldRoom(old, normalisePowerLevels(content(stateres.MRoomPowerLevels)), sess.UserID); err != nil {
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
	writeJSON(w, http.StatusOK, map[string]string{"replacement_room": newRoomID})
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
