package api

import (
	"encoding/json"
	"testing"
)

// Nonces and UIA sessions are handed to unauthenticated callers (nonce
// requests are GETs, which the rate limiter lets through): their stores
// must stay bounded however many are asked for, and the newest must still
// work.
func TestEphemeralStoresAreBounded(t *testing.T) {
	n := newNonceStore()
	var last string
	for range maxEphemeral + 500 {
		last = n.issue()
	}
	if got := len(n.nonces); got > maxEphemeral {
		t.Fatalf("nonce store holds %d nonces, bound is %d", got, maxEphemeral)
	}
	if !n.consume(last) {
		t.Fatal("the newest nonce was evicted")
	}

	u := newUIAStore()
	flows := [][]string{{"m.login.dummy"}}
	for range maxEphemeral + 500 {
		err := u.check(nil, flows, func(string, *authDict) error { return nil })
		me, ok := err.(*matrixError)
		if !ok || me.Status != 401 {
			t.Fatalf("challenge: %v", err)
		}
		last = me.Extra["session"].(string)
	}
	if got := len(u.sessions); got > maxEphemeral {
		t.Fatalf("UIA store holds %d sessions, bound is %d", got, maxEphemeral)
	}
	raw, _ := json.Marshal(map[string]string{"type": "m.login.dummy", "session": last})
	if err := u.check(raw, flows, func(string, *authDict) error { return nil }); err != nil {
		t.Fatalf("the newest UIA session was evicted: %v", err)
	}
}
