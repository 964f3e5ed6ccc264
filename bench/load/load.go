// Package load drives any Matrix homeserver through the client-server API
// only: it registers users (m.login.dummy) and logs them in, creates and
// joins rooms, has the senders send messages at a given rate, and has one
// syncing receiver per room measure how long each message takes from the
// start of its PUT to its arrival in the receiver's /sync. Optionally,
// many more users long-poll /sync as clients do (unfiltered) in the same
// rooms, to measure what serving them costs the senders.
package load

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/engram-hs/engram/bench/mxclient"
	"github.com/engram-hs/engram/bench/report"
)

// Options of a load run.
type Options struct {
	URL      string
	Users    int           // senders (default 10)
	Rooms    int           // rooms, each with one receiver (default 2)
	Duration time.Duration // how long senders send (default 10s)
	// Rate is the target sends per second over all senders; 0 sends as
	// fast as each sender's previous send returns.
	Rate float64
	// MaxSends bounds the sends of the run (default 1,000,000).
	MaxSends int
	// PID of the server process, for its RSS (Linux /proc); 0 = unknown.
	PID int
	// DataDir is the server's data directory, when it is on this machine:
	// what it occupies on disk is reported after the run ("" = not).
	DataDir string
	// Prefix of the usernames; default "bench" + a random suffix so that
	// runs against one server do not collide.
	Prefix   string
	Password string // default "engram-bench-load"
	// BodySize is the size of message bodies in bytes (default 64).
	BodySize int
	// Grace is how long receivers may keep syncing after the last send
	// (default 3s).
	Grace time.Duration
	// SetupConcurrency bounds concurrent registrations (default 8).
	SetupConcurrency int
	// Syncers are extra users who long-poll /sync during the run, each
	// joined to SyncerRooms rooms (default 1), syncer i to rooms i,
	// i+1, ... mod Rooms; 0 = none.
	Syncers     int
	SyncerRooms int
}

func (o *Options) defaults() error {
	if o.URL == "" {
		return errors.New("load: --url is required (the homeserver's client API base URL)")
	}
	if o.Users <= 0 {
		o.Users = 10
	}
	if o.Rooms <= 0 {
		o.Rooms = 2
	}
	if o.Duration <= 0 {
		o.Duration = 10 * time.Second
	}
	if o.MaxSends <= 0 {
		o.MaxSends = 1_000_000
	}
	if o.Prefix == "" {
		var b [3]byte
		_, _ = rand.Read(b[:])
		o.Prefix = "bench" + hex.EncodeToString(b[:])
	}
	if o.Password == "" {
		o.Password = "engram-bench-load"
	}
	if o.BodySize <= 0 {
		o.BodySize = 64
	}
	if o.Grace <= 0 {
		o.Grace = 3 * time.Second
	}
	if o.SetupConcurrency <= 0 {
		o.SetupConcurrency = 8
	}
	if o.SyncerRooms <= 0 {
		o.SyncerRooms = 1
	}
	o.SyncerRooms = min(o.SyncerRooms, o.Rooms)
	return nil
}

// Params lists the workload parameters for reports.
func (o Options) Params() map[string]string {
	return map[string]string{
		"users": strconv.Itoa(o.Users), "rooms": strconv.Itoa(o.Rooms),
		"duration": o.Duration.String(), "rate": strconv.FormatFloat(o.Rate, 'g', -1, 64),
		"body_size": strconv.Itoa(o.BodySize),
		"syncers":   strconv.Itoa(o.Syncers), "syncer_rooms": strconv.Itoa(o.SyncerRooms),
	}
}

