package rooms

import (
	"sync"

	"github.com/engram-hs/engram/stateres"
)

// EventCache keeps events loaded from the log, parsed and redacted, so a
// read of an event already served costs its record's Get and no log read,
// decompression, parse or redaction. An entry is keyed by the event ID
// and checked against the record's offset and redaction: a redaction (or
// a rebuild that moved the event) makes the entry miss, never serve stale
// JSON.
//
// It is bounded by two generations of at most half the capacity each:
// when the current one fills up, the older is dropped and the current one
// becomes the older. A hit in the older generation moves the event back
// into the current one, so events in use stay.
type EventCache struct {
	mu       sync.Mutex
	half     int
	cur, old map[string]*Event
	hits     uint64
	misses   uint64
}

// NewEventCache holds up to capacity events (at least 2).
func NewEventCache(capacity int) *EventCache {
	half := max(capacity/2, 1)
	return &EventCache{half: half, cur: make(map[string]*Event, half)}
}

// Stats are the cache's hits and misses so far.
func (c *EventCache) Stats() (hits, misses uint64) {
	if c == nil {
		return 0, 0
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.hits, c.misses
}

// get returns a copy of the cached event matching rec (same offset and
// redaction), or nil. A nil cache always misses.
func (c *EventCache) get(rec *Event) *Event {
	if c == nil {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.cur[rec.EventID]
	if !ok {
		if e, ok = c.old[rec.EventID]; ok {
			c.insert(e)
		}
	}
	if !ok || e.Offset != rec.Offset || e.RedactedBy != rec.RedactedBy || e.Version != rec.Version {
		c.misses++
		return nil
	}
	c.hits++
	out := *rec // the record's flags as stored now, with the cached JSON
	out.JSON, out.pdu = e.JSON, e.pdu
	return &out
}

// put keeps a loaded event. Callers share its JSON and parsed form, which
// nobody changes after loadJSON.
func (c *EventCache) put(e *Event) {
	if c == nil {
		return
	}
	cp := *e
	c.mu.Lock()
	c.insert(&cp)
	c.mu.Unlock()
}

// Built keeps an event this server built and appended at offset (the
// log entry carries its JSON as it is), so that its first reader, the
// syncs of the room's members a few milliseconds later, takes it parsed
// instead of reading the entry back from the log and parsing it again.
// The record's offset, redaction and version still decide every hit: an
// event the fold did not store at offset is never served from here.
func (c *EventCache) Built(ev *stateres.Event, offset uint64) {
	if c == nil {
		return
	}
	e := &Event{EventID: ev.EventID(), RoomID: ev.RoomID(), Offset: offset, JSON: ev.JSON(), Version: ev.Version().ID, pdu: ev}
	c.mu.Lock()
	c.insert(e)
	c.mu.Unlock()
}

func (c *EventCache) insert(e *Event) {
	if len(c.cur) >= c.half {
		c.old, c.cur = c.cur, make(map[string]*Event, c.half)
	}
	c.cur[e.EventID] = e
}
