package search

import (
	"context"
	"encoding/binary"
	"fmt"
	"strconv"
	"strings"

	"github.com/blevesearch/bleve/v2"
	"github.com/blevesearch/bleve/v2/search"
	"github.com/blevesearch/bleve/v2/search/query"

	"github.com/engram-hs/engram/projections"
)

// Searcher queries the index of one registered Projection.
type Searcher struct {
	p *Projection
	h *projections.Handle
}

// Searcher wires the projection to its handle (the engine's Register
// result) and returns its query side.
func (p *Projection) Searcher(h *projections.Handle) *Searcher {
	p.store.mu.Lock()
	p.store.snapshot = h.Snapshot
	p.store.mu.Unlock()
	return &Searcher{p: p, h: h}
}

// Query is one search.
type Query struct {
	Term string
	// Rooms limits the search to these rooms; it must not be empty (the
	// caller passes the rooms the user may search).
	Rooms []string
	// Keys are the text fields searched (TextFields when empty).
	Keys []string
	// Filter on type (patterns with '*') and sender.
	Types, NotTypes, Senders, NotSenders []string
	// Recent orders by recency instead of by rank.
	Recent bool
	// Limit is the page size; Next continues a previous result.
	Limit int
	Next  string
	// WithRoomCounts asks for the number of hits per room.
	WithRoomCounts bool
}

// Hit is one matching event.
type Hit struct {
	EventID string
	RoomID  string
	Offset  uint64
	Rank    float64
}

// Result is a page of hits, best first.
type Result struct {
	Hits  []Hit
	Total uint64
	// Next is the token of the following page, "" at the end.
	Next string
	// RoomCounts is the number of hits per room (WithRoomCounts).
	RoomCounts map[string]int
	// Terms are the analysed query terms, for highlighting.
	Terms []string
}

// ErrBadToken is returned for a Next that no search produced.
var ErrBadToken = fmt.Errorf("search: invalid next_batch token")

// Search runs q over the index as of the newest committed batch.
func (s *Searcher) Search(ctx context.Context, q Query) (*Result, error) {
	terms := analyseQuery(q.Term)
	res := &Result{Terms: terms}
	if len(terms) == 0 || len(q.Rooms) == 0 {
		return res, nil
	}
	s.p.mu.RLock()
	opened := s.p.idx != nil
	s.p.mu.RUnlock()
	if !opened {
		// Nothing has been applied since the process started: open the
		// index as the keyspace holds it (read-only: see checkUnchanged).
		s.p.mu.Lock()
		if s.p.idx == nil {
			r, release := s.h.Snapshot()
			b, ok, err := r.Get([]byte{pApplied})
			release()
			if err != nil {
				s.p.mu.Unlock()
				return nil, err
			}
			if !ok {
				s.p.mu.Unlock()
				return res, nil // nothing indexed yet
			}
			if err := s.p.open(); err != nil {
				s.p.mu.Unlock()
				return nil, err
			}
			s.p.applied = binary.BigEndian.Uint64(b)
		}
		s.p.mu.Unlock()
	}

	keys := q.Keys
	if len(keys) == 0 {
		keys = TextFields
	}
	keys = fieldsOfTypes(keys, q.Types, q.NotTypes)
	if len(keys) == 0 {
		return res, nil // no searched field holds text of the types asked for
	}
	var filters, not []query.Query
	if len(q.Senders) > 0 {
		filters = append(filters, anyOf(fieldSender, q.Senders))
	}
	if len(q.NotSenders) > 0 {
		not = append(not, anyOf(fieldSender, q.NotSenders))
	}
	// roomsQuery matches the events of the rooms with these codes whose
	// text holds every term, within the filter's senders and types.
	roomsQuery := func(codes [][]byte) query.Query {
		all := make([]query.Query, 0, len(terms))
		for _, t := range terms {
			alts := make([]query.Query, 0, len(keys))
			for _, k := range keys {
				alts = append(alts, newRoomTermQuery(t, k, codes))
			}
			if len(alts) == 1 {
				all = append(all, alts[0])
			} else {
				all = append(all, bleve.NewDisjunctionQuery(alts...))
			}
		}
		if len(filters) == 0 && len(not) == 0 {
			if len(all) == 1 {
				return all[0]
			}
			return bleve.NewConjunctionQuery(all...)
		}
		bq := bleve.NewBooleanQuery()
		bq.AddMust(append(all, filters...)...)
		bq.AddMustNot(not...)
		return bq
	}

	limit := q.Limit
	if limit <= 0 {
		limit = 10
	}
	req := bleve.NewSearchRequestOptions(roomsQuery(roomCodes(q.Rooms)), limit, 0, false)
	if q.Recent {
		// Newest first needs no score: bleve then skips scoring.
		req.Sort = search.SortOrder{&sortRecent{desc: true}}
		req.Score = bleve.ScoreNone
	} else {
		req.Sort = search.SortOrder{&search.SortScore{Desc: true}, &sortRecent{desc: true}}
	}
	if q.Next != "" {
		kind, val, ok := strings.Cut(q.Next, ":")
		switch {
		case ok && kind == "r" && q.Recent && len(val) == 16:
			off, err := strconv.ParseUint(val, 16, 64)
			if err != nil {
				return nil, ErrBadToken
			}
			req.SearchAfter = []string{offsetBytes(off)}
		case ok && kind == "k" && !q.Recent:
			from, err := strconv.Atoi(val)
			if err != nil || from < 0 {
				return nil, ErrBadToken
			}
			req.From = from
		default:
			return nil, ErrBadToken
		}
	}

	// The index is read under the lock that keeps Apply (which may reopen
	// it) out.
	s.p.mu.RLock()
	defer s.p.mu.RUnlock()
	sr, err := s.p.idx.SearchInContext(ctx, req)
	if err != nil {
		return nil, fmt.Errorf("search: %w", err)
	}
	res.Total = sr.Total
	if q.WithRoomCounts {
		// A count per room: each reads that room's runs of postings only.
		res.RoomCounts = map[string]int{}
		for _, room := range q.Rooms {
			if _, done := res.RoomCounts[room]; done {
				continue
			}
			cr := bleve.NewSearchRequestOptions(roomsQuery(roomCodes([]string{room})), 0, 0, false)
			cr.Score = bleve.ScoreNone
			c, err := s.p.idx.SearchInContext(ctx, cr)
			if err != nil {
				return nil, fmt.Errorf("search: %w", err)
			}
			if c.Total > 0 {
				res.RoomCounts[room] = int(c.Total)
			}
		}
	}
	// What each hit is: a row of this projection, not bleve's stored
	// fields.
	r, release := s.h.Snapshot()
	defer release()
	for _, h := range sr.Hits {
		v, ok, err := r.Get(projections.Key(pHit, h.ID))
		if err != nil {
			return nil, err
		}
		if !ok {
			continue // redacted since bleve's read (a newer snapshot)
		}
		room, ev, _ := cut(v)
		res.Hits = append(res.Hits, Hit{EventID: ev, RoomID: room, Offset: offsetOf(h.ID), Rank: h.Score})
	}
	// A full page has a next_batch (the next one may be empty), as clients
	// expect from Synapse.
	if len(sr.Hits) == limit {
		if q.Recent {
			res.Next = fmt.Sprintf("r:%016x", offsetOf(sr.Hits[len(sr.Hits)-1].ID))
		} else {
			res.Next = "k:" + strconv.Itoa(req.From+limit)
		}
	}
	return res, nil
}

