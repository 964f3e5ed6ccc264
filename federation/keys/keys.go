// Package keys is federation's keyring: it answers "which public key is
// server S's key K, valid at time T", fetching keys over the network when
// they are missing, verifying them, and recording them in the log
// (KindServerKeysFetched) before they are used. The serverkeys projection
// holds what was recorded, so replaying the log needs no network.
package keys

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/engram-hs/engram/federation/transport"
	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/projections"
	"github.com/engram-hs/engram/projections/serverkeys"
	"github.com/engram-hs/engram/stateres"
	"github.com/engram-hs/engram/stateres/signing"
)

// maxKeyLifetime caps valid_until_ts at fetch time + 7 days (spec,
// "Publishing Keys": servers must use the lesser of valid_until_ts and 7
// days into the future).
const maxKeyLifetime = 7 * 24 * time.Hour

// refetchInterval: a server is asked for its keys at most this often when
// the key wanted is still missing afterwards (a forged key ID must not
// turn every request into a fetch).
const refetchInterval = 30 * time.Second

// Fetcher sends federation requests (transport.Client).
type Fetcher interface {
	DoJSON(ctx context.Context, r transport.Request, out any) error
}

// TrustedKeyServer is a notary from trusted_key_servers.
type TrustedKeyServer struct {
	ServerName string
	// VerifyKeys: key ID -> public key. Responses must carry the notary's
	// signature by one of them.
	VerifyKeys map[string]ed25519.PublicKey
}

// Config wires a Keyring.
type Config struct {
	ServerName string
	Key        signing.Key
	Log        englog.Log
	// Keys is the registered serverkeys projection.
	Keys    *projections.Handle
	Fetcher Fetcher
	Trusted []TrustedKeyServer
	Now     func() time.Time
	Logger  zerolog.Logger
}

// Keyring looks up and fetches server keys.
type Keyring struct {
	cfg Config

	mu       sync.Mutex
	inflight map[string]*fetchCall
	lastTry  map[string]time.Time
}

type fetchCall struct {
	done chan struct{}
	err  error
}

// New builds a keyring.
func New(cfg Config) (*Keyring, error) {
	if cfg.ServerName == "" || cfg.Key.Private == nil || cfg.Log == nil || cfg.Keys == nil || cfg.Fetcher == nil {
		return nil, errors.New("keys: ServerName, Key, Log, Keys and Fetcher are required")
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Keyring{cfg: cfg, inflight: map[string]*fetchCall{}, lastTry: map[string]time.Time{}}, nil
}

// ErrUnknownKey: the key could not be found (or not valid at the time
// asked), even after asking the server.
var ErrUnknownKey = errors.New("keys: unknown or expired server key")

// Validity says which keys count.
type Validity struct {
	// At is the time (Unix ms) the key must be valid at; 0 means any
	// known key counts (room versions without enforced key validity).
	At int64
	// Current: only a current verify key counts, not an old one (request
	// authentication; old keys only ever sign events).
	Current bool
}

func (v Validity) ok(k *serverkeys.Key) bool {
	if k == nil {
		return false
	}
	if v.Current {
		return k.ValidUntilTS > 0 && (v.At == 0 || v.At <= k.ValidUntilTS)
	}
	return v.At == 0 || k.ValidAt(v.At)
}

// Key returns server's key keyID valid as v asks, fetching the server's
// keys (and recording them) when they are missing.
func (kr *Keyring) Key(ctx context.Context, server, keyID string, v Validity) (ed25519.PublicKey, error) {
	if server == kr.cfg.ServerName {
		if keyID == kr.cfg.Key.ID {
			return kr.cfg.Key.Public(), nil
		}
		return nil, fmt.Errorf("%w: %s is our own server and %s is not our key", ErrUnknownKey, server, keyID)
	}
	if !strings.HasPrefix(keyID, signing.AlgorithmEd25519+":") {
		return nil, fmt.Errorf("%w: %s of %s is not an ed25519 key", ErrUnknownKey, keyID, server)
	}
	if pub, ok, err := kr.lookup(server, keyID, v); err != nil || ok {
		return pub, err
	}
	if err := kr.fetch(ctx, server); err != nil {
		return nil, fmt.Errorf("%w: %s of %s: %w", ErrUnknownKey, keyID, server, err)
	}
	pub, ok, err := kr.lookup(server, keyID, v)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("%w: %s does not publish %s (valid at %d)", ErrUnknownKey, server, keyID, v.At)
	}
	return pub, nil
}

func (kr *Keyring) lookup(server, keyID string, v Validity) (ed25519.PublicKey, bool, error) {
	k, err := serverkeys.NewView(kr.cfg.Keys.Reader()).Key(server, keyID)
	if err != nil {
		return nil, false, err
	}
	if !v.ok(k) {
		return nil, false, nil
	}
	pub, err := signing.DecodeBase64(k.PublicKey)
	if err != nil || len(pub) != ed25519.PublicKeySize {
		return nil, false, nil
	}
	return pub, true, nil
}

