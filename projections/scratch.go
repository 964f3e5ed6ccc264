package projections

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sync"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/objstorage/objstorageprovider"
	"github.com/cockroachdb/pebble/v2/sstable"
	"github.com/cockroachdb/pebble/v2/vfs"

	englog "github.com/engram-hs/engram/log"
)

// A rebuild folds its shadow generations into a Pebble DB of its own, a
// scratch store (englog.OpenScratch), not into the shared one. In the
// shared DB every table a rebuild flushed was compacted down through the
// levels above the log's, and each batch went through the write-ahead log
// that the log syncs; the scratch store has no write-ahead log, and holds
// only what the rebuild wrote, so the folds' reads search a smaller tree.
// At the switch, the generation is written out once as sorted tables
// for the shared DB's bottom level and ingested there (DB.Ingest), before
// the batch that makes it serve.
//
// The writes no fold reads (SetUnread: search's term rows, rooms'
// timelines and state history) go to a second store, in its directory,
// that never compacts (englog.OpenScratchRuns): they are only read at the
// switch, merged with the generation's other keys as its tables are
// written. Through the folded store's LSM they were flushed, then
// compacted down its levels again and again as it grew, for nothing (a
// 1,000,000-entry replay spent 42 of its 188 CPU s compacting).
// A key is written either unread or not (SetUnread), so the two stores
// never hold the same key, and the write-out checks that.
//
// What a crash leaves: a scratch store, which is deleted unread (its
// checkpoint was never written: a rebuild cut short starts over from
// offset 1), and perhaps a shadow generation already ingested into the
// shared DB but not switched to, which prepare drops like any other.

const (
	// scratchMemTable is the size of the folded store's memtables: a
	// memtable absorbs the keys a fold rewrites batch after batch, and
	// each flush is compacted later. Nothing else writes while a rebuild
	// runs offline (a server that rebuilds at start has its own memtables
	// mostly idle meanwhile). Measured on the 100,000-entry log, every
	// projection at once, before the unread writes had a store of their
	// own: 32 -> 64 MB cut the replay's CPU 14%, and raised its peak RSS
	// by 60 MB. With that store's memtables beside them, 48 MB kept a
	// 1,000,000-entry replay's peak RSS under 400 MB, and the cache its
	// 32 MB of blocks (bench/README.md, replay6).
	scratchMemTable = 48 << 20
	// scratchRunsMemTable is the size of the unread store's memtables:
	// it never compacts, so a memtable is only a table of L0 to merge at
	// the write-out, and no key is written twice for a larger one to
	// absorb.
	scratchRunsMemTable = 16 << 20
	// scratchCache is the block cache shared by the scratch stores; Pebble
	// charges their memtables (two each, one filling and one flushing) to
	// it, so it is sized for one rebuild's and 32 MB of blocks.
	scratchCache = 2*scratchMemTable + 2*scratchRunsMemTable + 32<<20
	// ingestTableBytes is where a table written for ingestion is cut.
	ingestTableBytes = 64 << 20
)

// scratch is the store one replayShadows call folds into, and the one
// its unread writes go to.
type scratch struct {
	dir        string
	db, unread *pebble.DB
}

// openScratch creates a scratch store under the engine's scratch
// directory (RebuildIn), or under the system's temporary directory.
func (e *Engine) openScratch() (*scratch, error) {
	e.mu.Lock()
	parent := e.scratchDir
	e.mu.Unlock()
	if parent != "" {
		if err := os.MkdirAll(parent, 0o700); err != nil {
			return nil, fmt.Errorf("projections: creating the rebuilds' directory: %w", err)
		}
	}
	dir, err := os.MkdirTemp(parent, "rebuild-")
	if err != nil {
		return nil, fmt.Errorf("projections: creating a rebuild's scratch store: %w", err)
	}
	e.mu.Lock()
	if e.cache == nil {
		e.cache = pebble.NewCache(scratchCache)
	}
	cache := e.cache
	e.mu.Unlock()
	db, err := englog.OpenScratch(dir, scratchMemTable, cache, e.logger)
	if err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("projections: opening a rebuild's scratch store in %s: %w", dir, err)
	}
	unread, err := englog.OpenScratchRuns(filepath.Join(dir, "unread"), scratchRunsMemTable, cache, e.logger)
	if err != nil {
		db.Close()
		os.RemoveAll(dir)
		return nil, fmt.Errorf("projections: opening a rebuild's scratch store in %s: %w", dir, err)
	}
	return &scratch{dir: dir, db: db, unread: unread}, nil
}

// clearScratch deletes the scratch stores that rebuilds cut short by a
// crash left in the engine's scratch directory.
func (e *Engine) clearScratch() error {
	e.mu.Lock()
	parent := e.scratchDir
	e.mu.Unlock()
	if parent == "" {
		return nil
	}
	left, err := filepath.Glob(filepath.Join(parent, "rebuild-*"))
	if err != nil {
		return err
	}
	for _, dir := range left {
		e.logger.Info().Str("dir", dir).Msg("deleting the scratch store of a rebuild cut short")
		if err := os.RemoveAll(dir); err != nil {
			return fmt.Errorf("projections: deleting a rebuild's scratch store: %w", err)
		}
	}
	return nil
}

// close closes the stores and deletes them.
func (s *scratch) close() error {
	err := errors.Join(s.unread.Close(), s.db.Close())
	if rerr := os.RemoveAll(s.dir); err == nil {
		err = rerr
	}
	return err
}

// shadowStore is where one shadow generation is folded: the keys of s
// under prefix.
type shadowStore struct {
	s      *scratch
	prefix []byte
}

