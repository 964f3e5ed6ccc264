// Package generate writes a deterministic synthetic log shaped like a real
// server's: registrations with devices and tokens, a few large public
// rooms with thousands of members, many DMs and small private groups,
// heavy-tailed message sizes, reactions, joins and leaves, profile
// changes, redactions, topic changes, receipts, typing and presence.
//
// Entries are written through the real log package and hold the same
// facts, built the same way, as the API writes them: events are built and
// signed with stateres.BuildEvent and authorised with stateres/auth before
// they are proposed, rooms are created with the API's preset events, and
// messages carry the client transaction reference. The API builds events
// inside its HTTP handlers, so the generator cannot call that code; the
// tests instead serve a generated log with the real API and act on it.
//
// Same options and seed give byte-identical entries (offsets, kinds,
// times, payloads): every ID, timestamp, key and choice comes from the
// seed and a synthetic clock, never from the machine.
package generate

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/stateres"
	"github.com/engram-hs/engram/stateres/auth"
)

// Password is the password of every generated account;
// PasswordHash is its bcrypt hash (cost 10), the same for every account so
// that generation stays deterministic and cheap.
const (
	Password     = "engram-bench"
	PasswordHash = "$2b$10$ckTWs1JN86xVdHijuxDMqusmYQnJzZIz8Y2BP5wOoipmMn482Xy7y"
)

// Options is the workload profile. Zero values take the defaults noted.
type Options struct {
	Seed   int64
	Users  int // accounts (default 1000)
	Rooms  int // rooms (default 100)
	Events int // total log entries to write, setup included (default 100000)

	ServerName  string // default "bench.localhost"
	RoomVersion string // default "12" (the workload the recorded figures used)

	// LargeRooms is the number of big public rooms (default Rooms/50,
	// between 1 and 5); large room j has about LargeShare*Users/(j+1)
	// members after setup.
	LargeRooms int
	LargeShare float64 // default 0.6
	// DMShare is the share of the other rooms that are direct chats
	// between two users (default 0.6); the rest are private groups of 3
	// to 20 members.
	DMShare float64

	// Start is the synthetic clock's start (default 2025-01-01T00:00:00Z);
	// Rate the simulated entries per second it advances by (default 20).
	Start time.Time
	Rate  float64

	// BatchEntries bounds the entries of one Append (default 256); a batch
	// shares one entry time, as group-committed appends do.
	BatchEntries int

	Logger   zerolog.Logger
	Progress func(written, target int)
}

func (o *Options) defaults() error {
	if o.Users == 0 {
		o.Users = 1000
	}
	if o.Rooms == 0 {
		o.Rooms = 100
	}
	if o.Events == 0 {
		o.Events = 100000
	}
	if o.Users < 2 || o.Rooms < 1 || o.Events < 1 {
		return errors.New("generate: need at least 2 users, 1 room and 1 event")
	}
	if o.ServerName == "" {
		o.ServerName = "bench.localhost"
	}
	if o.RoomVersion == "" {
		o.RoomVersion = "12"
	}
	if _, ok := stateres.Version(o.RoomVersion); !ok {
		return fmt.Errorf("generate: unknown room version %q; use one of %v", o.RoomVersion, stateres.KnownVersions())
	}
	if o.LargeRooms == 0 {
		o.LargeRooms = min(5, max(1, o.Rooms/50))
	}
	o.LargeRooms = min(o.LargeRooms, o.Rooms)
	if o.LargeShare == 0 {
		o.LargeShare = 0.6
	}
	if o.DMShare == 0 {
		o.DMShare = 0.6
	}
	if o.Start.IsZero() {
		o.Start = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	}
	if o.Rate <= 0 {
		o.Rate = 20
	}
	if o.BatchEntries <= 0 {
		o.BatchEntries = 256
	}
	return nil
}

// Params lists the options for reports.
func (o Options) Params() map[string]string {
	return map[string]string{
		"seed": strconv.FormatInt(o.Seed, 10), "users": strconv.Itoa(o.Users),
		"rooms": strconv.Itoa(o.Rooms), "events": strconv.Itoa(o.Events),
		"room_version": o.RoomVersion,
	}
}

// Result describes what was written.
type Result struct {
	Entries      uint64
	PayloadBytes int64
	ByKind       map[string]int
	PDUsByType   map[string]int
	Duration     time.Duration
}

