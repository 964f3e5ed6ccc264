// Package redrive re-drives the client-facing inputs recorded in a log
// (registrations, room creations, joins, leaves, invites, sends, state
// changes, redactions, profile changes, typing, receipts, presence:
// who did what, when) against another homeserver through the client API
// only, at the recorded pace, faster, or as fast as it goes.
//
// The server's own consequences of an input are not re-driven: the events
// a createRoom produced become one createRoom request, and the member
// events a profile change propagated are left to the target server.
//
// Inputs are ordered per room (and per user for account inputs); rooms
// proceed in parallel, bounded by Concurrency requests in flight.
package redrive

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/engram-hs/engram/bench/mxclient"
	"github.com/engram-hs/engram/bench/report"
	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/stateres"
)

// Options of a redrive.
type Options struct {
	Dir string // the recorded log's data directory (server stopped)
	URL string // the target server's client API
	// Speed multiplies the recorded pace; 0 means as fast as possible.
	Speed float64
	// Concurrency bounds requests in flight (default 16).
	Concurrency int
	// Password for the re-registered accounts; empty registers them
	// without one (no password hashing on the target).
	Password string
	// Prefix is put before every localpart, so that one server can take
	// several redrives of the same log.
	Prefix string
	// MaxEntries stops after this many log entries (0: all).
	MaxEntries int
	Logger     zerolog.Logger
}

// Params lists the options for reports.
func (o Options) Params() map[string]string {
	speed := "max"
	if o.Speed > 0 {
		speed = strconv.FormatFloat(o.Speed, 'g', -1, 64) + "x"
	}
	return map[string]string{"speed": speed, "concurrency": strconv.Itoa(o.Concurrency), "max_entries": strconv.Itoa(o.MaxEntries)}
}

// Result of a redrive.
type Result struct {
	Entries  uint64           // log entries read
	Inputs   map[string]int64 // op -> successful requests
	Errors   map[string]int64 // "op errcode" -> count
	Skipped  map[string]int64 // why entries were not re-driven -> count
	Duration time.Duration
	// InputsPerSec counts successful requests.
	InputsPerSec float64
	SendP50      time.Duration
	SendP99      time.Duration
}

type userCtx struct {
	ready  chan struct{}
	client *mxclient.Client // nil when registration failed
}

type roomCtx struct {
	newID   string // set by the createRoom task of the room's lane
	members map[string]string
	lane    chan func()
}

type createUnit struct {
	roomID     string
	version    string
	creator    string
	create     *stateres.Event
	name       *string
	topic      *string
	joinRule   string
	invites    []string
	isDirect   bool
	sawInvite  bool
	adminInvit bool
	alias      string
	public     bool
	members    map[string]string
}

type driver struct {
	opts Options
	ctx  context.Context

	users map[string]*userCtx
	rooms map[string]*roomCtx
	ulane []chan func()
	wg    sync.WaitGroup
	sem   chan struct{}
	ids   sync.Map // old event ID -> new event ID

	mu       sync.Mutex
	inputs   map[string]int64
	errs     map[string]int64
	skipped  map[string]int64
	sendLat  []time.Duration
	firstErr atomic.Value
}

