package accounts

import "testing"

// A reader that read Pebble before a commit and stores its result after
// the commit's invalidation ran must not bring the revoked session back.
func TestCacheRefusesAReadOlderThanAnInvalidation(t *testing.T) {
	c := newCache()
	c.invalidate(1, 10, nil)
	epoch := c.now()
	c.invalidate(11, 11, []string{"@a:x"}) // the token's revocation
	c.putSession(epoch, "t", Session{UserID: "@a:x"})
	if _, ok := c.session("t"); ok {
		t.Fatal("a read from before the revocation was cached")
	}
	c.putSession(c.now(), "t", Session{UserID: "@a:x"})
	if _, ok := c.session("t"); !ok {
		t.Fatal("a current read was not cached")
	}
}

// A batch that does not follow the last one means a rebuilt generation
// took over (after a schema change or healing): nothing cached survives,
// whoever the batch names.
func TestCacheEmptiedWhenAGenerationTakesOver(t *testing.T) {
	c := newCache()
	c.invalidate(1, 10, nil)
	c.putSession(c.now(), "t", Session{UserID: "@a:x"})
	c.putAccount(c.now(), Account{UserID: "@a:x"})
	c.invalidate(11, 20, []string{"@b:x"})
	if _, ok := c.session("t"); !ok {
		t.Fatal("a batch about someone else dropped the session")
	}
	c.invalidate(5001, 5100, nil) // the rebuild's last batch
	if _, ok := c.session("t"); ok {
		t.Fatal("session survived the switch to a rebuilt generation")
	}
	if _, ok := c.account("@a:x"); ok {
		t.Fatal("account survived the switch to a rebuilt generation")
	}
}