// UserID is the ID of generated user i.
func UserID(serverName string, i int) string { return fmt.Sprintf("@u%d:%s", i, serverName) }

// DeviceID is the device generated user i was registered with.
func DeviceID(i int) string { return fmt.Sprintf("BENCH%d", i) }

// AccessToken is the access token generated user i holds: derived from
// the seed so that tools and tests can act as the user on a server that
// serves the generated log.
func AccessToken(seed int64, i int) string {
	sum := sha256.Sum256(fmt.Appendf(nil, "engram-bench-token/%d/%d", seed, i))
	return "mat_bench_" + hex.EncodeToString(sum[:12])
}

// signingKey is derived from the seed: signatures are deterministic.
func signingKey(seed int64) ed25519.PrivateKey {
	sum := sha256.Sum256(fmt.Appendf(nil, "engram-bench-key/%d", seed))
	return ed25519.NewKeyFromSeed(sum[:])
}

const signingKeyID = "ed25519:bench"

// Target is a log opened for generation, whose clock the generator drives.
type Target struct {
	Node  *englog.Node
	clock atomic.Int64 // Unix ms handed to the log as "now"
}

// OpenTarget opens (creating) the log in dir. It refuses a log that
// already has entries: generation must start at offset 1 to be
// reproducible.
func OpenTarget(dir string, logger zerolog.Logger) (*Target, error) {
	t := &Target{}
	node, err := englog.Open(englog.Config{Dir: dir, Logger: logger, Now: func() time.Time { return time.UnixMilli(t.clock.Load()) }})
	if err != nil {
		return nil, err
	}
	if n := node.LastOffset(); n != 0 {
		_ = node.Close()
		return nil, fmt.Errorf("generate: %s already holds a log of %d entries; pass an empty or new directory", dir, n)
	}
	t.Node = node
	return t, nil
}

// Close closes the log.
func (t *Target) Close() error { return t.Node.Close() }

// Run opens dir, generates into it and closes it.
func Run(ctx context.Context, dir string, opts Options) (*Result, error) {
	t, err := OpenTarget(dir, opts.Logger)
	if err != nil {
		return nil, err
	}
	res, err := Generate(ctx, t, opts)
	if cerr := t.Close(); err == nil && cerr != nil {
		err = cerr
	}
	return res, err
}

type roomKind int

const (
	kindLarge roomKind = iota
	kindDM
	kindGroup
)

type recentMsg struct {
	id     string
	sender int
}

type room struct {
	idx     int // position in gen.rooms
	id      string
	kind    roomKind
	creator int
	state   map[stateres.StateKeyTuple]stateres.PDU
	prev    stateres.PDU
	members []int       // joined users
	index   map[int]int // user -> position in members
	recent  []recentMsg // newest last, bounded
	latest  string      // newest timeline event, for receipts
}

// StateEvent makes a room a stateres.StateLookup.
func (r *room) StateEvent(typ, stateKey string) stateres.PDU {
	return r.state[stateres.StateKeyTuple{Type: typ, StateKey: stateKey}]
}

func (r *room) joined(u int) bool { _, ok := r.index[u]; return ok }

func (r *room) addMember(u int) {
	if r.joined(u) {
		return
	}
	r.index[u] = len(r.members)
	r.members = append(r.members, u)
}

func (r *room) removeMember(u int) {
	i, ok := r.index[u]
	if !ok {
		return
	}
	last := r.members[len(r.members)-1]
	r.members[i] = last
	r.index[last] = i
	r.members = r.members[:len(r.members)-1]
	delete(r.index, u)
}

type user struct {
	id          string
	device      string
	displayName string
	rooms       []int // joined rooms, kept sorted for a deterministic order
}

type batch struct {
	at    int64
	props []englog.Proposal
}

type gen struct {
	opts    Options
	version *stateres.RoomVersion
	key     ed25519.PrivateKey
	rng     *rand.Rand
	now     int64 // synthetic ms
	users   []*user
	rooms   []*room
	cumW    []float64 // cumulative room activity weights
	txnSeq  int

	cur     []englog.Proposal
	curSize int
	written int
	res     *Result
	out     chan batch
	errc    chan error
}

