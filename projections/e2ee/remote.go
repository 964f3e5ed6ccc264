package e2ee

import (
	"bytes"
	"encoding/json"
	"slices"

	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/projections"
)

// The copy this server keeps of remote users' device lists (spec,
// server-server API "Device Management"). Their server tells us of each
// change in an m.device_list_update whose prev_id names the updates
// before it; while every prev_id is one we hold, the update is applied
// to the copy. When one is not (a gap: an update was lost), the copy is
// wrong until it is fetched whole again (GET user/devices): the
// federation receiver does that before it records the EDU and records
// the answer as a RemoteDevicesResynced fact, which replaces the copy.
// If the fetch failed, the fold marks the copy stale and /keys/query asks
// the user's server instead, until the next resync.

// maxRemoteDevices bounds the copy of one user's devices; a user with
// more is not cached (their server is asked each time).
const maxRemoteDevices = 1000

// RemoteList is the copy of one remote user's device list.
type RemoteList struct {
	// StreamID is the stream_id of the last update applied (or of the
	// resync answer).
	StreamID uint64 `json:"stream_id"`
	// ResyncedAt is the log offset of the last whole fetch. Updates since
	// then are complete only while the user shared a room with a local
	// user the whole time (their server sends updates only then): the
	// reader checks that before it trusts the copy.
	ResyncedAt uint64 `json:"resynced_at"`
	// Stale: an update arrived that the copy could not follow (a gap, or
	// too many devices) and no resync came after it.
	Stale       bool                    `json:"stale,omitempty"`
	Devices     map[string]RemoteDevice `json:"devices,omitempty"`
	Master      json.RawMessage         `json:"master,omitempty"`
	SelfSigning json.RawMessage         `json:"self_signing,omitempty"`
}

// RemoteDevice is one device of a RemoteList: its identity keys as its
// server signed them (absent when it has none) and its display name (when
// its server shows names to other servers).
type RemoteDevice struct {
	Keys        json.RawMessage `json:"keys,omitempty"`
	DisplayName string          `json:"display_name,omitempty"`
}

// DeviceListUpdate is the content of an m.device_list_update EDU.
type DeviceListUpdate struct {
	UserID      string          `json:"user_id"`
	DeviceID    string          `json:"device_id"`
	StreamID    uint64          `json:"stream_id"`
	PrevID      []uint64        `json:"prev_id"`
	Deleted     bool            `json:"deleted"`
	Keys        json.RawMessage `json:"keys"`
	DisplayName string          `json:"device_display_name"`
}

// Follows reports whether an update can be applied to a copy that holds
// stream held: it names prior updates, all of which the copy has seen.
// An update with no prev_id claims to be the user's first, which a copy
// that already holds one cannot follow.
func (u DeviceListUpdate) Follows(held uint64) bool {
	if u.StreamID <= held {
		return true // seen already (a retried transaction): nothing to apply
	}
	if len(u.PrevID) == 0 {
		return false
	}
	for _, p := range u.PrevID {
		if p > held {
			return false
		}
	}
	return true
}

// ParseDeviceListUpdate decodes an m.device_list_update's content; ok is
// false when it is not one (no user or device ID).
func ParseDeviceListUpdate(content json.RawMessage) (DeviceListUpdate, bool) {
	var u DeviceListUpdate
	if json.Unmarshal(content, &u) != nil || u.UserID == "" || u.DeviceID == "" {
		return DeviceListUpdate{}, false
	}
	return u, true
}

// KeysFor reports whether a device's keys object is really that device's
// (user_id and device_id match); a server answering with anything else
// is not believed.
func KeysFor(keys json.RawMessage, user, device string) bool {
	var k struct {
		UserID   string `json:"user_id"`
		DeviceID string `json:"device_id"`
	}
	return json.Unmarshal(keys, &k) == nil && k.UserID == user && k.DeviceID == device
}

// crossKeyFor reports whether a cross-signing key object is user's.
func crossKeyFor(key json.RawMessage, user string) bool {
	var k struct {
		UserID string `json:"user_id"`
	}
	return len(key) > 0 && json.Unmarshal(key, &k) == nil && k.UserID == user
}

func remoteKey(user string) []byte { return projections.Key(pRemoteList, user) }

func applyResync(w projections.Writer, e englog.Entry, f facts.RemoteDevicesResynced) error {
	old, err := projections.GetJSON[RemoteList](w, remoteKey(f.UserID))
	if err != nil {
		return err
	}
	if old != nil && !old.Stale && old.StreamID > f.StreamID {
		return nil // the copy already followed newer updates
	}
	l := RemoteList{StreamID: f.StreamID, ResyncedAt: e.Offset, Devices: map[string]RemoteDevice{}}
	for _, d := range f.Devices {
		if d.DeviceID == "" {
			continue
		}
		rd := RemoteDevice{DisplayName: d.DisplayName}
		if KeysFor(d.Keys, f.UserID, d.DeviceID) {
			rd.Keys = d.Keys
		}
		l.Devices[d.DeviceID] = rd
	}
	if len(l.Devices) > maxRemoteDevices {
		l = RemoteList{StreamID: f.StreamID, ResyncedAt: e.Offset, Stale: true}
	}
	if crossKeyFor(f.Master, f.UserID) {
		l.Master = f.Master
	}
	if crossKeyFor(f.SelfSigning, f.UserID) {
		l.SelfSigning = f.SelfSigning
	}
	if err := projections.PutJSON(w, remoteKey(f.UserID), l); err != nil {
		return err
	}
	if old != nil && !old.Stale && sameList(*old, l) {
		return nil // nothing local users could have seen differs
	}
	return markChanged(w, f.UserID, e.Offset)
}

