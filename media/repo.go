// Package media is the media repository: it stores uploads in the blob
// store, records their metadata in the log (facts MediaUploaded, ...),
// answers from the media projection, makes and stores thumbnails, fetches
// blobs a node lacks from its cluster peers, and collects blobs nothing
// refers to any more. The HTTP adapters (api/media for clients, the
// federation package for servers) call it.
package media

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"math/big"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/engram-hs/engram/internal/objstore"
	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/media/blobstore"
	"github.com/engram-hs/engram/media/thumbnail"
	"github.com/engram-hs/engram/projections"
	mediaproj "github.com/engram-hs/engram/projections/media"
)

// Errors the adapters turn into Matrix errors.
var (
	ErrNotFound       = errors.New("media: not found")
	ErrTooLarge       = errors.New("media: file is larger than max_upload_size")
	ErrQuarantined    = errors.New("media: quarantined")
	ErrNotYetUploaded = errors.New("media: not yet uploaded")
	ErrOverwrite      = errors.New("media: already uploaded")
	ErrNotOwner       = errors.New("media: reserved by another user")
	ErrNotImage       = thumbnail.ErrNotImage
	ErrImageTooLarge  = thumbnail.ErrTooLarge
)

// ThumbnailSize is one entry of thumbnail_sizes.
type ThumbnailSize struct {
	Width, Height int
	Method        string
}

// DefaultThumbnailSizes are Synapse's default thumbnail_sizes (which are
// also the sizes the spec says servers should produce).
var DefaultThumbnailSizes = []ThumbnailSize{
	{32, 32, thumbnail.Crop},
	{96, 96, thumbnail.Crop},
	{320, 240, thumbnail.Scale},
	{640, 480, thumbnail.Scale},
	{800, 600, thumbnail.Scale},
}

// UploadLimit is one entry of media_upload_limits: a user may upload at
// most MaxSize bytes in any TimePeriod.
type UploadLimit struct {
	TimePeriod time.Duration
	MaxSize    int64
}

// Config is the media repository's share of the server configuration
// (Synapse's key names in the comments).
type Config struct {
	ServerName    string
	Dir           string // <data_dir>/media
	MaxUploadSize int64  // max_upload_size
	// MaxImagePixels bounds images the thumbnailer decodes
	// (max_image_pixels, default 32M).
	MaxImagePixels int64
	// AuthenticatedMedia (enable_authenticated_media, default true):
	// media uploaded while it is on is refused by the deprecated
	// unauthenticated endpoints.
	AuthenticatedMedia bool
	ThumbnailSizes     []ThumbnailSize // thumbnail_sizes
	// DynamicThumbnails (dynamic_thumbnails, default false): thumbnails
	// are made at the requested size and method instead of the nearest
	// of ThumbnailSizes (each new size is stored, as in Synapse).
	DynamicThumbnails bool
	UploadLimits      []UploadLimit // media_upload_limits
	// Retention (media_retention): items older than this are deleted by
	// a MediaDeleted fact the leader records; 0 keeps them forever.
	LocalMediaLifetime  time.Duration // media_retention.local_media_lifetime
	RemoteMediaLifetime time.Duration // media_retention.remote_media_lifetime
	// UnusedExpiry is how long a POST /create reservation lasts (24 h,
	// the spec's recommendation); MaxPendingUploads how many a user may
	// hold at once (Synapse's max_pending_media_uploads, 5).
	UnusedExpiry      time.Duration
	MaxPendingUploads int
	// Peers are the other cluster nodes' client API base URLs, asked for
	// blobs this node lacks; PeerSecret authenticates those requests.
	Peers      []string
	PeerSecret string
	// JanitorInterval is how often retention and blob collection run (1
	// min); JanitorGrace how long a blob stays listed as free before it is
	// deleted (10 min).
	JanitorInterval time.Duration
	JanitorGrace    time.Duration
	// ObjectStore (media_storage_providers with Synapse's S3 provider)
	// keeps blobs in an S3-compatible bucket too; nil: the local
	// directory only.
	ObjectStore *ObjectStore
}

// ObjectStore is the S3 storage provider's configuration.
type ObjectStore struct {
	objstore.Config // its "config:" block
	// StoreLocal and StoreRemote (store_local, store_remote) say which
	// blobs go to the bucket: those of local uploads, those of cached
	// remote media (each with its thumbnails). The others stay on the
	// local disk only.
	StoreLocal, StoreRemote bool
	// LocalCacheMaxSize bounds the local copies of blobs (the provider
	// entry's local_cache_max_size; 0 means DefaultLocalCacheMaxSize):
	// past it, the least recently used blobs that are safely in the bucket
	// are dropped from the local disk, and fetched again when asked for.
	// A blob not yet in the bucket is never dropped.
	LocalCacheMaxSize int64
	// Synchronous (store_synchronous, Synapse's default false): an upload
	// is answered once its blob is in the bucket. Otherwise it is answered
	// once the blob is on the local disk, and sent to the bucket in the
	// background, retried until it is there, across restarts.
	Synchronous bool
}