// Generate writes the workload into t.
func Generate(ctx context.Context, t *Target, opts Options) (*Result, error) {
	if err := opts.defaults(); err != nil {
		return nil, err
	}
	version, _ := stateres.Version(opts.RoomVersion)
	g := &gen{
		opts: opts, version: version, key: signingKey(opts.Seed),
		rng: rand.New(rand.NewPCG(uint64(opts.Seed), 0x656e6772616d)),
		now: opts.Start.UnixMilli(),
		res: &Result{ByKind: map[string]int{}, PDUsByType: map[string]int{}},
		out: make(chan batch, 4), errc: make(chan error, 1),
	}
	start := time.Now()
	// One goroutine appends, in order, while the next batch is built: the
	// log's clock is set right before each Append, which reads it once.
	go func() {
		var err error
		for b := range g.out {
			if err != nil {
				continue
			}
			t.clock.Store(b.at)
			_, err = t.Node.Append(ctx, b.props...)
		}
		g.errc <- err
	}()
	err := g.run(ctx)
	g.flush()
	close(g.out)
	if aerr := <-g.errc; err == nil && aerr != nil {
		err = fmt.Errorf("generate: append: %w", aerr)
	}
	g.res.Duration = time.Since(start)
	g.res.Entries = t.Node.LastOffset()
	return g.res, err
}

func (g *gen) run(ctx context.Context) error {
	for i := range g.opts.Users {
		if err := g.register(i); err != nil {
			return err
		}
	}
	if err := g.createRooms(); err != nil {
		return err
	}
	for g.written < g.opts.Events {
		if g.written%1024 == 0 {
			if err := ctx.Err(); err != nil {
				return err
			}
		}
		if err := g.step(); err != nil {
			return err
		}
	}
	return nil
}

// ---- output ----

func (g *gen) tick() {
	// Exponential inter-arrival times at the simulated rate.
	g.now += int64(g.rng.ExpFloat64()*1000/g.opts.Rate) + 1
}

func (g *gen) emit(p englog.Proposal) {
	g.cur = append(g.cur, p)
	g.curSize += len(p.Payload)
	g.written++
	g.res.PayloadBytes += int64(len(p.Payload))
	g.res.ByKind[p.Kind.String()]++
	if len(g.cur) >= g.opts.BatchEntries || g.curSize >= 1<<20 {
		g.flush()
	}
	if g.opts.Progress != nil && g.written%10000 == 0 {
		g.opts.Progress(g.written, g.opts.Events)
	}
}

func (g *gen) flush() {
	if len(g.cur) == 0 {
		return
	}
	g.out <- batch{at: g.now, props: g.cur}
	g.cur, g.curSize = nil, 0
}

func (g *gen) emitFact(kind englog.Kind, v any) { g.emit(facts.MustEncode(kind, v)) }

