package search

import (
	"bytes"
	"context"
	"slices"

	"github.com/blevesearch/bleve/v2/mapping"
	"github.com/blevesearch/bleve/v2/search"
	"github.com/blevesearch/bleve/v2/search/searcher"
	index "github.com/blevesearch/bleve_index_api"
)

// roomTermQuery matches the documents of some rooms whose field holds the
// term. Document IDs lead with their room's code (docID), so each room's
// postings of the term are one run: its searcher seeks to the first room's
// run, reads it, and seeks to the next, never reading the postings of
// other rooms. Scores are bleve's term scores (the term's frequency over
// the whole index).
type roomTermQuery struct {
	term, field string
	codes       [][]byte // sorted, each once
}

func newRoomTermQuery(term, field string, codes [][]byte) *roomTermQuery {
	return &roomTermQuery{term: term, field: field, codes: codes}
}

// roomCodes are the sorted, distinct codes of rooms.
func roomCodes(rooms []string) [][]byte {
	codes := make([][]byte, 0, len(rooms))
	for _, r := range rooms {
		codes = append(codes, []byte(roomCode(r)))
	}
	slices.SortFunc(codes, bytes.Compare)
	return slices.CompactFunc(codes, bytes.Equal)
}

func (q *roomTermQuery) Searcher(ctx context.Context, i index.IndexReader, _ mapping.IndexMapping, options search.SearcherOptions) (search.Searcher, error) {
	s, err := searcher.NewTermSearcher(ctx, i, q.term, q.field, 1.0, options)
	if err != nil {
		return nil, err
	}
	rs := &roomSearcher{Searcher: s, codes: q.codes}
	if s.Count() == 0 {
		rs.room = len(rs.codes) // no document holds the term: no seek per room
	}
	return rs, nil
}

// roomSearcher restricts a term searcher to the runs of some rooms.
type roomSearcher struct {
	search.Searcher
	codes   [][]byte
	room    int // index in codes of the run being read
	started bool
}

func (s *roomSearcher) Next(ctx *search.SearchContext) (*search.DocumentMatch, error) {
	if s.room >= len(s.codes) {
		return nil, nil
	}
	if !s.started {
		s.started = true
		dm, err := s.Searcher.Advance(ctx, s.codes[s.room])
		return s.settle(ctx, dm, err)
	}
	dm, err := s.Searcher.Next(ctx)
	return s.settle(ctx, dm, err)
}

func (s *roomSearcher) Advance(ctx *search.SearchContext, id index.IndexInternalID) (*search.DocumentMatch, error) {
	if s.room >= len(s.codes) {
		return nil, nil
	}
	s.started = true
	dm, err := s.Searcher.Advance(ctx, id)
	return s.settle(ctx, dm, err)
}

// settle returns dm when it is in one of the rooms; otherwise it seeks to
// the next room's run at or after dm and tries again.
func (s *roomSearcher) settle(ctx *search.SearchContext, dm *search.DocumentMatch, err error) (*search.DocumentMatch, error) {
	for err == nil && dm != nil {
		id := dm.IndexInternalID
		code := id[:min(len(id), roomCodeLen)]
		for s.room < len(s.codes) && bytes.Compare(s.codes[s.room], code) < 0 {
			s.room++
		}
		if s.room < len(s.codes) && bytes.Equal(s.codes[s.room], code) {
			return dm, nil
		}
		if ctx.DocumentMatchPool != nil {
			ctx.DocumentMatchPool.Put(dm)
		}
		if s.room >= len(s.codes) {
			return nil, nil
		}
		dm, err = s.Searcher.Advance(ctx, s.codes[s.room])
	}
	if dm == nil {
		s.room = len(s.codes) // the term's postings ran out
	}
	return dm, err
}

// sortRecent orders hits by log offset (the part of a document ID after
// its room's code).
type sortRecent struct{ desc bool }

func (s *sortRecent) UpdateVisitor(string, []byte)         {}
func (s *sortRecent) Value(d *search.DocumentMatch) string { return offsetPart(d.ID) }
func (s *sortRecent) DecodeValue(v string) string          { return v }
func (s *sortRecent) Descending() bool                     { return s.desc }
func (s *sortRecent) RequiresDocID() bool                  { return true }
func (s *sortRecent) RequiresScoring() bool                { return false }
func (s *sortRecent) RequiresFields() []string             { return nil }
func (s *sortRecent) Reverse()                             { s.desc = !s.desc }
func (s *sortRecent) Copy() search.SearchSort              { c := *s; return &c }
