package projections

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"regexp"
	"sync"
	"time"

	"github.com/cockroachdb/pebble/v2"
)

// Self-healing. The log is the truth and every projection is a fold of it,
// so damage to a projection's stored data (a table block that fails its
// checksum, a record that does not decode) is repaired by folding the log
// again, without a restart: the first read that finds the damage marks the
// projection broken, its goroutine rebuilds it from offset 1 into a fresh
// generation (as after a schema change), and the switch to that generation
// deletes the damaged one. Meanwhile every request that needs the
// projection fails fast with a *HealingError (the API answers 503 with
// Retry-After) rather than being served from damaged data, and so never
// silently gets less.

// ErrDamaged marks an error as damage to a projection's stored data, as
// opposed to a bug or a failure of the log. Projection code wraps its
// decoding failures with Damaged; Pebble's checksum failures are
// recognised as they are.
var ErrDamaged = errors.New("projection data damaged")

// HealingError answers a read of a projection that is being rebuilt from
// the log because its stored data was found damaged.
type HealingError struct {
	Projection string
	// RetryAfter is an estimate of how long the rebuild still takes.
	RetryAfter time.Duration
	// Cause is the damage that started the rebuild.
	Cause error
}

func (e *HealingError) Error() string {
	return fmt.Sprintf("projection %s is being rebuilt from the log after damage to its stored data (%v); retry in %s", e.Projection, e.Cause, e.RetryAfter.Round(time.Second))
}

func (e *HealingError) Unwrap() error { return e.Cause }

// IsDamage reports whether err is damage to stored projection data: a
// Pebble checksum (corruption) error or an error wrapping ErrDamaged.
func IsDamage(err error) bool {
	return err != nil && (pebble.IsCorruptionError(err) || errors.Is(err, ErrDamaged))
}

// Damaged reports that the record at key, read through r, did not decode
// (err says why). When r is a serving projection's Reader, the projection
// starts healing and the result is a *HealingError; otherwise it is err
// marked with ErrDamaged, which stops an Apply from committing and makes
// the engine heal the projection.
func Damaged(r Reader, key []byte, err error) error {
	d := fmt.Errorf("%w: record %q: %w", ErrDamaged, key, err)
	if dr, ok := r.(damageReader); ok {
		return dr.damaged(d)
	}
	return d
}

// damageReader is a Reader bound to one generation of a handle, through
// which damage is reported.
type damageReader interface {
	damaged(err error) error
}

// tableFile pulls the table file out of Pebble's checksum error
// ("pebble: file 000123: block 369592/1880: crc32c checksum mismatch").
var tableFile = regexp.MustCompile(`pebble: file (\d+)`)

func damagedFile(err error) string {
	if m := tableFile.FindStringSubmatch(err.Error()); m != nil {
		return m[1] + ".sst"
	}
	return ""
}

const (
	// healRetryDefault is what Retry-After says before the rebuild has
	// measured its own speed.
	healRetryDefault = 2 * time.Second
	healRetryMax     = 60 * time.Second
)

// healState is a handle's damage: set by the first read that finds it,
// cleared when the rebuilt generation serves.
type healState struct {
	mu      sync.Mutex
	cause   error  // nil while healthy
	gen     []byte // the serving prefix the damage was found in
	wake    context.CancelFunc
	started time.Time
	// rebuild progress, for the Retry-After estimate
	applied, target uint64
}

// healingErr is the error reads get while the handle heals, or nil.
func (h *Handle) healingErr() error {
	h.heal.mu.Lock()
	defer h.heal.mu.Unlock()
	if h.heal.cause == nil {
		return nil
	}
	return &HealingError{Projection: h.name, RetryAfter: h.retryAfterLocked(), Cause: h.heal.cause}
}

func (h *Handle) retryAfterLocked() time.Duration {
	s := &h.heal
	elapsed := time.Since(s.started)
	if s.applied == 0 || elapsed <= 0 {
		return healRetryDefault
	}
	rate := float64(s.applied) / elapsed.Seconds() // entries per second
	left := time.Duration(float64(s.target-min(s.applied, s.target)) / rate * float64(time.Second))
	return min(max(left, time.Second), healRetryMax)
}

