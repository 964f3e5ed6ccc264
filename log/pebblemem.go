package log

import (
	"errors"
	"os"
	"strings"
	"sync"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// DefaultMemoryTarget is the memory budget (Config.MemoryTarget) when none
// is configured: enough for a small community server on a small box.
const DefaultMemoryTarget = 128 << 20

// PebbleMemory splits a memory budget between Pebble's memtables and its
// block cache: each of the (at most two) memtables gets 1/16 of it, between
// 2 MiB and 64 MiB, and the block cache 3/8; the other half is left for the
// Go heap (projection caches, requests) and everything else. target <= 0
// means DefaultMemoryTarget.
//
// Why these shares: a memtable absorbs the keys a fold rewrites batch after
// batch (room records, counters, checkpoints) before they reach disk, so a
// larger one means less compaction, but each memtable is backed by a
// write-ahead log of the same size on disk and by memory that is resident
// once written; the block cache saves decompressing a block on every point
// read that misses the memtables (a projection's "is this new?" checks).
func PebbleMemory(target int64) (memTable, blockCache int64) {
	if target <= 0 {
		target = DefaultMemoryTarget
	}
	memTable = min(max(target/16, 2<<20), 64<<20)
	blockCache = max(target*3/8, 8<<20)
	return memTable, blockCache
}

// walFS keeps Pebble from preallocating its write-ahead logs. Pebble
// reserves 1.1x the memtable size for every WAL it creates or recycles
// (fallocate, KEEP_SIZE) and keeps up to MemTableStopWritesThreshold+1 of
// them for reuse, so with 64 MB memtables a fresh server held ~290 MB of
// WAL space for a few MB of writes. A WAL is synced with fdatasync after
// every group commit either way, and recycled WALs (reused in place, the
// case Pebble optimises) are already allocated up to what they held, so
// the reservation buys little: without it a WAL takes what it holds.
//
// It also takes part in erasure (eraser.go): WAL files keep whatever they
// once held until they are overwritten, and Pebble reuses obsolete ones
// in place, so a reused file's tail still holds older writes. While an
// erasure scrubs the WALs (scrub.armed), a WAL is never reused but created
// afresh; and a recycled WAL the scrub deleted is created afresh too.
type walFS struct {
	vfs.FS
	scrub *walScrub
}

// walScrub orders the erasure's deletion of obsolete WALs against Pebble
// reusing them.
type walScrub struct {
	mu    sync.Mutex
	armed bool
}

func isWAL(name string) bool { return strings.HasSuffix(name, ".log") }

func (fs walFS) Create(name string, category vfs.DiskWriteCategory) (vfs.File, error) {
	f, err := fs.FS.Create(name, category)
	if err != nil || !isWAL(name) {
		return f, err
	}
	return noPreallocFile{f}, nil
}

func (fs walFS) ReuseForWrite(oldname, newname string, category vfs.DiskWriteCategory) (vfs.File, error) {
	if !isWAL(newname) || fs.scrub == nil {
		return fs.FS.ReuseForWrite(oldname, newname, category)
	}
	fs.scrub.mu.Lock()
	defer fs.scrub.mu.Unlock()
	if fs.scrub.armed {
		if err := fs.FS.Remove(oldname); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
		return fs.Create(newname, category)
	}
	f, err := fs.FS.ReuseForWrite(oldname, newname, category)
	if errors.Is(err, os.ErrNotExist) {
		// A scrub deleted this recycled WAL; Pebble still listed it.
		return fs.Create(newname, category)
	}
	if err != nil {
		return f, err
	}
	return noPreallocFile{f}, nil
}

type noPreallocFile struct{ vfs.File }

func (noPreallocFile) Preallocate(offset, length int64) error { return nil }
