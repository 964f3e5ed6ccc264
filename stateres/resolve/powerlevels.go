package resolve

import (
	"encoding/json"
	"math"
	"strconv"
	"strings"

	"github.com/engram-hs/engram/stateres"
)

// infinitePower is the power level of a room version 12 creator, above any
// value a power levels event can hold.
const infinitePower = math.MaxInt64

// powerLevels holds the part of m.room.power_levels content that the
// orderings read: the sender's power level.
type powerLevels struct {
	users        map[string]int64
	usersDefault int64
}

func (p *powerLevels) userLevel(user string) int64 {
	if l, ok := p.users[user]; ok {
		return l
	}
	return p.usersDefault
}

// parsePowerLevels reads users and users_default. Values that are not valid
// power levels for the room version count as absent: such an event could not
// have passed the auth rules, and the ordering must still be total.
func parsePowerLevels(version *stateres.RoomVersion, content []byte) *powerLevels {
	var raw struct {
		Users        map[string]json.RawMessage `json:"users"`
		UsersDefault json.RawMessage            `json:"users_default"`
	}
	p := &powerLevels{}
	if json.Unmarshal(content, &raw) != nil {
		return p
	}
	if l, ok := powerLevelValue(version, raw.UsersDefault); ok {
		p.usersDefault = l
	}
	p.users = make(map[string]int64, len(raw.Users))
	for u, v := range raw.Users {
		if l, ok := powerLevelValue(version, v); ok {
			p.users[u] = l
		}
	}
	return p
}

// powerLevelValue decodes one power level: an integer; before room version
// 10 also a string holding an integer or a float, truncated (rooms v1
// "m.room.power_levels events accept values as strings / as floats").
func powerLevelValue(version *stateres.RoomVersion, raw json.RawMessage) (int64, bool) {
	if len(raw) == 0 {
		return 0, false
	}
	if l, err := strconv.ParseInt(string(raw), 10, 64); err == nil {
		return l, true
	}
	if version.IntegerPowerLevels {
		return 0, false
	}
	if raw[0] == '"' {
		var s string
		if json.Unmarshal(raw, &s) != nil {
			return 0, false
		}
		s = strings.TrimSpace(s)
		s = strings.TrimPrefix(s, "+")
		if l, err := strconv.ParseInt(s, 10, 64); err == nil {
			return l, true
		}
		return 0, false
	}
	f, err := strconv.ParseFloat(string(raw), 64)
	if err != nil || math.IsInf(f, 0) || math.IsNaN(f) || f >= math.MaxInt64 || f <= math.MinInt64 {
		return 0, false
	}
	return int64(f), true
}

func (r *resolver) powerLevelsOf(n nodeID) *powerLevels {
	if p, ok := r.powerLevels[n]; ok {
		return p
	}
	p := parsePowerLevels(r.version, r.g.nodes[n].pdu.Content())
	r.powerLevels[n] = p
	return p
}

// senderPower is the power level of n's sender "when looking at their
// respective auth_events" (spec v2, Reverse topological power ordering).
// Without a power levels event among them, the auth rules give the room
// creator 100 and everybody else 0; from room version 12 the creators have
// infinite power whatever the power levels say.
func (r *resolver) senderPower(n nodeID) int64 {
	sender := r.g.nodes[n].sender
	create := r.g.authEventOfType(n, createKey)
	if create < 0 && r.version.RoomIDFromCreate {
		create = r.create
	}
	if r.version.PrivilegedCreators && create >= 0 && r.isCreator(create, sender) {
		return infinitePower
	}
	if pl := r.g.authEventOfType(n, powerLevelsKey); pl >= 0 {
		return r.powerLevelsOf(pl).userLevel(sender)
	}
	if create >= 0 && r.isCreator(create, sender) {
		return 100
	}
	return 0
}

// isCreator reports whether user created the room: content.creator before
// room version 11, the create event's sender from 11 on, plus
// content.additional_creators from 12 on. The create content is parsed once.
func (r *resolver) isCreator(create nodeID, user string) bool {
	creators, ok := r.creators[create]
	if !ok {
		nd := &r.g.nodes[create]
		var c struct {
			Creator            string   `json:"creator"`
			AdditionalCreators []string `json:"additional_creators"`
		}
		_ = json.Unmarshal(nd.pdu.Content(), &c)
		switch {
		case !r.version.V11Semantics:
			creators = []string{c.Creator}
		case r.version.PrivilegedCreators:
			creators = append([]string{nd.sender}, c.AdditionalCreators...)
		default:
			creators = []string{nd.sender}
		}
		r.creators[create] = creators
	}
	for _, c := range creators {
		if c == user {
			return true
		}
	}
	return false
}
