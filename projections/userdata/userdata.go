// Package userdata folds what users say about themselves and rooms
// outside the room DAG: "account data, filters, typing, receipts,
// presence and to-device inboxes", each stamped with the log offset that
// last changed it so /sync can return what changed since a token.
package userdata

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strconv"

	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/projections"
)

const (
	pAccountData = 'd' // d user 0 room 0 type -> Record ("" room: global)
	pFilter      = 'f' // f user 0 filterID -> filter JSON
	pTyping      = 't' // t room 0 user -> Typing
	pTypingRoom  = 'T' // T room -> Stamp (last typing change)
	pReceipt     = 'r' // r room 0 user 0 receiptType 0 thread -> Receipt
	pPresence    = 'p' // p user -> Presence
	pDevice      = 'D' // D user 0 device -> "" (devices that have an inbox)
	pInbox       = 'i' // i user 0 device 0 offset(8) -> ToDevice
	pToDevTxn    = 'x' // x sender 0 senderDevice 0 txn 0 target -> offset
	pEphemeral   = 'E' // E room -> offset (8 bytes) of the room's last typing or receipt change
	pUserData    = 'U' // U user -> offset (8 bytes) of the user's last account data change (any room)
	pPresenceAt  = 'q' // q offset(8) -> user: each user once, at their last visible presence change
	sep          = 0
)

// ToDevice is one message waiting in a device's inbox.
type ToDevice struct {
	Sender  string          `json:"sender"`
	Type    string          `json:"type"`
	Content json.RawMessage `json:"content"`
	Offset  uint64          `json:"offset"`
}

// Record is one account data event.
type Record struct {
	Type    string          `json:"type"`
	RoomID  string          `json:"room_id,omitempty"`
	Content json.RawMessage `json:"content"`
	Offset  uint64          `json:"offset"`
}

// Typing is one user typing in a room until ExpiresAt (Unix ms).
type Typing struct {
	UserID    string `json:"user_id"`
	ExpiresAt int64  `json:"expires_at"`
}

// Stamp records the offset of the last change.
type Stamp struct {
	Offset uint64 `json:"offset"`
}

// Receipt is one user's receipt of one type in a room.
type Receipt struct {
	UserID      string `json:"user_id"`
	EventID     string `json:"event_id"`
	ReceiptType string `json:"receipt_type"`
	ThreadID    string `json:"thread_id,omitempty"`
	TS          int64  `json:"ts"`
	Offset      uint64 `json:"offset"`
}

// Presence is a user's presence as last set, and when they were last
// active and last synced (Unix ms, from entry times). Readers derive idle
// and offline from these and their clock; the fold never does.
type Presence struct {
	Presence     string  `json:"presence"`
	StatusMsg    *string `json:"status_msg,omitempty"`
	LastActiveTS int64   `json:"last_active_ts"`
	LastSyncTS   int64   `json:"last_sync_ts,omitempty"`
	// Offset is the last change others see (quiet activity records keep
	// it).
	Offset uint64 `json:"offset"`
}

// Projection is the userdata read model.
type Projection struct{ onCommit func(Touched) }

// Touched is what a committed batch may have changed, so that only the
// long-polls it concerns wake. First and Last bound the batch: a First that does not follow the
// previous Last means more became visible at once (a rebuilt generation
// took over).
type Touched struct {
	First    uint64   // the batch's first offset
	Last     uint64   // the batch's last offset
	Rooms    []string // typing or receipts changed
	Users    []string // account data, to-device inbox or own presence changed
	Presence []string // users whose presence changed visibly (their co-members care)
	// RoomAccountData: the (user, room) pairs whose room account data
	// changed (Users has the user too).
	RoomAccountData []UserRoom
	// AccountData: the users whose account data changed, globally or in
	// a room.
	AccountData []string
}

// UserRoom names one user's data in one room.
type UserRoom struct{ UserID, RoomID string }

// New returns the projection; onCommit (may be nil) is called after each
// committed batch with what it touched.
func New(onCommit func(Touched)) *Projection { return &Projection{onCommit: onCommit} }

func (*Projection) Name() string { return "userdata" }
func (*Projection) Version() int { return 3 }

