// Package media folds media metadata out of the log: which media items
// exist (local uploads, reservations for asynchronous uploads, remote media
// in the cache), their thumbnails, quarantine marks, and how many records
// refer to each blob, so that a blob nobody refers to can be collected.
//
// Every time in a record was decided by the writer (CreatedTS, ExpiresAt)
// or is an entry's time; nothing here reads the clock. Expired
// reservations are told apart by the reader, comparing ExpiresAt with its
// own clock.
package media

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"slices"

	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/projections"
)

const (
	pMedia   = 'm' // m origin 0 mediaID -> Media
	pThumb   = 't' // t origin 0 mediaID 0 method 0 WxH -> Thumbnail
	pUser    = 'u' // u userID 0 created(8 BE) 0 mediaID -> "" (a user's uploads, oldest first)
	pPending = 'p' // p userID 0 mediaID -> "" (reserved, not yet uploaded)
	pRefs    = 'h' // h sha256 -> number of records naming the blob (8 BE)
	pFree    = 'g' // g sha256 -> offset (8 BE) at which its last record went
	pBucket  = 'b' // b sha256 -> BucketState (absent: the bucket holds it, or never had it)
)

// The server facts (log.KindServerFact) of the collection of blobs from a
// bucket several nodes share. The log orders a collection against the
// uploads that name the same blob; the bucket alone cannot: a node's
// upload may find the object there (and not send it again) just before
// another node deletes it.
//
// A collector records BlobsCollecting; the fold marks each blob that is
// still unreferenced as being collected by that entry, and only the node
// whose entry it was deletes the object, and only while the blob is still
// unreferenced. It then records BlobsCollected: each deleted blob is
// marked deleted (an upload that names it after the mark must send it
// again), each kept one unmarked. A node that sends a referenced, deleted
// blob to the bucket again records BlobsRestored.
const (
	FactBlobsCollecting = "media.blobs_collecting"
	FactBlobsCollected  = "media.blobs_collected"
	FactBlobsRestored   = "media.blobs_restored"
)

// BlobsCollecting: the writer means to delete these blobs from the
// bucket, decided at TS (Unix ms).
type BlobsCollecting struct {
	SHA256 []string `json:"sha256"`
	TS     int64    `json:"ts"`
}

// BlobsCollected ends the collection the BlobsCollecting at Offset began:
// Deleted were deleted from the bucket (or may have been), Kept were not.
type BlobsCollected struct {
	Offset  uint64   `json:"offset"`
	Deleted []string `json:"deleted,omitempty"`
	Kept    []string `json:"kept,omitempty"`
}

// BlobsRestored: these blobs, marked deleted, are in the bucket again.
type BlobsRestored struct {
	SHA256 []string `json:"sha256"`
}

// BucketState is where a blob's bucket copy stands when it is not simply
// there.
type BucketState struct {
	// State is "collecting" (the entry at Offset began deleting it) or
	// "deleted" (that collection deleted it).
	State  string `json:"state"`
	Offset uint64 `json:"offset"`
	TS     int64  `json:"ts"` // BlobsCollecting.TS
}

const (
	StateCollecting = "collecting"
	StateDeleted    = "deleted"
)

// Media is one media item.
type Media struct {
	Origin      string `json:"origin"`
	MediaID     string `json:"media_id"`
	UserID      string `json:"user_id,omitempty"`
	ContentType string `json:"content_type,omitempty"`
	FileName    string `json:"file_name,omitempty"`
	Size        int64  `json:"size"`
	SHA256      string `json:"sha256,omitempty"`
	CreatedTS   int64  `json:"created_ts"`
	// Authenticated: not served by the deprecated unauthenticated
	// endpoints (see facts.MediaUploaded).
	Authenticated bool `json:"authenticated,omitempty"`
	// Pending: reserved by POST /create, bytes not uploaded yet; the
	// reservation lapses at ExpiresAt.
	Pending   bool  `json:"pending,omitempty"`
	ExpiresAt int64 `json:"expires_at,omitempty"`

	Quarantined   bool   `json:"quarantined,omitempty"`
	QuarantinedBy string `json:"quarantined_by,omitempty"`
	// Offset is the log offset of the entry that stored the bytes.
	Offset uint64 `json:"offset,omitempty"`
}

