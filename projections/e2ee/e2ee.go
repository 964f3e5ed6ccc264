// Package e2ee folds end-to-end encryption keys out of the log: "each
// device's identity keys, its one-time and fallback keys, each user's
// cross-signing keys and the signatures others added, the device-list
// change stream, and the server-side key backups".
//
// Everything that depends on order is decided here, in log order, so that
// every node folds the same answer and a replay reproduces it: which
// one-time key a claim hands out (each exactly once, oldest first), whether
// a one-time key ID is already taken by another key, which backup version
// is current. The writer of such a fact reads the fold's answer back as a
// Verdict at the fact's offset.
//
// Restore. Every upload (KeysUploaded) and every claim (KeysClaimed) is a
// log fact, so replaying the log to any offset reproduces exactly which
// one-time keys were handed out up to there. A point-in-time restore to
// offset X loses the claims after X, and clients hold the keys those
// claims handed out; the restore must therefore append a
// OneTimeKeysDiscarded{UpTo: X} fact before the server serves again: it
// discards every one-time key still unclaimed at X (tombstoned, so a
// client re-uploading one cannot make it claimable again). Nothing is
// handed out twice; devices see their counts drop and upload new keys.
// Fallback keys and everything else (device keys, cross-signing, backups)
// are as they were at X; clients re-upload what they changed after it.
package e2ee

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/projections"
)

const (
	pDeviceKeys = 'd' // d user 0 device -> DeviceKeys
	pKnown      = 'D' // D user 0 device -> "" (devices of the user at this point of the log)
	pOTK        = 'o' // o user 0 device 0 algorithm 0 offset(8) keyID -> key JSON (unclaimed, oldest upload first)
	pOTKIndex   = 'i' // i user 0 device 0 algorithm:keyID -> otkRef (unclaimed)
	pClaimed    = 'x' // x user 0 device 0 algorithm:keyID -> sha256 of the key handed out
	pCounts     = 'n' // n user 0 device -> map algorithm -> unclaimed count
	pFallback   = 'f' // f user 0 device 0 algorithm -> Fallback
	pCross      = 'c' // c user -> CrossSigning
	pChange     = 'l' // l offset(8) user -> "": each user once, at their last device-list change
	pChangedAt  = 'u' // u user -> offset(8) of their last device-list change
	pVerdict    = 'v' // v offset(8) -> Verdict
	pBackups    = 'b' // b user -> Backups
	pRoomKey    = 'k' // k user 0 version 0 room 0 session -> KeyBackupData JSON
	pStreamSent = 's' // s user -> stream_id(8) of the last m.device_list_update sent for a local user
	pRemoteList = 'R' // R user -> RemoteList (the copy of a remote user's device list)
	pRemoteSig  = 'r' // r signer 0 target user 0 key -> signer key ID -> signature (a local user's signatures of a remote user's master key)
	sep         = 0
)

// verdictLifetime: a verdict is read by its writer right after the append;
// older ones are pruned (by entry time, so replay prunes alike).
const verdictLifetime = 10 * 60 * 1000 // ms

// DeviceKeys are one device's identity keys as uploaded, and the
// signatures other keys added to them (/keys/signatures/upload).
type DeviceKeys struct {
	Keys   json.RawMessage `json:"keys"`
	Offset uint64          `json:"offset"`
	// Extra: signer user -> signer key ID -> signature.
	Extra map[string]map[string]string `json:"extra,omitempty"`
}

// Fallback is a device's fallback key of one algorithm.
type Fallback struct {
	KeyID string          `json:"key_id"` // "<algorithm>:<id>"
	Key   json.RawMessage `json:"key"`
	Used  bool            `json:"used,omitempty"`
}

// CrossKey is one cross-signing key as uploaded, with added signatures.
type CrossKey struct {
	Key   json.RawMessage              `json:"key"`
	Extra map[string]map[string]string `json:"extra,omitempty"`
}

// CrossSigning holds a user's cross-signing keys.
type CrossSigning struct {
	Master      *CrossKey `json:"master,omitempty"`
	SelfSigning *CrossKey `json:"self_signing,omitempty"`
	UserSigning *CrossKey `json:"user_signing,omitempty"`
}

// Backups are a user's key backup versions; the highest live one is
// current.
type Backups struct {
	Last     int                       `json:"last"` // the last version number given out
	Versions map[string]*BackupVersion `json:"versions,omitempty"`
}

// BackupVersion is one key backup version.
type BackupVersion struct {
	Algorithm string          `json:"algorithm"`
	AuthData  json.RawMessage `json:"auth_data"`
	Etag      uint64          `json:"etag"`
	Count     int             `json:"count"`
}

