package log

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/bloom"
	"github.com/cockroachdb/pebble/v2/sstable"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/hashicorp/raft"
	"github.com/klauspost/compress/zstd"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// Config opens a log node.
type Config struct {
	Dir      string // Pebble directory (created if absent)
	NodeID   string // raft server ID; "" = "node1"
	RaftAddr string // raft TCP bind address (advertised unless Peers lists this node); "" = single node with an in-memory transport
	// TLS secures raft with mutual TLS (ClusterTLS): connections without a
	// certificate from the cluster CA are dropped before raft reads them.
	// nil = plain TCP, for in-package tests only.
	TLS     *tls.Config
	Peers   []Peer // initial voters when bootstrapping a cluster (empty = just this node)
	Logger  zerolog.Logger
	Metrics prometheus.Registerer // may be nil
	Now     func() time.Time      // clock for proposal timestamps; nil = time.Now

	// DiskReserve is the free space below which writes are refused
	// (ErrDiskFull); 0 = the larger of 1% of the filesystem and 256 MiB.
	DiskReserve uint64
	// BallastSize is the emergency ballast kept in Dir (see space.go);
	// BallastAuto = half the reserve, at most 128 MiB; 0 = no ballast.
	BallastSize int64
	// AcceptDataLoss lets a single node start although entries it had
	// acknowledged are missing (ErrLostAcknowledged): the operator accepts
	// their loss instead of restoring from a backup.
	AcceptDataLoss bool
	// MemoryTarget is the memory budget Pebble's memtables and block cache
	// are sized from (PebbleMemory); 0 = DefaultMemoryTarget.
	MemoryTarget int64
	// Offline opens the log for a tool that runs while the server is
	// stopped (verify, rebuild, backup, log): it reads the local store and
	// never joins the cluster, so no raft transport is started, nothing
	// listens on RaftAddr and no peer is dialled. A cluster node then
	// shows what it has applied (entries its raft log holds beyond that
	// are applied when it serves again). Append fails with ErrOffline. A
	// single node (RaftAddr "") still re-applies its own raft log through
	// an in-memory raft, which touches no network: all of it is committed.
	Offline bool

	// tune adjusts the raft config (tests shorten timeouts and snapshot
	// thresholds).
	tune func(*raft.Config)
	// fs replaces Pebble's filesystem (tests inject disk errors).
	fs vfs.FS
	// statfs replaces the free-space probe (tests simulate a full disk).
	statfs statfsFunc
	// noEraser keeps the erasure housekeeping from running (tests stop
	// a node between an erasure and its housekeeping).
	noEraser bool
	// noTrimmer keeps the raft log trimming from running (tests make a
	// long raft log to find at Open).
	noTrimmer bool
}

// Peer is a raft voter.
type Peer struct{ ID, Addr string }

// Node is one member of the replicated log. It implements Log.
type Node struct {
	cfg    Config
	log    zerolog.Logger
	db     *pebble.DB
	fsm    *fsm
	store  *raftStore
	snaps  *lazySnapshotStore
	trans  raft.Transport
	stream *tlsStream // nil without TLS
	raft   *raft.Raft
	enc    *zstd.Encoder
	dec    *zstd.Decoder
	met    *metrics
	guard  diskGuard
	damage tableDamage
	space  *diskSpace
	state  *stateFile
	wal    walFS // Pebble's filesystem, for the erasure's WAL scrub

	// Erasure housekeeping (eraser.go).
	eraseWake chan struct{}
	eraseMu   sync.Mutex
	eraseDone chan struct{} // closed and replaced after each pass

	trimWake chan struct{} // raft log trimming (trim.go)
	trimKeep int64         // bytes of raft records a trim keeps

	// Group commit: Append hands requests to the batcher, which packs all
	// waiting ones into one raft command; the completer answers them in
	// commit order.
	reqs     chan *appendReq
	inflight chan inflightCmd
	acks     chan ackBatch // completer -> acker: committed, to record then answer
	release  chan struct{} // batcher's in-flight command slots
	stop     chan struct{}
	done     sync.WaitGroup

	fwdMu sync.Mutex
	fwd   *Forwarding // nil until Forwarding is called

	closeMu   sync.RWMutex // Append holds R while enqueueing; Close takes W
	closed    bool
	closeErr  error
	closeOnce sync.Once
}

