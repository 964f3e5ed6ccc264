package log

import (
	"bytes"
	"encoding/binary"
	"errors"
	"sync"

	"github.com/cockroachdb/pebble/v2"
	"github.com/rs/zerolog"
)

// tableDamage answers Pebble's reports of a damaged table: a block that
// failed its checksum, met by a read or by a compaction. Pebble's default
// is Logger.Fatalf, which would take the whole server down for one bad
// block. Instead, the read or compaction that met it fails (Pebble v2
// stops a compaction at the damage and keeps every key of the table; v1.1
// dropped the keys after the block), projections heal themselves from the
// log when a read of theirs fails (projections.IsDamage), and this says
// once per file whether acknowledged log entries are among what is lost:
// a report carries only the table's bounds, which usually span log and
// projection keys alike, so the log's part of the table is read through.
type tableDamage struct {
	l    zerolog.Logger
	mu   sync.Mutex
	seen map[string]bool
	db   *pebble.DB // nil until open, and for ImportLog
	stop <-chan struct{}
	wg   sync.WaitGroup
	// checkers are told of every newly damaged table (see OnTableDamage).
	checkers []func(lower, upper []byte)
}

// OnTableDamage registers fn to be told the key range [lower, upper) of
// every table Pebble newly finds damaged, on a goroutine of its own. A
// read that meets damage fails and says so to whoever made it, but a
// compaction that meets it tells no one: this is how the projections
// learn of damage in their data that no request has read yet.
func (n *Node) OnTableDamage(fn func(lower, upper []byte)) {
	n.damage.mu.Lock()
	defer n.damage.mu.Unlock()
	n.damage.checkers = append(n.damage.checkers, fn)
}

func (d *tableDamage) report(info pebble.DataCorruptionInfo) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.seen[info.Path] {
		return // Pebble retries the compaction that met it; once is news
	}
	if d.seen == nil {
		d.seen = map[string]bool{}
	}
	d.seen[info.Path] = true
	l := d.l.With().Str("file", info.Path).Str("bounds", info.Bounds.String()).Logger()
	l.Error().AnErr("error", info.Details).Msg("a table is damaged (a block failed its checksum): reads of what the block holds fail and compactions stop at it; projections rebuild themselves from the log when they meet it; checking whether log entries are in the damaged part")
	if d.db == nil {
		return // met while opening: Open fails with the damage
	}
	select {
	case <-d.stop:
		return // closing: nothing may start reading now
	default:
	}
	// The goroutines below outlive this call: copy the bounds.
	lower := append([]byte(nil), info.Bounds.Start...)
	upper := append([]byte(nil), info.Bounds.End.Key...)
	if info.Bounds.End.IsUpperBoundFor(bytes.Compare, upper) { // inclusive
		upper = append(upper, 0)
	}
	for _, fn := range d.checkers {
		d.wg.Add(1)
		go func() {
			defer d.wg.Done()
			fn(lower, upper)
		}()
	}
	start := lower
	if bytes.Compare(start, prefixEntry) < 0 {
		start = prefixEntry
	}
	end := prefixEnd(prefixEntry)
	if bytes.Compare(start, end) >= 0 || !info.Bounds.End.IsUpperBoundFor(bytes.Compare, start) {
		l.Info().Msg("the damaged table holds no log entries: only projection data, which heals itself")
		return
	}
	if bytes.Compare(upper, end) < 0 {
		end = upper
	}
	d.wg.Add(1)
	go d.checkEntries(l, start, end)
}

// checkEntries reads every log entry in [lower, upper) and says whether
// any is unreadable, naming the first and the last readable offsets
// around the damage.
func (d *tableDamage) checkEntries(l zerolog.Logger, lower, upper []byte) {
	defer d.wg.Done()
	it, err := d.db.NewIter(&pebble.IterOptions{LowerBound: lower, UpperBound: upper})
	if err != nil {
		l.Error().Err(err).Msg("checking the damaged table's log entries failed; run `engram verify` with the server stopped")
		return
	}
	var last uint64
	var valueErr error
	n := 0
	for it.First(); it.Valid(); it.Next() {
		select {
		case <-d.stop:
			it.Close()
			return
		default:
		}
		if _, valueErr = it.ValueAndErr(); valueErr != nil {
			break
		}
		if k := it.Key(); len(k) == len(prefixEntry)+8 {
			last = binary.BigEndian.Uint64(k[len(prefixEntry):])
		}
		n++
	}
	if err := errors.Join(valueErr, it.Close()); err != nil {
		l.Error().Err(err).Uint64("last_readable_offset", last).
			Msg("log entries are damaged: acknowledged entries after last_readable_offset in this table cannot be read; on a cluster, stop this node, wipe its data directory and let it resync from a peer, else restore from a backup (engram restore); `engram verify` shows what is readable")
		return
	}
	l.Info().Int("entries", n).Msg("the damaged table's log entries all read back: the damage is in projection data, which heals itself")
}
