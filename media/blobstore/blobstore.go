// Package blobstore keeps media bytes by their SHA-256: a file is stored
// once however many media items share it, and a name is its hash, so a
// blob read from anywhere (a disk, a peer, an object store) can be checked
// against the name it was asked for.
//
// Bytes never enter the log: the log carries only the metadata (facts
// MediaUploaded, ThumbnailStored) that names blobs by hash.
package blobstore

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// ErrNotFound: the store has no blob of that hash.
var ErrNotFound = errors.New("blobstore: blob not found")

// ErrTooLarge: Put read more than its limit; nothing was stored.
var ErrTooLarge = errors.New("blobstore: blob larger than the limit")

// Blob is an open blob: seekable, so that downloads can answer Range
// requests without reading the whole file.
type Blob interface {
	io.ReadSeekCloser
}

// Store is a content-addressed blob store.
type Store interface {
	// Put streams r into the store, at most max bytes (ErrTooLarge
	// beyond; max <= 0 means no limit), and returns the blob's hash (hex
	// SHA-256) and size. Memory use does not depend on the size. When Put
	// returns, the blob is durable.
	Put(ctx context.Context, r io.Reader, max int64) (hash string, size int64, err error)
	// Open returns the blob and its size, or ErrNotFound.
	Open(ctx context.Context, hash string) (Blob, int64, error)
	// Delete removes a blob; deleting a missing blob is not an error.
	Delete(ctx context.Context, hash string) error
}

