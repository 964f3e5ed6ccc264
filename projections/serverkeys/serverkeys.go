// Package serverkeys folds the remote servers' signing keys that
// federation fetched (KindServerKeysFetched) into a read model: one record
// per server and key ID, and each server's latest response for the notary
// endpoint. Signature checks read keys from here, so replay needs no
// network.
package serverkeys

import (
	"encoding/json"

	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/projections"
)

// Name is the projection's name.
const Name = "serverkeys"

const (
	recKey      = 'k' // server, key ID -> Key
	recResponse = 'r' // server -> Response
)

// Key is what is known about one key of one server.
type Key struct {
	// PublicKey is unpadded base64.
	PublicKey string `json:"key"`
	// ValidUntilTS: the key is a current verify key until then (0 when it
	// was only ever seen among old_verify_keys).
	ValidUntilTS int64 `json:"valid_until_ts,omitempty"`
	// ExpiredTS: the key was listed as old, expired at this time.
	ExpiredTS int64 `json:"expired_ts,omitempty"`
}

// ValidAt says whether the key may verify a signature made at ts (Unix
// ms): it was a current key at least until ts, or an old key that expired
// after ts.
func (k Key) ValidAt(ts int64) bool {
	return ts <= k.ValidUntilTS || ts < k.ExpiredTS
}

// Response is a server's latest key response.
type Response struct {
	ValidUntilTS int64           `json:"valid_until_ts"`
	Via          string          `json:"via,omitempty"`
	JSON         json.RawMessage `json:"json"`
}

// Projection is the serverkeys projection.
type Projection struct{}

// New returns the projection.
func New() *Projection { return &Projection{} }

func (*Projection) Name() string { return Name }
func (*Projection) Version() int { return 1 }

// Apply folds key responses. A key ID seen again with the same public key
// keeps the latest validity of each kind; with a different public key the
// later response replaces it (the log order decides).
func (*Projection) Apply(w projections.Writer, entries []englog.Entry) error {
	for _, e := range entries {
		if e.Kind != englog.KindServerKeysFetched {
			continue
		}
		var f facts.ServerKeysFetched
		if err := facts.Decode(e, &f); err != nil {
			return err
		}
		if f.ServerName == "" {
			continue
		}
		merge := func(id string, upd func(k *Key)) error {
			kk := projections.Key(recKey, f.ServerName, id)
			cur, err := projections.GetJSON[Key](w, kk)
			if err != nil {
				return err
			}
			var next Key
			if cur != nil {
				next = *cur
			}
			upd(&next)
			return projections.PutJSON(w, kk, next)
		}
		for id, pub := range f.VerifyKeys {
			if err := merge(id, func(k *Key) {
				if k.PublicKey != pub {
					*k = Key{PublicKey: pub}
				}
				k.ValidUntilTS = max(k.ValidUntilTS, f.ValidUntilTS)
			}); err != nil {
				return err
			}
		}
		for id, old := range f.OldVerifyKeys {
			if err := merge(id, func(k *Key) {
				if k.PublicKey != old.Key {
					*k = Key{PublicKey: old.Key}
				}
				k.ExpiredTS = max(k.ExpiredTS, old.ExpiredTS)
			}); err != nil {
				return err
			}
		}
		rk := projections.Key(recResponse, f.ServerName)
		cur, err := projections.GetJSON[Response](w, rk)
		if err != nil {
			return err
		}
		if cur == nil || f.ValidUntilTS >= cur.ValidUntilTS {
			if err := projections.PutJSON(w, rk, Response{ValidUntilTS: f.ValidUntilTS, Via: f.Via, JSON: f.Response}); err != nil {
				return err
			}
		}
	}
	return nil
}

// View reads the projection.
type View struct{ r projections.Reader }

// NewView wraps a reader of the projection.
func NewView(r projections.Reader) View { return View{r} }

// Key returns what is known of server's keyID, nil when nothing.
func (v View) Key(server, keyID string) (*Key, error) {
	return projections.GetJSON[Key](v.r, projections.Key(recKey, server, keyID))
}

// Response returns server's latest key response, nil when none.
func (v View) Response(server string) (*Response, error) {
	return projections.GetJSON[Response](v.r, projections.Key(recResponse, server))
}