// reportDamage marks the handle broken because a read of generation gen
// (a serving prefix) found err, and wakes its goroutine to heal it. It
// returns what the reader should answer. Damage found in a generation
// that no longer serves (a reader that began before a switch) is not
// news: its reader just fails, retryably.
func (h *Handle) reportDamage(gen []byte, err error) error {
	h.e.mu.Lock()
	running := h.e.started && !h.e.closed
	h.e.mu.Unlock()
	if !running {
		// Offline (engram verify, rebuild): nobody heals; say what it is.
		return err
	}
	h.rw.RLock()
	current := bytes.Equal(gen, h.servingPrefix)
	h.rw.RUnlock()
	s := &h.heal
	s.mu.Lock()
	if s.cause != nil || !current {
		cause := s.cause
		if cause == nil {
			cause = err
		}
		defer s.mu.Unlock()
		return &HealingError{Projection: h.name, RetryAfter: h.retryAfterLocked(), Cause: cause}
	}
	s.cause, s.gen, s.started, s.applied, s.target = err, gen, time.Now(), 0, 0
	wake := s.wake
	s.mu.Unlock()

	file := damagedFile(err)
	ev := h.e.logger.Error().Str("projection", h.name)
	if file != "" {
		ev = ev.Str("file", file)
	}
	ev.Err(err).Msgf("projection %s: its stored data is damaged (a failed checksum or an undecodable record); rebuilding it from the log now, requests that need it answer 503 until it serves again", h.name)
	h.e.metrics.heals.WithLabelValues(h.name).Inc()
	if wake != nil {
		wake()
	}
	h.broadcast()
	return &HealingError{Projection: h.name, RetryAfter: healRetryDefault, Cause: err}
}

func (h *Handle) damage() error {
	h.heal.mu.Lock()
	defer h.heal.mu.Unlock()
	return h.heal.cause
}

// waitLog waits for the log to pass applied, or for damage to be
// reported, whichever comes first.
func (e *Engine) waitLog(ctx context.Context, h *Handle, applied uint64) error {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	h.heal.mu.Lock()
	if h.heal.cause != nil {
		h.heal.mu.Unlock()
		return nil
	}
	h.heal.wake = cancel
	h.heal.mu.Unlock()
	err := e.log.Wait(wctx, applied)
	h.heal.mu.Lock()
	h.heal.wake = nil
	h.heal.mu.Unlock()
	if err != nil && ctx.Err() == nil && h.damage() != nil {
		return nil
	}
	return err
}

// healHandle rebuilds h from the log into a fresh generation and switches
// to it, which deletes the damaged one. It runs on h's own goroutine, so
// nothing else is applying h meanwhile.
func (e *Engine) healHandle(ctx context.Context, h *Handle) error {
	cause := h.damage()
	start := time.Now()
	m := h.meta
	damaged := dataPrefix(h.name, m.Gen)
	var err error
	if m, err = e.freshShadow(h, m); err != nil {
		return err
	}
	h.meta = m
	h.written = newWrittenKeys(m.ShadowGen)
	progress := func(_ string, applied uint64) {
		h.heal.mu.Lock()
		h.heal.applied, h.heal.target = applied, e.log.LastOffset()
		h.heal.mu.Unlock()
	}
	if err := e.replayShadows(ctx, []*Handle{h}, progress); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("projections: rebuilding %q from the log after damage (%v) failed: %w; if the log itself is damaged (`engram log tail` fails), restore the data directory from a backup (engram restore)", h.name, cause, err)
	}
	// switchToShadow cleared the damage together with the switch.
	e.logger.Warn().Str("projection", h.name).Uint64("applied", h.meta.Applied).Dur("took", time.Since(start)).
		Msgf("projection %s rebuilt from the log after damage; it serves again", h.name)
	// The switch deleted the damaged generation with a range tombstone,
	// but the damaged block is still in its table, and every compaction of
	// that table fails on it (Pebble retries them, and stops no other
	// work). Excising the generation's range cuts it out of the table: the
	// records of other projections in the same table stay, in a virtual
	// table that no longer reaches the damaged block, and the damaged file
	// goes once nothing references it. A damaged block that straddles into
	// another projection's range stays until that projection reads it and
	// heals in turn.
	if err := e.db.Excise(ctx, pebble.KeyRange{Start: damaged, End: prefixEnd(damaged)}); err != nil {
		e.logger.Warn().Err(err).Str("projection", h.name).
			Msg("cutting the damaged generation out of its table failed; it is deleted and no longer read, but compactions of that table keep failing on the damage until it is gone: run `engram verify` with the server stopped, and restore from a backup if it reports damage")
	}
	return nil
}

// damageAware is a Reader over one generation of a handle that turns
// damage it meets into a report to the handle.
type damageAware struct {
	scoped
	h *Handle
}

func (r damageAware) damaged(err error) error { return r.h.reportDamage(r.prefix, err) }

func (r damageAware) check(err error) error {
	if IsDamage(err) {
		return r.damaged(err)
	}
	return err
}

func (r damageAware) Get(key []byte) ([]byte, bool, error) {
	v, ok, err := r.scoped.Get(key)
	return v, ok, r.check(err)
}

func (r damageAware) Iter(lower, upper []byte) Iterator {
	return damageAwareIter{r.scoped.Iter(lower, upper), r}
}

type damageAwareIter struct {
	Iterator
	r damageAware
}

func (i damageAwareIter) Close() error { return i.r.check(i.Iterator.Close()) }

