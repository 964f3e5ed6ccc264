package media

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"

	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/media/blobstore"
	"github.com/engram-hs/engram/media/thumbnail"
	mediaproj "github.com/engram-hs/engram/projections/media"
)

// Served is content to answer with.
type Served struct {
	Body        io.ReadSeekCloser
	Size        int64
	ContentType string
}

// SelectSize picks the configured thumbnail size for a request (Synapse
// without dynamic_thumbnails): of the sizes with the requested method (all
// sizes when none has it), the smallest at least as big as the request in
// both dimensions, else the largest.
func (r *Repo) SelectSize(w, h int, method string) ThumbnailSize {
	var cands []ThumbnailSize
	for _, s := range r.cfg.ThumbnailSizes {
		if s.Method == method {
			cands = append(cands, s)
		}
	}
	if len(cands) == 0 {
		cands = r.cfg.ThumbnailSizes
	}
	var best, largest *ThumbnailSize
	for i := range cands {
		c := &cands[i]
		if largest == nil || c.Width*c.Height > largest.Width*largest.Height {
			largest = c
		}
		if c.Width >= w && c.Height >= h && (best == nil || c.Width*c.Height < best.Width*best.Height) {
			best = c
		}
	}
	if best == nil {
		best = largest
	}
	return *best
}

// Thumbnail returns the thumbnail of m for a requested box and method: at
// the nearest of thumbnail_sizes, or at the requested size itself with
// dynamic_thumbnails. It is generated and stored on first request. When
// the image is no bigger than the thumbnail would be, it returns the
// original (the spec: never upscale; serve the original content instead).
func (r *Repo) Thumbnail(ctx context.Context, m *mediaproj.Media, w, h int, method string) (*Served, error) {
	if method != thumbnail.Crop && method != thumbnail.Scale {
		method = thumbnail.Scale
	}
	size := ThumbnailSize{Width: w, Height: h, Method: method}
	if !r.cfg.DynamicThumbnails {
		size = r.SelectSize(w, h, method)
	}
	if s, err := r.storedThumbnail(ctx, m, size); s != nil || err != nil {
		return s, err
	}
	key := fmt.Sprintf("%s/%s/%s/%dx%d", m.Origin, m.MediaID, size.Method, size.Width, size.Height)
	unlock := r.lockThumb(key)
	defer unlock()
	if s, err := r.storedThumbnail(ctx, m, size); s != nil || err != nil {
		return s, err
	}
	orig, origSize, err := r.OpenBlob(ctx, m.SHA256)
	if err != nil {
		return nil, err
	}
	info, err := thumbnail.Probe(orig)
	if err != nil {
		orig.Close()
		return nil, err
	}
	if int64(info.Width)*int64(info.Height) > r.cfg.MaxImagePixels {
		orig.Close()
		return nil, ErrImageTooLarge
	}
	if info.Width <= size.Width && info.Height <= size.Height && info.Orientation == 1 {
		if _, err := orig.Seek(0, io.SeekStart); err != nil {
			orig.Close()
			return nil, err
		}
		return &Served{Body: orig, Size: origSize, ContentType: m.ContentType}, nil
	}
	res, err := thumbnail.Make(orig, size.Width, size.Height, size.Method, r.cfg.MaxImagePixels)
	orig.Close()
	if err != nil {
		return nil, err
	}
	r.storeThumbnail(ctx, m, size, res)
	return &Served{Body: nopCloser{bytes.NewReader(res.Data)}, Size: int64(len(res.Data)), ContentType: res.ContentType}, nil
}

func (r *Repo) storedThumbnail(ctx context.Context, m *mediaproj.Media, size ThumbnailSize) (*Served, error) {
	t, err := r.View().Thumbnail(m.Origin, m.MediaID, size.Method, size.Width, size.Height)
	if err != nil || t == nil {
		return nil, err
	}
	b, n, err := r.OpenBlob(ctx, t.SHA256)
	if errors.Is(err, ErrNotFound) {
		return nil, nil // lost: make it again
	}
	if err != nil {
		return nil, err
	}
	return &Served{Body: b, Size: n, ContentType: t.ContentType}, nil
}

// storeThumbnail keeps a generated thumbnail (blob, then fact). Failing to
// keep it is not failing the request: the next one makes it again (a
// follower cannot write to the log, for example).
func (r *Repo) storeThumbnail(ctx context.Context, m *mediaproj.Media, size ThumbnailSize, res *thumbnail.Result) {
	sp, err := r.fs.Spool(ctx, bytes.NewReader(res.Data), 0)
	if err == nil {
		hash, n := sp.Hash, sp.Size
		if err = r.commitSpooled(ctx, sp, m.Origin); err == nil {
			err = r.commit(ctx, facts.MustEncode(englog.KindThumbnailStored, facts.ThumbnailStored{
				Origin: m.Origin, MediaID: m.MediaID, Width: size.Width, Height: size.Height, Method: size.Method,
				ContentType: res.ContentType, Size: n, SHA256: hash}))
		}
	}
	if err != nil {
		r.logger.Warn().Err(err).Str("media_id", m.MediaID).Msg("a thumbnail was made but could not be stored; it will be made again on the next request")
	}
}

func (r *Repo) lockThumb(key string) func() {
	r.thumbMu.Lock()
	mu := r.thumbBusy[key]
	if mu == nil {
		mu = &sync.Mutex{}
		r.thumbBusy[key] = mu
	}
	r.thumbMu.Unlock()
	mu.Lock()
	return func() {
		mu.Unlock()
		r.thumbMu.Lock()
		if r.thumbBusy[key] == mu && mu.TryLock() {
			delete(r.thumbBusy, key)
			mu.Unlock()
		}
		r.thumbMu.Unlock()
	}
}

type nopCloser struct{ *bytes.Reader }

func (nopCloser) Close() error { return nil }

// Open returns the content of m.
func (r *Repo) Open(ctx context.Context, m *mediaproj.Media) (*Served, error) {
	b, n, err := r.OpenBlob(ctx, m.SHA256)
	if err != nil {
		return nil, err
	}
	return &Served{Body: b, Size: n, ContentType: m.ContentType}, nil
}

var _ blobstore.Blob = nopCloser{}
