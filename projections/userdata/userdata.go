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

// Presence is a user's last presence.
type Presence struct {
	Presence     string  `json:"presence"`
	StatusMsg    *string `json:"status_msg,omitempty"`
	LastActiveTS int64   `json:"last_active_ts"`
	Offset       uint64  `json:"offset"`
}

// Projection is the userdata read model.
type Projection struct{ onCommit func(uint64) }

// New returns the projection; onCommit (may be nil) is called after each
// committed batch with its last offset.
func New(onCommit func(uint64)) *Projection { return &Projection{onCommit: onCommit} }

func (*Projection) Name() string { return "userdata" }
func (*Projection) Version() int { return 2 }

// AfterCommit wakes waiters.
func (p *Projection) AfterCommit(entries []englog.Entry) {
	if p.onCommit != nil && len(entries) > 0 {
		p.onCommit(entries[len(entries)-1].Offset)
	}
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
			return projections.PutJSON(w, projections.Key(pReceipt, c.RoomID, c.UserID, c.ReceiptType, c.ThreadID), Receipt{
				UserID: c.UserID, EventID: c.EventID, ReceiptType: c.ReceiptType, ThreadID: c.ThreadID, TS: c.TS, Offset: e.Offset})
		case facts.EDUPresence:
			var c facts.PresenceContent
			if json.Unmarshal(f.Content, &c) != nil {
				return nil
			}
			return projections.PutJSON(w, projections.Key(pPresence, c.UserID), Presence{Presence: c.Presence, StatusMsg: c.StatusMsg, LastActiveTS: e.Time, Offset: e.Offset})
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
	return projections.PutJSON(w, projections.Key(pTypingRoom, c.RoomID), Stamp{Offset: e.Offset})
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
	lower := append(projections.Key(pAccountData, userID, roomID), sep)
	it := v.r.Iter(lower, projections.PrefixEnd(lower))
	var out []Record
	for ok := it.First(); ok; ok = it.Next() {
		var r Record
		if err := json.Unmarshal(it.Value(), &r); err != nil {
			it.Close()
			return nil, err
		}
		if r.Offset > since {
			out = append(out, r)
		}
	}
	return out, it.Close()
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
	lower := append(projections.Key(pReceipt, roomID), sep)
	it := v.r.Iter(lower, projections.PrefixEnd(lower))
	var out []Receipt
	for ok := it.First(); ok; ok = it.Next() {
		var r Receipt
		if err := json.Unmarshal(it.Value(), &r); err != nil {
			it.Close()
			return nil, err
		}
		if r.Offset > since {
			out = append(out, r)
		}
	}
	return out, it.Close()
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
	lower := append(projections.Key(pReceipt, roomID, userID), sep)
	it := v.r.Iter(lower, projections.PrefixEnd(lower))
	var out []Receipt
	for ok := it.First(); ok; ok = it.Next() {
		var r Receipt
		if err := json.Unmarshal(it.Value(), &r); err != nil {
			it.Close()
			return nil, err
		}
		out = append(out, r)
	}
	return out, it.Close()
}