// Thumbnail is one stored thumbnail.
type Thumbnail struct {
	Width       int    `json:"width"`
	Height      int    `json:"height"`
	Method      string `json:"method"`
	ContentType string `json:"content_type"`
	Size        int64  `json:"size"`
	SHA256      string `json:"sha256"`
}

// Projection is the media read model.
type Projection struct{}

// New returns the projection.
func New() *Projection { return &Projection{} }

func (*Projection) Name() string { return "media" }
func (*Projection) Version() int { return 2 }

// ReadsVersion: version 2 added the bucket states (no entry before it
// had any), so version 1 answers every query the same while version 2 is
// rebuilt.
func (*Projection) ReadsVersion(stored int) bool { return stored == 1 }

func mediaKey(origin, id string) []byte { return projections.Key(pMedia, origin, id) }
func thumbPrefix(origin, id string) []byte {
	return append(projections.Key(pThumb, origin, id), 0)
}
func thumbKey(origin, id, method string, w, h int) []byte {
	return projections.Key(pThumb, origin, id, method, fmt.Sprintf("%dx%d", w, h))
}
func userKey(user string, created int64, id string) []byte {
	k := append(projections.Key(pUser, user), 0)
	k = binary.BigEndian.AppendUint64(k, uint64(created))
	k = append(k, 0)
	return append(k, id...)
}
func pendingKey(user, id string) []byte { return projections.Key(pPending, user, id) }
func refsKey(hash string) []byte        { return projections.Key(pRefs, hash) }
func freeKey(hash string) []byte        { return projections.Key(pFree, hash) }
func bucketKey(hash string) []byte      { return projections.Key(pBucket, hash) }