// Current returns the current version's number and record, or "" and
// nil when the user has none.
func (b *Backups) Current() (string, *BackupVersion) {
	best := 0
	for v := range b.Versions {
		if n, _ := strconv.Atoi(v); n > best {
			best = n
		}
	}
	if best == 0 {
		return "", nil
	}
	v := strconv.Itoa(best)
	return v, b.Versions[v]
}

// Verdict is the fold's answer to the fact at one offset.
type Verdict struct {
	Time int64 `json:"time"`
	// Errcode and Error are set when the fact was refused.
	Errcode string `json:"errcode,omitempty"`
	Error   string `json:"error,omitempty"`
	// Current is the current backup version, for M_WRONG_ROOM_KEYS_VERSION.
	Current string `json:"current,omitempty"`
	// Claimed: user -> device -> "<algorithm>:<id>" -> key (KeysClaimed).
	Claimed map[string]map[string]map[string]json.RawMessage `json:"claimed,omitempty"`
	// Backups: the version created, and etag and count after an upload.
	Version string `json:"version,omitempty"`
	Etag    string `json:"etag,omitempty"`
	Count   int    `json:"count,omitempty"`
}

type otkRef struct {
	Offset uint64 `json:"offset"`
	Sum    string `json:"sum"`
}

// Touched is what a committed batch changed that long-polls wait for: the
// users whose device lists changed (their co-members' /sync shows them).
type Touched struct {
	Last  uint64
	Users []string
}

// Projection is the e2ee read model.
type Projection struct{ onCommit func(Touched) }

// New returns the projection; onCommit (may be nil) is called after each
// committed batch with what it touched.
func New(onCommit func(Touched)) *Projection { return &Projection{onCommit: onCommit} }

func (*Projection) Name() string { return "e2ee" }

// Version 3: remote users' device lists are kept (received device-list
// EDUs and resyncs folded into a copy). Version 4: a resync that leaves
// what local users see of the copy as it was (devices without keys are
// not shown), or an update the copy already holds, does not put the user
// in device_lists.changed.
func (*Projection) Version() int { return 5 }

// AfterCommit reports the users whose device lists the batch changed.
// It decodes only user IDs; no state is read.
func (p *Projection) AfterCommit(entries []englog.Entry) {
	if p.onCommit == nil || len(entries) == 0 {
		return
	}
	seen := map[string]bool{}
	for _, e := range entries {
		for _, u := range changedUsersOf(e) {
			seen[u] = true
		}
	}
	if len(seen) > 0 {
		p.onCommit(Touched{Last: entries[len(entries)-1].Offset, Users: slices.Sorted(maps.Keys(seen))})
	}
}

// changedUsersOf names the users whose device list an entry may change
// (a superset: waking a long-poll for nothing costs one rebuild).
func changedUsersOf(e englog.Entry) []string {
	var f struct {
		UserID string `json:"user_id"`
		Sigs   []struct {
			Target string `json:"target_user"`
		} `json:"signatures"`
	}
	switch e.Kind {
	case englog.KindKeysUploaded, englog.KindCrossSigningKeysUploaded, englog.KindDeviceRemoved,
		englog.KindDeviceUpdated, englog.KindAccountDeactivated, englog.KindPasswordChanged:
		if json.Unmarshal(e.Payload, &f) == nil {
			return []string{f.UserID}
		}
	case englog.KindEDU:
		if _, _, u := deviceEDU(e); u != "" {
			return []string{u}
		}
	case englog.KindRemoteDevicesResynced:
		if json.Unmarshal(e.Payload, &f) == nil {
			return []string{f.UserID}
		}
	case englog.KindKeySignaturesUploaded:
		if json.Unmarshal(e.Payload, &f) == nil {
			out := []string{f.UserID}
			for _, s := range f.Sigs {
				out = append(out, s.Target)
			}
			return out
		}
	}
	return nil
}

// Device-list EDUs received over federation (federation records them as
// KindEDU entries after checking the user belongs to the origin).
const (
	EDUDeviceListUpdate = "m.device_list_update"
	EDUSigningKeyUpdate = "m.signing_key_update"
)

// deviceEDU returns the type and content of a received device-list or
// signing-key EDU and the user it is about (user "" when it is neither).
func deviceEDU(e englog.Entry) (eduType string, content json.RawMessage, user string) {
	var f facts.EDU
	if json.Unmarshal(e.Payload, &f) != nil || (f.Type != EDUDeviceListUpdate && f.Type != EDUSigningKeyUpdate) {
		return "", nil, ""
	}
	var c struct {
		UserID string `json:"user_id"`
	}
	if json.Unmarshal(f.Content, &c) != nil {
		return "", nil, ""
	}
	return f.Type, f.Content, c.UserID
}

