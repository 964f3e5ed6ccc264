package projections

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"runtime/pprof"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	englog "github.com/engram-hs/engram/log"
)

// ReadCompatible is optionally implemented by a projection whose query
// code can still read a keyspace written by an older schema version. While
// such a projection is rebuilt after a version change, its old generation
// keeps serving (frozen at its checkpoint: WaitApplied for newer offsets
// waits for the switch). Without it, readers block until the rebuilt
// generation takes over.
type ReadCompatible interface {
	ReadsVersion(stored int) bool
}

// ErrClosed is returned by waits and reads once the engine is closed.
var ErrClosed = errors.New("projections: engine closed")

const (
	// An apply batch holds at most this many entries and, beyond its first
	// entry, at most this many payload bytes: big enough to amortise the
	// commit, small enough to keep read-your-writes latency and memory low.
	defaultBatchEntries = 1000
	defaultBatchBytes   = 8 << 20

	// A rebuild has no reader waiting for its batches (nobody reads a
	// shadow generation), so it uses bigger ones: fewer commits, and the
	// per-batch caches of a projection (rooms' room records and counters)
	// are reloaded less often. Measured on a 200k-entry generated log, all
	// projections: 1,000 -> 3,000 entries cut CPU ~10%; 10,000 gained
	// little more and raised peak RSS by ~75 MB.
	defaultRebuildBatchEntries = 5000
	defaultRebuildBatchBytes   = 16 << 20
	// defaultRebuildBatchWrites is what one projection's rebuild batch
	// should write at most (shadowChunk).
	defaultRebuildBatchWrites = 32 << 20
	// rebuildReadAhead bounds how many batches the log reader of a rebuild
	// runs ahead of the slowest projection.
	rebuildReadAhead = 2

	rebuildLogEvery = 5 * time.Second

	// checkpointLag bounds how far a projection's checkpoint on disk may
	// trail what it has applied when its batches write nothing else
	// (applyBatch): what a restart folds again, in vain.
	checkpointLag = 10_000
)

// Engine runs projections over a log: it catches each one up from its
// checkpoint, tails the log, and rebuilds a projection by replay when its
// schema version changes.
type Engine struct {
	log     englog.Log
	db      *pebble.DB
	logger  zerolog.Logger
	metrics *engineMetrics

	batchEntries int
	batchBytes   int

	rebuildBatchEntries int
	rebuildBatchBytes   int
	rebuildBatchWrites  int

	tail tailCache

	// scratchDir holds the rebuilds' scratch stores (scratch.go); ""
	// means the system's temporary directory.
	scratchDir string

	mu    sync.Mutex
	cache *pebble.Cache // of the scratch stores, made by the first

	handles  []*Handle
	byName   map[string]*Handle
	started  bool
	closed   bool
	progress func(name string, applied, target uint64)
	cancel   context.CancelFunc
	wg       sync.WaitGroup
}

// NewEngine returns an engine that folds l into db (the keys starting with
// 'P'). db is usually the log node's own Pebble (englog.Node.DB), so that
// projections and log share one WAL; the engine does not close it.
// metrics may be nil.
func NewEngine(l englog.Log, db *pebble.DB, logger zerolog.Logger, metrics prometheus.Registerer) *Engine {
	e := &Engine{
		log:          l,
		db:           db,
		logger:       logger.With().Str("component", "projections").Logger(),
		batchEntries: defaultBatchEntries,
		batchBytes:   defaultBatchBytes,

		rebuildBatchEntries: defaultRebuildBatchEntries,
		rebuildBatchBytes:   defaultRebuildBatchBytes,
		rebuildBatchWrites:  defaultRebuildBatchWrites,
		byName:              map[string]*Handle{},
	}
	e.metrics = newEngineMetrics(e)
	if metrics != nil {
		if err := metrics.Register(e.metrics); err != nil {
			e.logger.Warn().Err(err).Msg("projection metrics not registered (another engine already registered them on this registry)")
		}
	}
	return e
}

// RebuildIn sets the directory that holds the scratch stores rebuilds fold
// into (a directory on the shared DB's filesystem, so that their tables
// are ingested without a copy). It belongs to the engine: what a rebuild
// cut short left there is deleted when the engine starts. Call it before
// Start or Rebuild; without it, rebuilds use the system's temporary
// directory.
func (e *Engine) RebuildIn(dir string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.scratchDir = dir
}

// OnProgress sets a callback called after each batch of a Rebuild, for
// progress bars. Call it before Rebuild.
func (e *Engine) OnProgress(fn func(name string, applied, target uint64)) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.progress = fn
}

