package adminstate

import (
	"sync"

	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/log/facts"
	"github.com/engram-hs/engram/projections"
)

// Cache keeps the two admin decisions that reading a timeline consults in
// memory: the latest restore, which every pagination token handed out or
// parsed is checked against (a /sync formats one per room), and each
// room's purge point, which every timeline walk reads. Both change only
// when an admin acts, yet each was a Pebble point read through every
// memtable and level, per room of every sync.
//
// It is invalidated through the log like every projection read (the
// accounts projection's Cache does the same for sessions): the fold's
// AfterCommit drops what a batch's Restored and HistoryPurged facts change
// before the engine lets readers see the batch, so a purge hides history
// from the very next request on every node. Rooms without a purge are
// cached too (as 0): the question is asked of every room, and its answer
// is almost always "none".
type Cache struct {
	mu sync.Mutex
	// epoch moves with every invalidation. A reader that missed notes it
	// before reading Pebble and stores what it read only if it has not
	// moved: otherwise the read may predate a commit whose invalidation
	// already ran.
	epoch        uint64
	restoreKnown bool
	restore      Restore // the zero Restore: never restored
	purged       map[string]uint64
	// last is the last offset AfterCommit saw. A batch that does not
	// follow it means a rebuilt generation took over (schema change or
	// healing), whose contents may differ anywhere: everything goes.
	last uint64
}

// maxPurgedCached bounds the purge points cached; a full map is emptied
// (it refills at one read per room read).
const maxPurgedCached = 100_000

func newCache() *Cache { return &Cache{purged: map[string]uint64{}} }

// AfterCommit drops what the batch may have changed.
func (p *Projection) AfterCommit(entries []englog.Entry) {
	if len(entries) == 0 {
		return
	}
	restored := false
	var rooms []string
	for _, e := range entries {
		switch e.Kind {
		case englog.KindRestored:
			restored = true
		case englog.KindHistoryPurged:
			var f facts.HistoryPurged
			if err := facts.Decode(e, &f); err != nil {
				// The fold decoded it to commit the batch; should it not
				// decode here, no room's cached point can be trusted.
				p.cache.invalidate(0, entries[len(entries)-1].Offset, false, nil)
				return
			}
			rooms = append(rooms, f.RoomID)
		}
	}
	p.cache.invalidate(entries[0].Offset, entries[len(entries)-1].Offset, restored, rooms)
}

// invalidate records that offsets first..last were folded, dropping the
// restore when restored and the purge points of rooms; a batch that does
// not follow the last one (first 0: never) drops everything.
func (c *Cache) invalidate(first, last uint64, restored bool, rooms []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	contiguous := first == c.last+1
	c.last = last
	switch {
	case !contiguous:
		c.epoch++
		c.restoreKnown = false
		c.purged = map[string]uint64{}
	case restored || len(rooms) > 0:
		c.epoch++
		if restored {
			c.restoreKnown = false
		}
		for _, r := range rooms {
			delete(c.purged, r)
		}
	}
}

func (c *Cache) now() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.epoch
}

func (c *Cache) cachedRestore() (Restore, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.restore, c.restoreKnown
}

func (c *Cache) putRestore(epoch uint64, r Restore) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if epoch == c.epoch {
		c.restore, c.restoreKnown = r, true
	}
}

func (c *Cache) cachedPurge(roomID string) (uint64, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	upTo, ok := c.purged[roomID]
	return upTo, ok
}

func (c *Cache) putPurge(epoch uint64, roomID string, upTo uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if epoch != c.epoch {
		return
	}
	if len(c.purged) >= maxPurgedCached {
		c.purged = map[string]uint64{}
	}
	c.purged[roomID] = upTo
}

// View returns a view over r (the projection's live reader) whose restore
// and purge reads go through the cache. Views over snapshots must use
// NewView: the cache follows the newest state.
func (p *Projection) View(r projections.Reader) View { return View{r: r, cache: p.cache} }

func (v View) cachedRestored() (*Restore, error) {
	if rs, ok := v.cache.cachedRestore(); ok {
		if rs == (Restore{}) {
			return nil, nil
		}
		return &rs, nil
	}
	epoch := v.cache.now()
	rs, err := restored(v.r)
	if err != nil {
		return nil, err
	}
	if rs == nil {
		v.cache.putRestore(epoch, Restore{})
	} else {
		v.cache.putRestore(epoch, *rs)
	}
	return rs, nil
}

func (v View) cachedPurgedUpTo(roomID string) (uint64, error) {
	if upTo, ok := v.cache.cachedPurge(roomID); ok {
		return upTo, nil
	}
	epoch := v.cache.now()
	upTo, err := purgedUpTo(v.r, roomID)
	if err == nil {
		v.cache.putPurge(epoch, roomID, upTo)
	}
	return upTo, err
}
