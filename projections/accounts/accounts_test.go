package accounts_test

import (
	"context"
	"io"
	"testing"
	"time"

	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/projections"
	"github.com/engram-hs/engram/projections/accounts"
	"github.com/rs/zerolog"
)

// fold appends the facts to a real log and returns the accounts view once
// the projection applied them.
func fold(t *testing.T, props ...englog.Proposal) accounts.View {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	logger := zerolog.New(io.Discard)
	node, err := englog.Open(englog.Config{Dir: t.TempDir(), Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { node.Close() })
	eng := projections.NewEngine(node, node.DB(), logger, nil)
	h := eng.Register(accounts.New())
	if err := eng.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { eng.Close() })
	offs, err := node.Append(ctx, props...)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.WaitApplied(ctx, offs[len(offs)-1]); err != nil {
		t.Fatal(err)
	}
	return accounts.NewView(h.Reader())
}

// Two refreshes of one refresh token can both pass the handler's check
// (they race, or an attacker replays a stolen token); the log decides:
// the first use wins, and the second issues nothing.
func TestRefreshTokenUsedOnceByTheLog(t *testing.T) {
	const user, dev = "@a:x", "DEV"
	v := fold(t,
		facts.MustEncode(englog.KindAccountRegistered, facts.AccountRegistered{UserID: user}),
		facts.MustEncode(englog.KindDeviceAdded, facts.DeviceAdded{UserID: user, DeviceID: dev}),
		facts.MustEncode(englog.KindAccessTokenIssued, facts.AccessTokenIssued{UserID: user, DeviceID: dev, TokenSHA256: "access0", RefreshSHA256: "refresh0", ExpiresAt: 1}),
		facts.MustEncode(englog.KindAccessTokenIssued, facts.AccessTokenIssued{UserID: user, DeviceID: dev, TokenSHA256: "access1", RefreshSHA256: "refresh1", ExpiresAt: 1, Replaces: "refresh0"}),
		facts.MustEncode(englog.KindAccessTokenIssued, facts.AccessTokenIssued{UserID: user, DeviceID: dev, TokenSHA256: "access2", RefreshSHA256: "refresh2", ExpiresAt: 1, Replaces: "refresh0"}),
	)
	for _, c := range []struct {
		hash    string
		refresh bool
		live    bool
	}{
		{"access0", false, false}, {"refresh0", true, false},
		{"access1", false, true}, {"refresh1", true, true},
		{"access2", false, false}, {"refresh2", true, false},
	} {
		get := v.Session
		if c.refresh {
			get = v.RefreshSession
		}
		s, err := get(c.hash)
		if err != nil {
			t.Fatal(err)
		}
		if (s != nil) != c.live {
			t.Errorf("%s: live = %v, want %v", c.hash, s != nil, c.live)
		}
	}
}

// The cached view answers from memory, and every fact that ends a
// session or changes an account is in force once the log position that
// records it is applied: what a request waits for before it answers.
func TestCachedViewFollowsTheLog(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	logger := zerolog.New(io.Discard)
	node, err := englog.Open(englog.Config{Dir: t.TempDir(), Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { node.Close() })
	eng := projections.NewEngine(node, node.DB(), logger, nil)
	p := accounts.New()
	h := eng.Register(p)
	if err := eng.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { eng.Close() })
	v := p.View(h.Reader())
	apply := func(props ...englog.Proposal) {
		t.Helper()
		offs, err := node.Append(ctx, props...)
		if err != nil {
			t.Fatal(err)
		}
		if err := h.WaitApplied(ctx, offs[len(offs)-1]); err != nil {
			t.Fatal(err)
		}
	}
	live := func(hash string) bool {
		t.Helper()
		s, err := v.Session(hash)
		if err != nil {
			t.Fatal(err)
		}
		return s != nil
	}
	const user = "@a:x"
	apply(
		facts.MustEncode(englog.KindAccountRegistered, facts.AccountRegistered{UserID: user}),
		facts.MustEncode(englog.KindDeviceAdded, facts.DeviceAdded{UserID: user, DeviceID: "D1"}),
		facts.MustEncode(englog.KindAccessTokenIssued, facts.AccessTokenIssued{UserID: user, DeviceID: "D1", TokenSHA256: "t1"}),
		facts.MustEncode(englog.KindDeviceAdded, facts.DeviceAdded{UserID: user, DeviceID: "D2"}),
		facts.MustEncode(englog.KindAccessTokenIssued, facts.AccessTokenIssued{UserID: user, DeviceID: "D2", TokenSHA256: "t2"}),
		facts.MustEncode(englog.KindDeviceAdded, facts.DeviceAdded{UserID: user, DeviceID: "D3"}),
		facts.MustEncode(englog.KindAccessTokenIssued, facts.AccessTokenIssued{UserID: user, DeviceID: "D3", TokenSHA256: "t3", RefreshSHA256: "r3"}),
	)
	for _, tok := range []string{"t1", "t2", "t3"} {
		if !live(tok) || !live(tok) { // the second answer comes from the cache
			t.Fatalf("%s not live", tok)
		}
	}
	if l, err := v.RateLimit(user); err != nil || l != nil {
		t.Fatalf("rate limit = %v, %v", l, err)
	}

	apply(facts.MustEncode(englog.KindAccessTokenRevoked, facts.AccessTokenRevoked{UserID: user, TokenSHA256: "t1"}))
	if live("t1") || !live("t2") {
		t.Fatal("logout: t1 still live or t2 lost")
	}
	apply(facts.MustEncode(englog.KindDeviceRemoved, facts.DeviceRemoved{UserID: user, DeviceIDs: []string{"D2"}}))
	if live("t2") {
		t.Fatal("device removed but its token is live")
	}
	apply(facts.MustEncode(englog.KindAccessTokenIssued, facts.AccessTokenIssued{UserID: user, DeviceID: "D3", TokenSHA256: "t4", Replaces: "r3"}))
	if live("t3") || !live("t4") {
		t.Fatal("refresh: the replaced token is live or the new one is not")
	}
	apply(facts.MustEncode(englog.KindRatelimitOverride, facts.RatelimitOverride{UserID: user, MessagesPerSecond: 2, BurstCount: 3}))
	if l, err := v.RateLimit(user); err != nil || l == nil || l.BurstCount != 3 {
		t.Fatalf("rate limit after override = %v, %v", l, err)
	}
	locked := true
	apply(facts.MustEncode(englog.KindUserModerated, facts.UserModerated{UserID: user, Locked: &locked}))
	if a, err := v.Account(user); err != nil || a == nil || !a.Locked {
		t.Fatalf("account after lock = %+v, %v", a, err)
	}
	apply(facts.MustEncode(englog.KindAccountDeactivated, facts.AccountDeactivated{UserID: user}))
	if a, err := v.Account(user); err != nil || a == nil || !a.Deactivated {
		t.Fatalf("account after deactivation = %+v, %v", a, err)
	}
	if live("t4") {
		t.Fatal("deactivated but a token is live")
	}
}