// Register adds a projection. It must be called before Start; it panics on
// a duplicate or invalid name, which is a programming error.
func (e *Engine) Register(p Projection) *Handle {
	name := p.Name()
	if err := validateName(name); err != nil {
		panic(err)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.started || e.closed {
		panic(fmt.Sprintf("projections: Register(%q) after Start or Close", name))
	}
	if _, dup := e.byName[name]; dup {
		panic(fmt.Sprintf("projections: projection %q registered twice", name))
	}
	h := &Handle{
		e:       e,
		p:       p,
		name:    name,
		notify:  make(chan struct{}),
		stopped: make(chan struct{}),
	}
	h.after, _ = p.(AfterCommitter)
	ready := make(chan struct{})
	close(ready)
	h.ready, h.rebuilt = ready, ready
	// Until Start loads the meta, readers see generation 1, which is what
	// a fresh projection will use; Start corrects it for an existing one.
	h.servingPrefix = dataPrefix(name, 1)
	if m, ok, err := e.loadMeta(name); err == nil && ok {
		h.servingPrefix = dataPrefix(name, m.Gen)
		h.applied.Store(m.Applied)
	}
	e.handles = append(e.handles, h)
	e.byName[name] = h
	return h
}

// Handles returns the registered projections in registration order.
func (e *Engine) Handles() []*Handle {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]*Handle(nil), e.handles...)
}

// Start prepares every projection (starting a background rebuild for those
// whose version changed), starts following the log, and returns once every
// projection that serves its current version has applied the log as it
// was when Start was called, so the server answers from up-to-date data
// from its first request. Rebuilds continue in the background.
func (e *Engine) Start(ctx context.Context) error {
	e.mu.Lock()
	if e.started || e.closed {
		e.mu.Unlock()
		return errors.New("projections: Start called twice or after Close")
	}
	e.started = true
	handles := append([]*Handle(nil), e.handles...)
	runCtx, cancel := context.WithCancel(context.Background())
	e.cancel = cancel
	e.mu.Unlock()

	if err := e.clearScratch(); err != nil {
		return err
	}
	var catchUp []*Handle
	for _, h := range handles {
		rebuilding, err := e.prepare(h)
		if err != nil {
			return err
		}
		if !rebuilding {
			catchUp = append(catchUp, h)
		}
	}
	for _, h := range handles {
		e.wg.Add(1)
		go e.run(runCtx, h)
	}
	target := e.log.LastOffset()
	for _, h := range catchUp {
		if err := h.WaitApplied(ctx, target); err != nil {
			var he *HealingError
			if errors.As(err, &he) {
				// Damage found while catching up: it heals in the
				// background and answers 503 meanwhile.
				continue
			}
			return fmt.Errorf("projections: catching up %q to offset %d: %w", h.name, target, err)
		}
	}
	return nil
}

// prepare loads h's meta and, when the registered version differs from
// the stored one, sets up a shadow generation to rebuild into.
func (e *Engine) prepare(h *Handle) (rebuilding bool, err error) {
	m, ok, err := e.loadMeta(h.name)
	if err != nil {
		return false, err
	}
	want := h.p.Version()
	if !ok {
		m = meta{Version: want, Gen: 1, NextGen: 2}
	}
	if m.Version == want {
		if m.ShadowGen != 0 {
			// Left over by an interrupted Rebuild, or by a version that was
			// rolled back before its rebuild finished: the serving
			// generation is valid, drop the partial one.
			if m, err = e.dropShadow(h.name, m); err != nil {
				return false, err
			}
		}
	} else {
		// A shadow left by a rebuild cut short cannot be resumed: what it
		// had folded was in its scratch store (scratch.go). Drop what may
		// have been ingested of it and start over from offset 1.
		restarted := m.ShadowGen != 0
		if m, err = e.freshShadow(h, m); err != nil {
			return false, err
		}
		h.written = newWrittenKeys(m.ShadowGen)
		rebuilding = true
		readable := false
		if rc, ok := h.p.(ReadCompatible); ok {
			readable = rc.ReadsVersion(m.Version)
		}
		e.logger.Warn().Str("projection", h.name).Int("stored_version", m.Version).Int("version", want).
			Bool("old_version_serves", readable).Bool("restarted", restarted).
			Msg("projection schema changed: rebuilding it from the log in the background (from offset 1: a rebuild cut short by a stop starts over)")
		h.rw.Lock()
		h.rebuilt = make(chan struct{})
		if !readable {
			h.ready = make(chan struct{})
		}
		h.rw.Unlock()
	}
	h.meta, h.stored = m, m.Applied
	h.rw.Lock()
	h.servingPrefix = dataPrefix(h.name, m.Gen)
	h.rw.Unlock()
	h.advance(m.Applied)
	return rebuilding, nil
}

func (e *Engine) loadMeta(name string) (meta, bool, error) {
	v, closer, err := e.db.Get(metaKey(name))
	if errors.Is(err, pebble.ErrNotFound) {
		return meta{}, false, nil
	}
	if err != nil {
		return meta{}, false, fmt.Errorf("projections: reading meta of %q: %w", name, err)
	}
	defer closer.Close()
	m, err := decodeMeta(v)
	if err != nil {
		return meta{}, false, fmt.Errorf("projections: meta of %q is corrupt (%v): rebuild it with `engram rebuild --projection %s`", name, err, name)
	}
	return m, true, nil
}

func (e *Engine) dropShadow(name string, m meta) (meta, error) {
	b := e.db.NewBatch()
	defer b.Close()
	p := dataPrefix(name, m.ShadowGen)
	m.ShadowGen, m.ShadowVersion, m.ShadowApplied = 0, 0, 0
	if err := b.DeleteRange(p, prefixEnd(p), nil); err != nil {
		return meta{}, err
	}
	if err := b.Set(metaKey(name), m.encode(), nil); err != nil {
		return meta{}, err
	}
	return m, b.Commit(pebble.NoSync)
}

