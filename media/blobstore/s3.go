package blobstore

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/engram-hs/engram/internal/objstore"
)

// S3 keeps blobs in an S3-compatible bucket, with the local file system
// store as spool and cache: an upload is hashed into a local temporary
// file (its name is its hash, known only at the end), sent to the bucket
// from that file, and kept locally; a blob missing locally is fetched
// from the bucket, checked against its hash, cached, and served from
// disk, so bytes are never served unverified and memory stays flat.
type S3 struct {
	c  *objstore.Client
	fs *FS
}

// NewS3 stores blobs in c, with fs as spool and cache.
func NewS3(c *objstore.Client, fs *FS) *S3 { return &S3{c: c, fs: fs} }

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
	if b, n, err := s.fs.Open(ctx, hash); !errors.Is(err, ErrNotFound) {
		return b, n, err
	}
	o, _, err := s.c.Get(ctx, s3Key(hash))
	if errors.Is(err, objstore.ErrNotFound) {
		return nil, 0, ErrNotFound
	}
	if err != nil {
		return nil, 0, err
	}
	defer o.Close()
	sp, err := VerifyingCopy(ctx, s.fs, o, hash, 0)
	if err != nil {
		return nil, 0, fmt.Errorf("blobstore: blob %s in %s: %w", hash, s.c, err)
	}
	if err := s.fs.Commit(sp); err != nil {
		return nil, 0, err
	}
	return s.fs.Open(ctx, hash)
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
