package keys

import (
	"context"
	"encoding/json"
	"maps"
	"slices"

	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/projections"
	"github.com/engram-hs/engram/projections/e2ee"
)

// Telling other servers that a local user's devices or cross-signing
// keys changed (server-server API, "Device Management" and "End-to-End
// Encryption"): EDUs queued in the log for the delivery queue
// (federation/queue) to every server that shares a room with the user.

// FederationEDU is the log entry that queues one EDU for the given
// servers (our own name and duplicates left out); ok is false when there
// is no one to send it to.
func FederationEDU(ownServer string, servers []string, eduType string, content any) (englog.Proposal, bool, error) {
	raw, err := json.Marshal(content)
	if err != nil {
		return englog.Proposal{}, false, err
	}
	seen := map[string]bool{ownServer: true, "": true}
	var ds []string
	for _, d := range servers {
		if !seen[d] {
			seen[d] = true
			ds = append(ds, d)
		}
	}
	if len(ds) == 0 {
		return englog.Proposal{}, false, nil
	}
	slices.Sort(ds)
	p, err := facts.Encode(englog.KindFederationOutbound, facts.FederationOutbound{
		Destinations: ds, Items: []facts.OutboundItem{{EDU: &facts.OutboundEDU{Type: eduType, Content: raw}}},
	})
	return p, err == nil, err
}

// sharingServers lists the other servers with a user joined to one of
// user's joined rooms.
func (s *Service) sharingServers(user string) ([]string, error) {
	return s.sharingServersBut(user, "")
}

// sharingServersBut is sharingServers without the room except (when
// not empty).
func (s *Service) sharingServersBut(user, except string) ([]string, error) {
	rv := s.d.Rooms()
	ms, err := rv.Memberships(user)
	if err != nil {
		return nil, err
	}
	servers := map[string]bool{}
	for _, m := range ms {
		if m.Membership != "join" || m.RoomID == except {
			continue
		}
		// JoinedServers reads no membership of this server's users, where
		// reading every member's made a user's join cost O(members of all
		// their rooms): setting up 1,000 users in 20 rooms each was
		// quadratic.
		joined, err := rv.JoinedServers(m.RoomID, s.d.ServerName)
		if err != nil {
			return nil, err
		}
		for _, srv := range joined {
			if srv != "" {
				servers[srv] = true
			}
		}
	}
	return slices.Sorted(maps.Keys(servers)), nil
}

// AnnounceDevices queues an m.device_list_update per device for the
// servers sharing a room with user: the device's keys and display name,
// or deleted. Stream IDs follow the last one sent for the user (the e2ee
// projection records it from the queued entries), each naming the one
// before in prev_id. Failing to queue is logged, not returned: the change
// itself is already recorded, and the next update's prev_id gap makes
// the other servers resync.
func (s *Service) AnnounceDevices(ctx context.Context, user string, devices []string, deleted bool) {
	if err := s.announceDevices(ctx, user, devices, deleted); err != nil {
		s.d.Logger.Warn().Err(err).Str("user", user).Msg("could not queue device list updates for other servers; they will resync on the next one")
	}
}

func (s *Service) announceDevices(ctx context.Context, user string, devices []string, deleted bool) error {
	servers, err := s.sharingServers(user)
	if err != nil || len(servers) == 0 {
		return err
	}
	v := s.view()
	last, err := v.StreamSent(user)
	if err != nil {
		return err
	}
	var rendered map[string]json.RawMessage
	if !deleted {
		// Rendered as other servers see them: the name only when
		// allow_device_name_lookup_over_federation says so.
		rendered, err = v.QueryDevices(user, devices, visibleTo(user, user), func(dev string) (string, error) {
			if !s.d.DeviceNamesOverFederation {
				return "", nil
			}
			d, err := s.d.Accounts().Device(user, dev)
			if err != nil || d == nil {
				return "", err
			}
			return d.DisplayName, nil
		})
		if err != nil {
			return err
		}
	}
	var props []englog.Proposal
	for i, dev := range devices {
		stream := last + 1 + uint64(i)
		c := map[string]any{"user_id": user, "device_id": dev, "stream_id": stream, "prev_id": []uint64{}}
		if stream > 1 {
			c["prev_id"] = []uint64{stream - 1}
		}
		if deleted {
			c["deleted"] = true
		} else {
			if k := rendered[dev]; k != nil {
				c["keys"] = k
			}
			if d, err := s.d.Accounts().Device(user, dev); err != nil {
				return err
			} else if d != nil && d.DisplayName != "" && s.d.DeviceNamesOverFederation {
				c["device_display_name"] = d.DisplayName
			}
		}
		p, ok, err := FederationEDU(s.d.ServerName, servers, e2ee.EDUDeviceListUpdate, c)
		if err != nil {
			return err
		}
		if ok {
			props = append(props, p)
		}
	}
	if len(props) == 0 {
		return nil
	}
	_, err = s.d.Commit(ctx, []*projections.Handle{s.h}, props...)
	return err
}