var _ Log = (*Node)(nil)

// Open opens (creating if needed) the log in cfg.Dir, verifies its tail,
// starts Raft and, for a single node, waits until it leads and has
// re-applied its log so Read sees every acknowledged entry.
func Open(cfg Config) (*Node, error) {
	if cfg.Dir == "" {
		return nil, errors.New("log: Config.Dir is empty: set the data directory")
	}
	if cfg.NodeID == "" {
		cfg.NodeID = "node1"
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if err := os.MkdirAll(cfg.Dir, 0o750); err != nil {
		return nil, fmt.Errorf("log: creating data directory: %w", err)
	}
	n := &Node{
		cfg:      cfg,
		log:      cfg.Logger.With().Str("component", "log").Str("node", cfg.NodeID).Logger(),
		reqs:     make(chan *appendReq, 4096),
		inflight: make(chan inflightCmd, 256),
		acks:     make(chan ackBatch, 256),
		stop:     make(chan struct{}),

		eraseWake: make(chan struct{}, 1),
		eraseDone: make(chan struct{}),
		trimWake:  make(chan struct{}, 1),
	}
	ok := false
	defer func() {
		if !ok {
			n.shutdown()
		}
	}()

	var err error
	if n.space, err = newDiskSpace(cfg.Dir, cfg.statfs, cfg.DiskReserve, n.log); err != nil {
		return nil, err
	}
	n.damage.stop = n.stop
	opts := pebbleOptions(n.log, cfg.fs, cfg.MemoryTarget, &n.damage)
	n.wal = opts.FS.(walFS)
	// Take Pebble's lock once first: the ballast must not be touched under
	// another engram running on this directory.
	lock, err := opts.FS.Lock(filepath.Join(cfg.Dir, "LOCK"))
	if err != nil {
		opts.Cache.Unref()
		return nil, n.openError(err)
	}
	ballast := cfg.BallastSize
	if ballast == BallastAuto {
		ballast = int64(min(n.space.reserve/2, ballastMax))
	}
	n.space.prepareBallast(uint64(max(ballast, 0)))
	if err := lock.Close(); err != nil {
		opts.Cache.Unref()
		return nil, err
	}
	n.db, err = pebble.Open(cfg.Dir, opts)
	n.damage.mu.Lock()
	n.damage.db = n.db
	n.damage.mu.Unlock()
	// The DB holds its own reference to the cache; drop ours either way.
	opts.Cache.Unref()
	if err != nil {
		return nil, n.openError(err)
	}
	var stateCreated bool
	if n.state, stateCreated, err = openStateFile(cfg.Dir); err != nil {
		return nil, err
	}
	if n.enc, err = zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedDefault), zstd.WithEncoderConcurrency(2)); err != nil {
		return nil, err
	}
	if n.dec, err = zstd.NewReader(nil, zstd.WithDecoderConcurrency(0), zstd.WithDecoderMaxMemory(256<<20)); err != nil {
		return nil, err
	}
	if n.store, err = newRaftStore(n.db, &n.guard, n.space, n.state, stateCreated); err != nil {
		return nil, err
	}
	single := cfg.RaftAddr == ""
	memTable, _ := PebbleMemory(cfg.MemoryTarget)
	n.trimKeep, n.store.trimEvery = raftTrimSizes(memTable, single)
	n.store.onTrim = n.wakeTrimmer // a no-op until the trimmer runs
	raftFirst, _ := n.store.FirstIndex()
	rec, err := recoverLog(n.db, &n.guard, n.log, verifyTail, raftFirst)
	if err != nil {
		return nil, err
	}
	n.fsm = newFSM(n.db, n.dec, &n.guard, rec.last, rec.applied)
	n.fsm.lastTime.Store(rec.lastTime)
	n.fsm.onErase = n.wakeEraser
	if cfg.Metrics != nil {
		if n.met, err = newMetrics(cfg.Metrics); err != nil {
			return nil, err
		}
		n.met.lastOffset.Set(float64(rec.last))
		n.met.pebbleMemory.set(n.db)
		n.fsm.onApply = func(int) { n.met.lastOffset.Set(float64(n.fsm.lastOffset.Load())) }
	}
	hlog := newHCLogger(n.log, cfg.RaftAddr == "")
	snapDir := filepath.Join(cfg.Dir, "raft-snapshots")
	files, err := raft.NewFileSnapshotStoreWithLogger(snapDir, 1, hlog)
	if err != nil {
		return nil, fmt.Errorf("log: opening the raft snapshot store: %w", err)
	}
	n.snaps = &lazySnapshotStore{FileSnapshotStore: files, dir: snapDir, fsm: n.fsm}
	n.snaps.removeStale()

	rc := raftConfig(single)
	rc.LocalID = raft.ServerID(cfg.NodeID)
	rc.Logger = hlog
	if cfg.tune != nil {
		cfg.tune(rc)
	}
	// The event log is persistent: raft need not rebuild it from a snapshot
	// on start, only re-apply its own log past what the event log holds.
	rc.NoSnapshotRestoreOnStart = true
	if first, _ := n.store.FirstIndex(); first > rec.applied+1 {
		// recoverLog refuses such cuts; this guards against any other way
		// the event log could end up behind the raft log.
		return nil, fmt.Errorf("%w: the event log ends at offset %d (raft index %d) but the raft log resumes only at raft index %d, "+
			"so the entries in between cannot be re-applied: restore the data directory from a backup, or wipe it and let it resync from a peer",
			ErrCorrupt, rec.last, rec.applied, first)
	}

	if cfg.Offline && !single {
		ok = true
		n.log.Info().Uint64("last_offset", n.LastOffset()).Msg("log: open offline (not joining the cluster)")
		return n, nil
	}
	if single {
		_, n.trans = raft.NewInmemTransport(raft.ServerAddress("inmem:" + cfg.NodeID))
	} else {
		advertise := cfg.RaftAddr
		for _, p := range cfg.Peers {
			if p.ID == cfg.NodeID {
				advertise = p.Addr
			}
		}
		if n.trans, n.stream, err = newTransport(cfg.RaftAddr, advertise, cfg.TLS, n.log, hlog); err != nil {
			return nil, err
		}
	}

	has, err := raft.HasExistingState(n.store, n.store, n.snaps)
	if err != nil {
		return nil, err
	}
	if !has {
		conf := raft.Configuration{}
		self := false
		for _, p := range cfg.Peers {
			conf.Servers = append(conf.Servers, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(p.ID), Address: raft.ServerAddress(p.Addr)})
			self = self || p.ID == cfg.NodeID
		}
		if !self {
			conf.Servers = append(conf.Servers, raft.Server{Suffrage: raft.Voter, ID: rc.LocalID, Address: n.trans.LocalAddr()})
		}
		if err := raft.BootstrapCluster(rc, n.store, n.store, n.snaps, n.trans, conf); err != nil {
			return nil, fmt.Errorf("log: bootstrapping raft: %w", err)
		}
	}
	if n.raft, err = raft.NewRaft(rc, n.fsm, n.store, n.store, n.snaps, n.trans); err != nil {
		return nil, fmt.Errorf("log: starting raft: %w", err)
	}
	n.release = make(chan struct{}, maxInflightCmds)
	n.done.Add(3)
	go n.batcher()
	go n.completer()
	go n.acker()
	if !cfg.noEraser {
		n.done.Add(1)
		go n.eraser() // also resumes the housekeeping a stop interrupted
	}

	if single {
		if err := n.awaitReady(30 * time.Second); err != nil {
			return nil, err
		}
	}
	if !cfg.Offline && !cfg.noTrimmer {
		// Started once ready, so that its first pass finds a single node's
		// raft log re-applied and can snapshot it.
		n.done.Add(1)
		go n.trimmer(n.trimKeep)
	}
	if err := n.checkAcknowledged(single); err != nil {
		return nil, err
	}
	ok = true
	n.log.Info().Uint64("last_offset", n.LastOffset()).Bool("single", single).Msg("log: open")
	return n, nil
}