// AfterCommit tells onCommit what the batch touched, decoding the
// entries again (Apply keeps no state between calls).
func (p *Projection) AfterCommit(entries []englog.Entry) {
	if p.onCommit == nil || len(entries) == 0 {
		return
	}
	t := Touched{First: entries[0].Offset, Last: entries[len(entries)-1].Offset}
	seen := map[string]bool{}
	add := func(list *[]string, kind byte, id string) {
		if k := string(kind) + id; id != "" && !seen[k] {
			seen[k] = true
			*list = append(*list, id)
		}
	}
	for _, e := range entries {
		switch e.Kind {
		case englog.KindAccountDataSet:
			var f facts.AccountDataSet
			if facts.Decode(e, &f) == nil {
				add(&t.Users, 'u', f.UserID)
				add(&t.AccountData, 'a', f.UserID)
				if k := "d" + f.UserID + "\x00" + f.RoomID; f.RoomID != "" && !seen[k] {
					seen[k] = true
					t.RoomAccountData = append(t.RoomAccountData, UserRoom{f.UserID, f.RoomID})
				}
			}
		case englog.KindToDeviceSent:
			var f facts.ToDeviceSent
			if facts.Decode(e, &f) == nil {
				add(&t.Users, 'u', f.UserID)
			}
		case englog.KindEDU:
			var f facts.EDU
			if facts.Decode(e, &f) != nil {
				continue
			}
			switch f.Type {
			case facts.EDUTyping:
				var c facts.TypingContent
				if json.Unmarshal(f.Content, &c) == nil {
					add(&t.Rooms, 'r', c.RoomID)
				}
			case facts.EDUReceipt:
				var c facts.ReceiptContent
				if json.Unmarshal(f.Content, &c) == nil {
					add(&t.Rooms, 'r', c.RoomID)
				}
			case facts.EDUPresence:
				var c facts.PresenceContent
				if json.Unmarshal(f.Content, &c) == nil && !c.Quiet {
					add(&t.Users, 'u', c.UserID)
					add(&t.Presence, 'p', c.UserID)
				}
			}
		}
	}
	p.onCommit(t)
}

func putOffset(w projections.Writer, key []byte, off uint64) error {
	return w.Set(key, binary.BigEndian.AppendUint64(nil, off))
}

func getOffset(r projections.Reader, key []byte) (uint64, error) {
	b, ok, err := r.Get(key)
	if err != nil || !ok || len(b) != 8 {
		return 0, err
	}
	return binary.BigEndian.Uint64(b), nil
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
	case englog.KindAccountDataSet:
		var f facts.AccountDataSet
		if err := facts.Decode(e, &f); err != nil {
			return err
		}
		if err := putOffset(w, projections.Key(pUserData, f.UserID), e.Offset); err != nil {
			return err
		}
		return projections.PutJSON(w, projections.Key(pAccountData, f.UserID, f.RoomID, f.Type), Record{Type: f.Type, RoomID: f.RoomID, Content: f.Content, Offset: e.Offset})
	case englog.KindFilterStored:
		var f facts.FilterStored
		if err := facts.Decode(e, &f); err != nil {
			return err
		}
		return w.Set(projections.Key(pFilter, f.UserID, strconv.FormatUint(e.Offset, 10)), f.Filter)
	case englog.KindDeviceAdded:
		var f facts.DeviceAdded
		if err := facts.Decode(e, &f); err != nil {
			return err
		}
		// Devices are tracked here so that "*" expands deterministically at
		// fold time. A device of a refused registration (see
		// projections/accounts) gets an inbox nobody can read: it has no
		// valid token.
		return w.Set(projections.Key(pDevice, f.UserID, f.DeviceID), nil)
	case englog.KindDeviceRemoved:
		var f facts.DeviceRemoved
		if err := facts.Decode(e, &f); err != nil {
			return err
		}
		for _, d := range f.DeviceIDs {
			if err := dropDevice(w, f.UserID, d); err != nil {
				return err
			}
		}
	case englog.KindPasswordChanged:
		var f facts.PasswordChanged
		if err := facts.Decode(e, &f); err != nil || !f.LogoutDevices {
			return err
		}
		return dropDevices(w, f.UserID, f.KeepDeviceID)
	case englog.KindAccountDeactivated:
		var f facts.AccountDeactivated
		if err := facts.Decode(e, &f); err != nil {
			return err
		}
		return dropDevices(w, f.UserID, "")
	case englog.KindToDeviceSent:
		var f facts.ToDeviceSent
		if err := facts.Decode(e, &f); err != nil {
			return err
		}
		return p.applyToDevice(w, e, f)
	case englog.KindToDeviceAcked:
		var f facts.ToDeviceAcked
		if err := facts.Decode(e, &f); err != nil {
			return err
		}
		lower := append(projections.Key(pInbox, f.UserID, f.DeviceID), sep)
		return w.DeleteRange(lower, binary.BigEndian.AppendUint64(append([]byte(nil), lower...), f.UpTo+1))
	case englog.KindEDU:
		var f facts.EDU
		if err := facts.Decode(e, &f); err != nil {
			return err
		}
		switch f.Type {
		case facts.EDUTyping:
			var c facts.TypingContent
			if json.Unmarshal(f.Content, &c) != nil {
				return nil
			}
			return p.applyTyping(w, e, c)
		case facts.EDUReceipt:
			var c facts.ReceiptContent
			if json.Unmarshal(f.Content, &c) != nil {
				return nil
			}
			if err := putOffset(w, projections.Key(pEphemeral, c.RoomID), e.Offset); err != nil {
				return err
			}
			return projections.PutJSON(w, projections.Key(pReceipt, c.RoomID, c.UserID, c.ReceiptType, c.ThreadID), Receipt{
				UserID: c.UserID, EventID: c.EventID, ReceiptType: c.ReceiptType, ThreadID: c.ThreadID, TS: c.TS, Offset: e.Offset})
		case facts.EDUPresence:
			var c facts.PresenceContent
			if json.Unmarshal(f.Content, &c) != nil {
				return nil
			}
			return applyPresence(w, e, c)
		}
	}
	return nil
}

