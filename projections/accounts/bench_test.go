package accounts_test

import (
	"context"
	"fmt"
	"io"
	"testing"
	"time"

	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/projections"
	"github.com/engram-hs/engram/projections/accounts"
	"github.com/rs/zerolog"
)

// BenchmarkAuthReads: what every authenticated request reads of the
// accounts projection (the token's session, the account, the rate-limit
// override), for 1,000 users, through Pebble and through the cache.
func BenchmarkAuthReads(b *testing.B) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	logger := zerolog.New(io.Discard)
	node, err := englog.Open(englog.Config{Dir: b.TempDir(), Logger: logger})
	if err != nil {
		b.Fatal(err)
	}
	defer node.Close()
	eng := projections.NewEngine(node, node.DB(), logger, nil)
	p := accounts.New()
	h := eng.Register(p)
	if err := eng.Start(ctx); err != nil {
		b.Fatal(err)
	}
	defer eng.Close()
	const users = 1000
	var props []englog.Proposal
	for i := range users {
		u := fmt.Sprintf("@u%d:x", i)
		props = append(props,
			facts.MustEncode(englog.KindAccountRegistered, facts.AccountRegistered{UserID: u, PasswordHash: "$2b$10$abcdefghijklmnopqrstuuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ012"}),
			facts.MustEncode(englog.KindAccessTokenIssued, facts.AccessTokenIssued{UserID: u, DeviceID: "D", TokenSHA256: fmt.Sprintf("%064d", i)}))
	}
	offs, err := node.Append(ctx, props...)
	if err != nil {
		b.Fatal(err)
	}
	if err := h.WaitApplied(ctx, offs[len(offs)-1]); err != nil {
		b.Fatal(err)
	}
	for _, c := range []struct {
		name string
		v    accounts.View
	}{{"pebble", accounts.NewView(h.Reader())}, {"cached", p.View(h.Reader())}} {
		b.Run(c.name, func(b *testing.B) {
			for i := 0; b.Loop(); i++ {
				s, err := c.v.Session(fmt.Sprintf("%064d", i%users))
				if err != nil || s == nil {
					b.Fatal(s, err)
				}
				if a, err := c.v.Account(s.UserID); err != nil || a == nil {
					b.Fatal(a, err)
				}
				if _, err := c.v.RateLimit(s.UserID); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