// Run re-drives the log in opts.Dir against opts.URL and records its
// figures in rec (may be nil).
func Run(ctx context.Context, opts Options, rec *report.Recorder) (*Result, error) {
	if opts.URL == "" || opts.Dir == "" {
		return nil, errors.New("redrive: --log and --url are required")
	}
	if opts.Concurrency <= 0 {
		opts.Concurrency = 16
	}
	node, err := englog.Open(englog.Config{Dir: opts.Dir, Logger: opts.Logger})
	if err != nil {
		return nil, fmt.Errorf("redrive: open the log in %s (is a server running on it?): %w", opts.Dir, err)
	}
	defer node.Close()

	d := &driver{
		opts: opts, ctx: ctx,
		users: map[string]*userCtx{}, rooms: map[string]*roomCtx{},
		sem:    make(chan struct{}, opts.Concurrency),
		inputs: map[string]int64{}, errs: map[string]int64{}, skipped: map[string]int64{},
	}
	hc := mxclient.NewHTTPClient()
	for range 16 {
		ch := make(chan func(), 256)
		d.ulane = append(d.ulane, ch)
		d.startLane(ch)
	}

	start := time.Now()
	var t0 int64
	var pending *createUnit
	res := &Result{}
	for from := uint64(1); ; {
		es, err := node.Read(from, 512)
		if err != nil {
			return nil, err
		}
		if len(es) == 0 {
			break
		}
		for _, e := range es {
			if opts.MaxEntries > 0 && res.Entries >= uint64(opts.MaxEntries) {
				break
			}
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			res.Entries++
			if t0 == 0 {
				t0 = e.Time
			}
			if opts.Speed > 0 {
				at := start.Add(time.Duration(float64(e.Time-t0) * float64(time.Millisecond) / opts.Speed))
				if w := time.Until(at); w > 0 {
					select {
					case <-ctx.Done():
						return nil, ctx.Err()
					case <-time.After(w):
					}
				}
			}
			if pending != nil && !d.belongs(pending, e) {
				d.dispatchCreate(pending)
				pending = nil
			}
			if pending != nil {
				continue
			}
			pending = d.entry(e, hc)
		}
		from = es[len(es)-1].Offset + 1
		if opts.MaxEntries > 0 && res.Entries >= uint64(opts.MaxEntries) {
			break
		}
	}
	if pending != nil {
		d.dispatchCreate(pending)
	}
	for _, ch := range d.ulane {
		close(ch)
	}
	for _, r := range d.rooms {
		close(r.lane)
	}
	d.wg.Wait()
	res.Duration = time.Since(start)
	res.Inputs, res.Errors, res.Skipped = d.inputs, d.errs, d.skipped
	var ok int64
	for _, n := range d.inputs {
		ok += n
	}
	res.InputsPerSec = float64(ok) / res.Duration.Seconds()
	res.SendP50 = report.Percentile(d.sendLat, 50)
	res.SendP99 = report.Percentile(d.sendLat, 99)
	if rec != nil {
		rec.SetParam("entries", strconv.FormatUint(res.Entries, 10))
		rec.Add("entries", float64(res.Entries), "entries", "")
		rec.Add("inputs_per_s", res.InputsPerSec, "requests/s", report.HigherIsBetter)
		rec.Add("seconds", res.Duration.Seconds(), "s", report.LowerIsBetter)
		rec.Add("send_latency_p50_ms", report.MS(res.SendP50), "ms", report.LowerIsBetter)
		rec.Add("send_latency_p99_ms", report.MS(res.SendP99), "ms", report.LowerIsBetter)
		var nerr int64
		for _, n := range res.Errors {
			nerr += n
		}
		rec.Add("errors", float64(nerr), "errors", report.LowerIsBetter)
		for _, op := range sortedKeys(res.Inputs) {
			rec.Add("inputs."+op, float64(res.Inputs[op]), "requests", "")
		}
		for _, k := range sortedKeys(res.Errors) {
			rec.Add("errors."+strings.ReplaceAll(k, " ", "."), float64(res.Errors[k]), "errors", report.LowerIsBetter)
		}
	}
	return res, nil
}

func sortedKeys(m map[string]int64) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

func (d *driver) startLane(ch chan func()) {
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		for task := range ch {
			task()
		}
	}()
}

func (d *driver) skip(why string) {
	d.mu.Lock()
	d.skipped[why]++
	d.mu.Unlock()
}

// do runs one request under the concurrency bound and counts it.
func (d *driver) do(op string, fn func(ctx context.Context) error) bool {
	d.sem <- struct{}{}
	t0 := time.Now()
	err := fn(d.ctx)
	lat := time.Since(t0)
	<-d.sem
	d.mu.Lock()
	defer d.mu.Unlock()
	if err != nil {
		d.errs[op+" "+mxclient.Errcode(err)]++
		if d.firstErr.Load() == nil {
			d.firstErr.Store(err)
			d.opts.Logger.Warn().Err(err).Str("op", op).Msg("redrive: first failed request")
		}
		return false
	}
	d.inputs[op]++
	if op == "send" {
		d.sendLat = append(d.sendLat, lat)
	}
	return true
}

func (d *driver) userLane(userID string) chan func() {
	h := fnv.New32a()
	h.Write([]byte(userID))
	return d.ulane[h.Sum32()%uint32(len(d.ulane))]
}

// client waits for the user's registration; nil when it failed or the
// user was never registered in the log (a remote user). Lanes call it
// with the userCtx the dispatcher looked up: the maps are the
// dispatcher's alone.
func (d *driver) client(u *userCtx) *mxclient.Client {
	if u == nil {
		return nil
	}
	select {
	case <-u.ready:
	case <-d.ctx.Done():
		return nil
	}
	return u.client
}

func (d *driver) room(oldID string) *roomCtx {
	r := d.rooms[oldID]
	if r == nil {
		r = &roomCtx{members: map[string]string{}, lane: make(chan func(), 256)}
		d.rooms[oldID] = r
		d.startLane(r.lane)
	}
	return r
}

