package openid_test

import (
	"context"
	"testing"
	"time"

	"github.com/rs/zerolog"

	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/projections"
	"github.com/engram-hs/engram/projections/openid"
)

// Tokens are found by hash; a token that expired before a later entry's
// time is pruned by that entry (the entry's time, not the clock's).
func TestTokensAndPruning(t *testing.T) {
	node, err := englog.Open(englog.Config{Dir: t.TempDir(), Logger: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close()
	e := projections.NewEngine(node, node.DB(), zerolog.Nop(), nil)
	h := e.Register(openid.New())
	if err := e.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	ctx := context.Background()
	now := time.Now().UnixMilli()
	issue := func(hash string, expires int64) {
		offs, err := node.Append(ctx, facts.MustEncode(englog.KindOpenIDTokenIssued, facts.OpenIDTokenIssued{UserID: "@a:x", TokenSHA256: hash, ExpiresAt: expires}))
		if err != nil {
			t.Fatal(err)
		}
		if err := h.WaitApplied(ctx, offs[0]); err != nil {
			t.Fatal(err)
		}
	}
	issue("old", now-1000)
	issue("live", now+3600_000)
	v := openid.NewView(h.Reader())
	if tok, _ := v.Token("live"); tok == nil || tok.UserID != "@a:x" {
		t.Fatalf("live: %+v", tok)
	}
	if tok, _ := v.Token("old"); tok != nil {
		t.Fatalf("a token expired before a later entry was kept: %+v", tok)
	}
	if tok, _ := v.Token("unknown"); tok != nil {
		t.Fatal("unknown token found")
	}
}
