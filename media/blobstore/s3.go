package blobstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/engram-hs/engram/internal/objstore"
)

// S3 keeps blobs in an S3-compatible bucket, with the local file system
// store as spool and cache: an upload is hashed into a local temporary
// file (its name is its hash, known only at the end), sent to the bucket
// from that file, and kept locally; a blob missing locally is fetched
// from the bucket, checked against its hash, cached, and served from
// disk, so bytes are never served unverified and memory stays flat.
type S3 struct {
	c       *objstore.Client
	fs      *FS
	pending string        // markers of blobs PutLater stored and the bucket may not have yet
	wake    chan struct{} // RunUploads: something new is pending
}

// NewS3 stores blobs in c, with fs as spool and cache.
func NewS3(c *objstore.Client, fs *FS) *S3 { return &S3{c: c, fs: fs, wake: make(chan struct{}, 1)} }

func s3Key(hash string) string { return "blobs/" + hash[0:2] + "/" + hash[2:4] + "/" + hash }

// PutSpooled sends a spooled blob to the bucket (unless it is already
// there) and keeps it in the local cache; the spooled file is gone
// afterwards either way.
func (s *S3) PutSpooled(ctx context.Context, sp *Spooled) error {
	defer sp.Remove()
	if _, err := s.c.Stat(ctx, s3Key(sp.Hash)); errors.Is(err, objstore.ErrNotFound) {
		f := sp.File()
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			return err
		}
		if err := s.c.Put(ctx, s3Key(sp.Hash), f, sp.Size, ""); err != nil {
			return err
		}
	} else if err != nil {
		return err
	}
	return s.fs.Commit(sp)
}

// Put implements Store.
func (s *S3) Put(ctx context.Context, r io.Reader, max int64) (string, int64, error) {
	sp, err := s.fs.Spool(ctx, r, max)
	if err != nil {
		return "", 0, err
	}
	if err := s.PutSpooled(ctx, sp); err != nil {
		return "", 0, err
	}
	return sp.Hash, sp.Size, nil
}

// Open implements Store: the local cache, else the bucket (verified).
func (s *S3) Open(ctx context.Context, hash string) (Blob, int64, error) {
	if !ValidHash(hash) {
		return nil, 0, ErrNotFound
	}
	for attempt := 0; ; attempt++ {
		if b, n, err := s.fs.Open(ctx, hash); !errors.Is(err, ErrNotFound) || attempt == 2 {
			return b, n, err
		}
		// Fetched into the cache, and then open it (again, should the
		// cache have been trimmed of it in between).
		if err := s.fetch(ctx, hash); err != nil {
			return nil, 0, err
		}
	}
}

// fetch copies a blob from the bucket into the local cache, verified.
func (s *S3) fetch(ctx context.Context, hash string) error {
	o, _, err := s.c.Get(ctx, s3Key(hash))
	if errors.Is(err, objstore.ErrNotFound) {
		return ErrNotFound
	}
	if err != nil {
		return err
	}
	defer o.Close()
	sp, err := VerifyingCopy(ctx, s.fs, o, hash, 0)
	if err != nil {
		return fmt.Errorf("blobstore: blob %s in %s: %w", hash, s.c, err)
	}
	return s.fs.Commit(sp)
}

// Delete implements Store: from the bucket and the cache.
func (s *S3) Delete(ctx context.Context, hash string) error {
	if !ValidHash(hash) {
		return nil
	}
	if err := s.c.Delete(ctx, s3Key(hash)); err != nil {
		return err
	}
	return s.fs.Delete(ctx, hash)
}

// EvictLocal drops the local copy of a blob (the bucket keeps it).
func (s *S3) EvictLocal(ctx context.Context, hash string) error { return s.fs.Delete(ctx, hash) }

// TrimCache drops the least recently used local copies until the local
// blobs take at most max bytes. A copy is dropped only when the bucket
// holds the blob (checked there, at its size) and keep does not hold it
// back (an upload still pending, a blob whose bucket copy is being
// collected or was lost): a blob that is not safely in the bucket is never
// dropped, so the cache may stay above max until it is. It returns the
// bytes the local blobs take afterwards.
func (s *S3) TrimCache(ctx context.Context, max int64, keep func(hash string) bool) (int64, error) {
	var blobs []LocalBlob
	var total int64
	if err := s.fs.Walk(func(b LocalBlob) bool {
		blobs = append(blobs, b)
		total += b.Size
		return true
	}); err != nil {
		return 0, err
	}
	if total <= max {
		return total, nil
	}
	sort.Slice(blobs, func(i, j int) bool { return blobs[i].Used.Before(blobs[j].Used) })
	for _, b := range blobs {
		if total <= max {
			break
		}
		if err := ctx.Err(); err != nil {
			return total, err
		}
		if keep(b.Hash) {
			continue
		}
		if n, err := s.c.Stat(ctx, s3Key(b.Hash)); err != nil || n != b.Size {
			continue // not (or not wholly) in the bucket: this copy is the one
		}
		if err := s.fs.Delete(ctx, b.Hash); err != nil {
			return total, err
		}
		total -= b.Size
	}
	return total, nil
}