// newUserID maps a recorded user to the target server's user.
func (d *driver) newUserID(u *userCtx, old string) string {
	if u != nil {
		select {
		case <-u.ready:
			if u.client != nil {
				return u.client.UserID
			}
		case <-d.ctx.Done():
		}
	}
	return old
}

func localpart(userID string) string {
	s := strings.TrimPrefix(userID, "@")
	if i := strings.IndexByte(s, ':'); i >= 0 {
		s = s[:i]
	}
	return s
}

func (d *driver) mapEvent(old string) (string, bool) {
	v, ok := d.ids.Load(old)
	if !ok {
		return "", false
	}
	return v.(string), true
}

// entry turns one log entry into a request (or a pending createRoom).
func (d *driver) entry(e englog.Entry, hc *http.Client) *createUnit {
	switch e.Kind {
	case englog.KindAccountRegistered:
		var f facts.AccountRegistered
		if facts.Decode(e, &f) != nil || f.Guest {
			d.skip("guest or undecodable account")
			return nil
		}
		u := &userCtx{ready: make(chan struct{})}
		d.users[f.UserID] = u
		d.userLane(f.UserID) <- func() {
			defer close(u.ready)
			c := mxclient.New(d.opts.URL, hc)
			if d.do("register", func(ctx context.Context) error {
				return c.Register(ctx, d.opts.Prefix+localpart(f.UserID), d.opts.Password)
			}) {
				u.client = c
			}
		}
	case englog.KindProfileSet:
		var f facts.ProfileSet
		if facts.Decode(e, &f) != nil || f.DisplayName == nil {
			d.skip("profile change without display name")
			return nil
		}
		uc := d.users[f.UserID]
		d.userLane(f.UserID) <- func() {
			if c := d.client(uc); c != nil {
				d.do("displayname", func(ctx context.Context) error { return c.SetDisplayName(ctx, *f.DisplayName) })
			}
		}
	case englog.KindEDU:
		d.edu(e)
	case englog.KindPDU:
		return d.pdu(e)
	case englog.KindAliasSet, englog.KindRoomVisibilitySet:
		d.skip(e.Kind.String() + " outside createRoom")
	default:
		d.skip(e.Kind.String())
	}
	return nil
}

func (d *driver) edu(e englog.Entry) {
	var f facts.EDU
	if facts.Decode(e, &f) != nil {
		d.skip("undecodable edu")
		return
	}
	switch f.Type {
	case facts.EDUTyping:
		var c facts.TypingContent
		if json.Unmarshal(f.Content, &c) != nil {
			return
		}
		timeout := max(c.ExpiresAt-e.Time, 1000)
		r, uc := d.room(c.RoomID), d.users[c.UserID]
		r.lane <- func() {
			cl := d.client(uc)
			if r.newID == "" || cl == nil {
				d.skip("typing in a room or by a user that failed")
				return
			}
			d.do("typing", func(ctx context.Context) error { return cl.Typing(ctx, r.newID, c.Typing, timeout) })
		}
	case facts.EDUReceipt:
		var c facts.ReceiptContent
		if json.Unmarshal(f.Content, &c) != nil {
			return
		}
		r, uc := d.room(c.RoomID), d.users[c.UserID]
		r.lane <- func() {
			cl := d.client(uc)
			id, ok := d.mapEvent(c.EventID)
			if r.newID == "" || cl == nil || !ok {
				d.skip("receipt on an event that was not re-driven")
				return
			}
			d.do("receipt", func(ctx context.Context) error { return cl.Receipt(ctx, r.newID, c.ReceiptType, id) })
		}
	case facts.EDUPresence:
		var c facts.PresenceContent
		if json.Unmarshal(f.Content, &c) != nil {
			return
		}
		uc := d.users[c.UserID]
		d.userLane(c.UserID) <- func() {
			if cl := d.client(uc); cl != nil {
				d.do("presence", func(ctx context.Context) error { return cl.SetPresence(ctx, c.Presence) })
			}
		}
	default:
		d.skip("edu " + f.Type)
	}
}

