package projections

import (
	"sync"

	englog "github.com/engram-hs/engram/log"
)

// Bounds of the tail cache: a few seconds of live traffic.
const (
	tailCacheEntries = 4096
	tailCacheBytes   = 8 << 20
)

// tailCache holds the newest entries the live folds read from the log, at
// consecutive offsets. Every projection folds every entry, each on its own
// goroutine, soon after it is committed: without the cache each one read
// it again (a Pebble iterator, a decompression and a copy of the payload
// per projection), which was the largest allocation of a send, a dozen
// copies of every event. The entries are shared between projections, so
// they are read-only, as the log's are: a fold never writes into a
// payload (it decodes it, copying what it keeps). Each PDU entry has a
// pduSlot beside it, so that the folds also share its decoding (ReadPDU).
type tailCache struct {
	mu      sync.Mutex
	entries []englog.Entry
	slots   []*pduSlot // beside entries
	bytes   int
}

// get returns up to max cached entries from offset from on (none when
// from is not cached), and their slots. The slice is the caller's; the
// entries and slots are shared.
func (c *tailCache) get(from uint64, max int) ([]englog.Entry, []*pduSlot) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.entries) == 0 {
		return nil, nil
	}
	first := c.entries[0].Offset
	if from < first || from > first+uint64(len(c.entries)-1) {
		return nil, nil
	}
	i := int(from - first)
	n := min(max, len(c.entries)-i)
	return append([]englog.Entry(nil), c.entries[i:i+n]...), append([]*pduSlot(nil), c.slots[i:i+n]...)
}

// put adds entries just read from the log (consecutive offsets). Entries
// already held are skipped; entries that do not follow the cached ones
// (a projection far behind, or a gap) replace nothing older than them:
// the cache starts over from them only when they are newer.
func (c *tailCache) put(es []englog.Entry) {
	if len(es) == 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if n := len(c.entries); n > 0 {
		end := c.entries[n-1].Offset
		switch {
		case es[len(es)-1].Offset <= end:
			return // nothing new
		case es[0].Offset > end+1:
			c.entries, c.slots, c.bytes = nil, nil, 0 // a gap: start over
		case es[0].Offset <= end:
			es = es[end+1-es[0].Offset:]
		}
	}
	for _, e := range es {
		c.entries = append(c.entries, e)
		c.slots = append(c.slots, newPDUSlot(e))
		c.bytes += len(e.Payload)
	}
	if len(c.entries) <= tailCacheEntries && c.bytes <= tailCacheBytes {
		return
	}
	// Over a bound: drop the oldest down to three quarters of it, into a
	// fresh array (so their payloads are not kept alive by the old one),
	// which costs a copy only every quarter of the cache.
	drop := 0
	for len(c.entries)-drop > tailCacheEntries*3/4 || (c.bytes > tailCacheBytes*3/4 && len(c.entries)-drop > 1) {
		c.bytes -= len(c.entries[drop].Payload)
		drop++
	}
	c.entries = append([]englog.Entry(nil), c.entries[drop:]...)
	c.slots = append([]*pduSlot(nil), c.slots[drop:]...)
}

// reset empties the cache (after an erasure: what it holds may be content
// the log no longer has).
func (c *tailCache) reset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.entries, c.slots, c.bytes = nil, nil, 0
}