// Result of a load run.
type Result struct {
	Sends       int64 // successful sends
	SendsPerSec float64
	SendP50     time.Duration
	SendP90     time.Duration
	SendP99     time.Duration
	Delivered   int64 // messages seen by their room's receiver
	DeliveryP50 time.Duration
	DeliveryP99 time.Duration
	Errors      map[string]int64 // errcode -> count, setup and sends
	ServerRSSKB int64            // peak VmRSS sampled during the run (0 without PID)
	ServerHWMKB int64            // VmHWM at the end
	// The server's CPU time (user and system) over the sends (0 without PID).
	ServerCPUSeconds float64
	DiskBytes        int64 // DataDir's size on disk after the run, ballast apart (0 without DataDir)
	BallastBytes     int64 // the log's emergency ballast in DataDir
	SetupSeconds     float64
	// The receivers' and syncers' initial syncs, all at once after the
	// setup, until the last one was answered.
	InitialSyncSeconds float64
	// With Syncers: the messages the syncers saw arrive (one per syncer
	// in the message's room), their latencies, and the syncs answered.
	SyncerDeliveries  int64
	SyncerDeliveryP50 time.Duration
	SyncerDeliveryP99 time.Duration
	SyncerSyncs       int64
}

type runner struct {
	opts Options

	errMu  sync.Mutex
	errors map[string]int64

	sent     sync.Map // bench id -> start time, until its receiver saw it
	sentAt   sync.Map // bench id -> start time, for the syncers
	latMu    sync.Mutex
	sendLat  []time.Duration
	delivLat []time.Duration
	syncLat  []time.Duration // syncers' deliveries
	sends    atomic.Int64
	slots    atomic.Int64
	deliv    atomic.Int64
	syncs    atomic.Int64 // syncers' answered syncs
}

func (r *runner) countErr(err error) {
	r.errMu.Lock()
	r.errors[mxclient.Errcode(err)]++
	r.errMu.Unlock()
}

