// Package gateway delivers notifications to push gateways (spec: Push
// Gateway API, POST /_matrix/push/v1/notify). What to send is decided by
// the fold (projections/notifications: a user's notifications, and how far
// each pusher has been sent); this package only sends, after the fact and
// off the write path. Only the log's leader sends. Each pusher is sent its
// notifications in order, one request each; progress is recorded in the
// log (KindPushDelivered), so a restart or a new leader resumes where the
// last one stopped. A gateway that fails is retried with exponential
// backoff; a notification it refused for good (a 4xx) or that could not be
// sent for GiveUpAfter is skipped; a pushkey it reports as rejected is
// removed (KindPusherSet with no pusher).
package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/rs/zerolog"

	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/projections"
	"github.com/engram-hs/engram/projections/notifications"
)

// Details are what the full notification format shows of an event beyond
// the notification record (the API reads them from the rooms projection).
type Details struct {
	Content           json.RawMessage
	SenderDisplayName string
	RoomName          string
	RoomAlias         string
	UserIsTarget      bool
}

// Config wires a sender.
type Config struct {
	Log englog.Log
	// Projection is the notifications projection registered on the engine
	// (Handle is its handle); New hooks its commits to wake the sender, so
	// call New before the engine starts.
	Projection *notifications.Projection
	Handle     *projections.Handle
	// Details returns the event's details for the full format; nil sends
	// only what the notification record holds.
	Details func(userID string, n notifications.Notification) Details
	// Leader says whether this node may send; nil means always.
	Leader func() bool
	Client *http.Client
	// Backoff: the first retry after MinRetry, each next one twice as
	// late, at most MaxRetry apart; a notification still failing after
	// GiveUpAfter is skipped.
	MinRetry    time.Duration
	MaxRetry    time.Duration
	GiveUpAfter time.Duration
	Logger      zerolog.Logger
}

// Sender sends notifications to gateways.
type Sender struct {
	cfg  Config
	wake chan struct{}

	mu      sync.Mutex
	pushers map[string]*state // by user, app ID, pushkey
	cancel  context.CancelFunc
	wg      sync.WaitGroup
}

// state is a pusher's in-memory sending state: backoff lives here, not in
// the log (a new leader retries afresh).
type state struct {
	running  bool
	failures int
	first    time.Time // of the current run of failures
	next     time.Time
}

// New builds a sender; Start runs it.
func New(cfg Config) (*Sender, error) {
	if cfg.Log == nil || cfg.Handle == nil {
		return nil, errors.New("gateway: Log and Handle are required")
	}
	if cfg.Client == nil {
		cfg.Client = &http.Client{Timeout: 30 * time.Second}
	}
	if cfg.MinRetry <= 0 {
		cfg.MinRetry = time.Second
	}
	if cfg.MaxRetry < cfg.MinRetry {
		cfg.MaxRetry = max(cfg.MinRetry, 10*time.Minute)
	}
	if cfg.GiveUpAfter <= 0 {
		cfg.GiveUpAfter = 24 * time.Hour
	}
	s := &Sender{cfg: cfg, wake: make(chan struct{}, 1), pushers: map[string]*state{}}
	if cfg.Projection != nil {
		cfg.Projection.Touched = s.poke
	}
	return s, nil
}

func (s *Sender) poke() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// Start runs the sender until Close.
func (s *Sender) Start() {
	ctx, cancel := context.WithCancel(context.Background())
	s.mu.Lock()
	s.cancel = cancel
	s.mu.Unlock()
	s.wg.Add(1)
	go s.run(ctx)
}

