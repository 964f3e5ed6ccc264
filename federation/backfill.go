package federation

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"time"

	"github.com/engram-hs/engram/federation/transport"
	"github.com/engram-hs/engram/projections/rooms"
)

// backfillLimit is how many events one /backfill request asks for.
const backfillLimit = 100

// gapRetry is how long a gap that could not be filled is left alone
// before a reader's walk makes this server ask the room's servers again.
const gapRetry = time.Minute

// Backfill fills the gap in a room's history before the timeline entry
// gap, whose event names prev_events (missing) this server does not
// hold: it asks the room's other servers in turn (the gap event's sender's
// first) for the history before them with /backfill, and records what
// passes the checks (receive.Receiver.Backfill: decide, then record) just
// before gap. It returns how many events were placed in the timeline; 0
// with no error when no server had any.
func (s *Server) Backfill(ctx context.Context, roomID string, gap rooms.TimelineEntry, missing []string) (int, error) {
	if s.deps.Client == nil || len(missing) == 0 {
		return 0, nil
	}
	s.gapsMu.Lock()
	if t, ok := s.gapsTried[gap.EventID]; ok && s.cfg.Now().Sub(t) < gapRetry {
		s.gapsMu.Unlock()
		return 0, nil
	}
	if s.gapsTried == nil {
		s.gapsTried = map[string]time.Time{}
	}
	s.gapsTried[gap.EventID] = s.cfg.Now()
	s.gapsMu.Unlock()
	n, err := s.backfillFrom(ctx, roomID, gap, missing)
	if n > 0 {
		s.gapsMu.Lock()
		delete(s.gapsTried, gap.EventID)
		s.gapsMu.Unlock()
	}
	return n, err
}

func (s *Server) backfillFrom(ctx context.Context, roomID string, gap rooms.TimelineEntry, missing []string) (int, error) {
	v := s.view()
	first := ""
	if e, err := v.Event(gap.EventID); err == nil && e != nil {
		if p, err := e.PDU(); err == nil {
			first = domainOf(p.Sender())
		}
	}
	servers, err := v.ServersInRoom(roomID, first)
	if err != nil {
		return 0, err
	}
	q := url.Values{"limit": {strconv.Itoa(backfillLimit)}}
	for _, id := range missing {
		q.Add("v", id)
	}
	var errs []error
	for _, server := range servers {
		if server == s.cfg.ServerName {
			continue
		}
		var out struct {
			PDUs []json.RawMessage `json:"pdus"`
		}
		if err := s.deps.Client.DoJSON(ctx, transport.Request{Destination: server, Method: "GET",
			Path: "/_matrix/federation/v1/backfill/" + transport.PathEscape(roomID) + "?" + q.Encode()}, &out); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", server, err))
			continue
		}
		_, placed, err := s.receiver().Backfill(ctx, server, roomID, gap, out.PDUs)
		if err != nil {
			return 0, err
		}
		if placed > 0 {
			s.logger.Info().Str("room_id", roomID).Str("server", server).Int("events", placed).Msg("backfilled room history")
			return placed, nil
		}
	}
	if len(errs) > 0 {
		return 0, fmt.Errorf("backfill of %s: %w", roomID, errors.Join(errs...))
	}
	return 0, nil
}