// applyToDevice puts a message in the inbox of each addressed device of
// the target user; "*" means every device the user has at this point of
// the log. Devices the user does not have are skipped (spec: unknown
// devices are ignored). A transaction already folded is a no-op.
func (p *Projection) applyToDevice(w projections.Writer, e englog.Entry, f facts.ToDeviceSent) error {
	if f.TxnID != "" {
		tk := projections.Key(pToDevTxn, f.Sender, f.SenderDevice, f.TxnID, f.UserID)
		if _, ok, err := w.Get(tk); err != nil || ok {
			return err
		}
		if err := w.Set(tk, binary.BigEndian.AppendUint64(nil, e.Offset)); err != nil {
			return err
		}
	}
	known, err := devicesOf(w, f.UserID)
	if err != nil {
		return err
	}
	targets := map[string]json.RawMessage{}
	for dev, content := range f.Messages {
		if dev == "*" {
			for _, d := range known {
				if _, explicit := f.Messages[d]; !explicit {
					targets[d] = content
				}
			}
		} else if slices.Contains(known, dev) {
			targets[dev] = content
		}
	}
	devs := slices.Sorted(maps.Keys(targets)) // map order must not reach the keyspace
	for _, d := range devs {
		k := binary.BigEndian.AppendUint64(append(projections.Key(pInbox, f.UserID, d), sep), e.Offset)
		if err := projections.PutJSON(w, k, ToDevice{Sender: f.Sender, Type: f.Type, Content: targets[d], Offset: e.Offset}); err != nil {
			return err
		}
	}
	return nil
}

func devicesOf(r projections.Reader, userID string) ([]string, error) {
	lower := append(projections.Key(pDevice, userID), sep)
	it := r.Iter(lower, projections.PrefixEnd(lower))
	var out []string
	for ok := it.First(); ok; ok = it.Next() {
		out = append(out, string(it.Key()[len(lower):]))
	}
	return out, it.Close()
}

// dropDevice forgets a device and deletes its inbox.
func dropDevice(w projections.Writer, userID, deviceID string) error {
	lower := append(projections.Key(pInbox, userID, deviceID), sep)
	if err := w.DeleteRange(lower, projections.PrefixEnd(lower)); err != nil {
		return err
	}
	return w.Delete(projections.Key(pDevice, userID, deviceID))
}

// dropDevices drops every device of a user but keep.
func dropDevices(w projections.Writer, userID, keep string) error {
	devs, err := devicesOf(w, userID)
	if err != nil {
		return err
	}
	for _, d := range devs {
		if d != keep {
			if err := dropDevice(w, userID, d); err != nil {
				return err
			}
		}
	}
	return nil
}