// scratchPrefix is the prefix of the i-th projection of a rebuild in its
// scratch store: one byte, where the shared DB's keys start with the
// projection's name and generation (keys.go). Pebble orders an indexed
// batch's skiplist by the first 8 bytes of each key before comparing
// whole keys, and in the shared DB's layout those bytes are the same for
// every key of a projection; here all but the first are the fold's own.
func scratchPrefix(i int) []byte {
	if i > 0xff {
		panic("projections: more than 256 projections in one rebuild")
	}
	return []byte{byte(i)}
}

// ingest writes the keys under from out as tables, with the prefix to
// instead, and ingests them into db, which must hold nothing under to.
// Ingesting moves the tables into db's directory.
//
// The keys are written in as many disjoint ranges at once as the process
// has processors (ingestSplits), and all the tables are ingested in one
// DB.Ingest: written on one goroutine, the last projection to finish
// (search's, on the 100,000-entry log ~1.1 s of zstd) ran alone while
// the other cores idled.
func (s *scratch) ingest(ctx context.Context, db *pebble.DB, from, to []byte) error {
	// Each projection of a rebuild ingests its own generation when it
	// finishes, perhaps while another does.
	dir, err := os.MkdirTemp(s.dir, "ingest-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	end := prefixEnd(from)
	bounds := append(append([][]byte{from}, s.ingestSplits(from, end, runtime.GOMAXPROCS(0))...), end)
	opts := englog.IngestWriterOptions(db)
	paths := make([][]string, len(bounds)-1)
	errs := make([]error, len(bounds)-1)
	var wg sync.WaitGroup
	for i := range paths {
		wg.Add(1)
		go func() {
			defer wg.Done()
			paths[i], errs[i] = s.writeTables(filepath.Join(dir, fmt.Sprintf("%02d-", i)), opts, bounds[i], bounds[i+1], from, to)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	all := slices.Concat(paths...)
	if len(all) == 0 {
		return nil
	}
	return db.Ingest(ctx, all)
}

// ingestSplits returns at most n-1 keys, ascending and strictly between
// lower and upper, that cut the stores' keys in [lower, upper) into
// ranges of about the same size on disk: each table of the stores that
// starts inside the range counts for its size at its smallest key. (What
// the memtables hold is not counted; the ranges need only be about even.)
func (s *scratch) ingestSplits(lower, upper []byte, n int) [][]byte {
	if n < 2 {
		return nil
	}
	type start struct {
		key  []byte
		size uint64
	}
	var starts []start
	var total uint64
	for _, db := range []*pebble.DB{s.db, s.unread} {
		levels, err := db.SSTables(pebble.WithKeyRangeFilter(lower, upper))
		if err != nil {
			return nil // one range: only slower
		}
		for _, level := range levels {
			for _, t := range level {
				if k := t.Smallest.UserKey; bytes.Compare(k, lower) > 0 && bytes.Compare(k, upper) < 0 {
					starts = append(starts, start{k, t.Size})
					total += t.Size
				}
			}
		}
	}
	slices.SortFunc(starts, func(a, b start) int { return bytes.Compare(a.key, b.key) })
	var (
		splits [][]byte
		sum    uint64
	)
	for _, st := range starts {
		if sum >= total*uint64(len(splits)+1)/uint64(n) && (len(splits) == 0 || !bytes.Equal(splits[len(splits)-1], st.key)) {
			splits = append(splits, st.key)
			if len(splits) == n-1 {
				break
			}
		}
		sum += st.size
	}
	return splits
}

// writeTables writes the keys in [lower, upper) of both stores, merged,
// with the prefix from replaced by to, as tables named name followed by a
// number, and returns their paths.
func (s *scratch) writeTables(name string, opts sstable.WriterOptions, lower, upper, from, to []byte) (paths []string, err error) {
	var its [2]*pebble.Iterator
	for i, db := range []*pebble.DB{s.db, s.unread} {
		if its[i], err = db.NewIter(&pebble.IterOptions{LowerBound: lower, UpperBound: upper}); err != nil {
			return nil, err
		}
		defer its[i].Close()
	}
	var (
		w   *sstable.Writer
		key = append([]byte(nil), to...)
	)
	defer func() {
		if w != nil {
			w.Close()
		}
	}()
	folded, unread := its[0], its[1]
	folded.First()
	unread.First()
	for folded.Valid() || unread.Valid() {
		it := folded
		if !folded.Valid() {
			it = unread
		} else if unread.Valid() {
			switch c := bytes.Compare(unread.Key(), folded.Key()); {
			case c == 0:
				return nil, fmt.Errorf("projections: internal error: key %q was written both unread and not", folded.Key())
			case c < 0:
				it = unread
			}
		}
		if w == nil {
			path := fmt.Sprintf("%s%06d.sst", name, len(paths))
			f, err := vfs.Default.Create(path, vfs.WriteCategoryUnspecified)
			if err != nil {
				return nil, err
			}
			w = sstable.NewWriter(objstorageprovider.NewFileWritable(f), opts)
			paths = append(paths, path)
		}
		v, err := it.ValueAndErr()
		if err != nil {
			return nil, err
		}
		key = append(key[:len(to)], it.Key()[len(from):]...)
		if err := w.Set(key, v); err != nil {
			return nil, err
		}
		if w.Raw().EstimatedSize() >= ingestTableBytes {
			err := w.Close()
			w = nil
			if err != nil {
				return nil, err
			}
		}
		it.Next()
	}
	if err := errors.Join(folded.Error(), unread.Error()); err != nil {
		return nil, err
	}
	if w != nil {
		err := w.Close()
		w = nil
		if err != nil {
			return nil, err
		}
	}
	return paths, nil
}