// Apply folds a batch.
func (p *Projection) Apply(w projections.Writer, entries []englog.Entry) error {
	for _, e := range entries {
		if err := p.apply(w, e); err != nil {
			return err
		}
	}
	return nil
}

func (p *Projection) apply(w projections.Writer, e englog.Entry) error {
	switch e.Kind {
	case englog.KindDeviceAdded:
		var f facts.DeviceAdded
		if err := facts.Decode(e, &f); err != nil {
			return err
		}
		return w.Set(projections.Key(pKnown, f.UserID, f.DeviceID), nil)
	case englog.KindDeviceUpdated:
		var f facts.DeviceUpdated
		if err := facts.Decode(e, &f); err != nil {
			return err
		}
		// The display name is part of /keys/query's answer (unsigned).
		if _, ok, err := w.Get(projections.Key(pDeviceKeys, f.UserID, f.DeviceID)); err != nil || !ok {
			return err
		}
		return markChanged(w, f.UserID, e.Offset)
	case englog.KindDeviceRemoved:
		var f facts.DeviceRemoved
		if err := facts.Decode(e, &f); err != nil {
			return err
		}
		return removeDevices(w, f.UserID, f.DeviceIDs, e.Offset)
	case englog.KindPasswordChanged:
		var f facts.PasswordChanged
		if err := facts.Decode(e, &f); err != nil || !f.LogoutDevices {
			return err
		}
		devs, err := knownDevices(w, f.UserID)
		if err != nil {
			return err
		}
		devs = slices.DeleteFunc(devs, func(d string) bool { return d == f.KeepDeviceID })
		return removeDevices(w, f.UserID, devs, e.Offset)
	case englog.KindAccountDeactivated:
		var f facts.AccountDeactivated
		if err := facts.Decode(e, &f); err != nil {
			return err
		}
		devs, err := knownDevices(w, f.UserID)
		if err != nil {
			return err
		}
		return removeDevices(w, f.UserID, devs, e.Offset)
	case englog.KindEDU:
		// A remote user's devices or cross-signing keys changed: the
		// copy follows (remote.go), and local users sharing a room see
		// them in device_lists.changed and query them again.
		if typ, content, u := deviceEDU(e); u != "" {
			return applyRemoteEDU(w, e, typ, content, u)
		}
	case englog.KindRemoteDevicesResynced:
		var f facts.RemoteDevicesResynced
		if err := facts.Decode(e, &f); err != nil {
			return err
		}
		return applyResync(w, e, f)
	case englog.KindFederationOutbound:
		return recordStreamSent(w, e)
	case englog.KindKeysUploaded:
		var f facts.KeysUploaded
		if err := facts.Decode(e, &f); err != nil {
			return err
		}
		return p.applyUpload(w, e, f)
	case englog.KindKeysClaimed:
		var f facts.KeysClaimed
		if err := facts.Decode(e, &f); err != nil {
			return err
		}
		return p.applyClaim(w, e, f)
	case englog.KindOneTimeKeysDiscarded:
		var f facts.OneTimeKeysDiscarded
		if err := facts.Decode(e, &f); err != nil {
			return err
		}
		return discardOneTimeKeys(w, f.UpTo)
	case englog.KindCrossSigningKeysUploaded:
		var f facts.CrossSigningKeysUploaded
		if err := facts.Decode(e, &f); err != nil {
			return err
		}
		return applyCrossSigning(w, e, f)
	case englog.KindKeySignaturesUploaded:
		var f facts.KeySignaturesUploaded
		if err := facts.Decode(e, &f); err != nil {
			return err
		}
		return applySignatures(w, e, f)
	case englog.KindBackupVersionChanged:
		var f facts.BackupVersionChanged
		if err := facts.Decode(e, &f); err != nil {
			return err
		}
		return applyBackupVersion(w, e, f)
	case englog.KindRoomKeysBackedUp:
		var f facts.RoomKeysBackedUp
		if err := facts.Decode(e, &f); err != nil {
			return err
		}
		return applyRoomKeys(w, e, f)
	case englog.KindRoomKeysDeleted:
		var f facts.RoomKeysDeleted
		if err := facts.Decode(e, &f); err != nil {
			return err
		}
		return applyRoomKeysDeleted(w, e, f)
	}
	return nil
}

// ---- keys of one device ----

