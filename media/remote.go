package media

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/media/blobstore"
	mediaproj "github.com/engram-hs/engram/projections/media"
)

// RemoteMedia is media another server sent.
type RemoteMedia struct {
	Body        io.ReadCloser
	ContentType string
	FileName    string
}

// Fetcher downloads media from its origin server over federation
// (federation.Remote implements it: the authenticated federation media
// endpoint, falling back to the deprecated media path for older servers).
type Fetcher interface {
	FetchMedia(ctx context.Context, origin, mediaID string) (*RemoteMedia, error)
}

// ErrRemote: the origin server could not be asked or did not answer with
// the media.
var ErrRemote = errors.New("media: the origin server did not supply the media")

// ErrRemoteTooLarge: remote media over max_upload_size is neither cached
// nor proxied (the spec: 502 M_TOO_LARGE).
var ErrRemoteTooLarge = errors.New("media: remote media larger than max_upload_size")

// remoteFetches makes concurrent requests for the same remote media share
// one download.
type remoteFetches struct {
	mu      sync.Mutex
	running map[string]*remoteFetch
}

type remoteFetch struct {
	done chan struct{}
	m    *mediaproj.Media
	err  error
}

// SetFetcher enables remote media (nil: this server does not federate).
func (r *Repo) SetFetcher(f Fetcher) { r.fetcher = f }

// Resolve is Lookup that, for remote media not in the cache, fetches it
// from its origin (unless allowRemote is false) and caches it.
func (r *Repo) Resolve(ctx context.Context, origin, id string, allowRemote bool) (*mediaproj.Media, error) {
	m, err := r.Lookup(origin, id)
	if !errors.Is(err, ErrNotFound) || origin == r.cfg.ServerName || !ValidMediaID(id) {
		return m, err
	}
	if !allowRemote || r.fetcher == nil {
		return nil, ErrNotFound
	}
	key := origin + "/" + id
	r.remote.mu.Lock()
	if r.remote.running == nil {
		r.remote.running = map[string]*remoteFetch{}
	}
	f := r.remote.running[key]
	if f == nil {
		f = &remoteFetch{done: make(chan struct{})}
		r.remote.running[key] = f
		go func() {
			// Detached from the first requester: others may be waiting.
			fctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
			f.m, f.err = r.fetchRemote(fctx, origin, id)
			cancel()
			r.remote.mu.Lock()
			delete(r.remote.running, key)
			r.remote.mu.Unlock()
			close(f.done)
		}()
	}
	r.remote.mu.Unlock()
	select {
	case <-f.done:
		return f.m, f.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (r *Repo) fetchRemote(ctx context.Context, origin, id string) (*mediaproj.Media, error) {
	rm, err := r.fetcher.FetchMedia(ctx, origin, id)
	if errors.Is(err, ErrNotFound) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrRemote, err)
	}
	defer rm.Body.Close()
	sp, err := r.fs.Spool(ctx, rm.Body, r.cfg.MaxUploadSize)
	if errors.Is(err, blobstore.ErrTooLarge) {
		return nil, ErrRemoteTooLarge
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrRemote, err)
	}
	hash, size := sp.Hash, sp.Size
	if err := r.commitSpooled(ctx, sp, origin); err != nil {
		return nil, err
	}
	ct := rm.ContentType
	if ct == "" {
		ct = "application/octet-stream"
	}
	f := facts.MediaUploaded{Origin: origin, MediaID: id, ContentType: ct, FileName: rm.FileName, Size: size,
		SHA256: hash, CreatedTS: r.now().UnixMilli(), Authenticated: r.cfg.AuthenticatedMedia}
	err = r.commit(ctx, facts.MustEncode(englog.KindMediaUploaded, f))
	if errors.Is(err, englog.ErrNotLeader) {
		// A follower cannot record the cache entry; it serves what it
		// fetched, and the next request fetches again.
		return &mediaproj.Media{Origin: origin, MediaID: id, ContentType: ct, FileName: rm.FileName, Size: size,
			SHA256: hash, CreatedTS: f.CreatedTS, Authenticated: f.Authenticated}, nil
	}
	if err != nil {
		return nil, err
	}
	return r.Lookup(origin, id)
}