// DefaultLocalCacheMaxSize is the local cache's bound with a bucket.
const DefaultLocalCacheMaxSize = 10 << 30

func (c *Config) defaults() {
	if c.MaxImagePixels <= 0 {
		c.MaxImagePixels = 32 << 20
	}
	if len(c.ThumbnailSizes) == 0 {
		c.ThumbnailSizes = DefaultThumbnailSizes
	}
	if c.UnusedExpiry <= 0 {
		c.UnusedExpiry = 24 * time.Hour
	}
	if c.JanitorInterval <= 0 {
		c.JanitorInterval = time.Minute
	}
	if c.JanitorGrace <= 0 {
		c.JanitorGrace = 10 * time.Minute
	}
	if c.MaxPendingUploads <= 0 {
		c.MaxPendingUploads = 5
	}
	if c.ObjectStore != nil && c.ObjectStore.LocalCacheMaxSize <= 0 {
		st := *c.ObjectStore
		st.LocalCacheMaxSize = DefaultLocalCacheMaxSize
		c.ObjectStore = &st
	}
}

// Repo is the media repository of one node.
type Repo struct {
	cfg    Config
	log    englog.Log
	h      *projections.Handle
	fs     *blobstore.FS   // local disk: spooling, cache, and the store unless S3 is used
	s3     *blobstore.S3   // the bucket (with fs as its cache); nil without one
	store  blobstore.Store // where blobs are looked for: s3 when set, else fs
	peers  *peerClient
	logger zerolog.Logger
	now    func() time.Time

	fetcher Fetcher // remote media; nil when not federating
	remote  remoteFetches

	thumbMu   sync.Mutex
	thumbBusy map[string]*sync.Mutex // one generation per thumbnail at a time

	// cacheAdded counts the bytes put in the local cache since it was
	// last trimmed; past a tenth of the bound, trimNow asks the janitor
	// to trim it at once rather than at its next tick.
	cacheAdded atomic.Int64
	trimNow    chan struct{}
	// cacheUsed is an upper bound of the local cache's bytes as of the
	// last trim (what was measured then plus what was added since; -1:
	// not measured yet): a trim that cannot be needed skips the walk of
	// the directory.
	cacheUsed atomic.Int64

	heldMu sync.Mutex
	held   map[string]int // blobs uploads still need locally (holdLocal)

	// afterBlobStored, in tests, runs between an upload's storing of its
	// blob and the recording of its fact.
	afterBlobStored func()
}

