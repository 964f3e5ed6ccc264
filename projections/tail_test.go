package projections

import (
	"fmt"
	"testing"

	englog "github.com/engram-hs/engram/log"
)

func tailEntries(from, to uint64, size int) []englog.Entry {
	var out []englog.Entry
	for o := from; o <= to; o++ {
		out = append(out, englog.Entry{Offset: o, Kind: englog.KindPDU, Payload: make([]byte, size)})
	}
	return out
}

func offsetsOf(es []englog.Entry) string {
	if len(es) == 0 {
		return "none"
	}
	return fmt.Sprintf("%d..%d (%d)", es[0].Offset, es[len(es)-1].Offset, len(es))
}

// TestTailCache: what the cache returns is always a run of consecutive
// offsets starting where asked, whatever order overlapping, repeated,
// lagging and gapped reads were added in, and it stays within its bounds.
func TestTailCache(t *testing.T) {
	var c tailCache
	// get, checking that each PDU served has its own entry's slot.
	get := func(from uint64, max int) []englog.Entry {
		t.Helper()
		es, slots := c.get(from, max)
		if len(slots) != len(es) {
			t.Fatalf("get(%d, %d): %d entries, %d slots", from, max, len(es), len(slots))
		}
		for i, s := range slots {
			if s == nil || !samePayload(s.payload, es[i].Payload) {
				t.Fatalf("get(%d, %d): offset %d has no slot of its own", from, max, es[i].Offset)
			}
		}
		return es
	}
	if got := get(1, 10); got != nil {
		t.Fatalf("empty cache returned %s", offsetsOf(got))
	}
	c.put(tailEntries(1, 10, 10))
	c.put(tailEntries(5, 15, 10))  // overlaps: 11..15 are new
	c.put(tailEntries(3, 8, 10))   // nothing new
	c.put(tailEntries(16, 16, 10)) // follows
	for _, tc := range []struct {
		from uint64
		max  int
		want string
	}{
		{1, 100, "1..16 (16)"}, {7, 3, "7..9 (3)"}, {16, 5, "16..16 (1)"}, {17, 5, "none"}, {0, 5, "none"},
	} {
		if got := offsetsOf(get(tc.from, tc.max)); got != tc.want {
			t.Errorf("get(%d, %d) = %s, want %s", tc.from, tc.max, got, tc.want)
		}
	}
	// A gap: the cache starts over from the newer entries.
	c.put(tailEntries(30, 31, 10))
	if got := offsetsOf(get(30, 10)); got != "30..31 (2)" {
		t.Errorf("after a gap, get(30) = %s", got)
	}
	if got := get(16, 10); got != nil {
		t.Errorf("after a gap, the older run is still served: %s", offsetsOf(got))
	}
	// The entry bound, then the byte bound.
	c.put(tailEntries(32, 31+2*tailCacheEntries, 1))
	if n := len(c.entries); n > tailCacheEntries || n < tailCacheEntries*3/4 {
		t.Errorf("%d entries held, bound %d", n, tailCacheEntries)
	}
	last := c.entries[len(c.entries)-1].Offset
	if last != 31+2*tailCacheEntries {
		t.Errorf("newest held %d, want %d", last, 31+2*tailCacheEntries)
	}
	c.put(tailEntries(last+1, last+20, tailCacheBytes/8))
	if c.bytes > tailCacheBytes {
		t.Errorf("%d bytes held, bound %d", c.bytes, tailCacheBytes)
	}
	sum := 0
	for i, e := range c.entries {
		sum += len(e.Payload)
		if i > 0 && e.Offset != c.entries[i-1].Offset+1 {
			t.Fatalf("offsets %d then %d", c.entries[i-1].Offset, e.Offset)
		}
	}
	if sum != c.bytes {
		t.Errorf("bytes counted %d, held %d", c.bytes, sum)
	}
	if got := get(last+20, 1); len(got) != 1 {
		t.Errorf("the newest entry is not served")
	}
}
