package auth

import (
	"bytes"
	"encoding/json"
	"hash/maphash"
	"math"
	"strconv"
	"strings"
	"sync"

	"github.com/engram-hs/engram/stateres"
)

// The top-level integer properties of m.room.power_levels, in the order the
// authorisation rules list them.
const (
	keyUsersDefault = iota
	keyEventsDefault
	keyStateDefault
	keyBan
	keyRedact
	keyKick
	keyInvite
	numTopKeys
)

var topKeyNames = [numTopKeys]string{"users_default", "events_default", "state_default", "ban", "redact", "kick", "invite"}

// topKeyDefaults are the values the spec gives a property that is absent,
// or when the room has no power levels event (m.room.power_levels schema
// and server-server API "Definitions").
var topKeyDefaults = [numTopKeys]int64{0, 0, 50, 50, 50, 50, 0}

// defaultNotificationLevel is the level of the "room" notification key when
// unspecified; the spec gives no default for other keys, and Engram uses the
// same 50 for them rather than letting anyone trigger them.
const defaultNotificationLevel = 50

// creatorLevelWithoutPowerLevels is the creator's level in rooms v1-v11
// while the room has no power levels event.
const creatorLevelWithoutPowerLevels = 100

type optInt struct {
	n   int64
	set bool
}

// PowerLevels is the parsed content of a room's m.room.power_levels event
// together with what the create event contributes (the creator's default
// level in v1-v11, the privileged creators in v12). The zero room (no power
// levels event) gets the spec's defaults.
type PowerLevels struct {
	exists bool
	// creators are the room creators: content.creator (v1-v10) or the
	// create event's sender (v11), plus additional_creators in v12.
	creators   []string
	privileged bool
	top        [numTopKeys]optInt
	users      map[string]int64
	events     map[string]int64
	notifs     map[string]int64
}

// ParsePowerLevels reads the power levels of a room from its create event
// and its current m.room.power_levels event (nil when the room has none).
// It is lenient, as a reader of accepted state must be: a value that does
// not parse under the version's rules counts as absent. Use
// ValidatePowerLevels to judge new content. create may be nil (no creators).
func ParsePowerLevels(version *stateres.RoomVersion, create, powerLevels stateres.PDU) *PowerLevels {
	key, cacheable := cacheKey(version, create, powerLevels)
	if cacheable {
		if pl := parsedCache.get(key); pl != nil {
			return pl
		}
	}
	pl := parsePowerLevelsOf(version, create, powerLevels)
	if cacheable {
		parsedCache.put(key, pl)
	}
	return pl
}

func parsePowerLevelsOf(version *stateres.RoomVersion, create, powerLevels stateres.PDU) *PowerLevels {
	var content []byte
	if powerLevels != nil {
		content = powerLevels.Content()
	}
	pl, _ := parsePowerLevels(version, content, false)
	pl.exists = powerLevels != nil
	pl.privileged = version.PrivilegedCreators
	pl.creators = creatorsOf(version, create)
	return pl
}

// ValidatePowerLevels checks new m.room.power_levels content against the
// structural rules of the version (v1-v9: users is an object of user IDs
// to integers or integer strings, floats too before v6; v10+: every value
// a JSON integer). Where the rules of v1-v9 are silent about the other
// properties, a value that cannot be read as an integer is refused too: the
// comparisons of the later rules need it as a number. The error is a
// *Rejection.
func ValidatePowerLevels(version *stateres.RoomVersion, content []byte) error {
	if _, rej := parsePowerLevels(version, content, true); rej != nil {
		return rej
	}
	return nil
}

