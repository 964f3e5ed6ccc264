package notifications

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"

	"github.com/engram-hs/engram/projections"
)

// View reads the projection.
type View struct{ r projections.Reader }

// NewView reads through r (the projection's handle reader).
func NewView(r projections.Reader) View { return View{r} }

// Pushers are a user's pushers, by app ID then pushkey.
func (v View) Pushers(userID string) ([]Pusher, error) { return pushersOf(v.r, userID) }

// AllPushers is every pusher of every user (the gateway sender's work
// list).
func (v View) AllPushers() ([]Pusher, error) {
	return projections.ListJSON[Pusher](v.r, []byte{pPusher}, nil)
}

// Pusher is one pusher, nil when absent.
func (v View) Pusher(userID, appID, pushkey string) (*Pusher, error) {
	return projections.GetJSON[Pusher](v.r, pusherKey(userID, appID, pushkey))
}

// Notifications are a user's notifications, newest first, older than
// before (0: the newest), at most limit, only highlights when asked.
func (v View) Notifications(userID string, before uint64, limit int, onlyHighlight bool) ([]Notification, error) {
	prefix := projections.Key(pNotif, userID, "")
	upper := projections.PrefixEnd(prefix)
	if before > 0 {
		upper = binary.BigEndian.AppendUint64(append([]byte(nil), prefix...), before)
	}
	it := v.r.Iter(prefix, upper)
	var out []Notification
	for ok := it.Last(); ok && len(out) < limit; ok = it.Prev() {
		n, ok, err := v.notificationOf(it.Key(), it.Value())
		if err != nil {
			it.Close()
			return nil, err
		}
		if !ok || (onlyHighlight && !n.Highlight) {
			continue
		}
		out = append(out, n)
	}
	return out, it.Close()
}

// notificationOf is the notification a user's pNotif row names: its
// event's pVariant record (false when the fold pruned it, which it does
// only past Retention, when the row itself has expired), or, in a
// generation of versions 5 and 6 (and for an event that notified its
// members in more than 256 ways), the copy the row holds.
func (v View) notificationOf(k, row []byte) (Notification, bool, error) {
	var n Notification
	if len(row) > 0 && row[0] == '{' { // versions 5 and 6
		if err := json.Unmarshal(row, &n); err != nil {
			return n, false, fmt.Errorf("notifications: corrupt record %q: %w", k, err)
		}
		return n, true, nil
	}
	if len(row) != 9 || len(k) < 8 {
		return n, false, fmt.Errorf("notifications: corrupt record %q (%d bytes); rebuild it with `engram rebuild --projection notifications`", k, len(row))
	}
	vk := variantKey(binary.BigEndian.Uint64(k[len(k)-8:]), row[8])
	rec, ok, err := v.r.Get(vk)
	if err != nil || !ok {
		return n, false, err
	}
	if len(rec) < 8 {
		return n, false, fmt.Errorf("notifications: corrupt record %q (%d bytes); rebuild it with `engram rebuild --projection notifications`", vk, len(rec))
	}
	if err := json.Unmarshal(rec[8:], &n); err != nil {
		return n, false, fmt.Errorf("notifications: corrupt record %q: %w", vk, err)
	}
	return n, true, nil
}

// NotificationsAfter are a user's notifications newer than after, oldest
// first, at most limit (the gateway sender's queue of a pusher).
func (v View) NotificationsAfter(userID string, after uint64, limit int) ([]Notification, error) {
	prefix := projections.Key(pNotif, userID, "")
	lower := binary.BigEndian.AppendUint64(append([]byte(nil), prefix...), after+1)
	it := v.r.Iter(lower, projections.PrefixEnd(prefix))
	var out []Notification
	for ok := it.First(); ok && len(out) < limit; ok = it.Next() {
		n, ok, err := v.notificationOf(it.Key(), it.Value())
		if err != nil {
			it.Close()
			return nil, err
		}
		if ok {
			out = append(out, n)
		}
	}
	return out, it.Close()
}

// floorsOf are how far a user has read a room: by thread ID ("" for
// unthreaded receipts and their own events, ScopeMain, thread roots).
func floorsOf(r projections.Reader, userID, roomID string) (map[string]uint64, error) {
	prefix := projections.Key(pFloor, userID, roomID, "")
	it := r.Iter(prefix, projections.PrefixEnd(prefix))
	out := map[string]uint64{}
	for ok := it.First(); ok; ok = it.Next() {
		if len(it.Value()) == 8 {
			out[string(it.Key()[len(prefix):])] = binary.BigEndian.Uint64(it.Value())
		}
	}
	return out, it.Close()
}

// Read says whether the user has read the room (or its thread) up to the
// notification.
func (v View) Read(userID string, n Notification) (bool, error) {
	f, err := floorsOf(v.r, userID, n.RoomID)
	if err != nil {
		return false, err
	}
	return n.Offset <= max(f[""], f[n.ThreadID]), nil
}

// Count is a notification_count and highlight_count.
type Count struct {
	Notifications uint64 `json:"notification_count"`
	Highlights    uint64 `json:"highlight_count"`
}

// Unread counts a user's unread notifications in a room (spec:
// unread_notifications). With threads, the main timeline and each thread
// with unread notifications are counted apart against their own threaded
// receipts (spec: unread_thread_notifications); without, the counts are
// for the whole room, each notification still read by its own thread's
// receipt (the main timeline's for events outside threads), as Synapse
// counts: a client that reads a thread with a threaded receipt sees the
// room's count drop even when it did not ask for counts per thread.
// It reads the counts the fold keeps per thread (pCount): a few keys,
// however many notifications are unread.
func (v View) Unread(userID, roomID string, withThreads bool) (Count, map[string]Count, error) {
	var main Count
	var threads map[string]Count
	if withThreads {
		threads = map[string]Count{}
	}
	prefix := projections.Key(pCount, userID, roomID, "")
	it := v.r.Iter(prefix, projections.PrefixEnd(prefix))
	for ok := it.First(); ok; ok = it.Next() {
		c, err := decodeCount(it.Key(), it.Value())
		if err != nil {
			it.Close()
			return Count{}, nil, err
		}
		if thread := string(it.Key()[len(prefix):]); withThreads && thread != ScopeMain {
			threads[thread] = c
			continue
		}
		main.Notifications += c.Notifications
		main.Highlights += c.Highlights
	}
	return main, threads, it.Close()
}

// UnreadRooms is how many rooms the user has unread notifications in
// (the badge a push gateway shows: counts.unread).
func (v View) UnreadRooms(userID string) (int, error) {
	prefix := projections.Key(pCount, userID, "")
	it := v.r.Iter(prefix, projections.PrefixEnd(prefix))
	n := 0
	for ok := it.First(); ok; {
		rest := it.Key()[len(prefix):]
		room, _, found := bytes.Cut(rest, []byte{0})
		if !found {
			ok = it.Next()
			continue
		}
		// Counts are never zero: a room with any has unread notifications.
		n++
		ok = it.SeekGE(projections.PrefixEnd(projections.Key(pCount, userID, string(room), "")))
	}
	return n, it.Close()
}