// fieldsOfTypes are the keys whose event type (fieldTypes) is one of
// types (any, when empty) and none of notTypes.
func fieldsOfTypes(keys, types, notTypes []string) []string {
	if len(types) == 0 && len(notTypes) == 0 {
		return keys
	}
	matchesAny := func(t string, patterns []string) bool {
		for _, p := range patterns {
			if globMatch(p, t) {
				return true
			}
		}
		return false
	}
	var out []string
	for _, k := range keys {
		t := fieldTypes[k]
		if (len(types) == 0 || matchesAny(t, types)) && !matchesAny(t, notTypes) {
			out = append(out, k)
		}
	}
	return out
}

// globMatch reports whether s matches pattern, where '*' matches any
// sequence of characters (spec: filter types and not_types).
func globMatch(pattern, s string) bool {
	parts := strings.Split(pattern, "*")
	if len(parts) == 1 {
		return pattern == s
	}
	if !strings.HasPrefix(s, parts[0]) {
		return false
	}
	s = s[len(parts[0]):]
	last := parts[len(parts)-1]
	for _, part := range parts[1 : len(parts)-1] {
		i := strings.Index(s, part)
		if i < 0 {
			return false
		}
		s = s[i+len(part):]
	}
	return len(s) >= len(last) && strings.HasSuffix(s, last)
}

func anyOf(field string, values []string) query.Query {
	alts := make([]query.Query, 0, len(values))
	for _, v := range values {
		if strings.Contains(v, "*") {
			wq := bleve.NewWildcardQuery(v)
			wq.SetField(field)
			alts = append(alts, wq)
			continue
		}
		tq := bleve.NewTermQuery(v)
		tq.SetField(field)
		alts = append(alts, tq)
	}
	return bleve.NewDisjunctionQuery(alts...)
}

// analyseQuery splits a search term into the index's terms, each once.
func analyseQuery(term string) []string {
	seen := map[string]bool{}
	var out []string
	for _, tok := range queryAnalyzer.Analyze([]byte(term)) {
		t := string(tok.Term)
		if !seen[t] {
			seen[t] = true
			out = append(out, t)
		}
	}
	return out
}