// parsePowerLevels parses content; in strict mode the first invalid value
// is returned as a rejection, otherwise it is skipped.
func parsePowerLevels(v *stateres.RoomVersion, content []byte, strict bool) (*PowerLevels, *Rejection) {
	pl := &PowerLevels{}
	if len(content) == 0 {
		return pl, nil
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(content, &obj); err != nil {
		if strict {
			return pl, reject(v, "power_levels.users", "power levels content is not a JSON object")
		}
		return pl, nil
	}
	levelsClause := "power_levels.levels"
	if !v.IntegerPowerLevels {
		levelsClause = "power_levels.unreadable"
	}
	for i, name := range topKeyNames {
		raw, ok := obj[name]
		if !ok {
			continue
		}
		n, ok := parseLevelValue(v, raw)
		if !ok {
			if strict {
				return pl, reject(v, levelsClause, name+" is not an integer: "+string(raw))
			}
			continue
		}
		pl.top[i] = optInt{n: n, set: true}
	}
	mapsClause := "power_levels.maps"
	if !v.IntegerPowerLevels {
		mapsClause = "power_levels.unreadable"
	}
	var rej *Rejection
	if pl.events, rej = parseLevelMap(v, obj, "events", strict, mapsClause, nil); rej != nil {
		return pl, rej
	}
	// Before v6 the rules do not look at notifications; read it leniently
	// for the client API but never refuse an event over it.
	if pl.notifs, rej = parseLevelMap(v, obj, "notifications", strict && v.NotificationsPowerLevels, mapsClause, nil); rej != nil {
		return pl, rej
	}
	if pl.users, rej = parseLevelMap(v, obj, "users", strict, "power_levels.users", validUserID); rej != nil {
		return pl, rej
	}
	return pl, nil
}

func parseLevelMap(v *stateres.RoomVersion, obj map[string]json.RawMessage, name string, strict bool, clause string, validKey func(string) bool) (map[string]int64, *Rejection) {
	raw, ok := obj[name]
	if !ok {
		return nil, nil
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil || m == nil {
		if strict {
			return nil, reject(v, clause, name+" is not a JSON object")
		}
		return nil, nil
	}
	out := make(map[string]int64, len(m))
	for k, raw := range m {
		if validKey != nil && !validKey(k) {
			if strict {
				return nil, reject(v, clause, name+" has a key that is not a valid user ID: "+strconv.Quote(k))
			}
			continue
		}
		n, ok := parseLevelValue(v, raw)
		if !ok {
			if strict {
				return nil, reject(v, clause, name+"["+strconv.Quote(k)+"] is not an integer: "+string(raw))
			}
			continue
		}
		out[k] = n
	}
	return out, nil
}

// parseLevelValue reads one power level value. Every version takes a JSON
// integer. Before v10 a string holding an integer is accepted
// (rooms/fragments/v1-stringy-power-levels.md), and before v6, where events
// need not be canonical JSON, a float is truncated towards zero
// (v1-floaty-power-levels.md).
func parseLevelValue(v *stateres.RoomVersion, raw json.RawMessage) (int64, bool) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 {
		return 0, false
	}
	switch c := raw[0]; {
	case c == '"':
		if v.IntegerPowerLevels {
			return 0, false
		}
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return 0, false
		}
		return parseIntegerString(s)
	case c == '-' || (c >= '0' && c <= '9'):
		if bytes.ContainsAny(raw, ".eE") {
			if v.StrictCanonicalJSON {
				return 0, false
			}
			f, err := strconv.ParseFloat(string(raw), 64)
			if err != nil || math.IsInf(f, 0) || math.IsNaN(f) {
				return 0, false
			}
			f = math.Trunc(f)
			if f < math.MinInt64 || f >= math.MaxInt64 {
				return 0, false
			}
			return int64(f), true
		}
		n, err := strconv.ParseInt(string(raw), 10, 64)
		return n, err == nil
	}
	return 0, false
}