func (e *Engine) newShadow(name string, m meta, version int) (meta, error) {
	m.ShadowGen, m.ShadowVersion, m.ShadowApplied = m.NextGen, version, 0
	m.NextGen++
	// Writing the meta now (not with the first batch) reserves the
	// generation number even if the log is empty.
	if err := e.db.Set(metaKey(name), m.encode(), pebble.NoSync); err != nil {
		return meta{}, err
	}
	return m, nil
}

// run follows the log for one projection until ctx is cancelled or Apply
// fails.
func (e *Engine) run(ctx context.Context, h *Handle) {
	defer e.wg.Done()
	var err error
	pprof.Do(ctx, foldLabels(h), func(ctx context.Context) { err = e.follow(ctx, h) })
	if ctx.Err() != nil {
		err = ErrClosed
	} else {
		e.logger.Error().Err(err).Str("projection", h.name).Uint64("applied", h.Applied()).
			Msgf("projection stopped: requests that need it will fail; fix the cause and restart, or rebuild it with `engram rebuild --projection %s`", h.name)
	}
	h.stop(err)
}

func (e *Engine) follow(ctx context.Context, h *Handle) error {
	if h.meta.ShadowGen != 0 {
		if err := e.replayShadows(ctx, []*Handle{h}, nil); err != nil {
			return err
		}
		// The projection serves at once; its new generation settles
		// meanwhile (Close waits for it, and cancels it).
		prefix := dataPrefix(h.name, h.meta.Gen)
		e.wg.Add(1)
		go func() {
			defer e.wg.Done()
			if err := e.settle(ctx, prefix); err != nil && ctx.Err() == nil {
				e.logger.Warn().Err(err).Str("projection", h.name).
					Msg("compacting the rebuilt projection failed; reads stay slower until Pebble's own compactions reach it")
			}
		}()
	}
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		if h.damage() != nil {
			if err := e.healHandle(ctx, h); err != nil {
				return err
			}
			continue
		}
		entries, pdus, err := e.readTail(h.name, h.meta.Applied+1, e.batchEntries, e.batchBytes)
		if err != nil {
			return err
		}
		if len(entries) == 0 {
			if err := e.waitLog(ctx, h, h.meta.Applied); err != nil {
				return err
			}
			continue
		}
		if i := slices.IndexFunc(entries, func(en englog.Entry) bool { return en.Kind == englog.KindErase }); i == 0 {
			// The serving generation may hold what the erasure removed
			// from the log: fold the rewritten log afresh (heal.go). The
			// tail cache may hold the erased entries as they were: it
			// starts over, so their content does not stay in memory
			// (the rebuild itself reads the log, never the cache).
			e.tail.reset()
			if err := e.refoldAfterErasure(ctx, h, entries[0].Offset); err != nil {
				return err
			}
			continue
		} else if i > 0 {
			entries = entries[:i]
		}
		if err := e.applyBatch(h, false, entries, pdus); err != nil {
			if IsDamage(err) {
				// What Apply read of the projection is damaged: nothing
				// of the batch was committed; fold the log again.
				h.reportDamage(dataPrefix(h.name, h.meta.Gen), err)
				continue
			}
			return err
		}
	}
}