// openError says why Pebble would not open, with what to do about it.
func (n *Node) openError(err error) error {
	dir := n.cfg.Dir
	switch {
	case errors.Is(err, syscall.ENOSPC):
		free, _, _ := n.space.statfs(dir)
		return fmt.Errorf("log: the disk holding %s is full (%s free): Pebble needs room to replay its write-ahead log; free space on that filesystem and start again: %w", dir, humanBytes(free), err)
	case errors.Is(err, syscall.EAGAIN), errors.Is(err, syscall.EACCES), strings.Contains(err.Error(), "lock held by current process"):
		return fmt.Errorf("log: %s is locked by another process (another engram running on it?): %w", dir, err)
	case strings.Contains(err.Error(), "no longer supported"):
		// Directories written before engram moved to Pebble v2 that were
		// never opened by a build that ratchets their format (18de910).
		return fmt.Errorf("log: %s was written by an older engram in an on-disk format this one cannot read: start it once with an engram built from commit 18de910 (or any build from then until the Pebble v2 move), stop it, then start this one: %w", dir, err)
	case pebble.IsCorruptionError(err):
		return fmt.Errorf("%w: Pebble found damaged files in %s (a write-ahead log or table failed its checksum; the error names the file): "+
			"restore the data directory from a backup, or on a cluster wipe it and let the node resync from a peer: %v", ErrCorrupt, dir, err)
	}
	if free, _, serr := n.space.statfs(dir); serr == nil && free < n.space.reserve {
		return fmt.Errorf("log: opening Pebble in %s failed with only %s free on its disk (likely the cause: free space and start again): %w", dir, humanBytes(free), err)
	}
	return fmt.Errorf("log: opening Pebble in %s: %w", dir, err)
}

