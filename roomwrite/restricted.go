package roomwrite

import (
	"encoding/json"
	"net/http"
	"strings"

	"github.com/engram-hs/engram/internal/mxerr"
	"github.com/engram-hs/engram/projections/rooms"
	"github.com/engram-hs/engram/stateres"
	"github.com/engram-hs/engram/stateres/auth"
)

// Restricted joins (spec: "Restricted rooms", room versions 8 and later):
// a user who is neither joined nor invited may join a room whose join
// rule is restricted (knock_restricted from v10) when they are joined to
// one of the rooms its allow list names; the join then names, in
// join_authorised_via_users_server, a joined member who could have
// invited them, and that member's server signs it. The decision is this
// server's, made before the join is built: for a local user's join here
// (Builder.Add) and for a remote user's make_join (federation), one rule.

// ErrUnableToGrantJoin is the errcode that tells a joining server to try
// another resident server (spec: make_join and send_join, 400).
const ErrUnableToGrantJoin = "M_UNABLE_TO_GRANT_JOIN"

// JoinAuthoriser decides who authorises userID's join to roomID, whose
// state lookup reads (the state the join is built on): "" when the join
// needs no authoriser (the rule is not restricted, or the user is joined
// or invited already), else a joined user of serverName with the power
// to invite. A user joined to none of the allowed rooms is 403
// M_FORBIDDEN; 400 M_UNABLE_TO_GRANT_JOIN when this server cannot judge
// about a remote user (it is in none of the allowed rooms) or has no
// user who may invite, so
// a joining server tries another.
func JoinAuthoriser(v rooms.View, version *stateres.RoomVersion, serverName, roomID, userID string, lookup func(typ, stateKey string) stateres.PDU) (string, error) {
	if !version.RestrictedJoins {
		return "", nil
	}
	jr := lookup(stateres.MRoomJoinRules, "")
	if jr == nil {
		return "", nil
	}
	var rule struct {
		JoinRule string `json:"join_rule"`
	}
	_ = json.Unmarshal(jr.Content(), &rule)
	if rule.JoinRule != "restricted" && !(version.KnockRestricted && rule.JoinRule == "knock_restricted") {
		return "", nil
	}
	if m := lookup(stateres.MRoomMember, userID); m != nil {
		var c struct {
			Membership string `json:"membership"`
		}
		_ = json.Unmarshal(m.Content(), &c)
		if c.Membership == "join" || c.Membership == "invite" {
			return "", nil
		}
	}
	allowed, canJudge := false, false
	allow := allowedRooms(jr.Content())
	if len(allow) == 0 {
		// No room's members may join, so every server judges alike: a
		// knock_restricted room without an allow list is a knock room.
		canJudge = true
	}
	for _, roomID := range allow {
		// Only a room this server is still in says who is in it: the
		// copy of a room all its users left stopped at their leave.
		if in, err := resident(v, roomID, serverName); err != nil {
			return "", err
		} else if !in {
			continue
		}
		canJudge = true
		m, err := v.Membership(userID, roomID)
		if err != nil {
			return "", err
		}
		if m != nil && m.Membership == "join" {
			allowed = true
			break
		}
	}
	if !allowed {
		if !canJudge && !isLocal(userID, serverName) {
			return "", mxerr.New(http.StatusBadRequest, ErrUnableToGrantJoin, "This server is in none of the rooms whose members may join %s", roomID)
		}
		return "", mxerr.Forbidden("%s is not joined to any room whose members may join %s, and is not invited", userID, roomID)
	}
	joined, err := v.MemberIDs(roomID, "join")
	if err != nil {
		return "", err
	}
	pl := auth.ParsePowerLevels(version, lookup(stateres.MRoomCreate, ""), lookup(stateres.MRoomPowerLevels, ""))
	for _, u := range joined {
		if isLocal(u, serverName) && pl.UserLevel(u).AtLeast(pl.Invite()) {
			return u, nil
		}
	}
	return "", mxerr.New(http.StatusBadRequest, ErrUnableToGrantJoin, "No user of this server in %s may invite, so it cannot authorise the join; join through another server of the room", roomID)
}

// allowedRooms are the room IDs of a restricted join rule's allow list
// (entries of type m.room_membership); malformed entries are skipped, and
// an allow that is not a list allows none.
func allowedRooms(content json.RawMessage) []string {
	var c struct {
		Allow json.RawMessage `json:"allow"`
	}
	_ = json.Unmarshal(content, &c)
	var entries []json.RawMessage
	if json.Unmarshal(c.Allow, &entries) != nil {
		return nil
	}
	var out []string
	for _, raw := range entries {
		var a struct {
			Type   string `json:"type"`
			RoomID string `json:"room_id"`
		}
		if json.Unmarshal(raw, &a) == nil && a.Type == "m.room_membership" && strings.HasPrefix(a.RoomID, "!") {
			out = append(out, a.RoomID)
		}
	}
	return out
}

// resident reports whether a user of serverName is joined to roomID.
func resident(v rooms.View, roomID, serverName string) (bool, error) {
	joined, err := v.MemberIDs(roomID, "join")
	if err != nil {
		return false, err
	}
	for _, u := range joined {
		if isLocal(u, serverName) {
			return true, nil
		}
	}
	return false, nil
}

func isLocal(userID, serverName string) bool {
	_, d, _ := strings.Cut(userID, ":")
	return d == serverName
}

// withAuthoriser sets the join_authorised_via_users_server of a local
// user's own join: the key is this server's decision (JoinAuthoriser),
// never the client's, so one a client sent is dropped (a join -> join
// transition carries none; a client's value could not be signed for).
func (b *Builder) withAuthoriser(proto *stateres.ProtoEvent) error {
	if proto.Type != stateres.MRoomMember || proto.StateKey == nil || *proto.StateKey != proto.Sender || !b.version.RestrictedJoins || b.state.base == nil {
		return nil
	}
	var c map[string]json.RawMessage
	if json.Unmarshal(proto.Content, &c) != nil {
		return nil // Add refuses it as malformed
	}
	var membership string
	_ = json.Unmarshal(c["membership"], &membership)
	_, had := c["join_authorised_via_users_server"]
	if membership != "join" {
		return nil
	}
	delete(c, "join_authorised_via_users_server")
	via, err := JoinAuthoriser(b.w.View(), b.version, b.w.cfg.ServerName, b.roomID, proto.Sender, b.state.StateEvent)
	if b.state.err != nil {
		return b.state.err
	}
	if err != nil {
		return err
	}
	if via == "" && !had {
		return nil
	}
	if via != "" {
		c["join_authorised_via_users_server"], _ = json.Marshal(via)
	}
	raw, err := json.Marshal(c)
	if err != nil {
		return err
	}
	proto.Content = raw
	return nil
}
