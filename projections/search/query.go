package search

import (
	"context"
	"encoding/binary"
	"fmt"
	"strconv"
	"strings"

	"github.com/blevesearch/bleve/v2"
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
	must := make([]query.Query, 0, len(terms)+4)
	for _, t := range terms {
		alts := make([]query.Query, 0, len(keys))
		for _, k := range keys {
			tq := bleve.NewTermQuery(t)
			tq.SetField(k)
			alts = append(alts, tq)
		}
		must = append(must, bleve.NewDisjunctionQuery(alts...))
	}
	must = append(must, anyOf(fieldRoom, q.Rooms))
	if len(q.Senders) > 0 {
		must = append(must, anyOf(fieldSender, q.Senders))
	}
	if len(q.Types) > 0 {
		must = append(must, anyOf(fieldType, q.Types))
	}
	bq := bleve.NewBooleanQuery()
	bq.AddMust(must...)
	if len(q.NotSenders) > 0 {
		bq.AddMustNot(anyOf(fieldSender, q.NotSenders))
	}
	if len(q.NotTypes) > 0 {
		bq.AddMustNot(anyOf(fieldType, q.NotTypes))
	}

	limit := q.Limit
	if limit <= 0 {
		limit = 10
	}
	req := bleve.NewSearchRequestOptions(bq, limit, 0, false)
	req.Fields = []string{fieldRoom, fieldEventID}
	if q.Recent {
		req.SortBy([]string{"-_id"})
	} else {
		req.SortBy([]string{"-_score", "-_id"})
	}
	if q.Next != "" {
		kind, val, ok := strings.Cut(q.Next, ":")
		switch {
		case ok && kind == "r" && q.Recent && len(val) == 16:
			req.SearchAfter = []string{val}
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
	if q.WithRoomCounts {
		req.AddFacet("rooms", bleve.NewFacetRequest(fieldRoom, len(q.Rooms)))
	}

	// The index is read under the lock that keeps Apply (which may reopen
	// it) out.
	s.p.mu.RLock()
	sr, err := s.p.idx.SearchInContext(ctx, req)
	s.p.mu.RUnlock()
	if err != nil {
		return nil, fmt.Errorf("search: %w", err)
	}
	res.Total = sr.Total
	for _, h := range sr.Hits {
		room, _ := h.Fields[fieldRoom].(string)
		ev, _ := h.Fields[fieldEventID].(string)
		res.Hits = append(res.Hits, Hit{EventID: ev, RoomID: room, Offset: OffsetOf(h.ID), Rank: h.Score})
	}
	// A full page has a next_batch (the next one may be empty), as clients
	// expect from Synapse.
	if len(sr.Hits) == limit {
		if q.Recent {
			res.Next = "r:" + sr.Hits[len(sr.Hits)-1].ID
		} else {
			res.Next = "k:" + strconv.Itoa(req.From+limit)
		}
	}
	if f := sr.Facets["rooms"]; f != nil && f.Terms != nil {
		res.RoomCounts = map[string]int{}
		for _, t := range f.Terms.Terms() {
			res.RoomCounts[t.Term] = t.Count
		}
	}
	return res, nil
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