func (d *driver) pdu(e englog.Entry) *createUnit {
	var f facts.PDU
	if facts.Decode(e, &f) != nil || f.Rejected != "" || f.Outlier || f.SoftFailed {
		d.skip("rejected, outlier or undecodable pdu")
		return nil
	}
	v, ok := stateres.Version(f.RoomVersion)
	if !ok {
		d.skip("pdu of an unknown room version")
		return nil
	}
	ev, err := stateres.ParseEvent(v, f.Event)
	if err != nil {
		d.skip("unparsable pdu")
		return nil
	}
	if d.users[ev.Sender()] == nil {
		d.skip("pdu from a user not registered in the log")
		return nil
	}
	sk := ev.StateKey()
	if ev.Type() == stateres.MRoomCreate && sk != nil && *sk == "" {
		return &createUnit{roomID: ev.RoomID(), version: v.ID, creator: ev.Sender(), create: ev, members: map[string]string{}}
	}
	r := d.room(ev.RoomID())
	uc := d.users[ev.Sender()]
	switch {
	case ev.Type() == stateres.MRoomMember && sk != nil:
		d.member(r, ev, *sk)
	case ev.Type() == stateres.MRoomRedaction:
		target := ev.Redacts()
		txn := "r" + strconv.FormatUint(e.Offset, 10)
		r.lane <- func() {
			cl := d.client(uc)
			id, ok := d.mapEvent(target)
			if r.newID == "" || cl == nil || !ok {
				d.skip("redaction of an event that was not re-driven")
				return
			}
			d.do("redact", func(ctx context.Context) error {
				nid, err := cl.Redact(ctx, r.newID, id, txn)
				if err == nil {
					d.ids.Store(ev.EventID(), nid)
				}
				return err
			})
		}
	case sk != nil:
		typ, key, content := ev.Type(), *sk, json.RawMessage(ev.Content())
		r.lane <- func() {
			cl := d.client(uc)
			if r.newID == "" || cl == nil {
				d.skip("state in a room or by a user that failed")
				return
			}
			d.do("state", func(ctx context.Context) error {
				nid, err := cl.SetState(ctx, r.newID, typ, key, content)
				if err == nil {
					d.ids.Store(ev.EventID(), nid)
				}
				return err
			})
		}
	default:
		txn := "r" + strconv.FormatUint(e.Offset, 10)
		if f.Txn != nil {
			txn = f.Txn.TxnID
		}
		typ, content := ev.Type(), ev.Content()
		r.lane <- func() {
			cl := d.client(uc)
			if r.newID == "" || cl == nil {
				d.skip("send in a room or by a user that failed")
				return
			}
			body := d.rewriteRelations(content)
			d.do("send", func(ctx context.Context) error {
				nid, err := cl.Send(ctx, r.newID, typ, txn, body)
				if err == nil {
					d.ids.Store(ev.EventID(), nid)
				}
				return err
			})
		}
	}
	return nil
}

// rewriteRelations points m.relates_to at the re-driven events.
func (d *driver) rewriteRelations(content []byte) json.RawMessage {
	var c map[string]any
	if json.Unmarshal(content, &c) != nil {
		return content
	}
	if rel, ok := c["m.relates_to"].(map[string]any); ok {
		if old, ok := rel["event_id"].(string); ok {
			if id, ok := d.mapEvent(old); ok {
				rel["event_id"] = id
			}
		}
	}
	b, _ := json.Marshal(c)
	return b
}

// member re-drives a membership change as the request that causes it.
func (d *driver) member(r *roomCtx, ev *stateres.Event, target string) {
	var c struct {
		Membership string `json:"membership"`
	}
	_ = json.Unmarshal(ev.Content(), &c)
	uc, tu := d.users[ev.Sender()], d.users[target]
	sender := ev.Sender()
	before := r.members[target]
	r.members[target] = c.Membership
	var op, action string
	switch {
	case c.Membership == "join" && sender == target:
		if before == "join" {
			d.skip("member event after a profile change (the target server sends its own)")
			return
		}
		op = "join"
	case c.Membership == "invite":
		op, action = "invite", "invite"
	case c.Membership == "leave" && sender == target:
		op, action = "leave", "leave"
	case c.Membership == "leave" && before == "ban":
		op, action = "unban", "unban"
	case c.Membership == "leave":
		op, action = "kick", "kick"
	case c.Membership == "ban":
		op, action = "ban", "ban"
	default:
		d.skip("membership " + c.Membership)
		return
	}
	r.lane <- func() {
		cl := d.client(uc)
		if r.newID == "" || cl == nil {
			d.skip("membership in a room or by a user that failed")
			return
		}
		switch op {
		case "join":
			d.do("join", func(ctx context.Context) error { return cl.Join(ctx, r.newID) })
		case "leave":
			d.do("leave", func(ctx context.Context) error { return cl.Membership(ctx, r.newID, "leave", "") })
		default:
			t := d.newUserID(tu, target)
			d.do(op, func(ctx context.Context) error { return cl.Membership(ctx, r.newID, action, t) })
		}
	}
}

