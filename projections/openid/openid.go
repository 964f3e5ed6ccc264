// Package openid folds the OpenID tokens users requested for third
// parties (KindOpenIDTokenIssued): token hash -> user and expiry.
// Federation's openid/userinfo reads it.
package openid

import (
	"encoding/binary"

	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/projections"
)

// Name is the projection's name.
const Name = "openid"

const (
	recToken  = 't' // token hash -> Token
	recExpiry = 'e' // expires_at(8) token hash -> "" (to prune)
)

// Token is one issued token.
type Token struct {
	UserID    string `json:"user_id"`
	ExpiresAt int64  `json:"expires_at"`
}

// Projection is the openid projection.
type Projection struct{}

// New returns the projection.
func New() *Projection { return &Projection{} }

func (*Projection) Name() string { return Name }
func (*Projection) Version() int { return 1 }

func expiryKey(at int64, hash string) []byte {
	k := binary.BigEndian.AppendUint64([]byte{recExpiry}, uint64(max(at, 0)))
	return append(k, hash...)
}

// Apply records tokens, and drops those that expired before the entry's
// time (the entry's, not the clock's: replay gives the same result).
func (*Projection) Apply(w projections.Writer, entries []englog.Entry) error {
	for _, e := range entries {
		if e.Kind != englog.KindOpenIDTokenIssued {
			continue
		}
		var f facts.OpenIDTokenIssued
		if err := facts.Decode(e, &f); err != nil {
			return err
		}
		// Prune.
		lo, hi := []byte{recExpiry}, expiryKey(e.Time, "")
		it := w.Iter(lo, hi)
		var dead []string
		for ok := it.First(); ok; ok = it.Next() {
			dead = append(dead, string(it.Key()[9:]))
		}
		if err := it.Close(); err != nil {
			return err
		}
		for _, h := range dead {
			if err := w.Delete(projections.Key(recToken, h)); err != nil {
				return err
			}
		}
		if len(dead) > 0 {
			if err := w.DeleteRange(lo, hi); err != nil {
				return err
			}
		}
		if f.TokenSHA256 == "" || f.UserID == "" {
			continue
		}
		if err := projections.PutJSON(w, projections.Key(recToken, f.TokenSHA256), Token{UserID: f.UserID, ExpiresAt: f.ExpiresAt}); err != nil {
			return err
		}
		if err := w.Set(expiryKey(f.ExpiresAt, f.TokenSHA256), nil); err != nil {
			return err
		}
	}
	return nil
}

// View reads the projection.
type View struct{ r projections.Reader }

// NewView wraps a reader of the projection.
func NewView(r projections.Reader) View { return View{r} }

// Token returns the token with this SHA-256 (hex), nil when unknown. The
// caller checks ExpiresAt against its clock.
func (v View) Token(sha256hex string) (*Token, error) {
	return projections.GetJSON[Token](v.r, projections.Key(recToken, sha256hex))
}
