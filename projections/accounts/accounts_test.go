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