// ValidHash says whether h is a lower-case hex SHA-256, the only names
// the store accepts (so a name can never be a path).
func ValidHash(h string) bool {
	if len(h) != 64 {
		return false
	}
	for i := 0; i < len(h); i++ {
		c := h[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// FS stores blobs as files under a directory: <dir>/<h[0:2]>/<h[2:4]>/<h>,
// with uploads in progress under <dir>/tmp.
type FS struct {
	dir string
	// OnStored, when set, is told the size of each blob newly stored
	// (not one deduplicated against a stored copy), so that a cache's
	// owner knows how much it grew.
	OnStored func(size int64)
}

// NewFS opens (creating it when needed) a store under dir. Temporary
// files left by a crash are removed.
func NewFS(dir string) (*FS, error) {
	tmp := filepath.Join(dir, "tmp")
	if err := os.MkdirAll(tmp, 0o700); err != nil {
		return nil, fmt.Errorf("blobstore: create %s: %w", dir, err)
	}
	if ents, err := os.ReadDir(tmp); err == nil {
		for _, e := range ents {
			_ = os.Remove(filepath.Join(tmp, e.Name()))
		}
	}
	return &FS{dir: dir}, nil
}

func (s *FS) path(hash string) string {
	return filepath.Join(s.dir, hash[0:2], hash[2:4], hash)
}

// Spool streams r (at most max bytes) into a temporary file in the
// store's directory, hashing as it goes. The caller either commits the
// file into the store (FS.Commit) or removes it (Spooled.Remove). Other
// stores (S3) spool here too, so that the hash is known before the bytes
// leave the machine.
func (s *FS) Spool(ctx context.Context, r io.Reader, max int64) (*Spooled, error) {
	f, err := os.CreateTemp(filepath.Join(s.dir, "tmp"), "up-*")
	if err != nil {
		return nil, fmt.Errorf("blobstore: create a temporary file: %w", err)
	}
	sp := &Spooled{f: f}
	h := sha256.New()
	src := r
	if max > 0 {
		src = io.LimitReader(r, max+1)
	}
	n, err := io.Copy(io.MultiWriter(f, h), ctxReader{ctx, src})
	if err == nil && max > 0 && n > max {
		err = ErrTooLarge
	}
	if err == nil {
		// Durable before it is renamed into place: a crash after the
		// rename must never leave a short file under a hash's name.
		err = f.Sync()
	}
	if err != nil {
		sp.Remove()
		return nil, err
	}
	sp.Hash = hex.EncodeToString(h.Sum(nil))
	sp.Size = n
	return sp, nil
}

// Spooled is a temporary file holding a blob being stored.
type Spooled struct {
	Hash string
	Size int64
	f    *os.File
}

// File is the temporary file (positioned anywhere; seek before reading).
func (sp *Spooled) File() *os.File { return sp.f }

// Remove deletes the temporary file.
func (sp *Spooled) Remove() {
	if sp.f != nil {
		name := sp.f.Name()
		sp.f.Close()
		_ = os.Remove(name)
		sp.f = nil
	}
}

// Commit moves a spooled file into the store under its hash. When the
// blob is already stored, the new copy is dropped (deduplication) and the
// old one's modification time refreshed, which tells the garbage
// collector it is in use again.
func (s *FS) Commit(sp *Spooled) error {
	defer sp.Remove()
	final := s.path(sp.Hash)
	if _, err := os.Stat(final); err == nil {
		now := time.Now()
		_ = os.Chtimes(final, now, now)
		return nil
	}
	dir := filepath.Dir(final)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("blobstore: %w", err)
	}
	if err := sp.f.Close(); err != nil {
		return fmt.Errorf("blobstore: %w", err)
	}
	name := sp.f.Name()
	sp.f = nil
	if err := os.Rename(name, final); err != nil {
		_ = os.Remove(name)
		return fmt.Errorf("blobstore: %w", err)
	}
	if err := syncDir(dir); err != nil {
		return err
	}
	if s.OnStored != nil {
		s.OnStored(sp.Size)
	}
	return nil
}

// Put implements Store.
func (s *FS) Put(ctx context.Context, r io.Reader, max int64) (string, int64, error) {
	sp, err := s.Spool(ctx, r, max)
	if err != nil {
		return "", 0, err
	}
	hash, size := sp.Hash, sp.Size
	if err := s.Commit(sp); err != nil {
		return "", 0, err
	}
	return hash, size, nil
}

// Open implements Store.
func (s *FS) Open(_ context.Context, hash string) (Blob, int64, error) {
	if !ValidHash(hash) {
		return nil, 0, ErrNotFound
	}
	p := s.path(hash)
	f, err := os.Open(p)
	if errors.Is(err, os.ErrNotExist) {
		return nil, 0, ErrNotFound
	}
	if err != nil {
		return nil, 0, fmt.Errorf("blobstore: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, fmt.Errorf("blobstore: %w", err)
	}
	// The access time orders a cache's least-recently-used blobs
	// (set here: mounts with noatime or relatime would not keep it); the
	// modification time says when the blob was last stored and is kept.
	_ = os.Chtimes(p, time.Now(), st.ModTime())
	return f, st.Size(), nil
}

// LocalBlob is one blob on the local disk, as FS.Walk lists it.
type LocalBlob struct {
	Hash string
	Size int64
	Used time.Time // last opened or stored
}

// Walk calls fn with every blob in the store (not uploads in progress),
// in no particular order, until fn returns false.
func (s *FS) Walk(fn func(LocalBlob) bool) error {
	stop := errors.New("stop")
	err := filepath.WalkDir(s.dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return nil // deleted while walking
			}
			return err
		}
		if d.IsDir() {
			if p == filepath.Join(s.dir, "tmp") {
				return filepath.SkipDir
			}
			return nil
		}
		name := d.Name()
		if !ValidHash(name) || !strings.HasSuffix(filepath.Dir(p), filepath.Join(name[0:2], name[2:4])) {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return nil // deleted while walking
		}
		if !fn(LocalBlob{Hash: name, Size: fi.Size(), Used: accessTime(fi)}) {
			return stop
		}
		return nil
	})
	if errors.Is(err, stop) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("blobstore: list %s: %w", s.dir, err)
	}
	return nil
}

// Delete implements Store.
func (s *FS) Delete(_ context.Context, hash string) error {
	if !ValidHash(hash) {
		return nil
	}
	if err := os.Remove(s.path(hash)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("blobstore: %w", err)
	}
	return nil
}

// ModTime is when the blob was last stored (or re-stored); zero when
// absent.
func (s *FS) ModTime(hash string) time.Time {
	if !ValidHash(hash) {
		return time.Time{}
	}
	st, err := os.Stat(s.path(hash))
	if err != nil {
		return time.Time{}
	}
	return st.ModTime()
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("blobstore: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("blobstore: sync %s: %w", dir, err)
	}
	return nil
}

// ctxReader stops a long copy when the request is cancelled.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// VerifyingCopy copies a blob fetched from elsewhere into the store,
// refusing it unless its hash is want.
func VerifyingCopy(ctx context.Context, fs *FS, r io.Reader, want string, max int64) (*Spooled, error) {
	sp, err := fs.Spool(ctx, r, max)
	if err != nil {
		return nil, err
	}
	if sp.Hash != want {
		sp.Remove()
		return nil, fmt.Errorf("blobstore: fetched blob hashes to %s, not %s", sp.Hash, want)
	}
	return sp, nil
}