func sum(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func offsetBytes(off uint64) []byte { return binary.BigEndian.AppendUint64(nil, off) }

func otkPrefix(user, device, alg string) []byte {
	return append(projections.Key(pOTK, user, device, alg), sep)
}

func otkKey(user, device, alg string, off uint64, id string) []byte {
	return append(binary.BigEndian.AppendUint64(otkPrefix(user, device, alg), off), id...)
}

// splitKeyID splits "<algorithm>:<id>".
func splitKeyID(k string) (alg, id string, ok bool) {
	alg, id, ok = strings.Cut(k, ":")
	return alg, id, ok && alg != "" && id != ""
}

func (p *Projection) applyUpload(w projections.Writer, e englog.Entry, f facts.KeysUploaded) error {
	if _, ok, err := w.Get(projections.Key(pKnown, f.UserID, f.DeviceID)); err != nil {
		return err
	} else if !ok {
		return putVerdict(w, e, Verdict{Errcode: "M_FORBIDDEN", Error: "The device was removed"})
	}
	// First decide, key by key, without writing: the upload is applied
	// whole or refused whole.
	type newKey struct {
		alg, id, full string
		key           json.RawMessage
		sum           string
	}
	var add []newKey
	for _, full := range slices.Sorted(maps.Keys(f.OneTimeKeys)) {
		alg, id, ok := splitKeyID(full)
		if !ok {
			return putVerdict(w, e, Verdict{Errcode: "M_INVALID_PARAM", Error: fmt.Sprintf("One-time key ID %q is not <algorithm>:<key_id>", full)})
		}
		key := f.OneTimeKeys[full]
		s := sum(key)
		ref, err := projections.GetJSON[otkRef](w, projections.Key(pOTKIndex, f.UserID, f.DeviceID, full))
		if err != nil {
			return err
		}
		if ref != nil {
			if ref.Sum == s {
				continue // the same key again: idempotent
			}
			return putVerdict(w, e, Verdict{Errcode: "M_INVALID_PARAM", Error: fmt.Sprintf("One-time key %s already exists with a different value", full)})
		}
		// A key already handed out is never stored again, or a retried
		// upload would let it be handed out twice.
		if old, ok, err := w.Get(projections.Key(pClaimed, f.UserID, f.DeviceID, full)); err != nil {
			return err
		} else if ok && string(old) == s {
			continue
		}
		add = append(add, newKey{alg, id, full, key, s})
	}
	counts, err := countsOf(w, f.UserID, f.DeviceID)
	if err != nil {
		return err
	}
	for _, k := range add {
		if err := w.Set(otkKey(f.UserID, f.DeviceID, k.alg, e.Offset, k.id), k.key); err != nil {
			return err
		}
		if err := projections.PutJSON(w, projections.Key(pOTKIndex, f.UserID, f.DeviceID, k.full), otkRef{Offset: e.Offset, Sum: k.sum}); err != nil {
			return err
		}
		counts[k.alg]++
	}
	if len(add) > 0 {
		if err := projections.PutJSON(w, projections.Key(pCounts, f.UserID, f.DeviceID), counts); err != nil {
			return err
		}
	}
	for _, full := range slices.Sorted(maps.Keys(f.FallbackKeys)) {
		alg, _, ok := splitKeyID(full)
		if !ok {
			continue // refused by the writer; never stored
		}
		fk := projections.Key(pFallback, f.UserID, f.DeviceID, alg)
		old, err := projections.GetJSON[Fallback](w, fk)
		if err != nil {
			return err
		}
		key := f.FallbackKeys[full]
		if old != nil && old.KeyID == full && bytes.Equal(old.Key, key) {
			continue // the same key again keeps its used flag
		}
		if err := projections.PutJSON(w, fk, Fallback{KeyID: full, Key: key}); err != nil {
			return err
		}
	}
	if len(f.DeviceKeys) > 0 {
		dk := projections.Key(pDeviceKeys, f.UserID, f.DeviceID)
		old, err := projections.GetJSON[DeviceKeys](w, dk)
		if err != nil {
			return err
		}
		if old == nil || !bytes.Equal(old.Keys, f.DeviceKeys) {
			// New identity keys drop the signatures made over the old ones.
			if err := projections.PutJSON(w, dk, DeviceKeys{Keys: f.DeviceKeys, Offset: e.Offset}); err != nil {
				return err
			}
			if err := markChanged(w, f.UserID, e.Offset); err != nil {
				return err
			}
		}
	}
	return putVerdict(w, e, Verdict{})
}

func (p *Projection) applyClaim(w projections.Writer, e englog.Entry, f facts.KeysClaimed) error {
	out := map[string]map[string]map[string]json.RawMessage{}
	for _, user := range slices.Sorted(maps.Keys(f.Claims)) {
		for _, device := range slices.Sorted(maps.Keys(f.Claims[user])) {
			alg := f.Claims[user][device]
			id, key, err := claimOne(w, user, device, alg)
			if err != nil {
				return err
			}
			if id == "" {
				continue
			}
			if out[user] == nil {
				out[user] = map[string]map[string]json.RawMessage{}
			}
			out[user][device] = map[string]json.RawMessage{id: key}
		}
	}
	return putVerdict(w, e, Verdict{Claimed: out})
}

// claimOne hands out the device's oldest unclaimed one-time key of the
// algorithm (removing it), or else its fallback key (marking it used).
func claimOne(w projections.Writer, user, device, alg string) (string, json.RawMessage, error) {
	prefix := otkPrefix(user, device, alg)
	it := w.Iter(prefix, projections.PrefixEnd(prefix))
	var k, v []byte
	if it.First() {
		k, v = slices.Clone(it.Key()), slices.Clone(it.Value())
	}
	if err := it.Close(); err != nil {
		return "", nil, err
	}
	if k != nil {
		full := alg + ":" + string(k[len(prefix)+8:])
		counts, err := countsOf(w, user, device)
		if err != nil {
			return "", nil, err
		}
		if counts[alg]--; counts[alg] <= 0 {
			delete(counts, alg)
		}
		for _, err := range []error{
			w.Delete(k),
			w.Delete(projections.Key(pOTKIndex, user, device, full)),
			w.Set(projections.Key(pClaimed, user, device, full), []byte(sum(v))),
			projections.PutJSON(w, projections.Key(pCounts, user, device), counts),
		} {
			if err != nil {
				return "", nil, err
			}
		}
		return full, v, nil
	}
	fk := projections.Key(pFallback, user, device, alg)
	fb, err := projections.GetJSON[Fallback](w, fk)
	if err != nil || fb == nil {
		return "", nil, err
	}
	if !fb.Used {
		fb.Used = true
		if err := projections.PutJSON(w, fk, fb); err != nil {
			return "", nil, err
		}
	}
	return fb.KeyID, fb.Key, nil
}

// discardOneTimeKeys removes every unclaimed one-time key uploaded at an
// offset <= upTo, as if handed out (tombstoned), and fixes the counts.
func discardOneTimeKeys(w projections.Writer, upTo uint64) error {
	it := w.Iter([]byte{pOTK}, []byte{pOTK + 1})
	type gone struct {
		key              []byte
		user, device, id string
		alg              string
		sum              string
	}
	var out []gone
	for ok := it.First(); ok; ok = it.Next() {
		k := it.Key()
		// o user 0 device 0 algorithm 0 offset(8) keyID
		parts := bytes.SplitN(k[1:], []byte{sep}, 4)
		if len(parts) != 4 || len(parts[3]) < 8 {
			continue
		}
		if binary.BigEndian.Uint64(parts[3][:8]) > upTo {
			continue
		}
		out = append(out, gone{key: slices.Clone(k), user: string(parts[0]), device: string(parts[1]), alg: string(parts[2]),
			id: string(parts[3][8:]), sum: sum(it.Value())})
	}
	if err := it.Close(); err != nil {
		return err
	}
	for _, g := range out {
		full := g.alg + ":" + g.id
		counts, err := countsOf(w, g.user, g.device)
		if err != nil {
			return err
		}
		if counts[g.alg]--; counts[g.alg] <= 0 {
			delete(counts, g.alg)
		}
		for _, err := range []error{
			w.Delete(g.key),
			w.Delete(projections.Key(pOTKIndex, g.user, g.device, full)),
			w.Set(projections.Key(pClaimed, g.user, g.device, full), []byte(g.sum)),
			projections.PutJSON(w, projections.Key(pCounts, g.user, g.device), counts),
		} {
			if err != nil {
				return err
			}
		}
	}
	return nil
}

func countsOf(r projections.Reader, user, device string) (map[string]int, error) {
	c, err := projections.GetJSON[map[string]int](r, projections.Key(pCounts, user, device))
	if err != nil || c == nil {
		return map[string]int{}, err
	}
	return *c, nil
}

func knownDevices(r projections.Reader, user string) ([]string, error) {
	prefix := append(projections.Key(pKnown, user), sep)
	it := r.Iter(prefix, projections.PrefixEnd(prefix))
	var out []string
	for ok := it.First(); ok; ok = it.Next() {
		out = append(out, string(it.Key()[len(prefix):]))
	}
	return out, it.Close()
}

// removeDevices forgets devices and every key they had; a device that had
// identity keys changes the user's device list.
func removeDevices(w projections.Writer, user string, devices []string, off uint64) error {
	changed := false
	for _, d := range devices {
		dk := projections.Key(pDeviceKeys, user, d)
		if _, ok, err := w.Get(dk); err != nil {
			return err
		} else if ok {
			changed = true
		}
		for _, err := range []error{
			w.Delete(projections.Key(pKnown, user, d)),
			w.Delete(dk),
			w.Delete(projections.Key(pCounts, user, d)),
			deletePrefix(w, append(projections.Key(pOTK, user, d), sep)),
			deletePrefix(w, append(projections.Key(pOTKIndex, user, d), sep)),
			deletePrefix(w, append(projections.Key(pFallback, user, d), sep)),
			// Tombstones of handed-out keys stay: a device ID can come
			// back (login with device_id) with the same account keys.
		} {
			if err != nil {
				return err
			}
		}
	}
	if changed {
		return markChanged(w, user, off)
	}
	return nil
}

func deletePrefix(w projections.Writer, prefix []byte) error {
	return w.DeleteRange(prefix, projections.PrefixEnd(prefix))
}

// markChanged moves the user to offset off in the change stream.
func markChanged(w projections.Writer, user string, off uint64) error {
	ck := projections.Key(pChangedAt, user)
	if old, ok, err := w.Get(ck); err != nil {
		return err
	} else if ok && len(old) == 8 {
		if err := w.Delete(append(append([]byte{pChange}, old...), user...)); err != nil {
			return err
		}
	}
	ob := offsetBytes(off)
	if err := w.Set(ck, ob); err != nil {
		return err
	}
	return w.Set(append(append([]byte{pChange}, ob...), user...), nil)
}

// putVerdict records the fold's answer at the entry's offset and prunes
// verdicts older than verdictLifetime.
func putVerdict(w projections.Writer, e englog.Entry, v Verdict) error {
	v.Time = e.Time
	if err := projections.PutJSON(w, append([]byte{pVerdict}, offsetBytes(e.Offset)...), v); err != nil {
		return err
	}
	it := w.Iter([]byte{pVerdict}, []byte{pVerdict + 1})
	var old [][]byte
	for ok := it.First(); ok && len(old) < 64; ok = it.Next() {
		var t struct {
			Time int64 `json:"time"`
		}
		if err := json.Unmarshal(it.Value(), &t); err != nil || t.Time >= e.Time-verdictLifetime {
			break
		}
		old = append(old, slices.Clone(it.Key()))
	}
	if err := it.Close(); err != nil {
		return err
	}
	for _, k := range old {
		if err := w.Delete(k); err != nil {
			return err
		}
	}
	return nil
}

// recordStreamSent remembers, per local user, the stream_id of the last
// m.device_list_update queued for other servers: the next one names it
// in prev_id, and user/devices answers it as stream_id.
func recordStreamSent(w projections.Writer, e englog.Entry) error {
	var f facts.FederationOutbound
	if err := facts.Decode(e, &f); err != nil {
		return err
	}
	for _, it := range f.Items {
		if it.EDU == nil || it.EDU.Type != EDUDeviceListUpdate {
			continue
		}
		var c struct {
			UserID   string `json:"user_id"`
			StreamID uint64 `json:"stream_id"`
		}
		if json.Unmarshal(it.EDU.Content, &c) != nil || c.UserID == "" {
			continue
		}
		k := projections.Key(pStreamSent, c.UserID)
		if old, ok, err := w.Get(k); err != nil {
			return err
		} else if ok && len(old) == 8 && binary.BigEndian.Uint64(old) >= c.StreamID {
			continue
		}
		if err := w.Set(k, offsetBytes(c.StreamID)); err != nil {
			return err
		}
	}
	return nil
}

// ---- cross-signing ----

func applyCrossSigning(w projections.Writer, e englog.Entry, f facts.CrossSigningKeysUploaded) error {
	ck := projections.Key(pCross, f.UserID)
	cs, err := projections.GetJSON[CrossSigning](w, ck)
	if err != nil {
		return err
	}
	if cs == nil {
		cs = &CrossSigning{}
	}
	set := func(slot **CrossKey, key json.RawMessage) {
		if len(key) == 0 {
			return
		}
		if *slot != nil && bytes.Equal((*slot).Key, key) {
			return // the same key keeps the signatures others made
		}
		*slot = &CrossKey{Key: key}
	}
	if len(f.Master) > 0 && (cs.Master == nil || !bytes.Equal(cs.Master.Key, f.Master)) {
		// A new master key makes the old subkeys' signatures worthless.
		cs.SelfSigning, cs.UserSigning = nil, nil
	}
	set(&cs.Master, f.Master)
	set(&cs.SelfSigning, f.SelfSigning)
	set(&cs.UserSigning, f.UserSigning)
	if err := projections.PutJSON(w, ck, cs); err != nil {
		return err
	}
	if err := markChanged(w, f.UserID, e.Offset); err != nil {
		return err
	}
	return putVerdict(w, e, Verdict{})
}

func addSig(extra *map[string]map[string]string, s facts.KeySignature) {
	if *extra == nil {
		*extra = map[string]map[string]string{}
	}
	if (*extra)[s.Signer] == nil {
		(*extra)[s.Signer] = map[string]string{}
	}
	(*extra)[s.Signer][s.SignerKeyID] = s.Value
}

func applySignatures(w projections.Writer, e englog.Entry, f facts.KeySignaturesUploaded) error {
	changed := map[string]bool{}
	for _, s := range f.Signatures {
		dk := projections.Key(pDeviceKeys, s.TargetUser, s.KeyID)
		d, err := projections.GetJSON[DeviceKeys](w, dk)
		if err != nil {
			return err
		}
		if d != nil {
			addSig(&d.Extra, s)
			if err := projections.PutJSON(w, dk, d); err != nil {
				return err
			}
			changed[s.TargetUser] = true
			continue
		}
		ck := projections.Key(pCross, s.TargetUser)
		cs, err := projections.GetJSON[CrossSigning](w, ck)
		if err != nil {
			return err
		}
		if cs == nil {
			if s.Remote {
				// A remote user's master key, checked by the handler
				// against what their server answered: kept for the
				// signer, whose queries show it on that key.
				rk := projections.Key(pRemoteSig, s.Signer, s.TargetUser, s.KeyID)
				sigs, err := projections.GetJSON[map[string]string](w, rk)
				if err != nil {
					return err
				}
				if sigs == nil {
					sigs = &map[string]string{}
				}
				(*sigs)[s.SignerKeyID] = s.Value
				if err := projections.PutJSON(w, rk, sigs); err != nil {
					return err
				}
				changed[s.TargetUser] = true
			}
			continue
		}
		for _, k := range []*CrossKey{cs.Master, cs.SelfSigning, cs.UserSigning} {
			if k != nil && slices.Contains(PublicKeys(k.Key), s.KeyID) {
				addSig(&k.Extra, s)
				changed[s.TargetUser] = true
			}
		}
		if err := projections.PutJSON(w, ck, cs); err != nil {
			return err
		}
	}
	for _, u := range slices.Sorted(maps.Keys(changed)) {
		if err := markChanged(w, u, e.Offset); err != nil {
			return err
		}
	}
	return putVerdict(w, e, Verdict{})
}

// PublicKeys lists the public keys ("ed25519:<key>" values) of a key
// object's "keys".
func PublicKeys(obj json.RawMessage) []string {
	var k struct {
		Keys map[string]string `json:"keys"`
	}
	if json.Unmarshal(obj, &k) != nil {
		return nil
	}
	out := make([]string, 0, len(k.Keys))
	for _, v := range k.Keys {
		out = append(out, v)
	}
	slices.Sort(out)
	return out
}

// ---- key backup ----

func backupsOf(r projections.Reader, user string) (*Backups, error) {
	b, err := projections.GetJSON[Backups](r, projections.Key(pBackups, user))
	if err != nil || b == nil {
		return &Backups{}, err
	}
	return b, nil
}

func applyBackupVersion(w projections.Writer, e englog.Entry, f facts.BackupVersionChanged) error {
	b, err := backupsOf(w, f.UserID)
	if err != nil {
		return err
	}
	if b.Versions == nil {
		b.Versions = map[string]*BackupVersion{}
	}
	var v Verdict
	switch f.Op {
	case facts.BackupCreate:
		b.Last++
		v.Version = strconv.Itoa(b.Last)
		b.Versions[v.Version] = &BackupVersion{Algorithm: f.Algorithm, AuthData: f.AuthData}
	case facts.BackupUpdate:
		bv := b.Versions[f.Version]
		switch {
		case bv == nil:
			v = Verdict{Errcode: "M_NOT_FOUND", Error: "Unknown backup version"}
		case f.Algorithm != bv.Algorithm:
			v = Verdict{Errcode: "M_INVALID_PARAM", Error: "The algorithm of a backup version cannot change"}
		default:
			bv.AuthData = f.AuthData
		}
	case facts.BackupDelete:
		if b.Versions[f.Version] == nil {
			v = Verdict{Errcode: "M_NOT_FOUND", Error: "Unknown backup version"}
			break
		}
		delete(b.Versions, f.Version)
		if err := deletePrefix(w, append(projections.Key(pRoomKey, f.UserID, f.Version), sep)); err != nil {
			return err
		}
	}
	if v.Errcode == "" {
		if err := projections.PutJSON(w, projections.Key(pBackups, f.UserID), b); err != nil {
			return err
		}
	}
	return putVerdict(w, e, v)
}

// wrongVersion refuses a key upload or deletion to a version that is not
// the current one.
func wrongVersion(b *Backups, version string) (*BackupVersion, *Verdict) {
	cur, bv := b.Current()
	if b.Versions[version] == nil {
		return nil, &Verdict{Errcode: "M_NOT_FOUND", Error: "Unknown backup version", Current: cur}
	}
	if version != cur {
		return nil, &Verdict{Errcode: "M_WRONG_ROOM_KEYS_VERSION", Error: "Wrong backup version", Current: cur}
	}
	return bv, nil
}

// keyBackupMeta are the fields the spec's replacement rules compare.
type keyBackupMeta struct {
	FirstMessageIndex int64 `json:"first_message_index"`
	ForwardedCount    int64 `json:"forwarded_count"`
	IsVerified        bool  `json:"is_verified"`
}

// better reports whether the new key replaces the stored one (spec:
// "Server-side key backups": is_verified, then the lower
// first_message_index, then the lower forwarded_count).
func better(newKey, old json.RawMessage) bool {
	var n, o keyBackupMeta
	if json.Unmarshal(newKey, &n) != nil {
		return false
	}
	if json.Unmarshal(old, &o) != nil {
		return true
	}
	if n.IsVerified != o.IsVerified {
		return n.IsVerified
	}
	if n.FirstMessageIndex != o.FirstMessageIndex {
		return n.FirstMessageIndex < o.FirstMessageIndex
	}
	return n.ForwardedCount < o.ForwardedCount
}

func applyRoomKeys(w projections.Writer, e englog.Entry, f facts.RoomKeysBackedUp) error {
	b, err := backupsOf(w, f.UserID)
	if err != nil {
		return err
	}
	bv, refused := wrongVersion(b, f.Version)
	if refused != nil {
		return putVerdict(w, e, *refused)
	}
	changed := false
	for _, room := range slices.Sorted(maps.Keys(f.Rooms)) {
		for _, session := range slices.Sorted(maps.Keys(f.Rooms[room])) {
			key := f.Rooms[room][session]
			k := projections.Key(pRoomKey, f.UserID, f.Version, room, session)
			old, ok, err := w.Get(k)
			if err != nil {
				return err
			}
			if ok && !better(key, old) {
				continue
			}
			if !ok {
				bv.Count++
			}
			if err := w.Set(k, key); err != nil {
				return err
			}
			changed = true
		}
	}
	if changed {
		bv.Etag++
		if err := projections.PutJSON(w, projections.Key(pBackups, f.UserID), b); err != nil {
			return err
		}
	}
	return putVerdict(w, e, Verdict{Etag: strconv.FormatUint(bv.Etag, 10), Count: bv.Count})
}

// applyRoomKeysDeleted deletes keys of any live version (not only the
// current one: a client may clean up an old backup).
func applyRoomKeysDeleted(w projections.Writer, e englog.Entry, f facts.RoomKeysDeleted) error {
	b, err := backupsOf(w, f.UserID)
	if err != nil {
		return err
	}
	bv := b.Versions[f.Version]
	if bv == nil {
		return putVerdict(w, e, Verdict{Errcode: "M_NOT_FOUND", Error: "Unknown backup version"})
	}
	parts := []string{f.UserID, f.Version}
	if f.RoomID != "" {
		parts = append(parts, f.RoomID)
		if f.SessionID != "" {
			parts = append(parts, f.SessionID)
		}
	}
	prefix := projections.Key(pRoomKey, parts...)
	if f.SessionID == "" {
		prefix = append(prefix, sep)
	}
	upper := projections.PrefixEnd(prefix)
	if f.SessionID != "" {
		upper = append(slices.Clone(prefix), 0) // exactly this key
	}
	it := w.Iter(prefix, upper)
	n := 0
	for ok := it.First(); ok; ok = it.Next() {
		n++
	}
	if err := it.Close(); err != nil {
		return err
	}
	if n > 0 {
		if err := w.DeleteRange(prefix, upper); err != nil {
			return err
		}
		bv.Count -= n
		bv.Etag++
		if err := projections.PutJSON(w, projections.Key(pBackups, f.UserID), b); err != nil {
			return err
		}
	}
	return putVerdict(w, e, Verdict{Etag: strconv.FormatUint(bv.Etag, 10), Count: bv.Count})
}
