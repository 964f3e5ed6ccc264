package media

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/media/blobstore"
	mediaproj "github.com/engram-hs/engram/projections/media"
)

// Collection from a bucket that several nodes share goes through the log
// (projections/media's BlobsCollecting, BlobsCollected, BlobsRestored):
// checks of the bucket and of one node's view cannot order a deletion
// against another node's upload of the same bytes, which may have found
// the object in the bucket (and not sent it) just before the deletion.

func serverFact(typ string, v any) englog.Proposal {
	data, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return facts.MustEncode(englog.KindServerFact, facts.ServerFact{Type: typ, Data: data})
}

// collectBucket deletes from the bucket the blobs among free (each
// unreferenced for longer than the grace, by this node's view) that the
// log lets this node collect.
func (r *Repo) collectBucket(ctx context.Context, free []string, now time.Time) {
	v := r.View()
	var want []string
	for _, h := range free {
		if st, err := v.BucketState(h); err == nil && st == nil {
			want = append(want, h)
		}
	}
	mine := uint64(0)
	if len(want) > 0 {
		offs, err := r.log.Append(ctx, serverFact(mediaproj.FactBlobsCollecting, mediaproj.BlobsCollecting{SHA256: want, TS: now.UnixMilli()}))
		if err == nil {
			mine = offs[0]
			err = r.h.WaitApplied(ctx, mine)
		}
		if err != nil {
			if ctx.Err() == nil && !errors.Is(err, englog.ErrNotLeader) {
				r.logger.Warn().Err(err).Msg("media: could not record a collection of unreferenced blobs; will retry")
			}
			return
		}
	}
	// Every collection whose BlobsCollected is not in the log: this
	// node's new ones, and any whose collector stopped before it ended
	// them (older than the grace several times over).
	jobs := map[uint64][]string{}
	_ = r.View().BucketStates(func(h string, st mediaproj.BucketState) bool {
		if st.State == mediaproj.StateCollecting && (mine != 0 && st.Offset == mine || now.Sub(time.UnixMilli(st.TS)) > 3*r.cfg.JanitorGrace) {
			jobs[st.Offset] = append(jobs[st.Offset], h)
		}
		return true
	})
	for off, hashes := range jobs {
		done := mediaproj.BlobsCollected{Offset: off}
		for _, h := range hashes {
			if ref, err := r.View().Referenced(h); err != nil || ref {
				done.Kept = append(done.Kept, h)
				continue
			}
			if err := r.s3.DeleteRemote(ctx, h); err != nil {
				r.logger.Warn().Err(err).Str("sha256", h).Msg("media: could not delete an unreferenced blob from the bucket; will retry")
				done.Kept = append(done.Kept, h)
				continue
			}
			done.Deleted = append(done.Deleted, h)
		}
		if err := r.commit(ctx, serverFact(mediaproj.FactBlobsCollected, done)); err != nil && ctx.Err() == nil {
			r.logger.Warn().Err(err).Msg("media: could not record the end of a collection of unreferenced blobs; will retry")
		}
	}
}

// restoreBucket sends again to the bucket the referenced blobs a
// collection deleted (named by an upload that found them there before
// the deletion), from this node's local copies.
func (r *Repo) restoreBucket(ctx context.Context) {
	var lost []string
	v := r.View()
	_ = v.BucketStates(func(h string, st mediaproj.BucketState) bool {
		if st.State == mediaproj.StateDeleted {
			if ref, err := v.Referenced(h); err == nil && ref {
				lost = append(lost, h)
			}
		}
		return true
	})
	for _, h := range lost {
		if err := r.restoreBlob(ctx, h); err != nil && !errors.Is(err, blobstore.ErrNotFound) && ctx.Err() == nil {
			r.logger.Warn().Err(err).Str("sha256", h).Msg("media: could not send a blob back to the bucket; will retry")
		}
	}
}

func (r *Repo) restoreBlob(ctx context.Context, h string) error {
	if err := r.s3.UploadLocal(ctx, h); err != nil {
		return err
	}
	return r.commit(ctx, serverFact(mediaproj.FactBlobsRestored, mediaproj.BlobsRestored{SHA256: []string{h}}))
}

// ensureInBucket makes sure, once an upload's fact is in the log, that the
// bucket holds its blob: a collection that deleted it meanwhile is undone
// from the local copy; one still under way is waited for (a while; the
// janitor's restoreBucket does what waiting leaves).
func (r *Repo) ensureInBucket(ctx context.Context, h string) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for {
		st, err := r.View().BucketState(h)
		if err != nil {
			return err
		}
		switch {
		case st == nil:
			return nil
		case st.State == mediaproj.StateDeleted:
			return r.restoreBlob(ctx, h)
		}
		if err := r.h.WaitApplied(ctx, r.h.Applied()+1); err != nil {
			return nil // still being collected: the janitor restores it
		}
	}
}

// holdLocal marks a blob's local copy as needed (an upload is between
// storing it and making sure the bucket has it), so the cache keeps it.
func (r *Repo) holdLocal(h string) (release func()) {
	r.heldMu.Lock()
	r.held[h]++
	r.heldMu.Unlock()
	return func() {
		r.heldMu.Lock()
		if r.held[h]--; r.held[h] <= 0 {
			delete(r.held, h)
		}
		r.heldMu.Unlock()
	}
}
