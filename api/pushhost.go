package api

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	apipush "github.com/engram-hs/engram/api/push"
	"github.com/engram-hs/engram/projections/notifications"
	"github.com/engram-hs/engram/push/gateway"
	"github.com/engram-hs/engram/stateres"
)

// Pushers, notifications and unread counts are api/push's and the
// notifications projection's; push gateway delivery is push/gateway's.
// This file wires them to the rest of the API.

type pushHost struct{ host }

func (h pushHost) ClientEvent(userID, deviceID, eventID string) (map[string]any, error) {
	s := h.s
	v := s.roomsView()
	e, err := v.Event(eventID)
	if err != nil || e == nil {
		return nil, err
	}
	upper, vis, err := s.readAccess(e.RoomID, userID)
	if err != nil {
		var me *matrixError
		if errors.As(err, &me) {
			return nil, nil
		}
		return nil, err
	}
	if !visibleIn(e, e.RoomID, upper, vis) {
		return nil, nil
	}
	return s.clientEvent(v, e, &session{UserID: userID, DeviceID: deviceID}, true), nil
}

func (h pushHost) CatchUp(ctx context.Context) error {
	off := h.s.log.LastOffset()
	if err := h.s.notificationsH.WaitApplied(ctx, off); err != nil {
		return err
	}
	return h.s.roomsH.WaitApplied(ctx, off)
}

// mountPush registers the notifications projection, the pusher and
// notification endpoints and the gateway sender (started by
// StartPushDelivery).
func (s *Server) mountPush(deps Deps) error {
	p := notifications.New(s.cfg.ServerName)
	s.notificationsH = deps.Engine.Register(p)
	apipush.New(pushHost{host{s}}, s.notificationsH)
	var leader func() bool
	if l, ok := deps.Log.(interface{ IsLeader() bool }); ok {
		leader = l.IsLeader
	}
	g, err := gateway.New(gateway.Config{Log: deps.Log, Projection: p, Handle: s.notificationsH, Leader: leader,
		Details: s.pushDetails, Logger: s.logger.With().Str("component", "push").Logger(),
		MinRetry: s.cfg.PushRetryMin})
	if err != nil {
		return err
	}
	s.pushSender = g
	return nil
}

// StartPushDelivery runs push gateway delivery until Close; the binary
// calls it once the projections caught up.
func (s *Server) StartPushDelivery() {
	s.pushSender.Start()
	go func() {
		<-s.closed
		s.pushSender.Close()
	}()
}

func (s *Server) notificationsView() notifications.View {
	return notifications.NewView(s.notificationsH.Reader())
}

// pushDetails are what the full notify format shows beyond the record.
func (s *Server) pushDetails(userID string, n notifications.Notification) gateway.Details {
	// The notifications projection may fold an event before the rooms
	// projection does: wait (briefly) for the event to be readable.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	_ = s.roomsH.WaitApplied(ctx, n.Offset)
	cancel()
	v := s.roomsView()
	var d gateway.Details
	if e, err := v.Event(n.EventID); err == nil && e != nil {
		h := headOf(e)
		d.Content = h.Content
		if h.StateKey != nil && *h.StateKey == userID {
			d.UserIsTarget = true
		}
	}
	str := func(typ, key, field string) string {
		e, err := v.StateEvent(n.RoomID, typ, key)
		if err != nil || e == nil {
			return ""
		}
		var c map[string]any
		_ = json.Unmarshal(headOf(e).Content, &c)
		x, _ := c[field].(string)
		return x
	}
	d.RoomName = str("m.room.name", "", "name")
	d.RoomAlias = str("m.room.canonical_alias", "", "alias")
	d.SenderDisplayName = str(stateres.MRoomMember, n.Sender, "displayname")
	return d
}
