package federation

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/engram-hs/engram/federation/transport"
	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/projections/e2ee"
)

// Inbound m.device_list_update EDUs keep this server's copy of remote
// users' device lists (projections/e2ee, remote.go). Decide, then record:
// when an update does not follow the copy (its prev_id names an update
// we never saw, or there is no copy yet), the receiver fetches the user's
// whole list from their server (GET user/devices) and records the answer
// before the EDU, so the fold needs no network and a replay folds the
// same copy.

const (
	// resyncTimeout bounds one user/devices fetch: the sending server
	// waits for the transaction's answer meanwhile.
	resyncTimeout = 10 * time.Second
	// maxResyncsPerTxn bounds the fetches one transaction can cause; the
	// others leave the copy stale (queries then ask the user's server)
	// until a later update resyncs it.
	maxResyncsPerTxn = 5
)

// deviceListTxn is what one transaction's device-list EDUs learned so
// far: the stream each user's copy will hold after the entries queued,
// and the users already fetched (or tried).
type deviceListTxn struct {
	held    map[string]uint64
	tried   map[string]bool
	resyncs int
}

func newDeviceListTxn() *deviceListTxn {
	return &deviceListTxn{held: map[string]uint64{}, tried: map[string]bool{}}
}

// resyncFor decides whether an m.device_list_update from origin needs the
// user's whole list first, and returns the fact to record before the EDU
// when it was fetched.
func (s *Server) resyncFor(ctx context.Context, origin string, content json.RawMessage, st *deviceListTxn) (englog.Proposal, bool) {
	if s.deps.E2EE == nil || s.deps.Client == nil || s.deps.Rooms == nil {
		return englog.Proposal{}, false
	}
	u, ok := e2ee.ParseDeviceListUpdate(content)
	if !ok {
		return englog.Proposal{}, false
	}
	held, have := st.held[u.UserID]
	if !have {
		l, err := e2ee.NewView(s.deps.E2EE.Reader()).RemoteList(u.UserID)
		if err != nil {
			s.logger.Warn().Err(err).Str("user", u.UserID).Msg("reading the device list copy failed; fetching it again")
		} else if l != nil && !l.Stale {
			held, have = l.StreamID, true
		}
	}
	if have && u.Follows(held) {
		st.held[u.UserID] = max(held, u.StreamID)
		return englog.Proposal{}, false
	}
	delete(st.held, u.UserID) // the fold marks the copy stale unless a resync comes first
	if st.tried[u.UserID] || st.resyncs >= maxResyncsPerTxn {
		return englog.Proposal{}, false
	}
	st.tried[u.UserID] = true
	if shared, err := s.sharedWithLocalUser(u.UserID); err != nil || !shared {
		// No local user shares a room with them: nobody needs the copy
		// (and their server stops sending updates, so it would rot).
		return englog.Proposal{}, false
	}
	st.resyncs++
	f, err := s.fetchDeviceList(ctx, origin, u.UserID)
	if err != nil {
		s.logger.Warn().Err(err).Str("user", u.UserID).Str("origin", origin).
			Msg("could not fetch the user's device list after a gap in their updates; /keys/query asks their server until the next update resyncs it")
		return englog.Proposal{}, false
	}
	p, err := facts.Encode(englog.KindRemoteDevicesResynced, f)
	if err != nil {
		return englog.Proposal{}, false
	}
	if u.Follows(f.StreamID) {
		st.held[u.UserID] = max(f.StreamID, u.StreamID)
	}
	return p, true
}

// sharedWithLocalUser reports whether a remote user is joined to a room
// a local user is joined to.
func (s *Server) sharedWithLocalUser(user string) (bool, error) {
	rv := s.view()
	ms, err := rv.Memberships(user)
	if err != nil {
		return false, err
	}
	for _, m := range ms {
		if m.Membership != "join" {
			continue
		}
		if here, err := rv.HasJoinedMember(m.RoomID, s.cfg.ServerName); err != nil || here {
			return here, err
		}
	}
	return false, nil
}

// fetchDeviceList is GET /_matrix/federation/v1/user/devices/{userId} on
// the user's server, checked to be about that user.
func (s *Server) fetchDeviceList(ctx context.Context, origin, user string) (facts.RemoteDevicesResynced, error) {
	ctx, cancel := context.WithTimeout(ctx, resyncTimeout)
	defer cancel()
	var out struct {
		UserID      string               `json:"user_id"`
		StreamID    uint64               `json:"stream_id"`
		Devices     []facts.RemoteDevice `json:"devices"`
		Master      json.RawMessage      `json:"master_key"`
		SelfSigning json.RawMessage      `json:"self_signing_key"`
	}
	err := s.deps.Client.DoJSON(ctx, transport.Request{Destination: origin, Method: "GET",
		Path: "/_matrix/federation/v1/user/devices/" + transport.PathEscape(user)}, &out)
	if err != nil {
		return facts.RemoteDevicesResynced{}, err
	}
	if out.UserID != user {
		return facts.RemoteDevicesResynced{}, fmt.Errorf("%s answered user/devices for %s with the devices of %q", origin, user, out.UserID)
	}
	return facts.RemoteDevicesResynced{UserID: user, Origin: origin, StreamID: out.StreamID, Devices: out.Devices,
		Master: out.Master, SelfSigning: out.SelfSigning}, nil
}

// joinerTimeout bounds the device-list fetch done for a send_join: the
// joining server waits for its answer meanwhile.
const joinerTimeout = 5 * time.Second

// trackJoiner fetches and records the device list of a remote user who
// is joining an encrypted room with local users through send_join, when
// this server holds no copy of it and shares no other room with them.
// Their server announces their devices once the join is done (an
// m.device_list_update per device); with the copy already here, those
// updates change nothing and local users are not told of a change a
// second time (the join itself put the user in their
// device_lists.changed). A failed fetch is logged and the join goes on:
// the first update then resyncs the copy.
func (s *Server) trackJoiner(ctx context.Context, origin, user, roomID string) {
	if s.deps.E2EE == nil || s.deps.Client == nil || s.deps.Rooms == nil || s.deps.Log == nil || domainOf(user) != origin {
		return
	}
	if l, err := e2ee.NewView(s.deps.E2EE.Reader()).RemoteList(user); err != nil || (l != nil && !l.Stale) {
		return
	}
	if shared, err := s.sharedWithLocalUser(user); err != nil || shared {
		return // an existing copy's updates already flow (or the first one resyncs)
	}
	// Only an encrypted room needs the joiner's devices (spec: device
	// lists are for end-to-end encryption); elsewhere the fetch would be
	// a request no other homeserver makes, which Complement's federation
	// servers count as a failure.
	if enc, err := s.view().StateEvent(roomID, "m.room.encryption", ""); err != nil || enc == nil {
		return
	}
	if here, err := s.view().HasJoinedMember(roomID, s.cfg.ServerName); err != nil || !here {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, joinerTimeout)
	defer cancel()
	f, err := s.fetchDeviceList(ctx, origin, user)
	if err != nil {
		s.logger.Info().Err(err).Str("user", user).Str("origin", origin).
			Msg("could not fetch a joining user's device list; their first device list update fetches it")
		return
	}
	p, err := facts.Encode(englog.KindRemoteDevicesResynced, f)
	if err != nil {
		return
	}
	offs, err := s.deps.Log.Append(ctx, p)
	if err == nil {
		err = s.deps.E2EE.WaitApplied(ctx, offs[len(offs)-1])
	}
	if err != nil {
		s.logger.Warn().Err(err).Str("user", user).Msg("could not record a joining user's device list; their first device list update fetches it")
	}
}