// replayShadows fills the shadow generations of hs, which must all start
// from the same offset (1: a shadow starts empty), up to the end of the
// log, in one scratch store (scratch.go), then switches each to its own.
// The log is read (and decompressed) once, on its own goroutine,
// and every batch is handed to all of hs, each applying on its own
// goroutine: a rebuild is otherwise CPU-bound on one core, and reading the
// log once per projection cost as much as folding the cheap ones. The
// slowest projection sets the pace; the others wait at most
// rebuildReadAhead batches ahead of it, so memory stays bounded. progress,
// when set, is called (never concurrently) after each batch.
func (e *Engine) replayShadows(ctx context.Context, hs []*Handle, progress func(name string, applied uint64)) error {
	from := hs[0].meta.ShadowApplied + 1
	for _, h := range hs {
		if h.meta.ShadowApplied+1 != from {
			return fmt.Errorf("projections: internal error: replaying %q from %d with %q from %d", h.name, h.meta.ShadowApplied+1, hs[0].name, from)
		}
	}
	names := make([]string, len(hs))
	for i, h := range hs {
		names[i] = h.name
	}
	label := strings.Join(names, ", ")
	sc, err := e.openScratch()
	if err != nil {
		return err
	}
	defer func() {
		for _, h := range hs {
			h.shadow = shadowStore{}
		}
		// What the store wrote is the rebuild's write amplification,
		// which the shared DB's metrics no longer show.
		t, u := sc.db.Metrics().Total(), sc.unread.Metrics().Total()
		e.logger.Info().Str("projections", label).Uint64("flushed_bytes", t.TableBytesFlushed).
			Uint64("compacted_bytes", t.TableBytesCompacted).Uint64("unread_flushed_bytes", u.TableBytesFlushed).
			Msg("rebuild's scratch store closed")
		if err := sc.close(); err != nil {
			e.logger.Warn().Err(err).Str("dir", sc.dir).Msg("deleting a rebuild's scratch store failed; delete the directory by hand")
		}
	}()
	for i, h := range hs {
		h.shadow = shadowStore{sc, scratchPrefix(i)}
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	feeds := make([]chan readResult, len(hs))
	for i := range feeds {
		feeds[i] = make(chan readResult, rebuildReadAhead)
	}
	go func() {
		defer func() {
			for _, f := range feeds {
				close(f)
			}
		}()
		for {
			entries, err := e.readBatch(label, from, e.rebuildBatchEntries, e.rebuildBatchBytes)
			pdus := newPDUMemo(entries)
			for _, f := range feeds {
				select {
				case f <- readResult{entries, pdus, err}:
				case <-ctx.Done():
					return
				}
			}
			if err != nil || len(entries) == 0 {
				return
			}
			from = entries[len(entries)-1].Offset + 1
		}
	}()

	var progressMu sync.Mutex
	errs := make([]error, len(hs))
	var wg sync.WaitGroup
	for i, h := range hs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var report func(uint64)
			if progress != nil {
				report = func(applied uint64) {
					progressMu.Lock()
					defer progressMu.Unlock()
					progress(h.name, applied)
				}
			}
			pprof.Do(ctx, foldLabels(h), func(ctx context.Context) { errs[i] = e.foldShadow(ctx, h, feeds[i], report) })
			if errs[i] != nil {
				cancel() // the others cannot finish without the reader
			}
		}()
	}
	wg.Wait()
	// The first projection to fail cancels the others: report its error,
	// not theirs.
	for _, err := range errs {
		if err != nil && !errors.Is(err, context.Canceled) {
			return err
		}
	}
	return errors.Join(errs...)
}

// foldShadow applies the batches of feed to h's shadow generation and
// switches to it when the feed reaches the end of the log.
func (e *Engine) foldShadow(ctx context.Context, h *Handle, feed <-chan readResult, progress func(applied uint64)) error {
	lastLog := time.Now()
	var lastBatch []englog.Entry
	for {
		var (
			r  readResult
			ok bool
		)
		select {
		case r, ok = <-feed:
		case <-ctx.Done():
			return ctx.Err()
		}
		if !ok {
			// The reader stopped without reaching the end: cancelled.
			return context.Cause(ctx)
		}
		if r.err != nil {
			return r.err
		}
		if len(r.entries) == 0 {
			return e.switchToShadow(ctx, h, lastBatch)
		}
		for rest := r.entries; len(rest) > 0; {
			n := shadowChunk(len(rest), h.shadowBytesPerEntry, e.rebuildBatchWrites)
			if err := e.applyBatch(h, true, rest[:n], r.pdus); err != nil {
				return err
			}
			rest = rest[n:]
		}
		lastBatch = r.entries
		if progress != nil {
			progress(h.meta.ShadowApplied)
		}
		if time.Since(lastLog) >= rebuildLogEvery {
			lastLog = time.Now()
			e.logger.Info().Str("projection", h.name).Uint64("applied", h.meta.ShadowApplied).
				Uint64("log_end", e.log.LastOffset()).Msg("rebuilding projection")
		}
	}
}

// shadowChunk is how many of n entries a shadow's next batch folds, given
// what its last one wrote per entry: as many as keep the batch's writes
// near limit bytes. The entries of a rebuild's batch are read for
// every projection at once, and most write a few MB from them; but the
// notifications fold writes a record per local member notified (a
// 5,000-entry batch of a log whose rooms hold ~100 local members each was
// ~170 MB of writes, held in the Go heap twice over until the commit: a
// replay of 20,000 such entries peaked at 863 MB of RSS and spent a third
// of its CPU in the GC). A fold's result does not depend on where its
// batches are cut: a live projection folds the same entries in batches of
// whatever the log held at each wake-up.
func shadowChunk(n int, bytesPerEntry float64, limit int) int {
	if bytesPerEntry <= 0 {
		return n
	}
	return max(1, min(n, int(float64(limit)/bytesPerEntry)))
}

// foldLabels labels a fold's goroutine (and those it starts) in CPU
// profiles, such as /_engram/debug/pprof's, with the projection's name.
func foldLabels(h *Handle) pprof.LabelSet { return pprof.Labels("projection", h.name) }

type readResult struct {
	entries []englog.Entry
	pdus    *pduMemo // the folds' shared decoding of entries
	err     error
}

// readBatch reads the next batch of at most max entries and (beyond the
// first) maxBytes of payload, for the projections named name, from offset
// from: empty when the log has nothing newer.
func (e *Engine) readBatch(name string, from uint64, max, maxBytes int) ([]englog.Entry, error) {
	entries, err := e.log.Read(from, max)
	if err != nil {
		return nil, fmt.Errorf("projections: reading the log from offset %d for %q: %w", from, name, err)
	}
	return checkBatch(name, from, entries, maxBytes)
}

