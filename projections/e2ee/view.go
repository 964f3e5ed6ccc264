package e2ee

import (
	"encoding/binary"
	"encoding/json"
	"maps"
	"slices"

	"github.com/engram-hs/engram/projections"
)

// View answers queries.
type View struct{ r projections.Reader }

// NewView wraps a reader of this projection's keyspace.
func NewView(r projections.Reader) View { return View{r} }

// Verdict returns the fold's answer to the fact at offset, or nil when
// the fact was not one that gets an answer (or it was pruned).
func (v View) Verdict(offset uint64) (*Verdict, error) {
	return projections.GetJSON[Verdict](v.r, append([]byte{pVerdict}, offsetBytes(offset)...))
}

// DeviceKeys returns one device's identity keys, or nil.
func (v View) DeviceKeys(user, device string) (*DeviceKeys, error) {
	return projections.GetJSON[DeviceKeys](v.r, projections.Key(pDeviceKeys, user, device))
}

// DeviceKeysOf lists the devices of a user that have identity keys, by
// device ID.
func (v View) DeviceKeysOf(user string) (map[string]DeviceKeys, error) {
	prefix := append(projections.Key(pDeviceKeys, user), sep)
	it := v.r.Iter(prefix, projections.PrefixEnd(prefix))
	out := map[string]DeviceKeys{}
	for ok := it.First(); ok; ok = it.Next() {
		var d DeviceKeys
		if err := json.Unmarshal(it.Value(), &d); err != nil {
			it.Close()
			return nil, err
		}
		out[string(it.Key()[len(prefix):])] = d
	}
	return out, it.Close()
}

// OneTimeKeyCounts returns the device's unclaimed one-time keys per
// algorithm.
func (v View) OneTimeKeyCounts(user, device string) (map[string]int, error) {
	return countsOf(v.r, user, device)
}

// UnusedFallbackKeyTypes lists the algorithms the device has a fallback
// key for that no claim has handed out yet.
func (v View) UnusedFallbackKeyTypes(user, device string) ([]string, error) {
	prefix := append(projections.Key(pFallback, user, device), sep)
	it := v.r.Iter(prefix, projections.PrefixEnd(prefix))
	out := []string{}
	for ok := it.First(); ok; ok = it.Next() {
		var f Fallback
		if err := json.Unmarshal(it.Value(), &f); err != nil {
			it.Close()
			return nil, err
		}
		if !f.Used {
			out = append(out, string(it.Key()[len(prefix):]))
		}
	}
	return out, it.Close()
}

// OneTimeKey reports whether the device still holds the unclaimed
// one-time key "<algorithm>:<id>", and its stored value's hash.
func (v View) OneTimeKey(user, device, fullID string) (sum string, ok bool, err error) {
	ref, err := projections.GetJSON[otkRef](v.r, projections.Key(pOTKIndex, user, device, fullID))
	if err != nil || ref == nil {
		return "", false, err
	}
	return ref.Sum, true, nil
}

// Sum is the hash the projection compares key values with.
func Sum(key json.RawMessage) string { return sum(key) }

// CrossSigning returns a user's cross-signing keys, or nil.
func (v View) CrossSigning(user string) (*CrossSigning, error) {
	return projections.GetJSON[CrossSigning](v.r, projections.Key(pCross, user))
}

// ChangedAt is the offset of the user's last device-list change (0: none).
func (v View) ChangedAt(user string) (uint64, error) {
	b, ok, err := v.r.Get(projections.Key(pChangedAt, user))
	if err != nil || !ok || len(b) != 8 {
		return 0, err
	}
	return binary.BigEndian.Uint64(b), nil
}

// ChangedUsers lists the users whose device list last changed in
// (since, upTo], in user ID order.
func (v View) ChangedUsers(since, upTo uint64) ([]string, error) {
	it := v.r.Iter(append([]byte{pChange}, offsetBytes(since+1)...), append([]byte{pChange}, offsetBytes(upTo+1)...))
	var out []string
	for ok := it.First(); ok; ok = it.Next() {
		if len(it.Key()) > 9 {
			out = append(out, string(it.Key()[9:]))
		}
	}
	if err := it.Close(); err != nil {
		return nil, err
	}
	slices.Sort(out)
	return out, nil
}

// Backups returns a user's key backup versions.
func (v View) Backups(user string) (*Backups, error) { return backupsOf(v.r, user) }

// RoomKeys returns the backed-up session keys of a version: room ->
// session -> KeyBackupData, limited to one room and one session when
// they are non-empty.
func (v View) RoomKeys(user, version, room, session string) (map[string]map[string]json.RawMessage, error) {
	parts := []string{user, version}
	if room != "" {
		parts = append(parts, room)
		if session != "" {
			parts = append(parts, session)
		}
	}
	base := append(projections.Key(pRoomKey, user, version), sep)
	prefix := projections.Key(pRoomKey, parts...)
	upper := projections.PrefixEnd(prefix)
	if session != "" {
		upper = append(slices.Clone(prefix), 0)
	} else {
		prefix = append(prefix, sep)
		upper = projections.PrefixEnd(prefix)
	}
	it := v.r.Iter(prefix, upper)
	out := map[string]map[string]json.RawMessage{}
	for ok := it.First(); ok; ok = it.Next() {
		rest := it.Key()[len(base):]
		i := slices.Index(rest, sep)
		if i < 0 {
			continue
		}
		r, s := string(rest[:i]), string(rest[i+1:])
		if out[r] == nil {
			out[r] = map[string]json.RawMessage{}
		}
		out[r][s] = slices.Clone(it.Value())
	}
	return out, it.Close()
}

// StreamSent is the stream_id of the last m.device_list_update queued for
// a local user (0: none yet).
func (v View) StreamSent(user string) (uint64, error) {
	b, ok, err := v.r.Get(projections.Key(pStreamSent, user))
	if err != nil || !ok || len(b) != 8 {
		return 0, err
	}
	return binary.BigEndian.Uint64(b), nil
}

// WithRemoteSignatures returns a remote user's master key object (as
// their server answered it) with the signatures signer, a local user,
// made of it merged in; they are shown to signer only.
func (v View) WithRemoteSignatures(signer, user string, master json.RawMessage) (json.RawMessage, error) {
	added := map[string]map[string]string{}
	for _, pub := range PublicKeys(master) {
		sigs, err := projections.GetJSON[map[string]string](v.r, projections.Key(pRemoteSig, signer, user, pub))
		if err != nil {
			return nil, err
		}
		if sigs == nil {
			continue
		}
		if added[signer] == nil {
			added[signer] = map[string]string{}
		}
		maps.Copy(added[signer], *sigs)
	}
	if len(added) == 0 {
		return master, nil
	}
	out, err := withSignatures(master, added, func(string) bool { return true }, nil)
	if err != nil {
		return master, nil // not a JSON object: shown as the server sent it
	}
	return out, nil
}
