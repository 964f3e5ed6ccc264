package appservice

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/rs/zerolog"

	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
)

// Transaction limits: entries scanned per log read, and events per
// transaction (Synapse sends at most 100).
const (
	scanBatch = 500
	MaxEvents = 100
)

// Event is a room event as an appservice would receive it, with what
// interest is decided on.
type Event struct {
	Offset   uint64
	RoomID   string
	Sender   string
	Type     string
	StateKey *string
	// Client is the event in the client-server format.
	Client map[string]any
}

// Rooms answers what interest needs to know about a room.
type Rooms interface {
	JoinedMembers(roomID string) ([]string, error)
	Aliases(roomID string) ([]string, error)
}

// Config wires one appservice's deliverer.
type Config struct {
	Registration *Registration
	ServerName   string
	Log          englog.Log
	// Cursor is the recorded position (projections/appservice); ok is
	// false before the first one.
	Cursor func() (through uint64, ok bool, err error)
	// Events turns log entries into events; entries that are not room
	// events (or are rejected) are left out.
	Events func(entries []englog.Entry) ([]Event, error)
	Rooms  Rooms
	// Record appends the acknowledgement (KindAppserviceDelivered).
	Record func(ctx context.Context, f facts.AppserviceDelivered) error
	// Leader says whether this node delivers; nil means always.
	Leader func() bool
	Client *http.Client
	Logger zerolog.Logger
	// Backoff between failed attempts: MinRetry doubling to MaxRetry.
	MinRetry, MaxRetry time.Duration
}

// Deliverer pushes one appservice its transactions, in log order, one at
// a time; the recorded cursor makes delivery resume where it stopped.
type Deliverer struct {
	cfg Config
}

// NewDeliverer checks the config.
func NewDeliverer(cfg Config) (*Deliverer, error) {
	if cfg.Registration == nil || cfg.Log == nil || cfg.Cursor == nil || cfg.Events == nil || cfg.Rooms == nil || cfg.Record == nil {
		return nil, errors.New("appservice: Registration, Log, Cursor, Events, Rooms and Record are required")
	}
	if cfg.Client == nil {
		cfg.Client = &http.Client{Timeout: 30 * time.Second}
	}
	if cfg.MinRetry <= 0 {
		cfg.MinRetry = 2 * time.Second
	}
	if cfg.MaxRetry < cfg.MinRetry {
		cfg.MaxRetry = max(cfg.MinRetry, 5*time.Minute)
	}
	cfg.Logger = cfg.Logger.With().Str("appservice", cfg.Registration.ID).Logger()
	return &Deliverer{cfg: cfg}, nil
}

func (d *Deliverer) leader() bool { return d.cfg.Leader == nil || d.cfg.Leader() }

// Run delivers until ctx ends.
func (d *Deliverer) Run(ctx context.Context) {
	for ctx.Err() == nil {
		if !d.leader() {
			sleep(ctx, time.Second)
			continue
		}
		if err := d.lead(ctx); err != nil && ctx.Err() == nil {
			d.cfg.Logger.Error().Err(err).Msg("appservice delivery stopped; retrying in 5s (check the log above for the cause)")
			sleep(ctx, 5*time.Second)
		}
	}
}

// lead delivers while this node is the leader.
func (d *Deliverer) lead(ctx context.Context) error {
	pos, ok, err := d.cfg.Cursor()
	if err != nil {
		return fmt.Errorf("read the delivery cursor: %w", err)
	}
	if !ok {
		// A new appservice starts with what happens from now on, not
		// with the whole history of the server.
		pos = d.cfg.Log.LastOffset()
		if err := d.cfg.Record(ctx, facts.AppserviceDelivered{ID: d.cfg.Registration.ID, Through: pos}); err != nil {
			return fmt.Errorf("record the starting cursor: %w", err)
		}
	}
	for ctx.Err() == nil && d.leader() {
		wctx, cancel := context.WithTimeout(ctx, 2*time.Second) // re-check leadership now and then
		err := d.cfg.Log.Wait(wctx, pos)
		cancel()
		if err != nil && ctx.Err() != nil {
			return nil
		}
		if d.cfg.Log.LastOffset() <= pos {
			continue
		}
		txn, through, err := d.next(pos)
		if err != nil {
			return err
		}
		if len(txn) == 0 {
			pos = through
			continue
		}
		txnID := strconv.FormatUint(pos+1, 10) + "-" + strconv.FormatUint(through, 10)
		if err := d.push(ctx, txnID, txn); err != nil {
			return nil // ctx ended or leadership lost
		}
		if err := d.cfg.Record(ctx, facts.AppserviceDelivered{ID: d.cfg.Registration.ID, TxnID: txnID, Through: through, Events: len(txn)}); err != nil {
			return fmt.Errorf("record transaction %s: %w", txnID, err)
		}
		pos = through
	}
	return nil
}