// readTail is readBatch for a projection following the log: the entries
// another projection read moments ago come from the shared tail cache,
// and what it lacks is read from the log once and added to it.
func (e *Engine) readTail(name string, from uint64, max, maxBytes int) ([]englog.Entry, *pduMemo, error) {
	entries, slots := e.tail.get(from, max)
	next := from + uint64(len(entries))
	if len(entries) < max && next <= e.log.LastOffset() {
		more, err := e.log.Read(next, max-len(entries))
		if err != nil {
			return nil, nil, fmt.Errorf("projections: reading the log from offset %d for %q: %w", next, name, err)
		}
		e.tail.put(more)
		// What the cache now holds of them (another fold's copy, where it
		// read them first), so that the folds share their decoding too.
		cached, cachedSlots := e.tail.get(next, len(more))
		entries, slots = append(entries, cached...), append(slots, cachedSlots...)
		if len(cached) < len(more) {
			entries = append(entries, more[len(cached):]...)
			slots = append(slots, make([]*pduSlot, len(more)-len(cached))...)
		}
	}
	entries, err := checkBatch(name, from, entries, maxBytes)
	if err != nil {
		return nil, nil, err
	}
	return entries, &pduMemo{first: from, slots: slots[:len(entries)]}, nil
}

// checkBatch checks that entries hold consecutive offsets from from and
// cuts them at maxBytes of payload (beyond the first).
func checkBatch(name string, from uint64, entries []englog.Entry, maxBytes int) ([]englog.Entry, error) {
	size := 0
	for i, en := range entries {
		if en.Offset != from+uint64(i) {
			return nil, fmt.Errorf("projections: the log returned offset %d where %d was expected for %q: %w", en.Offset, from+uint64(i), name, englog.ErrCorrupt)
		}
		size += len(en.Payload)
		if i > 0 && size > maxBytes {
			return entries[:i], nil
		}
	}
	return entries, nil
}

// applyBatch folds entries (which follow the checkpoint) into the serving
// generation, and commits them with the new checkpoint, or into the shadow
// one, in its scratch store. pdus (nil: none) is their decoding shared
// with the other folds (ReadPDU).
func (e *Engine) applyBatch(h *Handle, shadow bool, entries []englog.Entry, pdus *pduMemo) error {
	m := h.meta
	gen, from := m.Gen, m.Applied+1
	if shadow {
		gen, from = m.ShadowGen, m.ShadowApplied+1
	}
	if entries[0].Offset != from {
		return fmt.Errorf("projections: internal error: batch for %q starts at %d, checkpoint wants %d", h.name, entries[0].Offset, from)
	}
	start := time.Now()
	db, prefix := e.db, dataPrefix(h.name, gen)
	if shadow {
		db, prefix = h.shadow.s.db, h.shadow.prefix
	}
	b := db.NewIndexedBatch()
	defer b.Close()
	var written *writtenKeys
	if shadow && h.written != nil && h.written.gen == gen {
		written = h.written
	}
	w := newBatchWriter(b, prefix, written, pdus)
	if err := h.p.Apply(w, entries); err != nil {
		return fmt.Errorf("projections: %q failed to apply offsets %d..%d: %w", h.name, from, entries[len(entries)-1].Offset, err)
	}
	last := entries[len(entries)-1].Offset
	if shadow {
		// A shadow's checkpoint is not stored: a rebuild cut short starts
		// over (scratch.go), and the switch writes the rebuilt
		// generation's.
		m.ShadowApplied = last
		h.shadowBytesPerEntry = float64(len(b.Repr())+len(w.unread.buf)) / float64(len(entries))
		if err := commitRebuild(db, h.shadow.s.unread, b, &w.unread); err != nil {
			return fmt.Errorf("projections: committing %q's rebuild at offset %d: %w", h.name, last, err)
		}
		h.meta = m
		e.metrics.applyDuration.WithLabelValues(h.name).Observe(time.Since(start).Seconds())
		return nil
	}
	m.Applied = last
	if b.Count() == 0 && len(w.unread.recs) == 0 && last-h.stored < checkpointLag {
		// Nothing of the batch changes the projection (most of them fold
		// only a few kinds of entry): only the checkpoint would move, and
		// committing it was a Pebble commit (a WAL write, in the WAL the
		// log syncs) per projection for every batch of every other
		// kind. Readers see the offset applied; the checkpoint on disk
		// follows with the next batch that writes, or checkpointLag
		// entries on. A restart folds the entries in between again, which
		// changes nothing again: a fold is deterministic.
		h.meta = m
		e.metrics.applyDuration.WithLabelValues(h.name).Observe(time.Since(start).Seconds())
		if h.after != nil {
			h.after.AfterCommit(entries)
		}
		h.advance(last)
		return nil
	}
	// The checkpoint rides in the same batch as the writes, so the two can
	// never disagree. NoSync: the log is the durable truth and has already
	// synced these entries; if the machine crashes, Pebble's WAL loses at
	// most a suffix of our batches, checkpoint included, and we re-apply
	// that suffix from the log on restart. (When the DB is the log node's
	// own, the WAL is shared and ordered, so a surviving projection batch
	// implies the log entries it folded survived too.) Syncing here would
	// double the fsyncs for nothing.
	if err := b.Set(metaKey(h.name), m.encode(), nil); err != nil {
		return err
	}
	if err := commitSorted(e.db, b, &w.unread); err != nil {
		return fmt.Errorf("projections: committing %q at offset %d: %w", h.name, last, err)
	}
	h.meta = m
	h.stored = last
	e.metrics.applyDuration.WithLabelValues(h.name).Observe(time.Since(start).Seconds())
	if h.after != nil {
		h.after.AfterCommit(entries)
	}
	h.advance(last)
	return nil
}