// verifyTail is how many newest entries Open always checks, beyond those
// written since the last verified mark.
const verifyTail = 4096

// awaitReady waits until this node leads and has applied everything in its
// raft log (a barrier), so a restarted single node serves reads that
// include every entry it acknowledged before.
func (n *Node) awaitReady(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		f := n.raft.Barrier(time.Until(deadline))
		err := f.Error()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("log: raft did not become ready within %s: %w", timeout, err)
		}
		select {
		case <-n.raft.LeaderCh():
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func keyOffset(k []byte) uint64 { return binary.BigEndian.Uint64(k[len(prefixEntry):]) }

func raftConfig(single bool) *raft.Config {
	c := raft.DefaultConfig()
	c.BatchApplyCh = true
	c.MaxAppendEntries = 256
	c.NoLegacyTelemetry = true
	c.SnapshotThreshold = 8192
	c.TrailingLogs = 10240
	c.SnapshotInterval = 2 * time.Minute
	if single {
		// A lone voter has nobody to wait for: elect itself fast on start.
		c.HeartbeatTimeout = 20 * time.Millisecond
		c.ElectionTimeout = 20 * time.Millisecond
		c.LeaderLeaseTimeout = 20 * time.Millisecond
		c.CommitTimeout = 5 * time.Millisecond
	} else {
		c.HeartbeatTimeout = 500 * time.Millisecond
		c.ElectionTimeout = 1000 * time.Millisecond
		c.LeaderLeaseTimeout = 250 * time.Millisecond
		c.CommitTimeout = 10 * time.Millisecond
	}
	return c
}

// pebbleOptions configures the shared Pebble DB; memoryTarget sizes its
// memtables and block cache (see PebbleMemory).
func pebbleOptions(l zerolog.Logger, fs vfs.FS, memoryTarget int64, damage *tableDamage) *pebble.Options {
	if fs == nil {
		fs = vfs.Default
	}
	memTable, blockCache := PebbleMemory(memoryTarget)
	pl := l.With().Str("subsystem", "pebble").Logger()
	o := &pebble.Options{Logger: pebbleLogger{pl}, FS: walFS{FS: fs, scrub: &walScrub{}}}
	damage.l = pl
	o.EventListener = &pebble.EventListener{
		DataCorruption: damage.report,
		BackgroundError: func(err error) {
			if pebble.IsCorruptionError(err) {
				// Pebble retries the compaction that met the damage;
				// DataCorruption reported it once already.
				pl.Debug().Err(err).Msg("background error")
				return
			}
			pl.Error().Err(err).Msg("background error")
		},
	}
	// Pebble's default 8 MB block cache is also charged for the memtables,
	// which leaves nothing for blocks: every read that misses the memtable
	// decompresses a whole block again (measured: replay of the rooms
	// projection spent 74% of its CPU there; 10k -> 13k entries/s with
	// this cache and the bloom filters below). The cache fills only as
	// blocks are read, so an idle server does not pay for it.
	// Pebble charges the memtables (up to two: one filling, one flushing)
	// to the cache too; size it so that blocks keep their share.
	o.Cache = pebble.NewCache(blockCache + 2*memTable)
	// Projection keys are spread over the whole keyspace (room IDs, user
	// IDs), so every flush overlaps every table of the level below and the
	// compaction that follows rewrites (and zstd-compresses) all of it: with
	// Pebble's 4 MB default, a rebuild of the rooms projection wrote 8x what
	// it flushed and spent ~47% of its CPU compacting. Larger memtables
	// flush less often and absorb the keys a rebuild rewrites batch after
	// batch (room records, counters, checkpoints) before they reach disk
	// (measured on a 200k-entry log: 64 MB memtables cut compaction writes
	// 259 -> 75 MB; rooms rebuild ~18k -> ~27k entries/s). Pebble starts
	// with a 256 KB memtable and doubles it only as writes come, so an idle
	// server pays nothing.
	o.MemTableSize = uint64(memTable)
	// The newest stable on-disk format (an existing data directory is
	// ratcheted up on open, once). Healing a damaged projection excises
	// its dead generation (DB.Excise), which needs virtual sstables
	// (FormatVirtualSSTables).
	o.FormatMajorVersion = pebble.FormatNewest
	o.EnsureDefaults()
	levelOptions(o)
	return o
}

// levelOptions sets the tables' options of every level of o (after
// EnsureDefaults).
func levelOptions(o *pebble.Options) {
	// Entries compress best together: zstd over 32 KiB blocks sees the
	// JSON structure, room IDs and auth events that neighbouring entries
	// share, which per-entry compression cannot (measured by
	// BenchmarkDiskRatio: ~0.40 of canonical JSON size vs ~0.84 per entry).
	// zstd costs CPU on every flush and compaction, so only the bottom
	// levels, where the event log settles for good, use it; the upper
	// levels (and the short-lived raft log) stay on cheap Snappy.
	for i := range o.Levels {
		o.Levels[i].BlockSize = 32 << 10
		// Point reads of keys that do not exist (a projection's "is this
		// new?" checks) skip tables whose filter says no.
		o.Levels[i].FilterPolicy = bloom.FilterPolicy(10)
		o.Levels[i].Compression = func() *sstable.CompressionProfile { return sstable.SnappyCompression }
		if i >= len(o.Levels)-2 {
			o.Levels[i].Compression = func() *sstable.CompressionProfile { return sstable.ZstdCompression }
		}
	}
}

// DB is the shared Pebble DB. Projections use keys starting with 'P'; the
// log uses 'L'.
func (n *Node) DB() *pebble.DB { return n.db }

// Raft exposes raft for cluster tests and membership commands.
// It is nil for a cluster node opened Offline.
func (n *Node) Raft() *raft.Raft { return n.raft }

// IsLeader reports whether this node accepts writes now.
func (n *Node) IsLeader() bool { return n.raft != nil && n.raft.State() == raft.Leader }

// LastOffset is the newest applied offset on this node.
func (n *Node) LastOffset() uint64 { return n.fsm.lastOffset.Load() }

// Wait blocks until LastOffset() > after or ctx is done.
func (n *Node) Wait(ctx context.Context, after uint64) error {
	for {
		ch := n.fsm.waitCh()
		if n.LastOffset() > after {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		case <-n.stop:
			return ErrClosed
		}
	}
}

// Read returns up to max entries with offsets >= from, in order.
func (n *Node) Read(from uint64, max int) ([]Entry, error) {
	if from == 0 {
		from = 1
	}
	last := n.LastOffset()
	if max <= 0 || from > last {
		return nil, nil
	}
	if uint64(max) > last-from+1 {
		max = int(last - from + 1)
	}
	it, err := n.db.NewIter(&pebble.IterOptions{LowerBound: entryKey(from), UpperBound: entryKey(last + 1)})
	if err != nil {
		return nil, err
	}
	defer it.Close()
	out := make([]Entry, 0, min(max, 1024)) // max may be "everything"
	want := from
	for ok := it.First(); ok && len(out) < max; ok = it.Next() {
		se, err := decodeStored(want, it.Value())
		if got := keyOffset(it.Key()); got != want {
			return out, fmt.Errorf("%w at offset %d: entry missing (found %d): restore the data directory from a backup", ErrCorrupt, want, got)
		}
		if err != nil {
			return out, fmt.Errorf("%w at offset %d: %v: restore the data directory from a backup", ErrCorrupt, want, err)
		}
		e := Entry{Offset: want, Kind: se.kind, Time: se.time}
		if se.flags&flagErased != 0 {
			if e, err = erasedEntry(want, se); err != nil {
				return out, fmt.Errorf("%w at offset %d: %v", ErrCorrupt, want, err)
			}
		} else if se.flags&flagZstd != 0 {
			if e.Payload, err = n.dec.DecodeAll(se.payload, nil); err != nil {
				return out, fmt.Errorf("%w at offset %d: payload does not decompress: %v", ErrCorrupt, want, err)
			}
		} else {
			e.Payload = append([]byte(nil), se.payload...)
		}
		out = append(out, e)
		want++
	}
	return out, it.Error()
}

// Close flushes, stops raft and closes Pebble.
func (n *Node) Close() error {
	n.closeOnce.Do(func() {
		n.closeMu.Lock()
		n.closed = true
		n.closeMu.Unlock()
		n.closeErr = n.shutdown()
	})
	return n.closeErr
}

func (n *Node) shutdown() error {
	var errs []error
	close(n.stop)
	if n.raft != nil {
		n.done.Wait()
		if err := n.raft.Shutdown().Error(); err != nil {
			errs = append(errs, err)
		}
	}
	if c, ok := n.trans.(interface{ Close() error }); ok {
		errs = append(errs, c.Close())
	}
	if n.enc != nil {
		errs = append(errs, n.enc.Close())
	}
	if n.dec != nil {
		n.dec.Close()
	}
	// A report in progress holds the lock while it starts its checks;
	// once it is released, every later report sees stop closed.
	n.damage.mu.Lock()
	n.damage.mu.Unlock()
	n.damage.wg.Wait()
	if n.met != nil {
		n.met.pebbleMemory.release(n.db)
	}
	if n.db != nil {
		// Flush the unsynced event-log writes so a clean restart has
		// nothing to re-apply.
		if n.guard.failed() == nil {
			errs = append(errs, n.guard.do("syncing at close", func() error { return n.db.LogData(nil, pebble.Sync) }))
		}
		errs = append(errs, n.closeDB())
	}
	if n.state != nil {
		errs = append(errs, n.state.close())
	}
	return errors.Join(errs...)
}

// closeDB closes Pebble. After a fatal disk error Pebble's state is
// undefined and Close may panic; the node is going away regardless.
func (n *Node) closeDB() (err error) {
	if failed := n.guard.failed(); failed != nil {
		defer func() {
			if r := recover(); r != nil {
				err = failed
			}
		}()
	}
	return n.db.Close()
}