// next builds the transaction after pos: the interesting events among the
// next entries, at most MaxEvents, and the offset they cover through.
func (d *Deliverer) next(pos uint64) ([]map[string]any, uint64, error) {
	entries, err := d.cfg.Log.Read(pos+1, scanBatch)
	if err != nil {
		return nil, pos, fmt.Errorf("read the log after %d: %w", pos, err)
	}
	if len(entries) == 0 {
		return nil, pos, nil
	}
	through := entries[len(entries)-1].Offset
	evs, err := d.cfg.Events(entries)
	if err != nil {
		return nil, pos, err
	}
	interest := map[string]bool{} // room -> interested through its members or aliases
	var txn []map[string]any
	for _, ev := range evs {
		ok, err := d.interested(ev, interest)
		if err != nil {
			return nil, pos, err
		}
		if !ok {
			continue
		}
		if len(txn) == MaxEvents {
			through = ev.Offset - 1
			break
		}
		txn = append(txn, ev.Client)
	}
	return txn, through, nil
}

// interested applies the spec's rules: the sender or the target is one of
// its users, or the room is in its rooms or aliases namespaces, or one of
// its users is joined to the room.
func (d *Deliverer) interested(ev Event, rooms map[string]bool) (bool, error) {
	reg := d.cfg.Registration
	if d.local(ev.Sender) && reg.OwnsUser(ev.Sender) {
		return true, nil
	}
	if ev.Type == "m.room.member" && ev.StateKey != nil && d.local(*ev.StateKey) && reg.OwnsUser(*ev.StateKey) {
		return true, nil
	}
	if reg.InterestedInRoom(ev.RoomID) {
		return true, nil
	}
	if v, ok := rooms[ev.RoomID]; ok {
		return v, nil
	}
	v, err := d.roomInterest(ev.RoomID)
	if err != nil {
		return false, err
	}
	rooms[ev.RoomID] = v
	return v, nil
}

func (d *Deliverer) roomInterest(roomID string) (bool, error) {
	reg := d.cfg.Registration
	aliases, err := d.cfg.Rooms.Aliases(roomID)
	if err != nil {
		return false, fmt.Errorf("read the aliases of %s: %w", roomID, err)
	}
	for _, a := range aliases {
		if reg.InterestedInAlias(a) {
			return true, nil
		}
	}
	members, err := d.cfg.Rooms.JoinedMembers(roomID)
	if err != nil {
		return false, fmt.Errorf("read the members of %s: %w", roomID, err)
	}
	for _, m := range members {
		if d.local(m) && reg.OwnsUser(m) {
			return true, nil
		}
	}
	return false, nil
}

// local: user namespaces only cover this server's users (spec note).
func (d *Deliverer) local(userID string) bool {
	return strings.HasSuffix(userID, ":"+d.cfg.ServerName)
}

// push sends one transaction until the appservice acknowledges it,
// backing off exponentially; the same events under the same ID on every
// retry (spec: "MUST NOT alter ... on retries").
func (d *Deliverer) push(ctx context.Context, txnID string, events []map[string]any) error {
	body, err := json.Marshal(map[string]any{"events": events})
	if err != nil {
		return err
	}
	wait := d.cfg.MinRetry
	for attempt := 1; ; attempt++ {
		start := time.Now()
		err := d.put(ctx, txnID, body)
		if err == nil {
			d.cfg.Logger.Info().Str("txn_id", txnID).Int("events", len(events)).Int64("latency_ms", time.Since(start).Milliseconds()).Msg("appservice transaction delivered")
			return nil
		}
		if ctx.Err() != nil || !d.leader() {
			return errors.New("stopped")
		}
		d.cfg.Logger.Warn().Err(err).Str("txn_id", txnID).Int("attempt", attempt).Dur("retry_in", wait).
			Msg("appservice did not take the transaction; is it running at its registration's url?")
		sleep(ctx, wait)
		wait = min(wait*2, d.cfg.MaxRetry)
	}
}

// put PUTs the transaction, falling back to the legacy path (spec:
// "Legacy routes") when the appservice does not know the v1 one.
func (d *Deliverer) put(ctx context.Context, txnID string, body []byte) error {
	base := strings.TrimSuffix(*d.cfg.Registration.URL, "/")
	status, resp, err := d.do(ctx, http.MethodPut, base+"/_matrix/app/v1/transactions/"+url.PathEscape(txnID), body)
	if err == nil && (status == http.StatusNotFound || status == http.StatusMethodNotAllowed) {
		status, resp, err = d.do(ctx, http.MethodPut, base+"/transactions/"+url.PathEscape(txnID)+"?access_token="+url.QueryEscape(d.cfg.Registration.HSToken), body)
	}
	if err != nil {
		return err
	}
	if status/100 != 2 {
		return fmt.Errorf("HTTP %d: %s", status, truncate(resp, 200))
	}
	return nil
}

func (d *Deliverer) do(ctx context.Context, method, u string, body []byte) (int, []byte, error) {
	return request(ctx, d.cfg.Client, d.cfg.Registration.HSToken, method, u, body)
}

func request(ctx context.Context, c *http.Client, hsToken, method, u string, body []byte) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, method, u, bytes.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Authorization", "Bearer "+hsToken)
	req.Header.Set("Content-Type", "application/json")
	res, err := c.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer res.Body.Close()
	b, err := io.ReadAll(io.LimitReader(res.Body, 64<<10))
	return res.StatusCode, b, err
}

func truncate(b []byte, n int) string {
	if len(b) > n {
		return string(b[:n]) + "..."
	}
	return string(b)
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