// switchToShadow makes the fully caught-up shadow generation the serving
// one and deletes the old generation, in one batch: readers see either the
// old generation or the new one, never a mix. lastBatch, the rebuild's
// last batch, goes to AfterCommit: everything up to its last offset became
// visible at once.
func (e *Engine) switchToShadow(ctx context.Context, h *Handle, lastBatch []englog.Entry) error {
	m := h.meta
	old := dataPrefix(h.name, m.Gen)
	next := m
	next.Version, next.Gen, next.Applied = m.ShadowVersion, m.ShadowGen, m.ShadowApplied
	next.ShadowVersion, next.ShadowGen, next.ShadowApplied = 0, 0, 0
	if next.Applied < m.Applied {
		// The shadow has read the log to its end, which the old generation
		// cannot have passed.
		return fmt.Errorf("projections: rebuilt %q reached offset %d but the old generation had %d: the log shrank", h.name, next.Applied, m.Applied)
	}
	// Nobody reads the shadow generation before the batch below makes it
	// serve, so it can be ingested first.
	if err := h.shadow.s.ingest(ctx, e.db, h.shadow.prefix, dataPrefix(h.name, next.Gen)); err != nil {
		return fmt.Errorf("projections: moving %q's rebuilt generation into the store: %w", h.name, err)
	}
	b := e.db.NewBatch()
	defer b.Close()
	if err := b.Set(metaKey(h.name), next.encode(), nil); err != nil {
		return err
	}
	if err := b.DeleteRange(old, prefixEnd(old), nil); err != nil {
		return err
	}
	h.rw.Lock()
	err := b.Commit(pebble.NoSync)
	if err == nil {
		h.servingPrefix = dataPrefix(h.name, next.Gen)
		// Damage found in the generation just deleted is gone with it, and
		// is cleared before applied moves: a WaitApplied that returns must
		// be followed by reads that succeed.
		h.heal.mu.Lock()
		if h.heal.cause != nil && bytes.Equal(h.heal.gen, old) {
			h.heal.cause, h.heal.gen = nil, nil
		}
		h.heal.mu.Unlock()
		for _, ch := range []chan struct{}{h.ready, h.rebuilt} {
			select {
			case <-ch:
			default:
				close(ch)
			}
		}
	}
	h.rw.Unlock()
	if err != nil {
		return fmt.Errorf("projections: switching %q to its rebuilt generation: %w", h.name, err)
	}
	h.meta = next
	h.written = nil // live writes would grow it without end
	if h.afterSwitch != nil {
		if err := h.afterSwitch(ctx); err != nil {
			return err
		}
	}
	if h.after != nil && len(lastBatch) > 0 {
		h.after.AfterCommit(lastBatch)
	}
	h.advance(next.Applied)
	e.logger.Info().Str("projection", h.name).Int("version", next.Version).Uint64("applied", next.Applied).
		Msg("projection rebuilt; now serving the new generation")
	return nil
}

// Rebuild drops the named projections (all when none is named) and
// replays them from offset 1 to the end of the log, all of them together
// in one pass over the log, reporting progress through OnProgress (called
// from several goroutines, never concurrently). It is for offline use (engram rebuild, engram
// verify): call it before Start or without Start at all.
func (e *Engine) Rebuild(ctx context.Context, names ...string) error {
	e.mu.Lock()
	if e.started || e.closed {
		e.mu.Unlock()
		return errors.New("projections: Rebuild is for offline use; stop the server (or call it before Start)")
	}
	var hs []*Handle
	if len(names) == 0 {
		hs = append(hs, e.handles...)
	}
	for i, n := range names {
		h, ok := e.byName[n]
		if !ok {
			e.mu.Unlock()
			return fmt.Errorf("projections: no projection named %q (known: %v)", n, e.namesLocked())
		}
		if slices.Contains(names[:i], n) {
			continue
		}
		hs = append(hs, h)
	}
	progress := e.progress
	e.mu.Unlock()

	if err := e.clearScratch(); err != nil {
		return err
	}
	for _, h := range hs {
		m, ok, err := e.loadMeta(h.name)
		if err != nil {
			// A corrupt meta is one reason to rebuild: start afresh, with
			// generation numbers that cannot collide with what is there.
			e.logger.Warn().Err(err).Str("projection", h.name).Msg("discarding the projection's meta")
			if err := e.dropAll(h.name); err != nil {
				return err
			}
			ok = false
		}
		if !ok {
			m = meta{Version: h.p.Version(), Gen: 1, NextGen: 2}
		}
		if m, err = e.freshShadow(h, m); err != nil {
			return err
		}
		h.meta = m
		h.written = newWrittenKeys(m.ShadowGen)
	}
	if len(hs) == 0 {
		return nil
	}
	var report func(string, uint64)
	if progress != nil {
		target := e.log.LastOffset()
		report = func(name string, applied uint64) { progress(name, applied, max(target, applied)) }
		for _, h := range hs {
			report(h.name, 0)
		}
	}
	// All of them start from offset 1: one pass over the log feeds them all.
	return e.replayShadows(ctx, hs, report)
}

