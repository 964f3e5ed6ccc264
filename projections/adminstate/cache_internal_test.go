package adminstate

import "testing"

// A reader that read Pebble before a commit and stores its result after
// the commit's invalidation ran must not bring the old answer back.
func TestCacheRefusesAReadOlderThanAnInvalidation(t *testing.T) {
	c := newCache()
	c.invalidate(1, 10, false, nil)
	epoch := c.now()
	c.invalidate(11, 11, true, []string{"!a:x"}) // a restore and a purge
	c.putPurge(epoch, "!a:x", 0)
	c.putRestore(epoch, Restore{})
	if _, ok := c.cachedPurge("!a:x"); ok {
		t.Fatal("a purge point read before the purge was cached")
	}
	if _, ok := c.cachedRestore(); ok {
		t.Fatal("a restore read before the restore was cached")
	}
	c.putPurge(c.now(), "!a:x", 11)
	if upTo, ok := c.cachedPurge("!a:x"); !ok || upTo != 11 {
		t.Fatal("a current read was not cached")
	}
}

// A batch that does not follow the last one means a rebuilt generation
// took over (after a schema change or healing): nothing cached survives.
func TestCacheEmptiedWhenAGenerationTakesOver(t *testing.T) {
	c := newCache()
	c.invalidate(1, 10, false, nil)
	c.putPurge(c.now(), "!a:x", 5)
	c.putRestore(c.now(), Restore{Cut: 3, Offset: 8})
	c.invalidate(11, 20, false, []string{"!b:x"})
	if _, ok := c.cachedPurge("!a:x"); !ok {
		t.Fatal("a purge of another room dropped this one's")
	}
	if _, ok := c.cachedRestore(); !ok {
		t.Fatal("a batch without a restore dropped the restore")
	}
	c.invalidate(5001, 5100, false, nil) // the rebuild's last batch
	if _, ok := c.cachedPurge("!a:x"); ok {
		t.Fatal("purge point survived the switch to a rebuilt generation")
	}
	if _, ok := c.cachedRestore(); ok {
		t.Fatal("restore survived the switch to a rebuilt generation")
	}
}