// CheckTable reads the records of every serving projection in the key
// range [lower, upper) of a table the store found damaged, and starts
// healing each projection whose records there are unreadable. The store
// calls it (log.Node.OnTableDamage) when a compaction meets damage that no
// request has read yet: the projection then heals at once, instead of
// when a request first needs the damaged records, and its damaged
// generation is excised, which lets compactions of that table go on.
func (e *Engine) CheckTable(lower, upper []byte) {
	e.mu.Lock()
	if !e.started || e.closed {
		e.mu.Unlock()
		return
	}
	e.wg.Add(1) // Close waits: the DB must stay open while this reads
	e.mu.Unlock()
	defer e.wg.Done()
	for _, h := range e.Handles() {
		h.rw.RLock()
		prefix := h.servingPrefix
		h.rw.RUnlock()
		lo, hi := prefix, prefixEnd(prefix)
		if bytes.Compare(lower, lo) > 0 {
			lo = lower
		}
		if hi == nil || bytes.Compare(upper, hi) < 0 {
			hi = upper
		}
		if bytes.Compare(lo, hi) >= 0 {
			continue
		}
		if err := e.readRange(lo, hi); IsDamage(err) {
			h.reportDamage(prefix, err)
		}
	}
}

// readRange reads every key and value in [lower, upper).
func (e *Engine) readRange(lower, upper []byte) error {
	it, err := e.db.NewIter(&pebble.IterOptions{LowerBound: lower, UpperBound: upper})
	if err != nil {
		return err
	}
	var valueErr error
	for it.First(); it.Valid(); it.Next() {
		if _, valueErr = it.ValueAndErr(); valueErr != nil {
			break
		}
	}
	return errors.Join(valueErr, it.Close())
}

// refoldAfterErasure rebuilds h from the log, which the erase entry at
// offset rewrote (englog.KindErase: the entries it names read as
// tombstones, whose fold is a no-op), into a fresh generation, switches to
// it and compacts the old one away, so that nothing the erasure removed
// stays in the projection, in its tables or in the write-ahead logs. The
// serving generation has applied everything before the erase entry and
// not the entry itself: a restart during the rebuild drops the partial
// generation (prepare) and this runs again. Every projection does this,
// whether or not it folded what was erased: replay must equal the live
// projection (engram verify), and only a fold of the rewritten log is
// sure to.
//
// Meanwhile the old generation keeps serving, frozen just before the
// erase entry: reads do not wait, and WaitApplied for the erase entry or
// later waits for the switch and for the old generation's compaction, so
// that what was erased is off the disk once the erasure is seen applied
// (the log's part of it: englog.Node.WaitErasures). What was erased stays hidden meanwhile by
// what the admin recorded before the erasure (adminstate: a deleted room,
// a purged history).
func (e *Engine) refoldAfterErasure(ctx context.Context, h *Handle, offset uint64) error {
	start := time.Now()
	m := h.meta
	old := dataPrefix(h.name, m.Gen)
	var err error
	if m, err = e.freshShadow(h, m); err != nil {
		return err
	}
	h.meta = m
	h.written = newWrittenKeys(m.ShadowGen)
	h.rw.Lock()
	h.rebuilt = make(chan struct{}) // engram verify waits for the switch
	h.rw.Unlock()
	e.logger.Info().Str("projection", h.name).Uint64("erase_offset", offset).
		Msg("entries were erased from the log: rebuilding the projection from the rewritten log; it serves its state before the erasure meanwhile")
	// The switch deletes the old generation with a range tombstone; its
	// values stay in the tables (and the write-ahead logs) until these
	// are rewritten.
	h.afterSwitch = func(ctx context.Context) error {
		if err := e.db.Compact(ctx, old, prefixEnd(old), false); err != nil {
			return fmt.Errorf("projections: compacting %q's generation from before an erasure: %w", h.name, err)
		}
		if s, ok := e.log.(walScrubber); ok {
			if err := s.ScrubWALs(); err != nil {
				return fmt.Errorf("projections: removing the write-ahead logs after rebuilding %q after an erasure: %w", h.name, err)
			}
		}
		return nil
	}
	err = e.replayShadows(ctx, []*Handle{h}, nil)
	h.afterSwitch = nil
	if err != nil {
		return err
	}
	e.logger.Info().Str("projection", h.name).Uint64("erase_offset", offset).Dur("took", time.Since(start)).
		Msg("projection rebuilt after an erasure")
	return nil
}

// walScrubber is implemented by a log whose store can remove its old
// write-ahead logs (englog.Node).
type walScrubber interface{ ScrubWALs() error }

// freshShadow gives h a new, empty shadow generation to fold into, after
// dropping the one it had (a rebuild cut short).
func (e *Engine) freshShadow(h *Handle, m meta) (meta, error) {
	if m.ShadowGen != 0 {
		var err error
		if m, err = e.dropShadow(h.name, m); err != nil {
			return m, err
		}
	}
	return e.newShadow(h.name, m, h.p.Version())
}