// Settle compacts the serving generation of the named projections (all of
// them when none is named), for use offline after Rebuild; a server
// settles what it rebuilt at start in the background. See settle.
func (e *Engine) Settle(ctx context.Context, names ...string) error {
	e.mu.Lock()
	if len(names) == 0 {
		names = e.namesLocked()
	}
	prefixes := make([][]byte, 0, len(names))
	for _, n := range names {
		h, ok := e.byName[n]
		if !ok {
			e.mu.Unlock()
			return fmt.Errorf("projections: no projection named %q (known: %v)", n, e.namesLocked())
		}
		prefixes = append(prefixes, dataPrefix(h.name, h.meta.Gen))
	}
	e.mu.Unlock()
	for i, prefix := range prefixes {
		if err := e.settle(ctx, prefix); err != nil {
			return fmt.Errorf("projections: compacting the rebuilt %q: %w", names[i], err)
		}
	}
	return nil
}

// settle compacts a freshly rebuilt generation, the keys under prefix. A
// rebuild leaves its generation in tables spread over the upper levels
// that still owe compactions, and every read pays for them until Pebble's
// own compactions get there: a search over 1,000,000 entries had a rank
// p99 of 72.8 ms right after the fold and 8.7 ms once its range was
// compacted (bench/README.md, 2026-12-04 (night), search v5).
func (e *Engine) settle(ctx context.Context, prefix []byte) error {
	return e.db.Compact(ctx, prefix, prefixEnd(prefix), false)
}

// dropAll deletes every key of a projection, meta included.
func (e *Engine) dropAll(name string) error {
	b := e.db.NewBatch()
	defer b.Close()
	p := append([]byte{prefixByte}, name...)
	p = append(p, 0)
	if err := b.DeleteRange(p, prefixEnd(p), nil); err != nil {
		return err
	}
	if err := b.Delete(metaKey(name), nil); err != nil {
		return err
	}
	return b.Commit(pebble.NoSync)
}

func (e *Engine) namesLocked() []string {
	out := make([]string, 0, len(e.handles))
	for _, h := range e.handles {
		out = append(out, h.name)
	}
	return out
}

// Digest is a SHA-256 over the serving generation's keys and values (not
// over the meta): two stores that folded the same log prefix with the
// same code have equal digests.
func (e *Engine) Digest(name string) ([]byte, error) {
	e.mu.Lock()
	h, ok := e.byName[name]
	e.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("projections: no projection named %q", name)
	}
	h.rw.RLock()
	prefix := h.servingPrefix
	it, err := e.db.NewIter(&pebble.IterOptions{LowerBound: prefix, UpperBound: prefixEnd(prefix)})
	h.rw.RUnlock()
	if err != nil {
		return nil, err
	}
	sum := sha256.New()
	var n [binary.MaxVarintLen64]byte
	for it.First(); it.Valid(); it.Next() {
		k, v := it.Key()[len(prefix):], it.Value()
		sum.Write(n[:binary.PutUvarint(n[:], uint64(len(k)))])
		sum.Write(k)
		sum.Write(n[:binary.PutUvarint(n[:], uint64(len(v)))])
		sum.Write(v)
	}
	if err := it.Close(); err != nil {
		return nil, err
	}
	return sum.Sum(nil), nil
}

// DiskUsage estimates the bytes on disk of the serving generation of a
// projection (Pebble's estimate: the tables overlapping its keys, in
// proportion, and nothing of what is still only in memtables).
func (e *Engine) DiskUsage(name string) (uint64, error) {
	e.mu.Lock()
	h, ok := e.byName[name]
	e.mu.Unlock()
	if !ok {
		return 0, fmt.Errorf("projections: no projection named %q", name)
	}
	h.rw.RLock()
	prefix := h.servingPrefix
	h.rw.RUnlock()
	return e.db.EstimateDiskUsage(prefix, prefixEnd(prefix))
}

// Close stops following the log. A batch being applied is finished and
// committed first, so nothing is left half-done. It does not close the DB.
func (e *Engine) Close() error {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return nil
	}
	e.closed = true
	cancel := e.cancel
	handles := append([]*Handle(nil), e.handles...)
	e.mu.Unlock()
	if cancel != nil {
		cancel()
		e.wg.Wait()
	}
	for _, h := range handles {
		h.stop(ErrClosed) // for handles that never ran
	}
	e.mu.Lock()
	if e.cache != nil {
		e.cache.Unref() // each scratch store held its own reference
		e.cache = nil
	}
	e.mu.Unlock()
	return nil
}

