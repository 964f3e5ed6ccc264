package api

import (
	"sync"

	"github.com/engram-hs/engram/projections/rooms"
	"github.com/engram-hs/engram/stateres"
)

// membersAt returns the member events of users as they were just before
// timeline position before.
func (s *Server) membersAt(v rooms.View, roomID string, users []string, before uint64) ([]*rooms.Event, error) {
	var out []*rooms.Event
	for _, u := range users {
		id, err := v.StateAt(roomID, stateres.MRoomMember, u, before)
		if err != nil {
			return nil, err
		}
		if id == "" {
			continue
		}
		e, err := v.Event(id)
		if err != nil {
			return nil, err
		}
		if e != nil {
			out = append(out, e)
		}
	}
	return out, nil
}

// unreadCounts computes unread_notifications for one room: notifying
// events from others after the point the user has read to, which is the
// newest of their read receipt (m.read or m.read.private), their current
// membership event and their own last notifying event. With threads, the
// main timeline and each thread count separately against their own
// threaded receipts (spec: threaded read receipts); threads is nil when
// not requested.
func (s *Server) unreadCounts(v rooms.View, userID, roomID string, withThreads bool) (map[string]uint64, map[string]any, error) {
	var floor uint64
	if m, err := v.Membership(userID, roomID); err != nil {
		return nil, nil, err
	} else if m != nil {
		floor = m.Offset
	}
	if own, err := v.LastNotifying(roomID, userID); err != nil {
		return nil, nil, err
	} else {
		floor = max(floor, own)
	}
	receipts, err := s.userdataView().ReceiptsOf(roomID, userID)
	if err != nil {
		return nil, nil, err
	}
	read := map[string]uint64{} // thread ID ("" unthreaded) -> offset read up to
	for _, r := range receipts {
		if r.ReceiptType != "m.read" && r.ReceiptType != "m.read.private" {
			continue
		}
		e, err := v.Event(r.EventID)
		if err != nil {
			return nil, nil, err
		}
		if e != nil && e.RoomID == roomID {
			read[r.ThreadID] = max(read[r.ThreadID], e.Offset)
		}
	}
	floor = max(floor, read[""])
	count := func(scope string, after uint64) (map[string]uint64, error) {
		n, err := v.NotificationCount(roomID, scope, after)
		if err != nil {
			return nil, err
		}
		h, err := v.HighlightCount(roomID, userID, scope, after)
		if err != nil {
			return nil, err
		}
		return map[string]uint64{"notification_count": n, "highlight_count": h}, nil
	}
	if !withThreads {
		all, err := count(rooms.ScopeAll, max(floor, read[rooms.ScopeMain]))
		return all, nil, err
	}
	main, err := count(rooms.ScopeMain, max(floor, read[rooms.ScopeMain]))
	if err != nil {
		return nil, nil, err
	}
	roots, err := v.Threads(roomID)
	if err != nil {
		return nil, nil, err
	}
	threads := map[string]any{}
	for _, root := range roots {
		c, err := count(root, max(floor, read[root]))
		if err != nil {
			return nil, nil, err
		}
		if c["notification_count"] > 0 || c["highlight_count"] > 0 {
			threads[root] = c
		}
	}
	return main, threads, nil
}

// lazyMemberCache remembers which member events each device was sent
// under lazy_load_members, so that they are not sent again unless the
// client asks for include_redundant_members. It is an optimisation, not
// state: losing it (a restart) only makes the server send redundant
// members, which clients accept.
type lazyMemberCache struct {
	mu      sync.Mutex
	devices map[string]map[string]bool // user|device|room -> member event IDs
}

const lazyCacheMaxKeys = 100_000

func (c *lazyMemberCache) k(sess *session, roomID string) string {
	return sess.UserID + "|" + sess.DeviceID + "|" + roomID
}

func (c *lazyMemberCache) sent(sess *session, roomID, eventID string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.devices[c.k(sess, roomID)][eventID]
}

func (c *lazyMemberCache) remember(sess *session, roomID, eventID string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.devices == nil || len(c.devices) > lazyCacheMaxKeys {
		c.devices = map[string]map[string]bool{} // crude bound: start over
	}
	k := c.k(sess, roomID)
	if c.devices[k] == nil {
		c.devices[k] = map[string]bool{}
	}
	c.devices[k][eventID] = true
}

func (c *lazyMemberCache) forget(sess *session, roomID string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.devices, c.k(sess, roomID))
}