// Run performs a load run and records its figures in rec (may be nil).
func Run(ctx context.Context, opts Options, rec *report.Recorder) (*Result, error) {
	if err := opts.defaults(); err != nil {
		return nil, err
	}
	r := &runner{opts: opts, errors: map[string]int64{}}
	hc := mxclient.NewHTTPClient()
	setupStart := time.Now()

	// Setup: receivers (one per room, each creates its room), then senders.
	receivers := make([]*mxclient.Client, opts.Rooms)
	senders := make([]*mxclient.Client, opts.Users)
	rooms := make([]string, opts.Rooms)
	if err := parallel(opts.SetupConcurrency, opts.Rooms+opts.Users, func(i int) error {
		c := mxclient.New(opts.URL, hc)
		name := fmt.Sprintf("%s_s%d", opts.Prefix, i)
		if i < opts.Rooms {
			name = fmt.Sprintf("%s_r%d", opts.Prefix, i)
		}
		if err := c.Register(ctx, name, opts.Password); err != nil {
			r.countErr(err)
			return fmt.Errorf("register %s: %w", name, err)
		}
		// Log in as a client would after registering; the session that
		// registration returned stays unused.
		if err := c.Login(ctx, c.UserID, opts.Password); err != nil {
			r.countErr(err)
			return fmt.Errorf("log in %s: %w", name, err)
		}
		if i < opts.Rooms {
			id, err := c.CreateRoom(ctx, map[string]any{"preset": "public_chat", "name": "bench " + name})
			if err != nil {
				r.countErr(err)
				return fmt.Errorf("create room: %w", err)
			}
			receivers[i], rooms[i] = c, id
		} else {
			senders[i-opts.Rooms] = c
		}
		return nil
	}); err != nil {
		return nil, fmt.Errorf("load: setup: %w", err)
	}
	if err := parallel(opts.SetupConcurrency, opts.Users, func(i int) error {
		if err := senders[i].Join(ctx, rooms[i%opts.Rooms]); err != nil {
			r.countErr(err)
			return fmt.Errorf("join: %w", err)
		}
		return nil
	}); err != nil {
		return nil, fmt.Errorf("load: setup: %w", err)
	}
	syncers := make([]*mxclient.Client, opts.Syncers)
	if err := parallel(opts.SetupConcurrency, opts.Syncers, func(i int) error {
		c := mxclient.New(opts.URL, hc)
		name := fmt.Sprintf("%s_y%d", opts.Prefix, i)
		if err := c.Register(ctx, name, opts.Password); err != nil {
			r.countErr(err)
			return fmt.Errorf("register %s: %w", name, err)
		}
		for k := range opts.SyncerRooms {
			if err := c.Join(ctx, rooms[(i+k)%opts.Rooms]); err != nil {
				r.countErr(err)
				return fmt.Errorf("join: %w", err)
			}
		}
		syncers[i] = c
		return nil
	}); err != nil {
		return nil, fmt.Errorf("load: setup: %w", err)
	}
	setup := time.Since(setupStart)

	// Receivers start from a fresh sync position so they see only the
	// messages of this run.
	recvCtx, stopRecv := context.WithCancel(ctx)
	defer stopRecv()
	var recvWG sync.WaitGroup
	var ready sync.WaitGroup
	for i, c := range receivers {
		recvWG.Add(1)
		ready.Add(1)
		go func() {
			defer recvWG.Done()
			r.receive(recvCtx, c, rooms[i], ready.Done)
		}()
	}
	for _, c := range syncers {
		recvWG.Add(1)
		ready.Add(1)
		go func() {
			defer recvWG.Done()
			r.syncAsClient(recvCtx, c, ready.Done)
		}()
	}
	ready.Wait()
	initialSyncs := time.Since(setupStart) - setup

	var peakRSS atomic.Int64
	sampleCtx, stopSample := context.WithCancel(ctx)
	defer stopSample()
	if opts.PID != 0 {
		go func() {
			t := time.NewTicker(250 * time.Millisecond)
			defer t.Stop()
			for {
				if kb, err := report.ProcStatusKB(opts.PID, "VmRSS"); err == nil && kb > peakRSS.Load() {
					peakRSS.Store(kb)
				}
				select {
				case <-sampleCtx.Done():
					return
				case <-t.C:
				}
			}
		}()
	}

	var cpuStart float64
	if opts.PID != 0 {
		cpuStart, _ = report.ProcCPUSeconds(opts.PID)
	}
	start := time.Now()
	sendCtx, stopSend := context.WithTimeout(ctx, opts.Duration)
	defer stopSend()
	var sendWG sync.WaitGroup
	body := strings.Repeat("x", opts.BodySize)
	for i, c := range senders {
		sendWG.Add(1)
		go func() {
			defer sendWG.Done()
			r.send(sendCtx, c, rooms[i%opts.Rooms], body, start)
		}()
	}
	sendWG.Wait()
	elapsed := time.Since(start)
	var cpuSends float64
	if opts.PID != 0 {
		if end, err := report.ProcCPUSeconds(opts.PID); err == nil {
			cpuSends = end - cpuStart
		}
	}

	// Let receivers catch up with what was sent, then stop them.
	graceEnd := time.Now().Add(opts.Grace)
	for time.Now().Before(graceEnd) && r.deliv.Load() < r.sends.Load() {
		time.Sleep(20 * time.Millisecond)
	}
	stopRecv()
	recvWG.Wait()
	stopSample()

	res := &Result{Sends: r.sends.Load(), Delivered: r.deliv.Load(), Errors: r.errors, SetupSeconds: setup.Seconds(), InitialSyncSeconds: initialSyncs.Seconds()}
	res.SendsPerSec = float64(res.Sends) / elapsed.Seconds()
	r.latMu.Lock()
	res.SendP50 = report.Percentile(r.sendLat, 50)
	res.SendP90 = report.Percentile(r.sendLat, 90)
	res.SendP99 = report.Percentile(r.sendLat, 99)
	res.DeliveryP50 = report.Percentile(r.delivLat, 50)
	res.DeliveryP99 = report.Percentile(r.delivLat, 99)
	res.SyncerDeliveries = int64(len(r.syncLat))
	res.SyncerDeliveryP50 = report.Percentile(r.syncLat, 50)
	res.SyncerDeliveryP99 = report.Percentile(r.syncLat, 99)
	res.SyncerSyncs = r.syncs.Load()
	r.latMu.Unlock()
	if opts.PID != 0 {
		res.ServerRSSKB = peakRSS.Load()
		res.ServerHWMKB, _ = report.ProcStatusKB(opts.PID, "VmHWM")
		res.ServerCPUSeconds = cpuSends
	}
	if opts.DataDir != "" {
		var err error
		if res.DiskBytes, res.BallastBytes, err = report.DiskUsage(opts.DataDir); err != nil {
			return nil, fmt.Errorf("load: measuring the data directory: %w", err)
		}
	}
	if rec != nil {
		rec.Add("sends", float64(res.Sends), "sends", "")
		rec.Add("sends_per_s", res.SendsPerSec, "sends/s", report.HigherIsBetter)
		rec.Add("send_latency_p50_ms", report.MS(res.SendP50), "ms", report.LowerIsBetter)
		rec.Add("send_latency_p90_ms", report.MS(res.SendP90), "ms", report.LowerIsBetter)
		rec.Add("send_latency_p99_ms", report.MS(res.SendP99), "ms", report.LowerIsBetter)
		rec.Add("delivered", float64(res.Delivered), "messages", "")
		rec.Add("delivery_latency_p50_ms", report.MS(res.DeliveryP50), "ms", report.LowerIsBetter)
		rec.Add("delivery_latency_p99_ms", report.MS(res.DeliveryP99), "ms", report.LowerIsBetter)
		var total int64
		codes := make([]string, 0, len(res.Errors))
		for code, n := range res.Errors {
			total += n
			codes = append(codes, code)
		}
		sort.Strings(codes)
		rec.Add("errors", float64(total), "errors", report.LowerIsBetter)
		for _, code := range codes {
			rec.Add("errors."+code, float64(res.Errors[code]), "errors", report.LowerIsBetter)
		}
		rec.Add("setup_seconds", res.SetupSeconds, "s", report.LowerIsBetter)
		rec.Add("initial_sync_seconds", res.InitialSyncSeconds, "s", report.LowerIsBetter)
		if opts.Syncers > 0 {
			rec.Add("syncer_deliveries", float64(res.SyncerDeliveries), "messages", "")
			rec.Add("syncer_delivery_latency_p50_ms", report.MS(res.SyncerDeliveryP50), "ms", report.LowerIsBetter)
			rec.Add("syncer_delivery_latency_p99_ms", report.MS(res.SyncerDeliveryP99), "ms", report.LowerIsBetter)
			rec.Add("syncer_syncs", float64(res.SyncerSyncs), "syncs", "")
		}
		if opts.PID != 0 {
			rec.Add("server_rss_peak_mb", float64(res.ServerRSSKB)/1024, "MB", report.LowerIsBetter)
			rec.Add("server_hwm_mb", float64(res.ServerHWMKB)/1024, "MB", report.LowerIsBetter)
			rec.Add("server_cpu_s", res.ServerCPUSeconds, "s", report.LowerIsBetter)
		}
		if opts.DataDir != "" {
			// Everything the server keeps (log, projections, WALs, raft
			// state, media), after everything it was sent; the setup's
			// registrations and rooms are in it too.
			rec.Add("disk_mb", float64(res.DiskBytes)/1e6, "MB", report.LowerIsBetter)
			rec.Add("disk_bytes_per_send", float64(res.DiskBytes)/float64(max(res.Sends, 1)), "bytes", report.LowerIsBetter)
			rec.Add("disk_ballast_mb", float64(res.BallastBytes)/1e6, "MB", "")
		}
	}
	return res, nil
}