// Close stops sending and waits for requests in flight.
func (s *Sender) Close() {
	s.mu.Lock()
	if s.cancel != nil {
		s.cancel()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

func (s *Sender) run(ctx context.Context) {
	defer s.wg.Done()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		if s.cfg.Leader == nil || s.cfg.Leader() {
			if err := s.scan(ctx); err != nil && ctx.Err() == nil {
				s.cfg.Logger.Error().Err(err).Msg("push: reading pushers failed; retrying in a second")
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-s.wake:
		case <-t.C:
		}
	}
}

func (s *Sender) view() notifications.View { return notifications.NewView(s.cfg.Handle.Reader()) }

func pusherID(p notifications.Pusher) string {
	return p.UserID + "\x00" + p.AppID + "\x00" + p.Pushkey
}

// scan starts a delivery for every HTTP pusher with notifications it has
// not been sent, unless one is running or it is backing off.
func (s *Sender) scan(ctx context.Context) error {
	all, err := s.view().AllPushers()
	if err != nil {
		return err
	}
	now := time.Now()
	for _, p := range all {
		if p.Kind != "http" {
			continue
		}
		pending, err := s.view().NotificationsAfter(p.UserID, p.Sent, 1)
		if err != nil {
			return err
		}
		if len(pending) == 0 {
			continue
		}
		id := pusherID(p)
		s.mu.Lock()
		st := s.pushers[id]
		if st == nil {
			st = &state{}
			s.pushers[id] = st
		}
		start := !st.running && !now.Before(st.next)
		if start {
			st.running = true
		}
		s.mu.Unlock()
		if start {
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				s.deliver(ctx, p, st)
				s.mu.Lock()
				st.running = false
				s.mu.Unlock()
				s.poke() // more may have arrived meanwhile
			}()
		}
	}
	return nil
}

// deliver sends a pusher's pending notifications in order until none is
// left or the gateway fails.
func (s *Sender) deliver(ctx context.Context, p notifications.Pusher, st *state) {
	for ctx.Err() == nil {
		if s.cfg.Leader != nil && !s.cfg.Leader() {
			return
		}
		cur, err := s.view().Pusher(p.UserID, p.AppID, p.Pushkey)
		if err != nil || cur == nil || cur.Kind != "http" {
			return // deleted meanwhile
		}
		pending, err := s.view().NotificationsAfter(cur.UserID, cur.Sent, 20)
		if err != nil || len(pending) == 0 {
			return
		}
		var upTo uint64
		backoff := false
		for _, n := range pending {
			rejected, err := s.send(ctx, *cur, n)
			if err != nil {
				var perm *permanentError
				if !errors.As(err, &perm) {
					s.failed(st, cur, n, err)
					if time.Since(st.first) < s.cfg.GiveUpAfter {
						backoff = true
						break
					}
					s.cfg.Logger.Warn().Str("user", cur.UserID).Str("app_id", cur.AppID).Str("event_id", n.EventID).
						Dur("failing_for", time.Since(st.first)).Msg("push: giving up on a notification the gateway has not taken")
				} else {
					s.cfg.Logger.Warn().Err(err).Str("user", cur.UserID).Str("app_id", cur.AppID).Str("event_id", n.EventID).
						Msg("push: the gateway refused a notification; skipping it")
				}
			}
			s.mu.Lock()
			st.failures, st.next = 0, time.Time{}
			s.mu.Unlock()
			upTo = n.Offset
			if rejected {
				s.append(ctx, facts.MustEncode(englog.KindPusherSet, facts.PusherSet{UserID: cur.UserID, AppID: cur.AppID, Pushkey: cur.Pushkey, Reason: "rejected"}))
				s.cfg.Logger.Info().Str("user", cur.UserID).Str("app_id", cur.AppID).Msg("push: the gateway rejected the pushkey; pusher removed")
				return
			}
		}
		if upTo == 0 {
			return // backing off
		}
		if !s.append(ctx, facts.MustEncode(englog.KindPushDelivered, facts.PushDelivered{UserID: cur.UserID, AppID: cur.AppID, Pushkey: cur.Pushkey, UpTo: upTo})) {
			return
		}
		if backoff {
			return
		}
		// Read our own progress before the next round.
		if err := s.cfg.Handle.WaitApplied(ctx, s.cfg.Log.LastOffset()); err != nil {
			return
		}
	}
}

func (s *Sender) failed(st *state, p *notifications.Pusher, n notifications.Notification, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if st.failures == 0 {
		st.first = time.Now()
	}
	st.failures++
	wait := s.cfg.MinRetry << min(st.failures-1, 30)
	if wait > s.cfg.MaxRetry || wait <= 0 {
		wait = s.cfg.MaxRetry
	}
	st.next = time.Now().Add(wait)
	s.cfg.Logger.Warn().Err(err).Str("user", p.UserID).Str("app_id", p.AppID).Str("event_id", n.EventID).
		Dur("retry_in", wait).Msg("push: the gateway did not take a notification; retrying later")
	go func() {
		time.Sleep(wait)
		s.poke()
	}()
}

func (s *Sender) append(ctx context.Context, p englog.Proposal) bool {
	if _, err := s.cfg.Log.Append(ctx, p); err != nil {
		if !errors.Is(err, englog.ErrNotLeader) && ctx.Err() == nil {
			s.cfg.Logger.Error().Err(err).Msg("push: recording delivery progress failed; the notifications will be sent again")
		}
		return false
	}
	return true
}

type permanentError struct{ status int }

func (e *permanentError) Error() string { return fmt.Sprintf("gateway answered %d", e.status) }

// Body is the request body of POST /_matrix/push/v1/notify.
type Body struct {
	Notification Notification `json:"notification"`
}

// Notification is the spec's Notification object.
type Notification struct {
	EventID           string          `json:"event_id,omitempty"`
	RoomID            string          `json:"room_id,omitempty"`
	Type              string          `json:"type,omitempty"`
	Sender            string          `json:"sender,omitempty"`
	SenderDisplayName string          `json:"sender_display_name,omitempty"`
	RoomName          string          `json:"room_name,omitempty"`
	RoomAlias         string          `json:"room_alias,omitempty"`
	UserIsTarget      bool            `json:"user_is_target,omitempty"`
	Prio              string          `json:"prio"`
	Content           json.RawMessage `json:"content,omitempty"`
	Counts            map[string]int  `json:"counts,omitempty"`
	Devices           []Device        `json:"devices"`
}

// Device is one pusher the notification is for.
type Device struct {
	AppID     string          `json:"app_id"`
	Pushkey   string          `json:"pushkey"`
	PushkeyTS int64           `json:"pushkey_ts"`
	Data      json.RawMessage `json:"data,omitempty"`
	Tweaks    map[string]any  `json:"tweaks,omitempty"`
}

// BuildBody is the notify body for a pusher (spec: the full format, or
// only IDs, counts and priority with data.format "event_id_only").
func BuildBody(p notifications.Pusher, n notifications.Notification, unreadRooms int, d *Details) (Body, error) {
	var data map[string]json.RawMessage
	if len(p.Data) > 0 {
		if err := json.Unmarshal(p.Data, &data); err != nil {
			return Body{}, fmt.Errorf("gateway: pusher data is not an object: %w", err)
		}
	}
	var format string
	_ = json.Unmarshal(data["format"], &format)
	delete(data, "url") // spec: everything but the url is forwarded
	dataJSON, _ := json.Marshal(data)
	prio := "low"
	if n.Type == "m.room.encrypted" || n.Highlight || n.Tweaks["sound"] != nil {
		prio = "high"
	}
	out := Notification{EventID: n.EventID, RoomID: n.RoomID, Prio: prio,
		Devices: []Device{{AppID: p.AppID, Pushkey: p.Pushkey, PushkeyTS: p.TS, Data: dataJSON}}}
	if unreadRooms > 0 {
		out.Counts = map[string]int{"unread": unreadRooms}
	}
	if format == "event_id_only" {
		return Body{out}, nil
	}
	out.Type, out.Sender = n.Type, n.Sender
	out.Devices[0].Tweaks = map[string]any{}
	for k, v := range n.Tweaks {
		out.Devices[0].Tweaks[k] = v
	}
	if d != nil {
		out.Content, out.SenderDisplayName, out.RoomName, out.RoomAlias, out.UserIsTarget = d.Content, d.SenderDisplayName, d.RoomName, d.RoomAlias, d.UserIsTarget
	}
	return Body{out}, nil
}

// send posts one notification; rejected says the gateway rejected the
// pushkey.
func (s *Sender) send(ctx context.Context, p notifications.Pusher, n notifications.Notification) (rejected bool, err error) {
	var data struct {
		URL string `json:"url"`
	}
	if json.Unmarshal(p.Data, &data) != nil || data.URL == "" {
		return false, &permanentError{0}
	}
	unread, err := s.view().UnreadRooms(p.UserID)
	if err != nil {
		return false, err
	}
	var d *Details
	if s.cfg.Details != nil {
		x := s.cfg.Details(p.UserID, n)
		d = &x
	}
	body, err := BuildBody(p, n, unread, d)
	if err != nil {
		return false, &permanentError{0}
	}
	b, _ := json.Marshal(body)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, data.URL, bytes.NewReader(b))
	if err != nil {
		return false, &permanentError{0}
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := s.cfg.Client.Do(req)
	if err != nil {
		return false, err
	}
	defer resp.Body.Close()
	rb, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	switch {
	case resp.StatusCode == http.StatusOK:
	case resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500:
		return false, fmt.Errorf("gateway answered %d", resp.StatusCode)
	default:
		return false, &permanentError{resp.StatusCode}
	}
	var out struct {
		Rejected []string `json:"rejected"`
	}
	_ = json.Unmarshal(rb, &out)
	for _, k := range out.Rejected {
		if k == p.Pushkey {
			return true, nil
		}
	}
	return false, nil
}