// sameList reports whether two copies show local users the same devices,
// keys, names and cross-signing keys. A resync that leaves the copy as it
// was is no news for local users (a server announcing its user's devices
// when the user joins a room makes this server fetch the list it already
// holds).
func sameList(a, b RemoteList) bool {
	if !bytes.Equal(a.Master, b.Master) || !bytes.Equal(a.SelfSigning, b.SelfSigning) {
		return false
	}
	for id, d := range a.Devices {
		o, ok := b.Devices[id]
		if !sameDevice(d, true, o, ok) {
			return false
		}
	}
	for id, o := range b.Devices {
		if _, ok := a.Devices[id]; !ok && !sameDevice(RemoteDevice{}, false, o, true) {
			return false
		}
	}
	return true
}

// sameDevice reports whether local users see a device the same in two
// copies (ok: the copy lists it). A device without keys is not shown
// (RenderRemote leaves it out), whatever its name.
func sameDevice(a RemoteDevice, aok bool, b RemoteDevice, bok bool) bool {
	aok, bok = aok && len(a.Keys) > 0, bok && len(b.Keys) > 0
	if !aok || !bok {
		return aok == bok
	}
	return a.DisplayName == b.DisplayName && bytes.Equal(a.Keys, b.Keys)
}

// applyRemoteEDU folds a received m.device_list_update or
// m.signing_key_update into the copy (when there is one); the user's
// local co-members see it in device_lists.changed unless the copy held
// it already.
func applyRemoteEDU(w projections.Writer, e englog.Entry, eduType string, content json.RawMessage, user string) error {
	l, err := projections.GetJSON[RemoteList](w, remoteKey(user))
	if err != nil {
		return err
	}
	news := true
	if l != nil {
		switch eduType {
		case EDUDeviceListUpdate:
			u, ok := ParseDeviceListUpdate(content)
			switch {
			case !ok || u.StreamID <= l.StreamID:
				// Already applied (a retried transaction, or an update
				// the resync recorded just before it already held).
				news = ok && l.Stale
			case l.Stale || !u.Follows(l.StreamID):
				// A first update (no prev_id) over a copy fetched before
				// the user's server had sent any (stream 0), repeating
				// what the copy holds for the device, is how that server
				// announces its user's devices after joining a room with
				// us: the copy turns stale all the same (the fetch it
				// calls for may have failed), but local users are not
				// told of a change they would not see.
				news = l.StreamID != 0 || len(u.PrevID) != 0 || !repeatsCopy(*l, u, user)
				l.Stale = true
				l.StreamID = u.StreamID
			case u.Deleted:
				delete(l.Devices, u.DeviceID)
				l.StreamID = u.StreamID
			default:
				if l.Devices == nil {
					l.Devices = map[string]RemoteDevice{}
				}
				rd := RemoteDevice{DisplayName: u.DisplayName}
				if KeysFor(u.Keys, user, u.DeviceID) {
					rd.Keys = u.Keys
				}
				l.Devices[u.DeviceID] = rd
				l.StreamID = u.StreamID
				if len(l.Devices) > maxRemoteDevices {
					l.Stale, l.Devices = true, nil
				}
			}
		case EDUSigningKeyUpdate:
			var c struct {
				Master      json.RawMessage `json:"master_key"`
				SelfSigning json.RawMessage `json:"self_signing_key"`
			}
			if json.Unmarshal(content, &c) == nil {
				if crossKeyFor(c.Master, user) {
					l.Master = c.Master
				}
				if crossKeyFor(c.SelfSigning, user) {
					l.SelfSigning = c.SelfSigning
				}
			}
		}
		if err := projections.PutJSON(w, remoteKey(user), l); err != nil {
			return err
		}
	}
	if !news {
		return nil
	}
	return markChanged(w, user, e.Offset)
}

// repeatsCopy reports whether an update shows local users a device as
// the copy already does.
func repeatsCopy(l RemoteList, u DeviceListUpdate, user string) bool {
	if u.Deleted {
		return false
	}
	rd := RemoteDevice{DisplayName: u.DisplayName}
	if KeysFor(u.Keys, user, u.DeviceID) {
		rd.Keys = u.Keys
	}
	d, ok := l.Devices[u.DeviceID]
	return sameDevice(d, ok, rd, true)
}

// RemoteList returns the copy of a remote user's device list, or nil.
func (v View) RemoteList(user string) (*RemoteList, error) {
	return projections.GetJSON[RemoteList](v.r, remoteKey(user))
}

// RenderRemote gives the copy's device keys as /keys/query answers them
// (wanted devices, all when empty), with the display name in unsigned.
func (l *RemoteList) RenderRemote(wanted []string) (map[string]json.RawMessage, error) {
	out := map[string]json.RawMessage{}
	for dev, d := range l.Devices {
		if len(d.Keys) == 0 || (len(wanted) > 0 && !slices.Contains(wanted, dev)) {
			continue
		}
		if d.DisplayName == "" {
			out[dev] = d.Keys
			continue
		}
		var obj map[string]json.RawMessage
		if err := json.Unmarshal(d.Keys, &obj); err != nil {
			continue
		}
		unsigned := map[string]json.RawMessage{}
		if raw, ok := obj["unsigned"]; ok {
			_ = json.Unmarshal(raw, &unsigned)
		}
		name, _ := json.Marshal(d.DisplayName)
		unsigned["device_display_name"] = name
		var err error
		if obj["unsigned"], err = json.Marshal(unsigned); err != nil {
			return nil, err
		}
		b, err := json.Marshal(obj)
		if err != nil {
			return nil, err
		}
		out[dev] = b
	}
	return out, nil
}