func mustJSON(v any) json.RawMessage {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

func strptr(s string) *string { return &s }

// ---- accounts ----

func (g *gen) register(i int) error {
	u := &user{id: UserID(g.opts.ServerName, i), device: DeviceID(i), displayName: fmt.Sprintf("u%d", i)}
	g.users = append(g.users, u)
	g.tick()
	// The API's register: the account, then the session it logs in.
	g.emitFact(englog.KindAccountRegistered, facts.AccountRegistered{UserID: u.id, PasswordHash: PasswordHash, DisplayName: u.displayName})
	g.emitFact(englog.KindDeviceAdded, facts.DeviceAdded{UserID: u.id, DeviceID: u.device, DisplayName: "engram bench", IP: "127.0.0.1"})
	tok := sha256.Sum256([]byte(AccessToken(g.opts.Seed, i)))
	g.emitFact(englog.KindAccessTokenIssued, facts.AccessTokenIssued{UserID: u.id, DeviceID: u.device, TokenSHA256: hex.EncodeToString(tok[:])})
	return nil
}

// ---- rooms ----

// build builds, signs and authorises one event on top of the room's
// newest event, and emits it.
func (g *gen) build(r *room, proto stateres.ProtoEvent, txn *facts.TxnRef) (*stateres.Event, error) {
	proto.RoomID = r.id
	proto.OriginServerTS = g.now
	if proto.Content == nil {
		proto.Content = json.RawMessage("{}")
	}
	var prev []stateres.PDU
	if r.prev != nil {
		prev = []stateres.PDU{r.prev}
	}
	ev, err := stateres.BuildEvent(g.version, &proto, r, prev, g.opts.ServerName, signingKeyID, g.key)
	if err != nil {
		return nil, fmt.Errorf("generate: build %s in %s: %w", proto.Type, r.id, err)
	}
	if err := auth.Check(ev, auth.StateFunc(r.StateEvent)); err != nil {
		return nil, fmt.Errorf("generate: %s by %s in %s is not authorised (a generator bug): %w", proto.Type, proto.Sender, r.id, err)
	}
	if r.id == "" {
		r.id = ev.RoomID()
	}
	if sk := ev.StateKey(); sk != nil {
		r.state[stateres.StateKeyTuple{Type: ev.Type(), StateKey: *sk}] = ev
	}
	r.prev = ev
	g.res.PDUsByType[ev.Type()]++
	g.emitFact(englog.KindPDU, facts.PDU{RoomVersion: g.version.ID, Event: ev.JSON(), EventID: ev.EventID(), Txn: txn})
	return ev, nil
}

func (g *gen) txn(u int) *facts.TxnRef {
	g.txnSeq++
	return &facts.TxnRef{UserID: g.users[u].id, DeviceID: g.users[u].device, TxnID: "g" + strconv.Itoa(g.txnSeq)}
}

// roomID decides the ID of rooms whose version does not derive it from
// the create event.
func (g *gen) roomID(n int) string {
	sum := sha256.Sum256(fmt.Appendf(nil, "engram-bench-room/%d/%d", g.opts.Seed, n))
	return "!" + hex.EncodeToString(sum[:9]) + ":" + g.opts.ServerName
}

// createRoom mirrors the API's POST /createRoom: create, the creator's
// join, power levels, join rules, history visibility, guest access for
// private presets, name, topic, invites; then the directory entry.
func (g *gen) createRoom(n int, kind roomKind, creator int, name, topic string, invites []int) (*room, error) {
	r := &room{idx: len(g.rooms), kind: kind, creator: creator, state: map[stateres.StateKeyTuple]stateres.PDU{}, index: map[int]int{}}
	g.rooms = append(g.rooms, r)
	if !g.version.RoomIDFromCreate {
		r.id = g.roomID(n)
	}
	g.tick()
	c := g.users[creator]
	createContent := map[string]any{"room_version": g.version.ID}
	if !g.version.V11Semantics {
		createContent["creator"] = c.id
	}
	if _, err := g.build(r, stateres.ProtoEvent{Type: stateres.MRoomCreate, StateKey: strptr(""), Sender: c.id, Content: mustJSON(createContent)}, nil); err != nil {
		return nil, err
	}
	if _, err := g.build(r, stateres.ProtoEvent{Type: stateres.MRoomMember, StateKey: strptr(c.id), Sender: c.id, Content: g.memberContent(creator, "join")}, nil); err != nil {
		return nil, err
	}
	g.joined(r, creator)
	public := kind == kindLarge
	users := map[string]any{}
	if !g.version.PrivilegedCreators {
		users[c.id] = 100
	}
	if kind == kindDM { // trusted_private_chat: the invitee is an admin too
		for _, u := range invites {
			users[g.users[u].id] = 100
		}
	}
	invitePL := 0
	if public {
		invitePL = 50
	}
	pl := map[string]any{
		"users": users, "users_default": 0,
		"events": map[string]any{
			"m.room.name": 50, "m.room.power_levels": 100, "m.room.history_visibility": 100,
			"m.room.canonical_alias": 50, "m.room.avatar": 50, "m.room.tombstone": 100,
			"m.room.server_acl": 100, "m.room.encryption": 100,
		},
		"events_default": 0, "state_default": 50, "ban": 50, "kick": 50, "redact": 50,
		"invite": invitePL, "notifications": map[string]any{"room": 50},
	}
	if _, err := g.build(r, stateres.ProtoEvent{Type: stateres.MRoomPowerLevels, StateKey: strptr(""), Sender: c.id, Content: mustJSON(pl)}, nil); err != nil {
		return nil, err
	}
	joinRule := "invite"
	if public {
		joinRule = "public"
	}
	preset := []stateres.ProtoEvent{
		{Type: stateres.MRoomJoinRules, Content: mustJSON(map[string]string{"join_rule": joinRule})},
		{Type: stateres.MRoomHistoryVisibility, Content: mustJSON(map[string]string{"history_visibility": "shared"})},
	}
	if !public {
		preset = append(preset, stateres.ProtoEvent{Type: "m.room.guest_access", Content: mustJSON(map[string]string{"guest_access": "can_join"})})
	}
	if name != "" {
		preset = append(preset, stateres.ProtoEvent{Type: "m.room.name", Content: mustJSON(map[string]string{"name": name})})
	}
	if topic != "" {
		preset = append(preset, stateres.ProtoEvent{Type: "m.room.topic", Content: mustJSON(map[string]string{"topic": topic})})
	}
	for _, p := range preset {
		p.StateKey, p.Sender = strptr(""), c.id
		if _, err := g.build(r, p, nil); err != nil {
			return nil, err
		}
	}
	for _, u := range invites {
		content := map[string]any{"membership": "invite", "displayname": g.users[u].displayName}
		if kind == kindDM {
			content["is_direct"] = true
		}
		if _, err := g.build(r, stateres.ProtoEvent{Type: stateres.MRoomMember, StateKey: strptr(g.users[u].id), Sender: c.id, Content: mustJSON(content)}, nil); err != nil {
			return nil, err
		}
	}
	if public {
		g.emitFact(englog.KindRoomVisibilitySet, facts.RoomVisibilitySet{RoomID: r.id, Visibility: "public"})
	}
	return r, nil
}

// memberContent is what the API puts in a join: membership and profile.
func (g *gen) memberContent(u int, membership string) json.RawMessage {
	c := map[string]any{"membership": membership}
	if membership == "join" || membership == "invite" {
		c["displayname"] = g.users[u].displayName
	}
	return mustJSON(c)
}

func (g *gen) joined(r *room, u int) {
	r.addMember(u)
	usr := g.users[u]
	ri := r.idx
	i := sort.SearchInts(usr.rooms, ri)
	if i < len(usr.rooms) && usr.rooms[i] == ri {
		return
	}
	usr.rooms = append(usr.rooms, 0)
	copy(usr.rooms[i+1:], usr.rooms[i:])
	usr.rooms[i] = ri
}

func (g *gen) left(r *room, u int) {
	r.removeMember(u)
	usr := g.users[u]
	ri := r.idx
	i := sort.SearchInts(usr.rooms, ri)
	if i < len(usr.rooms) && usr.rooms[i] == ri {
		usr.rooms = append(usr.rooms[:i], usr.rooms[i+1:]...)
	}
}

func (g *gen) join(r *room, u int) error {
	g.tick()
	if _, err := g.build(r, stateres.ProtoEvent{Type: stateres.MRoomMember, StateKey: strptr(g.users[u].id), Sender: g.users[u].id, Content: g.memberContent(u, "join")}, nil); err != nil {
		return err
	}
	g.joined(r, u)
	return nil
}

func (g *gen) createRooms() error {
	o := g.opts
	weights := make([]float64, 0, o.Rooms)
	for j := range o.LargeRooms {
		creator := g.rng.IntN(o.Users)
		r, err := g.createRoom(j, kindLarge, creator, fmt.Sprintf("Large room %d", j), "A busy public room", nil)
		if err != nil {
			return err
		}
		target := max(2, int(o.LargeShare*float64(o.Users)/float64(j+1)))
		for _, u := range g.rng.Perm(o.Users)[:min(target, o.Users)] {
			if !r.joined(u) {
				if err := g.join(r, u); err != nil {
					return err
				}
			}
		}
		weights = append(weights, 40/float64(j+1))
	}
	for n := o.LargeRooms; n < o.Rooms; n++ {
		creator := g.rng.IntN(o.Users)
		var invites []int
		kind := kindGroup
		if g.rng.Float64() < o.DMShare {
			kind = kindDM
			other := g.rng.IntN(o.Users - 1)
			if other >= creator {
				other++
			}
			invites = []int{other}
		} else {
			size := min(o.Users, 3+int(g.rng.ExpFloat64()*4))
			size = min(size, 20)
			for _, u := range g.rng.Perm(o.Users)[:size] {
				if u != creator {
					invites = append(invites, u)
				}
			}
		}
		name, topic := "", ""
		if kind == kindGroup {
			name, topic = fmt.Sprintf("Group %d", n), "A small private group"
		}
		r, err := g.createRoom(n, kind, creator, name, topic, invites)
		if err != nil {
			return err
		}
		for _, u := range invites {
			if g.rng.Float64() < 0.9 { // a few invites stay pending
				if err := g.join(r, u); err != nil {
					return err
				}
			}
		}
		// Activity is heavy-tailed across small rooms too.
		weights = append(weights, math.Exp(g.rng.NormFloat64()))
	}
	g.cumW = make([]float64, len(weights))
	sum := 0.0
	for i, w := range weights {
		sum += w
		g.cumW[i] = sum
	}
	return nil
}

func (g *gen) pickRoom() *room {
	x := g.rng.Float64() * g.cumW[len(g.cumW)-1]
	return g.rooms[sort.SearchFloat64s(g.cumW, x)]
}

// ---- activity ----

func (g *gen) step() error {
	r := g.pickRoom()
	if len(r.members) == 0 {
		return g.churn()
	}
	g.tick()
	x := g.rng.Float64()
	switch {
	case x < 0.74:
		return g.message(r)
	case x < 0.78:
		return g.reaction(r)
	case x < 0.85:
		g.receipt(r)
	case x < 0.89:
		g.typing(r)
	case x < 0.91:
		return g.redact(r)
	case x < 0.94:
		return g.churn()
	case x < 0.95:
		return g.profile()
	case x < 0.96:
		return g.topic(r)
	case x < 0.97:
		g.presence()
	default:
		return g.message(r)
	}
	return nil
}

func (g *gen) member(r *room) int { return r.members[g.rng.IntN(len(r.members))] }

var words = strings.Fields(`the a to and of in is it you that for on was with he as I his they be at one have this from or had by hot word but what some we can out other were all there when up use your how said an each she which do their time if will way about many then them write would like so these her long make thing see him two has look more day could go come did number sound no most people my over know water than call first who may down side been now find any new work part take get place made live where after back little only round man year came show every good me give our under name very through just form sentence great think say help low line differ turn cause much mean before move right boy old too same tell does set three want air well also play small end put home read hand port large spell add even land here must big high such follow act why ask men change went light kind off need house picture try us again animal point mother world near build self earth father deploy merge review lunch coffee meeting release bug fix server matrix room sync log`)

// text is heavy-tailed: log-normal length, median about 30 characters.
func (g *gen) text() string {
	n := int(math.Exp(3.4 + 1.2*g.rng.NormFloat64()))
	n = min(max(n, 1), 16000)
	var b strings.Builder
	for b.Len() < n {
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(words[g.rng.IntN(len(words))])
	}
	return b.String()
}

func (g *gen) message(r *room) error {
	u := g.member(r)
	body := g.text()
	content := map[string]any{"msgtype": "m.text", "body": body}
	switch x := g.rng.Float64(); {
	case x < 0.05:
		content["msgtype"] = "m.notice"
	case x < 0.08:
		content["msgtype"] = "m.emote"
	case x < 0.18:
		content["format"] = "org.matrix.custom.html"
		content["formatted_body"] = "<p>" + body + "</p>"
	}
	ev, err := g.build(r, stateres.ProtoEvent{Type: "m.room.message", Sender: g.users[u].id, Content: mustJSON(content)}, g.txn(u))
	if err != nil {
		return err
	}
	r.latest = ev.EventID()
	r.recent = append(r.recent, recentMsg{id: ev.EventID(), sender: u})
	if len(r.recent) > 32 {
		r.recent = r.recent[1:]
	}
	return nil
}

var reactionKeys = []string{"👍", "❤️", "😂", "🎉", "👀", "🙏"}

func (g *gen) reaction(r *room) error {
	if len(r.recent) == 0 {
		return g.message(r)
	}
	target := r.recent[g.rng.IntN(len(r.recent))]
	u := g.member(r)
	content := map[string]any{"m.relates_to": map[string]any{
		"rel_type": "m.annotation", "event_id": target.id, "key": reactionKeys[g.rng.IntN(len(reactionKeys))],
	}}
	ev, err := g.build(r, stateres.ProtoEvent{Type: "m.reaction", Sender: g.users[u].id, Content: mustJSON(content)}, g.txn(u))
	if err == nil {
		r.latest = ev.EventID()
	}
	return err
}

func (g *gen) receipt(r *room) {
	if r.latest == "" {
		return
	}
	u := g.member(r)
	g.emitFact(englog.KindEDU, facts.EDU{Type: facts.EDUReceipt, Origin: g.opts.ServerName, Content: mustJSON(facts.ReceiptContent{
		RoomID: r.id, UserID: g.users[u].id, EventID: r.latest, ReceiptType: "m.read", TS: g.now,
	})})
}

func (g *gen) typing(r *room) {
	u := g.member(r)
	g.emitFact(englog.KindEDU, facts.EDU{Type: facts.EDUTyping, Origin: g.opts.ServerName, Content: mustJSON(facts.TypingContent{
		RoomID: r.id, UserID: g.users[u].id, Typing: true, ExpiresAt: g.now + 30000,
	})})
	if g.rng.IntN(2) == 0 {
		g.tick()
		g.emitFact(englog.KindEDU, facts.EDU{Type: facts.EDUTyping, Origin: g.opts.ServerName, Content: mustJSON(facts.TypingContent{
			RoomID: r.id, UserID: g.users[u].id, Typing: false,
		})})
	}
}

func (g *gen) presence() {
	u := g.rng.IntN(len(g.users))
	state := []string{"online", "unavailable", "offline"}[g.rng.IntN(3)]
	g.emitFact(englog.KindEDU, facts.EDU{Type: facts.EDUPresence, Origin: g.opts.ServerName, Content: mustJSON(facts.PresenceContent{UserID: g.users[u].id, Presence: state})})
}

// redact: a sender takes back one of their recent messages.
func (g *gen) redact(r *room) error {
	for i := len(r.recent) - 1; i >= 0; i-- {
		m := r.recent[i]
		if !r.joined(m.sender) {
			continue
		}
		r.recent = append(r.recent[:i], r.recent[i+1:]...)
		_, err := g.build(r, stateres.ProtoEvent{Type: stateres.MRoomRedaction, Sender: g.users[m.sender].id, Redacts: m.id, Content: json.RawMessage("{}")}, g.txn(m.sender))
		return err
	}
	return g.message(r)
}

// churn: someone joins or leaves a large public room.
func (g *gen) churn() error {
	r := g.rooms[g.rng.IntN(g.opts.LargeRooms)]
	if g.rng.IntN(2) == 0 || len(r.members) <= 2 {
		for range 8 {
			u := g.rng.IntN(len(g.users))
			if !r.joined(u) {
				return g.join(r, u)
			}
		}
	}
	u := g.member(r)
	if u == r.creator {
		return nil
	}
	if _, err := g.build(r, stateres.ProtoEvent{Type: stateres.MRoomMember, StateKey: strptr(g.users[u].id), Sender: g.users[u].id, Content: g.memberContent(u, "leave")}, nil); err != nil {
		return err
	}
	g.left(r, u)
	return nil
}

// profile: a display name change, then a fresh join event in every room
// the user is in, as the API propagates profiles.
func (g *gen) profile() error {
	u := g.rng.IntN(len(g.users))
	usr := g.users[u]
	usr.displayName = fmt.Sprintf("u%d %s", u, words[g.rng.IntN(len(words))])
	g.emitFact(englog.KindProfileSet, facts.ProfileSet{UserID: usr.id, DisplayName: strptr(usr.displayName)})
	for _, ri := range usr.rooms {
		g.tick()
		if _, err := g.build(g.rooms[ri], stateres.ProtoEvent{Type: stateres.MRoomMember, StateKey: strptr(usr.id), Sender: usr.id, Content: g.memberContent(u, "join")}, nil); err != nil {
			return err
		}
	}
	return nil
}

// topic: the creator of a room with a topic changes it.
func (g *gen) topic(r *room) error {
	if r.kind == kindDM || !r.joined(r.creator) {
		return g.message(r)
	}
	_, err := g.build(r, stateres.ProtoEvent{Type: "m.room.topic", StateKey: strptr(""), Sender: g.users[r.creator].id, Content: mustJSON(map[string]string{"topic": g.text()})}, nil)
	return err
}

// ---- digest ----

// LogDigest is a SHA-256 over every entry's offset, kind, time and
// payload: two logs with equal digests hold the same entries.
func LogDigest(l englog.Log) (digest string, entries uint64, err error) {
	sum := sha256.New()
	var hdr [8 + 2 + 8 + 4]byte
	for from := uint64(1); ; {
		es, err := l.Read(from, 1024)
		if err != nil {
			return "", entries, err
		}
		if len(es) == 0 {
			break
		}
		for _, e := range es {
			binary.BigEndian.PutUint64(hdr[0:], e.Offset)
			binary.BigEndian.PutUint16(hdr[8:], uint16(e.Kind))
			binary.BigEndian.PutUint64(hdr[10:], uint64(e.Time))
			binary.BigEndian.PutUint32(hdr[18:], uint32(len(e.Payload)))
			sum.Write(hdr[:])
			sum.Write(e.Payload)
			entries++
		}
		from = es[len(es)-1].Offset + 1
	}
	return hex.EncodeToString(sum.Sum(nil)), entries, nil
}