// fetch asks server for its keys (once at a time per server, and at most
// every refetchInterval), then the trusted notaries, and records what it
// got.
func (kr *Keyring) fetch(ctx context.Context, server string) error {
	kr.mu.Lock()
	if c := kr.inflight[server]; c != nil {
		kr.mu.Unlock()
		select {
		case <-c.done:
			return c.err
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if last, ok := kr.lastTry[server]; ok && kr.cfg.Now().Sub(last) < refetchInterval {
		kr.mu.Unlock()
		return fmt.Errorf("asked %s for its keys %s ago", server, kr.cfg.Now().Sub(last).Round(time.Second))
	}
	c := &fetchCall{done: make(chan struct{})}
	kr.inflight[server] = c
	kr.lastTry[server] = kr.cfg.Now()
	kr.mu.Unlock()

	c.err = kr.fetchAndRecord(ctx, server)
	kr.mu.Lock()
	delete(kr.inflight, server)
	kr.mu.Unlock()
	close(c.done)
	return c.err
}

func (kr *Keyring) fetchAndRecord(ctx context.Context, server string) error {
	var fetched []facts.ServerKeysFetched
	direct, err := kr.fetchDirect(ctx, server)
	if err == nil {
		fetched = append(fetched, direct)
	} else {
		kr.cfg.Logger.Info().Err(err).Str("server", server).Msg("fetching server keys directly failed")
		for _, n := range kr.cfg.Trusted {
			got, nerr := kr.fetchFromNotary(ctx, n, server)
			if nerr != nil {
				kr.cfg.Logger.Info().Err(nerr).Str("server", server).Str("notary", n.ServerName).Msg("fetching server keys through a notary failed")
				continue
			}
			fetched = append(fetched, got...)
			if len(got) > 0 {
				break
			}
		}
		if len(fetched) == 0 {
			return err
		}
	}
	return kr.record(ctx, fetched)
}

// record appends the fetched responses and waits until the projection has
// folded them, so the caller's lookup sees them.
func (kr *Keyring) record(ctx context.Context, fetched []facts.ServerKeysFetched) error {
	props := make([]englog.Proposal, 0, len(fetched))
	for _, f := range fetched {
		p, err := facts.Encode(englog.KindServerKeysFetched, f)
		if err != nil {
			return err
		}
		props = append(props, p)
	}
	offs, err := kr.cfg.Log.Append(ctx, props...)
	if err != nil {
		return fmt.Errorf("recording fetched keys: %w", err)
	}
	return kr.cfg.Keys.WaitApplied(ctx, offs[len(offs)-1])
}

func (kr *Keyring) fetchDirect(ctx context.Context, server string) (facts.ServerKeysFetched, error) {
	var raw json.RawMessage
	if err := kr.cfg.Fetcher.DoJSON(ctx, transport.Request{Destination: server, Method: "GET", Path: "/_matrix/key/v2/server", Unsigned: true}, &raw); err != nil {
		return facts.ServerKeysFetched{}, err
	}
	return ParseResponse(server, raw, kr.cfg.Now())
}

// fetchFromNotary asks notary n for server's keys. The responses must be
// signed by server itself and by the notary.
func (kr *Keyring) fetchFromNotary(ctx context.Context, n TrustedKeyServer, server string) ([]facts.ServerKeysFetched, error) {
	body := map[string]any{"server_keys": map[string]any{server: map[string]any{}}}
	var resp struct {
		ServerKeys []json.RawMessage `json:"server_keys"`
	}
	if err := kr.cfg.Fetcher.DoJSON(ctx, transport.Request{Destination: n.ServerName, Method: "POST", Path: "/_matrix/key/v2/query", Body: body}, &resp); err != nil {
		return nil, err
	}
	var out []facts.ServerKeysFetched
	for _, r := range resp.ServerKeys {
		if !signedByAny(n.ServerName, n.VerifyKeys, r) {
			return nil, fmt.Errorf("notary %s: a response for %s is not signed by the notary's configured key", n.ServerName, server)
		}
		f, err := ParseResponse(server, r, kr.cfg.Now())
		if err != nil {
			return nil, fmt.Errorf("notary %s: %w", n.ServerName, err)
		}
		f.Via = n.ServerName
		out = append(out, f)
	}
	return out, nil
}

func signedByAny(server string, keys map[string]ed25519.PublicKey, obj []byte) bool {
	for id, pub := range keys {
		if signing.VerifyJSON(server, id, pub, obj) == nil {
			return true
		}
	}
	return false
}

// ParseResponse checks a key response of server (spec: "Publishing
// Keys"): it names server, lists at least one verify key, and every
// signature server made with one of its listed verify keys verifies (at
// least one must exist). valid_until_ts is capped at now + 7 days.
func ParseResponse(server string, raw []byte, now time.Time) (facts.ServerKeysFetched, error) {
	var r struct {
		ServerName   string `json:"server_name"`
		ValidUntilTS int64  `json:"valid_until_ts"`
		VerifyKeys   map[string]struct {
			Key string `json:"key"`
		} `json:"verify_keys"`
		OldVerifyKeys map[string]struct {
			Key       string `json:"key"`
			ExpiredTS int64  `json:"expired_ts"`
		} `json:"old_verify_keys"`
		Signatures map[string]map[string]string `json:"signatures"`
	}
	var f facts.ServerKeysFetched
	if err := json.Unmarshal(raw, &r); err != nil {
		return f, fmt.Errorf("key response of %s is not the expected JSON: %w", server, err)
	}
	if r.ServerName != server {
		return f, fmt.Errorf("key response of %s names server %q", server, r.ServerName)
	}
	if len(r.VerifyKeys) == 0 {
		return f, fmt.Errorf("key response of %s lists no verify_keys", server)
	}
	f = facts.ServerKeysFetched{ServerName: server, VerifyKeys: map[string]string{}, Response: json.RawMessage(raw)}
	pubs := map[string]ed25519.PublicKey{}
	for id, k := range r.VerifyKeys {
		pub, err := signing.DecodeBase64(k.Key)
		if err != nil || len(pub) != ed25519.PublicKeySize || !strings.HasPrefix(id, signing.AlgorithmEd25519+":") {
			continue // an algorithm we do not know, or junk: ignore the key
		}
		pubs[id] = pub
		f.VerifyKeys[id] = signing.EncodeBase64(pub)
	}
	verified := 0
	for id := range r.Signatures[server] {
		pub, ok := pubs[id]
		if !ok {
			continue
		}
		if err := signing.VerifyJSON(server, id, pub, raw); err != nil {
			return f, fmt.Errorf("key response of %s: self-signature by %s: %w", server, id, err)
		}
		verified++
	}
	if verified == 0 {
		return f, fmt.Errorf("key response of %s is not signed by any key it lists", server)
	}
	for id, k := range r.OldVerifyKeys {
		pub, err := signing.DecodeBase64(k.Key)
		if err != nil || len(pub) != ed25519.PublicKeySize {
			continue
		}
		if f.OldVerifyKeys == nil {
			f.OldVerifyKeys = map[string]facts.OldVerifyKey{}
		}
		f.OldVerifyKeys[id] = facts.OldVerifyKey{Key: signing.EncodeBase64(pub), ExpiredTS: k.ExpiredTS}
	}
	f.ValidUntilTS = min(r.ValidUntilTS, now.Add(maxKeyLifetime).UnixMilli())
	return f, nil
}

// VerifyEvent checks an event's signatures (server-server API,
// "Validating hashes and signatures on received events"), fetching and
// recording missing keys first. In room versions that enforce key
// validity a key counts only if it was valid at the event's
// origin_server_ts. The error wraps stateres.ErrSignature when a
// signature is missing or wrong, and ErrUnknownKey when a required
// signer's keys could not be obtained.
func (kr *Keyring) VerifyEvent(ctx context.Context, ev *stateres.Event) error {
	v := Validity{}
	if ev.Version().EnforceKeyValidity {
		v.At = ev.OriginServerTS()
	}
	// Fetch first (network), then verify with a lookup that reads only
	// what is recorded.
	var fetchErr error
	for _, server := range stateres.RequiredSigners(ev) {
		found := false
		var lastErr error
		for _, id := range signing.KeyIDs(ev.Signatures(), server) {
			if !strings.HasPrefix(id, signing.AlgorithmEd25519+":") {
				continue
			}
			if _, err := kr.Key(ctx, server, id, v); err != nil {
				lastErr = err
				continue
			}
			found = true
		}
		if !found && lastErr != nil && fetchErr == nil {
			fetchErr = lastErr
		}
	}
	err := stateres.VerifyEventSignatures(ev, func(server, keyID string) (ed25519.PublicKey, bool) {
		if server == kr.cfg.ServerName {
			if keyID == kr.cfg.Key.ID {
				return kr.cfg.Key.Public(), true
			}
			return nil, false
		}
		pub, ok, err := kr.lookup(server, keyID, v)
		return pub, ok && err == nil
	})
	if err != nil && fetchErr != nil {
		return fmt.Errorf("%w (%w)", err, fetchErr)
	}
	return err
}

// Responses returns the signed key responses a notary serves for server:
// the latest recorded one, fetched anew when there is none or it is not
// valid until minValidUntil (Unix ms). The notary's own signature is not
// added here.
func (kr *Keyring) Responses(ctx context.Context, server string, minValidUntil int64) ([]json.RawMessage, error) {
	view := serverkeys.NewView(kr.cfg.Keys.Reader())
	cur, err := view.Response(server)
	if err != nil {
		return nil, err
	}
	if cur == nil || cur.ValidUntilTS < minValidUntil || cur.ValidUntilTS < kr.cfg.Now().UnixMilli() {
		if ferr := kr.fetch(ctx, server); ferr != nil {
			kr.cfg.Logger.Debug().Err(ferr).Str("server", server).Msg("notary: no fresh keys")
		}
		if cur, err = view.Response(server); err != nil {
			return nil, err
		}
	}
	if cur == nil {
		return nil, nil
	}
	return []json.RawMessage{cur.JSON}, nil
}
