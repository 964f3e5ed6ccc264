package projections

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

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
// What a crash leaves: a scratch store, which is deleted unread (its
// checkpoint was never written: a rebuild cut short starts over from
// offset 1), and perhaps a shadow generation already ingested into the
// shared DB but not switched to, which prepare drops like any other.

const (
	// scratchMemTable is the size of a scratch store's memtables: a
	// memtable absorbs the keys a fold rewrites batch after batch, and
	// each flush is compacted later. Nothing else writes while a rebuild
	// runs offline (a server that rebuilds at start has its own memtables
	// mostly idle meanwhile). Measured on the 100,000-entry log, every
	// projection at once: 32 -> 64 MB cut the replay's CPU 14%, and
	// raised its peak RSS by 60 MB.
	scratchMemTable = 64 << 20
	// scratchCache is the block cache shared by the scratch stores; Pebble
	// charges their memtables (two each, one filling and one flushing) to
	// it, so it is sized for one store's and 32 MB of blocks.
	scratchCache = 2*scratchMemTable + 32<<20
	// ingestTableBytes is where a table written for ingestion is cut.
	ingestTableBytes = 64 << 20
)

// scratch is the store one replayShadows call folds into.
type scratch struct {
	dir string
	db  *pebble.DB
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
	return &scratch{dir: dir, db: db}, nil
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

// close closes the store and deletes it.
func (s *scratch) close() error {
	err := s.db.Close()
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
func (s *scratch) ingest(ctx context.Context, db *pebble.DB, from, to []byte) error {
	// Each projection of a rebuild ingests its own generation when it
	// finishes, perhaps while another does.
	dir, err := os.MkdirTemp(s.dir, "ingest-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: from, UpperBound: prefixEnd(from)})
	if err != nil {
		return err
	}
	defer it.Close()
	opts := englog.IngestWriterOptions(db)
	var (
		paths []string
		w     *sstable.Writer
		key   = append([]byte(nil), to...)
	)
	defer func() {
		if w != nil {
			w.Close()
		}
	}()
	for it.First(); it.Valid(); it.Next() {
		if w == nil {
			path := filepath.Join(dir, fmt.Sprintf("%06d.sst", len(paths)))
			f, err := vfs.Default.Create(path, vfs.WriteCategoryUnspecified)
			if err != nil {
				return err
			}
			w = sstable.NewWriter(objstorageprovider.NewFileWritable(f), opts)
			paths = append(paths, path)
		}
		v, err := it.ValueAndErr()
		if err != nil {
			return err
		}
		key = append(key[:len(to)], it.Key()[len(from):]...)
		if err := w.Set(key, v); err != nil {
			return err
		}
		if w.Raw().EstimatedSize() >= ingestTableBytes {
			err := w.Close()
			w = nil
			if err != nil {
				return err
			}
		}
	}
	if err := it.Error(); err != nil {
		return err
	}
	if w != nil {
		err := w.Close()
		w = nil
		if err != nil {
			return err
		}
	}
	if len(paths) == 0 {
		return nil
	}
	return db.Ingest(ctx, paths)
}