// Handle is a registered projection as its readers see it.
type Handle struct {
	e     *Engine
	p     Projection
	name  string
	after AfterCommitter

	// meta is owned by the goroutine applying the projection (or by
	// Rebuild); nobody else touches it.
	meta meta
	// written, owned like meta, remembers the keys written to the shadow
	// generation this process created, while it is being built.
	written *writtenKeys
	// shadow, owned like meta, is where in a scratch store the shadow
	// generation is folded while it is being built.
	shadow shadowStore
	// shadowBytesPerEntry, owned like meta, is what the shadow's last
	// batch wrote per entry folded (foldShadow sizes the next by it).
	shadowBytesPerEntry float64
	// afterSwitch, owned like meta, is run after the switch to a rebuilt
	// generation and before applied moves (refoldAfterErasure).
	afterSwitch func(context.Context) error
	// stored, owned like meta, is at most the Applied of the checkpoint
	// on disk (see checkpointLag).
	stored uint64

	// rw orders readers that resolve the serving generation (and open a
	// snapshot or iterator on it) against the switch to a rebuilt one,
	// which deletes the old generation.
	rw            sync.RWMutex
	servingPrefix []byte
	ready         chan struct{} // closed while servingPrefix is readable
	rebuilt       chan struct{} // closed while servingPrefix has the registered version

	applied atomic.Uint64

	heal healState

	notifyMu sync.Mutex
	notify   chan struct{} // closed and replaced whenever applied moves or the projection stops
	err      error         // why the projection stopped
	stopped  chan struct{}
	stopOnce sync.Once
}

// Name is the projection's name.
func (h *Handle) Name() string { return h.name }

// Applied is the last log offset readers can see folded in.
func (h *Handle) Applied() uint64 { return h.applied.Load() }

// Reader is a live view of the serving generation: each call reads the
// newest committed state. While a rebuild makes the projection unreadable,
// calls block until it finishes (or the engine closes).
func (h *Handle) Reader() Reader { return waitingReader{h} }

// Snapshot is a consistent point-in-time view; call release (once or
// more) when done, or Pebble keeps the snapshot's data alive.
func (h *Handle) Snapshot() (Reader, func()) {
	var (
		snap   *pebble.Snapshot
		prefix []byte
	)
	if err := h.withServing(func(s scoped) {
		snap = h.e.db.NewSnapshot()
		prefix = s.prefix
	}); err != nil {
		return errReader{err}, func() {}
	}
	var once sync.Once
	return damageAware{scoped{r: snap, prefix: prefix}, h}, func() { once.Do(func() { snap.Close() }) }
}

// WaitApplied blocks until the projection has applied offset (so a reader
// sees the effect of an entry the caller appended), ctx is done, or the
// projection stopped.
func (h *Handle) WaitApplied(ctx context.Context, offset uint64) error {
	for {
		h.notifyMu.Lock()
		ch, err := h.notify, h.err
		h.notifyMu.Unlock()
		if h.applied.Load() >= offset {
			return nil
		}
		if err != nil {
			return err
		}
		if herr := h.healingErr(); herr != nil {
			return herr
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// WaitRebuilt blocks while a rebuild after a version change is under way,
// until the rebuilt generation serves. WaitApplied alone does not tell: an
// old generation that stays readable may already hold the offset waited
// for. Tools that compare projections (engram verify) need it.
func (h *Handle) WaitRebuilt(ctx context.Context) error {
	h.rw.RLock()
	ch := h.rebuilt
	h.rw.RUnlock()
	select {
	case <-ch:
		return nil
	case <-h.stopped:
		select {
		case <-ch:
			return nil
		default:
		}
		h.notifyMu.Lock()
		defer h.notifyMu.Unlock()
		return h.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (h *Handle) advance(offset uint64) {
	h.applied.Store(offset)
	h.notifyMu.Lock()
	close(h.notify)
	h.notify = make(chan struct{})
	h.notifyMu.Unlock()
}

// broadcast wakes WaitApplied callers without moving applied (the
// projection started or finished healing).
func (h *Handle) broadcast() {
	h.notifyMu.Lock()
	close(h.notify)
	h.notify = make(chan struct{})
	h.notifyMu.Unlock()
}

func (h *Handle) stop(err error) {
	h.stopOnce.Do(func() {
		h.notifyMu.Lock()
		h.err = err
		close(h.notify)
		h.notify = make(chan struct{})
		h.notifyMu.Unlock()
		close(h.stopped)
	})
}

// withServing runs fn on the serving generation, waiting while none is
// readable, and fails fast with a *HealingError while the projection heals
// from damage. fn runs under the read lock, so the generation it sees is
// not deleted before fn has opened what it needs.
func (h *Handle) withServing(fn func(scoped)) error {
	for {
		if err := h.healingErr(); err != nil {
			return err
		}
		h.rw.RLock()
		ready := h.ready
		select {
		case <-ready:
			fn(scoped{r: h.e.db, prefix: h.servingPrefix})
			h.rw.RUnlock()
			return nil
		default:
		}
		h.rw.RUnlock()
		select {
		case <-ready:
		case <-h.stopped:
			h.notifyMu.Lock()
			err := h.err
			h.notifyMu.Unlock()
			return err
		}
	}
}

type errReader struct{ err error }

func (r errReader) Get([]byte) ([]byte, bool, error) { return nil, false, r.err }
func (r errReader) Iter(_, _ []byte) Iterator        { return errIterator{r.err} }