// AnnounceJoin tells the servers of a room a local user has just joined
// about the user's devices when one of them shares no other room with
// the user (spec, server-server "Device Management": updates are sent
// when a user joins a room with servers not already receiving their
// device list): those servers start tracking from this update, and the
// first one they see names a prev_id they lack, so they resync through
// user/devices. The update goes to every server sharing a room, so the
// stream stays without gaps for those that already track the user; a
// join that brings no new server sends nothing. Failures are logged, as
// for AnnounceDevices.
func (s *Service) AnnounceJoin(ctx context.Context, user, roomID string) {
	err := func() error {
		if !s.local(user) {
			return nil
		}
		// The room's other servers first: a room of this server's users
		// alone (the common case) brings none, and needs no look at the
		// user's other rooms.
		here, err := s.d.Rooms().JoinedServers(roomID, s.d.ServerName)
		if err != nil || len(here) == 0 {
			return err
		}
		before, err := s.sharingServersBut(user, roomID)
		if err != nil {
			return err
		}
		newServer := false
		for _, srv := range here {
			if srv != "" && !slices.Contains(before, srv) {
				newServer = true
				break
			}
		}
		if !newServer {
			return nil
		}
		devs, err := s.d.Accounts().Devices(user)
		if err != nil || len(devs) == 0 {
			return err
		}
		ids := make([]string, len(devs))
		for i, d := range devs {
			ids[i] = d.DeviceID
		}
		slices.Sort(ids)
		if err := s.announceDevices(ctx, user, ids, false); err != nil {
			return err
		}
		// Their cross-signing keys are part of the list they now track.
		if cs, err := s.view().QueryCrossSigning(user, func(signer string) bool { return signer == user }); err == nil && cs.Master != nil {
			s.announceCrossSigning(ctx, user)
		}
		return nil
	}()
	if err != nil {
		s.d.Logger.Warn().Err(err).Str("user", user).Str("room", roomID).Msg("could not queue device list updates for the servers of a joined room; they learn the devices when they next query them")
	}
}

// announceCrossSigning queues an m.signing_key_update with the user's
// master and self-signing keys (the user-signing key stays private).
func (s *Service) announceCrossSigning(ctx context.Context, user string) {
	err := func() error {
		servers, err := s.sharingServers(user)
		if err != nil || len(servers) == 0 {
			return err
		}
		cs, err := s.view().QueryCrossSigning(user, func(signer string) bool { return signer == user })
		if err != nil {
			return err
		}
		c := map[string]any{"user_id": user}
		if cs.Master != nil {
			c["master_key"] = cs.Master
		}
		if cs.SelfSigning != nil {
			c["self_signing_key"] = cs.SelfSigning
		}
		p, ok, err := FederationEDU(s.d.ServerName, servers, e2ee.EDUSigningKeyUpdate, c)
		if err != nil || !ok {
			return err
		}
		_, err = s.d.Commit(ctx, nil, p)
		return err
	}()
	if err != nil {
		s.d.Logger.Warn().Err(err).Str("user", user).Msg("could not queue a signing key update for other servers")
	}
}

// DevicesWithKeys lists which of the devices have identity keys here
// (their removal is news for other servers).
func (s *Service) DevicesWithKeys(user string, devices []string) ([]string, error) {
	v := s.view()
	var out []string
	for _, d := range devices {
		dk, err := v.DeviceKeys(user, d)
		if err != nil {
			return nil, err
		}
		if dk != nil {
			out = append(out, d)
		}
	}
	return out, nil
}