// belongs says whether e is part of the createRoom request whose create
// event opened u: the events the API's createRoom writes after it, in its
// order, all from the creator, then its directory entries.
func (d *driver) belongs(u *createUnit, e englog.Entry) bool {
	switch e.Kind {
	case englog.KindAliasSet:
		var f facts.AliasSet
		if facts.Decode(e, &f) == nil && f.RoomID == u.roomID && u.alias == "" {
			u.alias = f.Alias
			return true
		}
		return false
	case englog.KindRoomVisibilitySet:
		var f facts.RoomVisibilitySet
		if facts.Decode(e, &f) == nil && f.RoomID == u.roomID {
			u.public = f.Visibility == "public"
			return true
		}
		return false
	case englog.KindPDU:
	default:
		return false
	}
	var f facts.PDU
	if facts.Decode(e, &f) != nil {
		return false
	}
	v, ok := stateres.Version(f.RoomVersion)
	if !ok {
		return false
	}
	ev, err := stateres.ParseEvent(v, f.Event)
	if err != nil || ev.RoomID() != u.roomID || ev.Sender() != u.creator || ev.StateKey() == nil {
		return false
	}
	sk := *ev.StateKey()
	var c map[string]any
	_ = json.Unmarshal(ev.Content(), &c)
	if u.sawInvite && ev.Type() != stateres.MRoomMember {
		return false
	}
	switch ev.Type() {
	case stateres.MRoomMember:
		m, _ := c["membership"].(string)
		if sk == u.creator && m == "join" && u.members[sk] == "" {
			u.members[sk] = "join"
			return true
		}
		if m == "invite" && sk != u.creator && u.members[sk] == "" {
			u.members[sk] = "invite"
			u.sawInvite = true
			u.invites = append(u.invites, sk)
			if dir, _ := c["is_direct"].(bool); dir {
				u.isDirect = true
			}
			return true
		}
		return false
	case stateres.MRoomPowerLevels:
		if users, ok := c["users"].(map[string]any); ok {
			for id, lvl := range users {
				if n, _ := lvl.(float64); n >= 100 && id != u.creator {
					u.adminInvit = true
				}
			}
		}
		return sk == ""
	case stateres.MRoomJoinRules:
		u.joinRule, _ = c["join_rule"].(string)
		return sk == ""
	case "m.room.name":
		if s, ok := c["name"].(string); ok && u.name == nil && !u.sawInvite {
			u.name = &s
			return sk == ""
		}
		return false
	case "m.room.topic":
		if s, ok := c["topic"].(string); ok && u.topic == nil && !u.sawInvite {
			u.topic = &s
			return sk == ""
		}
		return false
	case stateres.MRoomHistoryVisibility, "m.room.guest_access", "m.room.canonical_alias":
		return sk == ""
	}
	return false
}

// dispatchCreate sends the createRoom request a unit stands for.
func (d *driver) dispatchCreate(u *createUnit) {
	r := d.room(u.roomID)
	for k, v := range u.members {
		r.members[k] = v
	}
	preset := "private_chat"
	switch {
	case u.joinRule == "public":
		preset = "public_chat"
	case u.adminInvit:
		preset = "trusted_private_chat"
	}
	uc := d.users[u.creator]
	invited := make([]*userCtx, len(u.invites))
	for i, old := range u.invites {
		invited[i] = d.users[old]
	}
	r.lane <- func() {
		cl := d.client(uc)
		if cl == nil {
			d.skip("room whose creator failed to register")
			return
		}
		req := map[string]any{"preset": preset, "room_version": u.version}
		if u.name != nil {
			req["name"] = *u.name
		}
		if u.topic != nil {
			req["topic"] = *u.topic
		}
		if u.public {
			req["visibility"] = "public"
		}
		if u.alias != "" {
			req["room_alias_name"] = d.opts.Prefix + strings.TrimPrefix(strings.SplitN(u.alias, ":", 2)[0], "#")
		}
		if len(u.invites) > 0 {
			inv := make([]string, 0, len(u.invites))
			for i, old := range u.invites {
				inv = append(inv, d.newUserID(invited[i], old))
			}
			req["invite"] = inv
			req["is_direct"] = u.isDirect
		}
		d.do("create_room", func(ctx context.Context) error {
			id, err := cl.CreateRoom(ctx, req)
			if err == nil {
				r.newID = id
				d.ids.Store(u.create.EventID(), id)
			}
			return err
		})
	}
}