// applyTyping sets or clears one user's typing state and drops entries
// that expired by this entry's time (never the clock).
func (p *Projection) applyTyping(w projections.Writer, e englog.Entry, c facts.TypingContent) error {
	lower := append(projections.Key(pTyping, c.RoomID), sep)
	it := w.Iter(lower, projections.PrefixEnd(lower))
	var expired [][]byte
	for ok := it.First(); ok; ok = it.Next() {
		var t Typing
		if json.Unmarshal(it.Value(), &t) == nil && t.ExpiresAt <= e.Time {
			expired = append(expired, append([]byte(nil), it.Key()...))
		}
	}
	if err := it.Close(); err != nil {
		return err
	}
	for _, k := range expired {
		if err := w.Delete(k); err != nil {
			return err
		}
	}
	k := projections.Key(pTyping, c.RoomID, c.UserID)
	if c.Typing && c.ExpiresAt > e.Time {
		if err := projections.PutJSON(w, k, Typing{UserID: c.UserID, ExpiresAt: c.ExpiresAt}); err != nil {
			return err
		}
	} else if err := w.Delete(k); err != nil {
		return err
	}
	if err := putOffset(w, projections.Key(pEphemeral, c.RoomID), e.Offset); err != nil {
		return err
	}
	return projections.PutJSON(w, projections.Key(pTypingRoom, c.RoomID), Stamp{Offset: e.Offset})
}

// applyPresence folds a presence set or an activity record. A set
// replaces the presence and status and counts as activity (spec: changing
// presence is pro-active); a sync record moves the last sync time, and
// also the last active time unless quiet (the user came back); an action
// moves the last active time. A change that is not quiet is indexed at
// its offset, for /sync to find the changes after a token.
func applyPresence(w projections.Writer, e englog.Entry, c facts.PresenceContent) error {
	k := projections.Key(pPresence, c.UserID)
	prev, err := projections.GetJSON[Presence](w, k)
	if err != nil {
		return err
	}
	next := Presence{}
	if prev != nil {
		next = *prev
	}
	next.Presence = c.Presence
	switch c.Activity {
	case "":
		next.StatusMsg = c.StatusMsg
		next.LastActiveTS = e.Time
	case facts.PresenceSynced:
		next.LastSyncTS = e.Time
		if !c.Quiet {
			next.LastActiveTS = e.Time
		}
	default:
		next.LastActiveTS = e.Time
	}
	if !c.Quiet || prev == nil {
		if prev != nil && prev.Offset != 0 {
			if err := w.Delete(binary.BigEndian.AppendUint64([]byte{pPresenceAt}, prev.Offset)); err != nil {
				return err
			}
		}
		next.Offset = e.Offset
		if err := w.Set(binary.BigEndian.AppendUint64([]byte{pPresenceAt}, e.Offset), []byte(c.UserID)); err != nil {
			return err
		}
	}
	return projections.PutJSON(w, k, next)
}

// View answers queries.
type View struct{ r projections.Reader }

// NewView wraps a reader of this projection's keyspace.
func NewView(r projections.Reader) View { return View{r} }

// AccountData returns one account data event, or nil.
func (v View) AccountData(userID, roomID, typ string) (*Record, error) {
	b, ok, err := v.r.Get(projections.Key(pAccountData, userID, roomID, typ))
	if err != nil || !ok {
		return nil, err
	}
	var r Record
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("userdata: corrupt account data: %w", err)
	}
	return &r, nil
}

// AccountDataOf lists a user's account data of one room ("" for global)
// changed after offset since.
func (v View) AccountDataOf(userID, roomID string, since uint64) ([]Record, error) {
	return projections.ListJSON(v.r, append(projections.Key(pAccountData, userID, roomID), sep),
		func(r *Record) bool { return r.Offset > since })
}

// Filter returns a stored filter, or nil.
func (v View) Filter(userID, filterID string) (json.RawMessage, error) {
	b, ok, err := v.r.Get(projections.Key(pFilter, userID, filterID))
	if err != nil || !ok {
		return nil, err
	}
	return b, nil
}