// Open opens the repository; h is the media projection's handle. Blobs
// live under cfg.Dir/blobs and, with cfg.ObjectStore, in its bucket too
// (checked here: a bucket that cannot be reached stops the start).
func Open(cfg Config, l englog.Log, h *projections.Handle, logger zerolog.Logger) (*Repo, error) {
	cfg.defaults()
	if cfg.Dir == "" {
		return nil, errors.New("media: no directory for the blob store (data_dir)")
	}
	fs, err := blobstore.NewFS(cfg.Dir + "/blobs")
	if err != nil {
		return nil, err
	}
	r := &Repo{cfg: cfg, log: l, h: h, fs: fs, store: fs, logger: logger.With().Str("component", "media").Logger(),
		now: time.Now, thumbBusy: map[string]*sync.Mutex{}, trimNow: make(chan struct{}, 1), held: map[string]int{}}
	if st := cfg.ObjectStore; st != nil {
		c, err := objstore.New(st.Config)
		if err != nil {
			return nil, fmt.Errorf("media_storage_providers: %w", err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := c.Check(ctx); err != nil {
			return nil, fmt.Errorf("media_storage_providers: %w", err)
		}
		r.s3 = blobstore.NewS3(c, fs)
		fs.OnStored = r.cached
		if !st.Synchronous {
			if err := r.s3.UploadLater(cfg.Dir + "/s3-pending"); err != nil {
				return nil, err
			}
		}
		r.store = r.s3
	}
	r.cacheUsed.Store(-1)
	r.peers = newPeerClient(cfg.Peers, cfg.PeerSecret)
	return r, nil
}

// Config returns the effective configuration.
func (r *Repo) Config() Config { return r.cfg }

// Handle is the media projection's handle.
func (r *Repo) Handle() *projections.Handle { return r.h }

// View reads the media projection.
func (r *Repo) View() mediaproj.View { return mediaproj.NewView(r.h.Reader()) }

func (r *Repo) commit(ctx context.Context, props ...englog.Proposal) error {
	offs, err := r.log.Append(ctx, props...)
	if err != nil {
		return err
	}
	return r.h.WaitApplied(ctx, offs[len(offs)-1])
}

// ValidMediaID: the spec allows only A-Za-z0-9, _ and - in media IDs
// (which is also what keeps them from being paths).
func ValidMediaID(id string) bool {
	if id == "" || len(id) > 255 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

const idAlphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"

func newMediaID() string {
	var b strings.Builder
	for range 24 {
		n, _ := rand.Int(rand.Reader, big.NewInt(int64(len(idAlphabet))))
		b.WriteByte(idAlphabet[n.Int64()])
	}
	return b.String()
}

// Create reserves a media ID for an asynchronous upload by user.
func (r *Repo) Create(ctx context.Context, user string) (id string, expiresAt int64, err error) {
	now := r.now()
	n, err := r.View().PendingCount(user, now.UnixMilli())
	if err != nil {
		return "", 0, err
	}
	if n >= r.cfg.MaxPendingUploads {
		return "", 0, ErrTooManyPending
	}
	id = newMediaID()
	expiresAt = now.Add(r.cfg.UnusedExpiry).UnixMilli()
	err = r.commit(ctx, facts.MustEncode(englog.KindMediaCreated, facts.MediaCreated{
		MediaID: id, UserID: user, CreatedTS: now.UnixMilli(), ExpiresAt: expiresAt, Authenticated: r.cfg.AuthenticatedMedia}))
	return id, expiresAt, err
}

// ErrTooManyPending: the user holds MaxPendingUploads open reservations.
var ErrTooManyPending = errors.New("media: too many pending uploads")

// ErrQuota: the upload would exceed one of media_upload_limits.
var ErrQuota = errors.New("media: upload limit reached")

// Upload stores body as media of user. mediaID is "" for a new ID, or a
// reservation made by Create. declaredSize is the Content-Length (-1 when
// unknown): a body declared larger than max_upload_size is refused before
// reading it.
func (r *Repo) Upload(ctx context.Context, user, mediaID string, body io.Reader, declaredSize int64, contentType, fileName string) (*mediaproj.Media, error) {
	if r.cfg.MaxUploadSize > 0 && declaredSize > r.cfg.MaxUploadSize {
		return nil, ErrTooLarge
	}
	now := r.now()
	v := r.View()
	if mediaID != "" {
		m, err := v.Get(r.cfg.ServerName, mediaID, true)
		if err != nil {
			return nil, err
		}
		switch {
		case m == nil || (m.Pending && m.ExpiresAt <= now.UnixMilli()):
			return nil, ErrNotFound
		case !m.Pending:
			return nil, ErrOverwrite
		case m.UserID != user:
			return nil, ErrNotOwner
		}
	}
	limit := r.cfg.MaxUploadSize
	quota, err := r.quotaLeft(user, now)
	if err != nil {
		return nil, err
	}
	if quota >= 0 {
		if declaredSize > quota {
			return nil, ErrQuota
		}
		if limit <= 0 || quota < limit {
			limit = quota
		}
	}
	sp, err := r.fs.Spool(ctx, body, limit)
	if errors.Is(err, blobstore.ErrTooLarge) {
		if limit != r.cfg.MaxUploadSize {
			return nil, ErrQuota
		}
		return nil, ErrTooLarge
	}
	if err != nil {
		return nil, err
	}
	hash, size := sp.Hash, sp.Size
	defer r.holdLocal(hash)()
	if err := r.commitSpooled(ctx, sp, r.cfg.ServerName); err != nil {
		return nil, err
	}
	if r.afterBlobStored != nil {
		r.afterBlobStored()
	}
	if mediaID == "" {
		mediaID = newMediaID()
	}
	f := facts.MediaUploaded{Origin: r.cfg.ServerName, MediaID: mediaID, UserID: user, ContentType: contentType,
		FileName: fileName, Size: size, SHA256: hash, CreatedTS: now.UnixMilli(), Authenticated: r.cfg.AuthenticatedMedia}
	if err := r.commit(ctx, facts.MustEncode(englog.KindMediaUploaded, f)); err != nil {
		return nil, err
	}
	m, err := r.View().Get(r.cfg.ServerName, mediaID, true)
	if err != nil {
		return nil, err
	}
	if m == nil || m.Pending || m.SHA256 != hash {
		// A racing upload to the same reservation won.
		return nil, ErrOverwrite
	}
	if r.inBucket(r.cfg.ServerName) && r.cfg.ObjectStore.Synchronous {
		if err := r.ensureInBucket(ctx, hash); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// inBucket says whether blobs of media from origin go to the bucket.
func (r *Repo) inBucket(origin string) bool {
	if r.s3 == nil {
		return false
	}
	if origin == r.cfg.ServerName {
		return r.cfg.ObjectStore.StoreLocal
	}
	return r.cfg.ObjectStore.StoreRemote
}

// commitSpooled moves a spooled file into the blob store: the local
// directory, and the bucket too when the object store takes blobs of
// media from origin (store_local, store_remote).
func (r *Repo) commitSpooled(ctx context.Context, sp *blobstore.Spooled, origin string) error {
	switch {
	case !r.inBucket(origin):
		return r.fs.Commit(sp)
	case !r.cfg.ObjectStore.Synchronous:
		return r.s3.PutLater(sp)
	}
	return r.s3.PutSpooled(ctx, sp)
}

// cached counts bytes added to the local cache of a bucket's blobs.
func (r *Repo) cached(n int64) {
	if r.cacheAdded.Add(n) > r.cfg.ObjectStore.LocalCacheMaxSize/10 {
		select {
		case r.trimNow <- struct{}{}:
		default:
		}
	}
}

// quotaLeft is how many bytes user may still upload under
// media_upload_limits (-1: no limit).
func (r *Repo) quotaLeft(user string, now time.Time) (int64, error) {
	if len(r.cfg.UploadLimits) == 0 {
		return -1, nil
	}
	items, err := r.View().UserMedia(user)
	if err != nil {
		return 0, err
	}
	left := int64(-1)
	for _, l := range r.cfg.UploadLimits {
		since := now.Add(-l.TimePeriod).UnixMilli()
		used := int64(0)
		for _, m := range items {
			if m.CreatedTS > since && m.Origin == r.cfg.ServerName {
				used += m.Size
			}
		}
		rest := max(l.MaxSize-used, 0)
		if left < 0 || rest < left {
			left = rest
		}
	}
	return left, nil
}

// Lookup returns the item to serve, or ErrNotFound, ErrQuarantined,
// ErrNotYetUploaded.
func (r *Repo) Lookup(origin, id string) (*mediaproj.Media, error) {
	if !ValidMediaID(id) {
		return nil, ErrNotFound
	}
	m, err := r.View().Get(origin, id, origin == r.cfg.ServerName)
	if err != nil {
		return nil, err
	}
	switch {
	case m == nil:
		return nil, ErrNotFound
	case m.Pending && m.ExpiresAt <= r.now().UnixMilli():
		return nil, ErrNotFound
	case m.Pending:
		return m, ErrNotYetUploaded
	case m.Quarantined:
		return nil, ErrQuarantined
	}
	return m, nil
}

// WaitUploaded waits (until ctx is done) for a reserved item to be
// uploaded.
func (r *Repo) WaitUploaded(ctx context.Context, origin, id string) (*mediaproj.Media, error) {
	for {
		m, err := r.Lookup(origin, id)
		if !errors.Is(err, ErrNotYetUploaded) {
			return m, err
		}
		next := r.h.Applied() + 1
		if err := r.h.WaitApplied(ctx, next); err != nil {
			return nil, ErrNotYetUploaded
		}
	}
}

// OpenBlob opens a blob by hash: from the store, or else from a cluster
// peer (verified against the hash, then kept).
func (r *Repo) OpenBlob(ctx context.Context, hash string) (blobstore.Blob, int64, error) {
	b, size, err := r.store.Open(ctx, hash)
	if !errors.Is(err, blobstore.ErrNotFound) {
		return b, size, err
	}
	if err := r.peers.fetch(ctx, r, hash); err != nil {
		r.logger.Warn().Err(err).Str("sha256", hash).Msg("a blob in the media index is missing here and no peer supplied it")
		return nil, 0, ErrNotFound
	}
	return r.store.Open(ctx, hash)
}

// UserMedia counts the user's uploads created between fromTS and untilTS
// (Unix ms; 0: unbounded) and their total size (the admin API's media
// statistics).
func (r *Repo) UserMedia(userID string, fromTS, untilTS int64) (count, bytes int64, err error) {
	items, err := r.View().UserMedia(userID)
	if err != nil {
		return 0, 0, err
	}
	for _, m := range items {
		if (fromTS == 0 || m.CreatedTS >= fromTS) && (untilTS == 0 || m.CreatedTS <= untilTS) {
			count++
			bytes += m.Size
		}
	}
	return count, bytes, nil
}

// RemoteOlderThan lists cached remote media created (cached) before ts.
func (r *Repo) RemoteOlderThan(ts int64) ([]facts.MediaRef, error) {
	var refs []facts.MediaRef
	err := r.View().ForEach(func(m mediaproj.Media) bool {
		if m.Origin != r.cfg.ServerName && m.CreatedTS < ts {
			refs = append(refs, facts.MediaRef{Origin: m.Origin, MediaID: m.MediaID})
		}
		return true
	})
	return refs, err
}