// Apply folds a batch.
func (*Projection) Apply(w projections.Writer, entries []englog.Entry) error {
	for _, e := range entries {
		var err error
		switch e.Kind {
		case englog.KindMediaCreated:
			var f facts.MediaCreated
			if err = facts.Decode(e, &f); err == nil {
				err = applyCreated(w, f)
			}
		case englog.KindMediaUploaded:
			var f facts.MediaUploaded
			if err = facts.Decode(e, &f); err == nil {
				err = applyUploaded(w, e, f)
			}
		case englog.KindThumbnailStored:
			var f facts.ThumbnailStored
			if err = facts.Decode(e, &f); err == nil {
				err = applyThumbnail(w, e, f)
			}
		case englog.KindMediaQuarantined:
			var f facts.MediaQuarantined
			if err = facts.Decode(e, &f); err == nil {
				err = applyQuarantined(w, f)
			}
		case englog.KindMediaDeleted:
			var f facts.MediaDeleted
			if err = facts.Decode(e, &f); err == nil {
				err = applyDeleted(w, e, f)
			}
		case englog.KindServerFact:
			var f facts.ServerFact
			if err = facts.Decode(e, &f); err == nil {
				err = applyServerFact(w, e, f)
			}
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func applyCreated(w projections.Writer, f facts.MediaCreated) error {
	// The origin of a reservation is always this server; the record is
	// keyed by "" until the upload names it, so the projection need not
	// know its own server name. See View.Get.
	k := mediaKey("", f.MediaID)
	if old, err := projections.GetJSON[Media](w, k); err != nil || old != nil {
		return err // an ID collision: the first reservation keeps it
	}
	m := Media{MediaID: f.MediaID, UserID: f.UserID, CreatedTS: f.CreatedTS, Pending: true,
		ExpiresAt: f.ExpiresAt, Authenticated: f.Authenticated}
	if err := projections.PutJSON(w, k, m); err != nil {
		return err
	}
	return w.Set(pendingKey(f.UserID, f.MediaID), nil)
}

func applyUploaded(w projections.Writer, e englog.Entry, f facts.MediaUploaded) error {
	k := mediaKey(f.Origin, f.MediaID)
	old, err := projections.GetJSON[Media](w, k)
	if err != nil {
		return err
	}
	if old != nil {
		return nil // the first upload wins (M_CANNOT_OVERWRITE_MEDIA)
	}
	authenticated := f.Authenticated
	if f.UserID != "" {
		// An upload to a reserved ID must come from the user who reserved
		// it, before the reservation lapsed (by the entry's time).
		res, err := projections.GetJSON[Media](w, mediaKey("", f.MediaID))
		if err != nil {
			return err
		}
		if res != nil {
			if res.UserID != f.UserID || e.Time > res.ExpiresAt {
				return nil
			}
			authenticated = res.Authenticated
			if err := w.Delete(mediaKey("", f.MediaID)); err != nil {
				return err
			}
			if err := w.Delete(pendingKey(res.UserID, f.MediaID)); err != nil {
				return err
			}
		}
	}
	m := Media{Origin: f.Origin, MediaID: f.MediaID, UserID: f.UserID, ContentType: f.ContentType,
		FileName: f.FileName, Size: f.Size, SHA256: f.SHA256, CreatedTS: f.CreatedTS,
		Authenticated: authenticated, Offset: e.Offset}
	if err := projections.PutJSON(w, k, m); err != nil {
		return err
	}
	if f.UserID != "" {
		if err := w.Set(userKey(f.UserID, f.CreatedTS, f.MediaID), []byte(f.Origin)); err != nil {
			return err
		}
	}
	return addRef(w, f.SHA256, 1, e.Offset)
}

func applyThumbnail(w projections.Writer, e englog.Entry, f facts.ThumbnailStored) error {
	m, err := projections.GetJSON[Media](w, mediaKey(f.Origin, f.MediaID))
	if err != nil || m == nil {
		return err // deleted meanwhile
	}
	k := thumbKey(f.Origin, f.MediaID, f.Method, f.Width, f.Height)
	if _, ok, err := w.Get(k); err != nil || ok {
		return err // two nodes made the same thumbnail: the first stays
	}
	t := Thumbnail{Width: f.Width, Height: f.Height, Method: f.Method, ContentType: f.ContentType, Size: f.Size, SHA256: f.SHA256}
	if err := projections.PutJSON(w, k, t); err != nil {
		return err
	}
	return addRef(w, f.SHA256, 1, e.Offset)
}

func applyQuarantined(w projections.Writer, f facts.MediaQuarantined) error {
	for _, ref := range f.Media {
		k := mediaKey(ref.Origin, ref.MediaID)
		m, err := projections.GetJSON[Media](w, k)
		if err != nil {
			return err
		}
		if m == nil {
			continue
		}
		m.Quarantined, m.QuarantinedBy = f.Quarantined, ""
		if f.Quarantined {
			m.QuarantinedBy = f.By
		}
		if err := projections.PutJSON(w, k, m); err != nil {
			return err
		}
	}
	return nil
}

func applyDeleted(w projections.Writer, e englog.Entry, f facts.MediaDeleted) error {
	for _, ref := range f.Media {
		k := mediaKey(ref.Origin, ref.MediaID)
		m, err := projections.GetJSON[Media](w, k)
		if err != nil {
			return err
		}
		if m == nil {
			continue
		}
		if err := w.Delete(k); err != nil {
			return err
		}
		if m.UserID != "" {
			if err := w.Delete(userKey(m.UserID, m.CreatedTS, m.MediaID)); err != nil {
				return err
			}
		}
		if err := addRef(w, m.SHA256, -1, e.Offset); err != nil {
			return err
		}
		thumbs, err := projections.ListJSON[Thumbnail](w, thumbPrefix(ref.Origin, ref.MediaID), nil)
		if err != nil {
			return err
		}
		for _, t := range thumbs {
			if err := addRef(w, t.SHA256, -1, e.Offset); err != nil {
				return err
			}
		}
		p := thumbPrefix(ref.Origin, ref.MediaID)
		if err := w.DeleteRange(p, projections.PrefixEnd(p)); err != nil {
			return err
		}
	}
	return nil
}

func applyServerFact(w projections.Writer, e englog.Entry, f facts.ServerFact) error {
	switch f.Type {
	case FactBlobsCollecting:
		var c BlobsCollecting
		if err := json.Unmarshal(f.Data, &c); err != nil {
			return nil // not one of ours to fail on: a malformed fact collects nothing
		}
		for _, h := range c.SHA256 {
			n, err := refs(w, h)
			if err != nil {
				return err
			}
			st, err := projections.GetJSON[BucketState](w, bucketKey(h))
			if err != nil {
				return err
			}
			if n > 0 || st != nil && st.State == StateCollecting {
				continue // named again meanwhile, or another collection is under way
			}
			if err := projections.PutJSON(w, bucketKey(h), BucketState{State: StateCollecting, Offset: e.Offset, TS: c.TS}); err != nil {
				return err
			}
		}
	case FactBlobsCollected:
		var c BlobsCollected
		if err := json.Unmarshal(f.Data, &c); err != nil {
			return nil
		}
		for _, h := range append(c.Deleted, c.Kept...) {
			st, err := projections.GetJSON[BucketState](w, bucketKey(h))
			if err != nil {
				return err
			}
			if st == nil || st.State != StateCollecting || st.Offset != c.Offset {
				continue
			}
			if slices.Contains(c.Kept, h) {
				err = w.Delete(bucketKey(h))
			} else {
				st.State = StateDeleted
				err = projections.PutJSON(w, bucketKey(h), st)
			}
			if err != nil {
				return err
			}
		}
	case FactBlobsRestored:
		var c BlobsRestored
		if err := json.Unmarshal(f.Data, &c); err != nil {
			return nil
		}
		for _, h := range c.SHA256 {
			st, err := projections.GetJSON[BucketState](w, bucketKey(h))
			if err != nil {
				return err
			}
			// A collection begun since is not undone: its deleter decides.
			if st != nil && st.State == StateDeleted {
				if err := w.Delete(bucketKey(h)); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// addRef changes a blob's reference count; a blob whose count reaches 0
// is listed as free (View.FreeBlobs), and unlisted when referred to again.
func addRef(w projections.Writer, hash string, delta int64, offset uint64) error {
	if hash == "" {
		return nil
	}
	n, err := refs(w, hash)
	if err != nil {
		return err
	}
	n += delta
	if n <= 0 {
		if err := w.Delete(refsKey(hash)); err != nil {
			return err
		}
		return w.Set(freeKey(hash), binary.BigEndian.AppendUint64(nil, offset))
	}
	if err := w.Delete(freeKey(hash)); err != nil {
		return err
	}
	return w.Set(refsKey(hash), binary.BigEndian.AppendUint64(nil, uint64(n)))
}

func refs(r projections.Reader, hash string) (int64, error) {
	b, ok, err := r.Get(refsKey(hash))
	if err != nil || !ok {
		return 0, err
	}
	if len(b) != 8 {
		return 0, fmt.Errorf("media: corrupt reference count of %s", hash)
	}
	return int64(binary.BigEndian.Uint64(b)), nil
}

// View answers queries.
type View struct{ r projections.Reader }

// NewView wraps a reader of this projection's keyspace.
func NewView(r projections.Reader) View { return View{r} }

// Get returns a media item of origin, or nil. A reservation of a local ID
// not yet uploaded is returned (Pending) when origin is local.
func (v View) Get(origin, id string, local bool) (*Media, error) {
	m, err := projections.GetJSON[Media](v.r, mediaKey(origin, id))
	if err != nil || m != nil || !local {
		return m, err
	}
	m, err = projections.GetJSON[Media](v.r, mediaKey("", id))
	if m != nil {
		m.Origin = origin
	}
	return m, err
}

// Thumbnail returns the stored thumbnail for a requested size and method,
// or nil.
func (v View) Thumbnail(origin, id, method string, w, h int) (*Thumbnail, error) {
	return projections.GetJSON[Thumbnail](v.r, thumbKey(origin, id, method, w, h))
}

// Thumbnails lists the stored thumbnails of an item.
func (v View) Thumbnails(origin, id string) ([]Thumbnail, error) {
	return projections.ListJSON[Thumbnail](v.r, thumbPrefix(origin, id), nil)
}

// UserMedia lists a user's uploads, oldest first.
func (v View) UserMedia(user string) ([]Media, error) {
	p := append(projections.Key(pUser, user), 0)
	it := v.r.Iter(p, projections.PrefixEnd(p))
	var refs []facts.MediaRef
	for ok := it.First(); ok; ok = it.Next() {
		k := it.Key()
		if len(k) < len(p)+9 {
			continue
		}
		refs = append(refs, facts.MediaRef{Origin: string(it.Value()), MediaID: string(k[len(p)+9:])})
	}
	if err := it.Close(); err != nil {
		return nil, err
	}
	out := make([]Media, 0, len(refs))
	for _, ref := range refs {
		m, err := projections.GetJSON[Media](v.r, mediaKey(ref.Origin, ref.MediaID))
		if err != nil {
			return nil, err
		}
		if m != nil {
			out = append(out, *m)
		}
	}
	return out, nil
}

// PendingCount is how many reservations of the user are still open at
// now (Unix ms).
func (v View) PendingCount(user string, now int64) (int, error) {
	p := append(projections.Key(pPending, user), 0)
	it := v.r.Iter(p, projections.PrefixEnd(p))
	var ids []string
	for ok := it.First(); ok; ok = it.Next() {
		ids = append(ids, string(it.Key()[len(p):]))
	}
	if err := it.Close(); err != nil {
		return 0, err
	}
	n := 0
	for _, id := range ids {
		m, err := projections.GetJSON[Media](v.r, mediaKey("", id))
		if err != nil {
			return 0, err
		}
		if m != nil && m.ExpiresAt > now {
			n++
		}
	}
	return n, nil
}

// ForEach calls fn for every item that holds bytes (not reservations),
// in key order, until fn returns false.
func (v View) ForEach(fn func(Media) bool) error {
	p := []byte{pMedia}
	it := v.r.Iter(p, projections.PrefixEnd(p))
	defer it.Close()
	var m Media
	for ok := it.First(); ok; ok = it.Next() {
		m = Media{}
		if err := json.Unmarshal(it.Value(), &m); err != nil {
			return fmt.Errorf("media: corrupt record %q: %w", it.Key(), err)
		}
		if m.Pending {
			continue
		}
		if !fn(m) {
			break
		}
	}
	return nil
}

// Referenced says whether any record names the blob.
func (v View) Referenced(hash string) (bool, error) {
	n, err := refs(v.r, hash)
	return n > 0, err
}

// FreeBlobs lists blobs no record names any more, with the offset at which
// the last one went; a collector may delete them from the store.
func (v View) FreeBlobs(limit int) (map[string]uint64, error) {
	p := []byte{pFree}
	it := v.r.Iter(p, projections.PrefixEnd(p))
	out := map[string]uint64{}
	for ok := it.First(); ok && len(out) < limit; ok = it.Next() {
		if len(it.Value()) == 8 {
			out[string(it.Key()[1:])] = binary.BigEndian.Uint64(it.Value())
		}
	}
	return out, it.Close()
}

// BucketState returns where the bucket copy of a blob stands, or nil when
// no collection touched it since it was last there.
func (v View) BucketState(hash string) (*BucketState, error) {
	return projections.GetJSON[BucketState](v.r, bucketKey(hash))
}

// BucketStates calls fn with every blob a collection marked, until fn
// returns false.
func (v View) BucketStates(fn func(hash string, st BucketState) bool) error {
	p := []byte{pBucket}
	it := v.r.Iter(p, projections.PrefixEnd(p))
	defer it.Close()
	for ok := it.First(); ok; ok = it.Next() {
		var st BucketState
		if err := json.Unmarshal(it.Value(), &st); err != nil {
			return fmt.Errorf("media: corrupt record %q: %w", it.Key(), err)
		}
		if !fn(string(it.Key()[1:]), st) {
			break
		}
	}
	return nil
}