// Typing returns the users typing in a room at time nowMS and the offset
// of the room's last typing change.
func (v View) Typing(roomID string, nowMS int64) ([]string, uint64, error) {
	var stamp Stamp
	if b, ok, err := v.r.Get(projections.Key(pTypingRoom, roomID)); err != nil {
		return nil, 0, err
	} else if ok {
		_ = json.Unmarshal(b, &stamp)
	}
	lower := append(projections.Key(pTyping, roomID), sep)
	it := v.r.Iter(lower, projections.PrefixEnd(lower))
	users := []string{}
	for ok := it.First(); ok; ok = it.Next() {
		var t Typing
		if json.Unmarshal(it.Value(), &t) == nil && t.ExpiresAt > nowMS {
			users = append(users, t.UserID)
		}
	}
	return users, stamp.Offset, it.Close()
}

// Receipts lists a room's receipts changed after offset since.
func (v View) Receipts(roomID string, since uint64) ([]Receipt, error) {
	return projections.ListJSON(v.r, append(projections.Key(pReceipt, roomID), sep),
		func(r *Receipt) bool { return r.Offset > since })
}

// ToDevice returns the messages in a device's inbox with offsets in
// (after, upTo], oldest first, and whether the inbox holds messages with
// offsets <= after (which the device has acknowledged but are not deleted
// yet).
func (v View) ToDevice(userID, deviceID string, after, upTo uint64) ([]ToDevice, bool, error) {
	lower := append(projections.Key(pInbox, userID, deviceID), sep)
	it := v.r.Iter(lower, projections.PrefixEnd(lower))
	var out []ToDevice
	acked := false
	for ok := it.First(); ok; ok = it.Next() {
		k := it.Key()
		off := binary.BigEndian.Uint64(k[len(lower):])
		if off <= after {
			acked = true
			continue
		}
		if off > upTo {
			break
		}
		var m ToDevice
		if err := json.Unmarshal(it.Value(), &m); err != nil {
			it.Close()
			return nil, false, fmt.Errorf("userdata: corrupt to-device message: %w", err)
		}
		out = append(out, m)
	}
	return out, acked, it.Close()
}

// Presence returns a user's presence, or nil.
func (v View) Presence(userID string) (*Presence, error) {
	b, ok, err := v.r.Get(projections.Key(pPresence, userID))
	if err != nil || !ok {
		return nil, err
	}
	var p Presence
	if err := json.Unmarshal(b, &p); err != nil {
		return nil, err
	}
	return &p, nil
}

// PresenceChanges lists the users whose presence changed visibly with
// offsets in (after, upTo], each once, oldest change first.
func (v View) PresenceChanges(after, upTo uint64) ([]string, error) {
	lower := []byte{pPresenceAt}
	it := v.r.Iter(lower, projections.PrefixEnd(lower))
	var out []string
	for ok := it.SeekGE(binary.BigEndian.AppendUint64([]byte{pPresenceAt}, after+1)); ok; ok = it.Next() {
		if binary.BigEndian.Uint64(it.Key()[1:]) > upTo {
			break
		}
		out = append(out, string(it.Value()))
	}
	return out, it.Close()
}

// EphemeralChangedAt is the offset of the room's last typing or receipt
// change (0: none).
func (v View) EphemeralChangedAt(roomID string) (uint64, error) {
	return getOffset(v.r, projections.Key(pEphemeral, roomID))
}

// AccountDataChangedAt is the offset of the user's last account data
// change in any room or globally (0: none).
func (v View) AccountDataChangedAt(userID string) (uint64, error) {
	return getOffset(v.r, projections.Key(pUserData, userID))
}

// ToDeviceTxn reports whether a sender's device already sent a to-device
// transaction.
func (v View) ToDeviceTxn(sender, senderDevice, txnID string) (bool, error) {
	lower := append(projections.Key(pToDevTxn, sender, senderDevice, txnID), sep)
	it := v.r.Iter(lower, projections.PrefixEnd(lower))
	found := it.First()
	return found, it.Close()
}

// ReceiptsOf lists one user's receipts in a room (every type and thread).
func (v View) ReceiptsOf(roomID, userID string) ([]Receipt, error) {
	return projections.ListJSON[Receipt](v.r, append(projections.Key(pReceipt, roomID, userID), sep), nil)
}
