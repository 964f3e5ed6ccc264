package log

import (
	"math"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/bloom"
	"github.com/cockroachdb/pebble/v2/sstable"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/rs/zerolog"
)

// OpenScratch opens (creating it) a Pebble DB in dir for bulk writes that
// need no durability, such as a projection's generation being rebuilt from
// the log: its owner folds into it, then writes what it holds out as
// tables (IngestWriterOptions) and ingests them into the shared DB. It has
// no write-ahead log: a crash loses what was not flushed, and what was
// flushed is never read again (the owner starts over). Its tables live
// only until then, so every level uses cheap Snappy; bloom filters keep
// the point reads of absent keys (a fold's "is this new?") off the tables.
// For the same reason it never syncs a file. memTable is the size of its
// memtables; cache may be shared by several.
func OpenScratch(dir string, memTable int64, cache *pebble.Cache, logger zerolog.Logger) (*pebble.DB, error) {
	return pebble.Open(dir, scratchOptions(memTable, cache, logger))
}

// OpenScratchRuns is OpenScratch for writes that are never read before
// the whole store is read out in key order: it never compacts, so each
// flush stays a table of its own in L0 (as many as there were flushes),
// and writes never stop for it. A compaction would only merge the tables
// the final read merges anyway.
func OpenScratchRuns(dir string, memTable int64, cache *pebble.Cache, logger zerolog.Logger) (*pebble.DB, error) {
	o := scratchOptions(memTable, cache, logger)
	o.DisableAutomaticCompactions = true
	o.L0StopWritesThreshold = math.MaxInt32
	return pebble.Open(dir, o)
}

func scratchOptions(memTable int64, cache *pebble.Cache, logger zerolog.Logger) *pebble.Options {
	o := &pebble.Options{
		Logger:             pebbleLogger{logger.With().Str("subsystem", "pebble-scratch").Logger()},
		FS:                 unsyncedFS{vfs.Default},
		Cache:              cache,
		MemTableSize:       uint64(memTable),
		DisableWAL:         true,
		FormatMajorVersion: pebble.FormatNewest,
	}
	o.EnsureDefaults()
	for i := range o.Levels {
		o.Levels[i].FilterPolicy = bloom.FilterPolicy(10)
		o.Levels[i].Compression = func() *sstable.CompressionProfile { return sstable.SnappyCompression }
	}
	return o
}

// unsyncedFS is a filesystem whose files are never synced.
type unsyncedFS struct{ vfs.FS }

func (fs unsyncedFS) Create(name string, category vfs.DiskWriteCategory) (vfs.File, error) {
	return unsynced(fs.FS.Create(name, category))
}

func (fs unsyncedFS) OpenReadWrite(name string, category vfs.DiskWriteCategory, opts ...vfs.OpenOption) (vfs.File, error) {
	return unsynced(fs.FS.OpenReadWrite(name, category, opts...))
}

func (fs unsyncedFS) OpenDir(name string) (vfs.File, error) { return unsynced(fs.FS.OpenDir(name)) }

func (fs unsyncedFS) ReuseForWrite(oldname, newname string, category vfs.DiskWriteCategory) (vfs.File, error) {
	return unsynced(fs.FS.ReuseForWrite(oldname, newname, category))
}

func unsynced(f vfs.File, err error) (vfs.File, error) {
	if err != nil {
		return nil, err
	}
	return unsyncedFile{f}, nil
}

type unsyncedFile struct{ vfs.File }

func (unsyncedFile) Sync() error                { return nil }
func (unsyncedFile) SyncData() error            { return nil }
func (unsyncedFile) SyncTo(int64) (bool, error) { return true, nil }

// IngestWriterOptions are the options of tables written to be ingested
// into the bottom level of db, a DB that Open opened: the bottom level's
// blocks, filters and compression (what db's own compactions would write
// there), in db's table format.
func IngestWriterOptions(db *pebble.DB) sstable.WriterOptions {
	o := &pebble.Options{FormatMajorVersion: pebble.FormatNewest}
	o.EnsureDefaults()
	levelOptions(o)
	return o.MakeWriterOptions(len(o.Levels)-1, db.TableFormat())
}
