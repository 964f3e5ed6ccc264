package log

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/sstable"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/rs/zerolog"
)

// FilesHolding lists the files under dir whose bytes contain needle, for
// checking that an erasure left nothing behind. A Pebble table is also
// read through its blocks (decompressed) and every key version in it is
// checked, since its compressed bytes would hide the needle from a plain
// search. Files that vanish while it runs (Pebble deleting obsolete ones)
// are skipped; a table that does not read is reported in the error, after
// every other file was searched.
func FilesHolding(dir string, needle []byte) ([]string, error) {
	var hits []string
	var unread []error // tables that did not read (one being written, on a running server)
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return nil
			}
			return err
		}
		if d.IsDir() {
			return nil
		}
		b, err := os.ReadFile(path)
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		found := bytes.Contains(b, needle)
		if !found && strings.HasSuffix(path, ".sst") {
			if found, err = tableHolds(path, needle); errors.Is(err, os.ErrNotExist) {
				return nil
			} else if err != nil {
				// Go on with the other files: the hits found are hits.
				unread = append(unread, fmt.Errorf("reading table %s: %w", path, err))
			}
		}
		if found {
			hits = append(hits, path)
		}
		return nil
	})
	return hits, errors.Join(append(unread, err)...)
}

func tableHolds(path string, needle []byte) (bool, error) {
	f, err := vfs.Default.Open(path)
	if err != nil {
		return false, err
	}
	readable, err := sstable.NewSimpleReadable(f)
	if err != nil {
		f.Close()
		return false, err
	}
	opts := pebbleOptions(zerolog.Nop(), nil, 0, &tableDamage{})
	defer opts.Cache.Unref()
	r, err := sstable.NewReader(context.Background(), readable, opts.MakeReaderOptions())
	if err != nil {
		readable.Close()
		return false, err
	}
	defer r.Close()
	it, err := r.NewIter(sstable.NoTransforms, nil, nil, sstable.AssertNoBlobHandles)
	if err != nil {
		return false, err
	}
	defer it.Close()
	for kv := it.First(); kv != nil; kv = it.Next() {
		if bytes.Contains(kv.K.UserKey, needle) {
			return true, nil
		}
		v, _, err := kv.Value(nil)
		if err != nil {
			return false, err
		}
		if bytes.Contains(v, needle) {
			return true, nil
		}
	}
	return false, it.Error()
}

// FilesStillHolding is FilesHolding for a check after an erasure: it
// waits (until ctx is done) while the only hits are tables db no longer
// uses, which Pebble deletes in the background, and returns at once when
// a WAL, a live table or any other file holds needle. db may be nil (the
// store is another process's): then every hit is waited on. A table that
// does not read (one Pebble is still writing) is read again.
func FilesStillHolding(ctx context.Context, dir string, db *pebble.DB, needle []byte) ([]string, error) {
	for {
		hits, err := FilesHolding(dir, needle)
		if err != nil {
			select {
			case <-ctx.Done():
				return hits, err
			case <-time.After(20 * time.Millisecond):
				continue
			}
		}
		if len(hits) == 0 {
			return nil, nil
		}
		if db != nil {
			levels, err := db.SSTables()
			if err != nil {
				return hits, err
			}
			live := map[string]bool{}
			for _, l := range levels {
				for _, info := range l {
					live[fmt.Sprintf("%06d.sst", uint64(info.BackingSSTNum))] = true
				}
			}
			for _, h := range hits {
				if !strings.HasSuffix(h, ".sst") || live[filepath.Base(h)] {
					return hits, nil
				}
			}
		}
		select {
		case <-ctx.Done():
			return hits, nil
		case <-time.After(20 * time.Millisecond):
		}
	}
}