// send sends until ctx ends or the run's send budget is spent, paced to
// the run's rate: slot n starts at start + n/rate.
func (r *runner) send(ctx context.Context, c *mxclient.Client, roomID, body string, start time.Time) {
	for ctx.Err() == nil {
		n := r.slots.Add(1) - 1
		if n >= int64(r.opts.MaxSends) {
			return
		}
		if r.opts.Rate > 0 {
			at := start.Add(time.Duration(float64(n) / r.opts.Rate * float64(time.Second)))
			if d := time.Until(at); d > 0 {
				select {
				case <-ctx.Done():
					return
				case <-time.After(d):
				}
			}
		}
		id := strconv.FormatInt(n, 10)
		t0 := time.Now()
		r.sent.Store(id, t0)
		if r.opts.Syncers > 0 {
			r.sentAt.Store(id, t0)
		}
		_, err := c.Send(ctx, roomID, "m.room.message", "t"+id, map[string]any{"msgtype": "m.text", "body": body, "bench_id": id})
		if err != nil {
			r.sent.Delete(id)
			if ctx.Err() != nil {
				return // the run ended mid-request: not the server's error
			}
			r.countErr(err)
			var me *mxclient.Error
			if errors.As(err, &me) && me.RetryAfterMS > 0 {
				time.Sleep(time.Duration(me.RetryAfterMS) * time.Millisecond)
			}
			continue
		}
		d := time.Since(t0)
		r.sends.Add(1)
		r.latMu.Lock()
		r.sendLat = append(r.sendLat, d)
		r.latMu.Unlock()
	}
}