// DeleteRemote deletes a blob's object from the bucket (not the local
// copy); a missing object is not an error.
func (s *S3) DeleteRemote(ctx context.Context, hash string) error {
	if !ValidHash(hash) {
		return nil
	}
	return s.c.Delete(ctx, s3Key(hash))
}

// UploadLocal sends the local copy of a blob to the bucket unless the
// bucket has it now. (The caller knows no deletion of it is under way:
// an object seen before a deletion ended could still go.) ErrNotFound:
// there is no local copy.
func (s *S3) UploadLocal(ctx context.Context, hash string) error {
	b, n, err := s.fs.Open(ctx, hash)
	if err != nil {
		return err
	}
	defer b.Close()
	if have, err := s.c.Stat(ctx, s3Key(hash)); err == nil && have == n {
		return nil
	}
	return s.c.Put(ctx, s3Key(hash), b, n, "")
}

// UploadLater keeps its pending uploads (PutLater) as marker files in dir,
// so that they survive a restart.
func (s *S3) UploadLater(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("blobstore: create %s: %w", dir, err)
	}
	s.pending = dir
	return nil
}

// PutLater stores a spooled blob locally and leaves sending it to the
// bucket to RunUploads (store_synchronous: false). The pending upload is
// durable before the blob is: after a crash a blob whose upload was not
// done is still marked, and the local cache keeps it until it is.
func (s *S3) PutLater(sp *Spooled) error {
	defer sp.Remove()
	if s.pending == "" {
		return errors.New("blobstore: PutLater without UploadLater")
	}
	marker := filepath.Join(s.pending, sp.Hash)
	f, err := os.OpenFile(marker, os.O_CREATE|os.O_WRONLY, 0o600)
	if err == nil {
		err = f.Sync()
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err == nil {
		err = syncDir(s.pending)
	}
	if err != nil {
		return fmt.Errorf("blobstore: record a pending upload: %w", err)
	}
	if err := s.fs.Commit(sp); err != nil {
		return err
	}
	select {
	case s.wake <- struct{}{}:
	default:
	}
	return nil
}

// Pending says whether a blob's upload to the bucket is still to be done.
func (s *S3) Pending(hash string) bool {
	if s.pending == "" || !ValidHash(hash) {
		return false
	}
	_, err := os.Stat(filepath.Join(s.pending, hash))
	return err == nil
}

// RunUploads sends pending uploads (PutLater's, also those left by an
// earlier run) to the bucket until ctx is done, retrying failures with a
// backoff from 1 s to 5 min; report is told of each failure.
func (s *S3) RunUploads(ctx context.Context, report func(hash string, err error)) {
	if s.pending == "" {
		return
	}
	backoff := time.Duration(0)
	for {
		failed := false
		ents, err := os.ReadDir(s.pending)
		if err != nil {
			report("", err)
			failed = true
		}
		for _, e := range ents {
			if ctx.Err() != nil {
				return
			}
			h := e.Name()
			if !ValidHash(h) {
				continue
			}
			if err := s.uploadPending(ctx, h); err != nil {
				if ctx.Err() != nil {
					return
				}
				report(h, err)
				failed = true
				continue
			}
			_ = os.Remove(filepath.Join(s.pending, h))
		}
		wait := time.Minute
		if failed {
			backoff = min(max(2*backoff, time.Second), 5*time.Minute)
			wait = backoff
		} else {
			backoff = 0
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-s.wake:
		case <-t.C:
		}
		t.Stop()
	}
}

func (s *S3) uploadPending(ctx context.Context, h string) error {
	b, n, err := s.fs.Open(ctx, h)
	if errors.Is(err, ErrNotFound) {
		return nil // collected meanwhile: nothing left to send
	}
	if err != nil {
		return err
	}
	defer b.Close()
	if have, err := s.c.Stat(ctx, s3Key(h)); err == nil && have == n {
		return nil
	}
	return s.c.Put(ctx, s3Key(h), b, n, "")
}