// parseIntegerString accepts the stringy form: surrounding whitespace, one
// optional sign, then decimal digits (leading zeros allowed).
func parseIntegerString(s string) (int64, bool) {
	s = strings.TrimSpace(s)
	digits := s
	if len(digits) > 0 && (digits[0] == '+' || digits[0] == '-') {
		digits = digits[1:]
	}
	if digits == "" {
		return 0, false
	}
	for i := 0; i < len(digits); i++ {
		if digits[i] < '0' || digits[i] > '9' {
			return 0, false
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	return n, err == nil
}

// Exists reports whether the room has a power levels event.
func (p *PowerLevels) Exists() bool { return p.exists }

// Creators returns the room's creators: the users with infinite power in
// v12, or the single user who has level 100 while a v1-v11 room has no
// power levels event.
func (p *PowerLevels) Creators() []string { return p.creators }

// IsPrivilegedCreator reports whether userID has infinite power (v12+).
func (p *PowerLevels) IsPrivilegedCreator(userID string) bool {
	return p.privileged && contains(p.creators, userID)
}

// UserLevel is the power level of userID.
func (p *PowerLevels) UserLevel(userID string) Level {
	if p.IsPrivilegedCreator(userID) {
		return Infinite
	}
	if !p.exists {
		if !p.privileged && len(p.creators) > 0 && p.creators[0] == userID {
			return LevelOf(creatorLevelWithoutPowerLevels)
		}
		return LevelOf(topKeyDefaults[keyUsersDefault])
	}
	if n, ok := p.users[userID]; ok {
		return LevelOf(n)
	}
	return p.topLevel(keyUsersDefault)
}

// EventLevel is the level required to send an event of the given type:
// events[type], else state_default for state events and events_default for
// the others.
func (p *PowerLevels) EventLevel(eventType string, isState bool) Level {
	if n, ok := p.events[eventType]; ok {
		return LevelOf(n)
	}
	if isState {
		return p.topLevel(keyStateDefault)
	}
	return p.topLevel(keyEventsDefault)
}

func (p *PowerLevels) topLevel(key int) Level {
	if o := p.top[key]; o.set {
		return LevelOf(o.n)
	}
	return LevelOf(topKeyDefaults[key])
}

func (p *PowerLevels) UsersDefault() Level  { return p.topLevel(keyUsersDefault) }
func (p *PowerLevels) EventsDefault() Level { return p.topLevel(keyEventsDefault) }
func (p *PowerLevels) StateDefault() Level  { return p.topLevel(keyStateDefault) }
func (p *PowerLevels) Ban() Level           { return p.topLevel(keyBan) }
func (p *PowerLevels) Kick() Level          { return p.topLevel(keyKick) }
func (p *PowerLevels) Redact() Level        { return p.topLevel(keyRedact) }
func (p *PowerLevels) Invite() Level        { return p.topLevel(keyInvite) }

// Notifications is the level required to trigger the notification key
// (for example "room" for @room).
func (p *PowerLevels) Notifications(key string) Level {
	if n, ok := p.notifs[key]; ok {
		return LevelOf(n)
	}
	return LevelOf(defaultNotificationLevel)
}

// creatorsOf lists the creators named by a create event: content.creator
// before v11, the sender from v11, plus content.additional_creators when
// creators are privileged (v12).
func creatorsOf(v *stateres.RoomVersion, create stateres.PDU) []string {
	if create == nil {
		return nil
	}
	var c createContent
	_ = json.Unmarshal(create.Content(), &c)
	if !v.V11Semantics {
		var creator string
		if json.Unmarshal(c.Creator, &creator) == nil && creator != "" {
			return []string{creator}
		}
		return nil
	}
	creators := []string{create.Sender()}
	if v.PrivilegedCreators {
		var extra []json.RawMessage
		_ = json.Unmarshal(c.AdditionalCreators, &extra)
		for _, raw := range extra {
			var u string
			if json.Unmarshal(raw, &u) == nil && validUserID(u) {
				creators = append(creators, u)
			}
		}
	}
	return creators
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// Parsing a power levels event with many users costs far more than the
// rest of a check, and state resolution and busy rooms check thousands of
// events against the same power levels event. Parsed values are immutable,
// so they are shared through a small cache. The key carries a hash of both
// contents besides the event IDs: an ID alone is only trustworthy once it
// was verified against the event's hash, and callers may hand in any PDU.
// The create event's sender is in the key too: from v11 it is the creator.
type plCacheKey struct {
	version, room, create, createSender, powerLevels string
	createContent, powerLevelsContent                uint64
}

var plCacheSeed = maphash.MakeSeed()

func cacheKey(v *stateres.RoomVersion, create, powerLevels stateres.PDU) (plCacheKey, bool) {
	if create == nil || powerLevels == nil {
		return plCacheKey{}, false
	}
	return plCacheKey{
		version:            v.ID,
		room:               powerLevels.RoomID(),
		create:             create.EventID(),
		createSender:       create.Sender(),
		powerLevels:        powerLevels.EventID(),
		createContent:      maphash.Bytes(plCacheSeed, create.Content()),
		powerLevelsContent: maphash.Bytes(plCacheSeed, powerLevels.Content()),
	}, true
}

const plCacheSize = 4096

type plCache struct {
	mu sync.Mutex
	m  map[plCacheKey]*PowerLevels
}

var parsedCache = &plCache{m: make(map[plCacheKey]*PowerLevels)}

func (c *plCache) get(k plCacheKey) *PowerLevels {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.m[k]
}

func (c *plCache) put(k plCacheKey, pl *PowerLevels) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.m) >= plCacheSize {
		clear(c.m) // crude but bounded; refills within one room's checks
	}
	c.m[k] = pl
}
