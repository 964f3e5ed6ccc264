package media

import (
	"context"
	"errors"
	"sync"
	"time"

	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
	mediaproj "github.com/engram-hs/engram/projections/media"
)

// The janitor applies media_retention and collects blobs nothing refers
// to. Retention is decided here, with the clock, and recorded as a
// MediaDeleted fact (on the leader; a follower's append fails and it
// leaves the decision to the leader): the projection only folds the fact.
// Collection is local to each node: a blob the projection lists as free
// for longer than the grace period is deleted from this node's store. The
// grace covers an upload that stored its blob (deduplicated against a
// free one, which refreshes the blob's modification time) and has not yet
// recorded its fact.

const retentionBatch = 1000

// Run runs the janitor until ctx is done.
func (r *Repo) Run(ctx context.Context) {
	tick := time.NewTicker(r.cfg.JanitorInterval)
	defer tick.Stop()
	if r.s3 != nil {
		var uploads sync.WaitGroup
		defer uploads.Wait()
		uploads.Go(func() {
			r.s3.RunUploads(ctx, func(h string, err error) {
				r.logger.Warn().Err(err).Str("sha256", h).Msg("media: could not send a blob to the bucket (store_synchronous: false); will retry")
			})
		})
	}
	firstFree := map[string]time.Time{}
	for {
		r.applyRetention(ctx, r.now())
		r.collect(ctx, firstFree, r.now())
		r.TrimCache(ctx)
		for again := true; again; {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				again = false
			case <-r.trimNow:
				r.TrimCache(ctx)
			}
		}
	}
}

// TrimCache keeps the local copies of a bucket's blobs within
// LocalCacheMaxSize (see blobstore.S3.TrimCache).
func (r *Repo) TrimCache(ctx context.Context) {
	if r.s3 == nil {
		return
	}
	added := r.cacheAdded.Swap(0)
	max := r.cfg.ObjectStore.LocalCacheMaxSize
	if used := r.cacheUsed.Load(); used >= 0 && used+added <= max {
		r.cacheUsed.Store(used + added)
		return
	}
	left, err := r.s3.TrimCache(ctx, max, r.keepLocal)
	if err == nil {
		r.cacheUsed.Store(left)
	} else {
		r.cacheUsed.Store(-1)
	}
	switch {
	case ctx.Err() != nil:
	case err != nil:
		r.logger.Warn().Err(err).Msg("media: could not trim the local cache of the bucket's blobs; will retry")
	case left > max:
		r.logger.Warn().Int64("bytes", left).Int64("local_cache_max_size", max).
			Msg("media: the local cache is over local_cache_max_size with blobs that are not (yet) in the bucket: uploads still pending (check that the bucket takes them), or media that store_local or store_remote keeps out of it")
	}
}

// keepLocal says whether a blob's local copy must stay although the
// bucket holds it.
func (r *Repo) keepLocal(hash string) bool {
	r.heldMu.Lock()
	held := r.held[hash] > 0
	r.heldMu.Unlock()
	if held || r.s3.Pending(hash) {
		return true
	}
	// Collected from the bucket, or being: this copy may be the last.
	st, err := r.View().BucketState(hash)
	return err != nil || st != nil
}

func (r *Repo) applyRetention(ctx context.Context, now time.Time) {
	if r.cfg.LocalMediaLifetime <= 0 && r.cfg.RemoteMediaLifetime <= 0 {
		return
	}
	localBefore := now.Add(-r.cfg.LocalMediaLifetime).UnixMilli()
	remoteBefore := now.Add(-r.cfg.RemoteMediaLifetime).UnixMilli()
	var refs []facts.MediaRef
	err := r.View().ForEach(func(m mediaproj.Media) bool {
		local := m.Origin == r.cfg.ServerName
		if local && r.cfg.LocalMediaLifetime > 0 && m.CreatedTS < localBefore ||
			!local && r.cfg.RemoteMediaLifetime > 0 && m.CreatedTS < remoteBefore {
			refs = append(refs, facts.MediaRef{Origin: m.Origin, MediaID: m.MediaID})
		}
		return len(refs) < retentionBatch
	})
	if err != nil || len(refs) == 0 {
		return
	}
	err = r.commit(ctx, facts.MustEncode(englog.KindMediaDeleted, facts.MediaDeleted{Media: refs, Reason: "retention"}))
	switch {
	case errors.Is(err, englog.ErrNotLeader), ctx.Err() != nil:
	case err != nil:
		r.logger.Warn().Err(err).Msg("media retention: could not record the expired media; will retry")
	default:
		r.logger.Info().Int("items", len(refs)).Msg("media retention: expired media deleted")
	}
}

func (r *Repo) collect(ctx context.Context, firstFree map[string]time.Time, now time.Time) {
	free, err := r.View().FreeBlobs(10_000)
	if err != nil {
		return
	}
	for h := range firstFree {
		if _, ok := free[h]; !ok {
			delete(firstFree, h)
		}
	}
	var fromBucket []string
	for h := range free {
		seen, ok := firstFree[h]
		if !ok {
			firstFree[h] = now
			continue
		}
		if now.Sub(seen) < r.cfg.JanitorGrace {
			continue
		}
		// Stored again lately (an upload of the same bytes deduplicated
		// against this free blob, its fact not yet folded): it is about
		// to be referenced. The grace is counted from that store.
		if m := r.fs.ModTime(h); !m.IsZero() && now.Sub(m) < r.cfg.JanitorGrace {
			continue
		}
		if ref, err := r.View().Referenced(h); err != nil || ref {
			continue
		}
		// The local copy; the bucket's goes by the log (collectBucket).
		if err := r.fs.Delete(ctx, h); err != nil {
			r.logger.Warn().Err(err).Str("sha256", h).Msg("media: could not delete an unreferenced blob")
			continue
		}
		if r.s3 != nil {
			fromBucket = append(fromBucket, h)
			continue
		}
		delete(firstFree, h)
	}
	if r.s3 != nil {
		r.collectBucket(ctx, fromBucket, now)
		for _, h := range fromBucket {
			if st, err := r.View().BucketState(h); err == nil && st != nil && st.State == mediaproj.StateDeleted {
				delete(firstFree, h)
			}
		}
		r.restoreBucket(ctx)
	}
}
