package media

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/engram-hs/engram/media/blobstore"
)

// PeerBlobPath is where a node serves its blobs to its cluster peers:
// GET PeerBlobPath + <sha256>, with "Authorization: Bearer <PeerSecret>".
//
// This channel is a plain authenticated HTTP fetch between nodes of one
// cluster (the client API listener, so that no extra port is needed). The
// shared secret only keeps strangers from reading blobs by hash; it is sent
// in the clear unless the nodes talk over TLS or a private network. The
// bytes themselves need no trust: the receiver checks them against the
// hash it asked for before keeping or serving them.
const PeerBlobPath = "/_engram/media/blob/"

type peerClient struct {
	peers  []string
	secret string
	hc     *http.Client
}

func newPeerClient(peers []string, secret string) *peerClient {
	return &peerClient{peers: peers, secret: secret, hc: &http.Client{Timeout: 10 * time.Minute}}
}

// fetch gets a blob from the first peer that has it, verifies its hash and
// stores it in fs.
func (p *peerClient) fetch(ctx context.Context, r *Repo, hash string) error {
	if len(p.peers) == 0 {
		return errors.New("no cluster peers configured (cluster.media_peers)")
	}
	var errs []error
	for _, base := range p.peers {
		err := p.fetchFrom(ctx, r, strings.TrimSuffix(base, "/"), hash)
		if err == nil {
			return nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", base, err))
	}
	return errors.Join(errs...)
}

func (p *peerClient) fetchFrom(ctx context.Context, r *Repo, base, hash string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+PeerBlobPath+hash, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+p.secret)
	resp, err := p.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	sp, err := blobstore.VerifyingCopy(ctx, r.fs, resp.Body, hash, 0)
	if err != nil {
		return err
	}
	// Into the local directory only: a bucket shared by the cluster
	// would have had it already.
	return r.fs.Commit(sp)
}

// PeerAuthorized says whether a blob request carries the cluster's peer
// secret (always false when none is configured).
func (r *Repo) PeerAuthorized(req *http.Request) bool {
	tok, ok := strings.CutPrefix(req.Header.Get("Authorization"), "Bearer ")
	return ok && r.cfg.PeerSecret != "" && subtle.ConstantTimeCompare([]byte(tok), []byte(r.cfg.PeerSecret)) == 1
}

// OpenLocalBlob opens a blob for a peer: only blobs the index refers to,
// and only from this node's own store (never passing the request on,
// which could loop between nodes that both lack it).
func (r *Repo) OpenLocalBlob(ctx context.Context, hash string) (blobstore.Blob, int64, error) {
	if !blobstore.ValidHash(hash) {
		return nil, 0, ErrNotFound
	}
	ok, err := r.View().Referenced(hash)
	if err != nil {
		return nil, 0, err
	}
	if !ok {
		return nil, 0, ErrNotFound
	}
	b, n, err := r.store.Open(ctx, hash)
	if errors.Is(err, blobstore.ErrNotFound) {
		return nil, 0, ErrNotFound
	}
	return b, n, err
}
