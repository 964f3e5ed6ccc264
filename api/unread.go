package api

import (
	"context"
	"sync"
	"time"

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

// unreadCounts is unread_notifications (and, when asked,
// unread_thread_notifications) of one room, from the push rule verdicts
// the notifications projection folded, read up to the user's receipts and
// own events. The sync waited for the projection first
// (waitNotifications).
func (s *Server) unreadCounts(userID, roomID string, withThreads bool) (map[string]uint64, map[string]any, error) {
	main, threads, err := s.notificationsView().Unread(userID, roomID, withThreads)
	if err != nil {
		return nil, nil, err
	}
	out := map[string]uint64{"notification_count": main.Notifications, "highlight_count": main.Highlights}
	if !withThreads || len(threads) == 0 {
		// No thread with unread notifications: the key is left out, as
		// Synapse does (clients read a missing thread as none unread).
		return out, nil, nil
	}
	th := map[string]any{}
	for root, c := range threads {
		th[root] = c
	}
	return out, th, nil
}

// waitNotifications waits, once per sync build and briefly, for the
// notifications projection to fold up to the sync's position, so the
// counts match the events returned. Its fold evaluates push rules for
// every member and may lag the others: late counts beat a failed sync.
// A request that is cancelled (its client went away) stops waiting.
func (s *Server) waitNotifications(ctx context.Context, pos uint64) {
	ctx, cancel := context.WithTimeout(ctx, unreadCatchUp)
	defer cancel()
	_ = s.notificationsH.WaitApplied(ctx, pos)
}

const unreadCatchUp = 2 * time.Second

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