// receive long-polls /sync as the room's receiver and times the arrival
// of every bench message.
func (r *runner) receive(ctx context.Context, c *mxclient.Client, roomID string, ready func()) {
	filter := `{"room":{"rooms":[` + strconv.Quote(roomID) + `],"timeline":{"limit":1000},"state":{"lazy_load_members":true}},"presence":{"not_types":["*"]}}`
	since := ""
	first := true
	for {
		timeout := 5 * time.Second
		if first {
			timeout = 0
		}
		resp, err := c.Sync(ctx, since, timeout, filter)
		if err != nil && filter != "" && first && ctx.Err() == nil {
			filter = "" // a server without inline filters: sync everything
			continue
		}
		if ctx.Err() != nil {
			if first {
				ready()
			}
			return
		}
		if err != nil {
			r.countErr(err)
			time.Sleep(100 * time.Millisecond)
			continue
		}
		now := time.Now()
		since = resp.NextBatch
		if first {
			first = false
			ready()
			continue // history from before the run
		}
		for _, ev := range resp.Rooms.Join[roomID].Timeline.Events {
			if ev.Type != "m.room.message" {
				continue
			}
			var content struct {
				BenchID string `json:"bench_id"`
			}
			if json.Unmarshal(ev.Content, &content) != nil || content.BenchID == "" {
				continue
			}
			if t0, ok := r.sent.LoadAndDelete(content.BenchID); ok {
				r.deliv.Add(1)
				r.latMu.Lock()
				r.delivLat = append(r.delivLat, now.Sub(t0.(time.Time)))
				r.latMu.Unlock()
			}
		}
	}
}

// syncAsClient long-polls /sync as a client does (no filter, 30 s
// timeout) and times the arrival of every bench message in any of its
// rooms.
func (r *runner) syncAsClient(ctx context.Context, c *mxclient.Client, ready func()) {
	since := ""
	first := true
	for {
		timeout := 30 * time.Second
		if first {
			timeout = 0
		}
		resp, err := c.Sync(ctx, since, timeout, "")
		if ctx.Err() != nil {
			if first {
				ready()
			}
			return
		}
		if err != nil {
			r.countErr(err)
			time.Sleep(100 * time.Millisecond)
			continue
		}
		now := time.Now()
		since = resp.NextBatch
		if first {
			first = false
			ready()
			continue // history from before the run
		}
		r.syncs.Add(1)
		for _, room := range resp.Rooms.Join {
			for _, ev := range room.Timeline.Events {
				var content struct {
					BenchID string `json:"bench_id"`
				}
				if ev.Type != "m.room.message" || json.Unmarshal(ev.Content, &content) != nil || content.BenchID == "" {
					continue
				}
				if t0, ok := r.sentAt.Load(content.BenchID); ok {
					r.latMu.Lock()
					r.syncLat = append(r.syncLat, now.Sub(t0.(time.Time)))
					r.latMu.Unlock()
				}
			}
		}
	}
}

// parallel runs fn(0..n-1) with at most conc at once and returns the
// first error.
func parallel(conc, n int, fn func(i int) error) error {
	sem := make(chan struct{}, conc)
	var wg sync.WaitGroup
	var once sync.Once
	var first error
	for i := range n {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			if err := fn(i); err != nil {
				once.Do(func() { first = err })
			}
		}()
	}
	wg.Wait()
	return first
}
