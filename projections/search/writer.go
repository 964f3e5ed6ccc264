package search

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"slices"
	"sync/atomic"

	"github.com/blevesearch/bleve/v2/analysis"
	"github.com/blevesearch/bleve/v2/index/upsidedown"
	"github.com/blevesearch/bleve/v2/registry"
	index "github.com/blevesearch/bleve_index_api"
	"google.golang.org/protobuf/proto"

	"github.com/engram-hs/engram/projections"
)

// The fold writes upside_down's rows itself (indexWriter) and leaves
// bleve the reading: the same rows, byte for byte, as bleve's Batch wrote
// (the digest of a rebuild is unchanged), for much less work. bleve's
// Batch looked up every new document's back index row, analysed each
// document on a worker goroutine, laid the rows out in a buffer of its
// own, merged every term's dictionary counter once per batch of 1,000
// documents through a map, and the back index row was decoded, sorted and
// encoded again to make it canonical (kvWriter.ExecuteBatch): a fifth of
// a search-only rebuild's CPU. Here a document's rows go straight into
// the Apply's batch, its back index row is built sorted, and the
// dictionary counters are added up over the whole Apply and written once
// each.

// indexTypeName is the bleve index type the projection opens: upside_down,
// with the document count of its readers kept by the projection
// (countedIndex), since upside_down counts only the documents its own
// Batch writes.
const indexTypeName = "engram_upsidedown"

func init() {
	if err := registry.RegisterIndexType(indexTypeName, newCountedIndex); err != nil {
		panic(err)
	}
}

// countedIndex is upside_down whose readers count the documents
// indexWriter added and removed too. Scores depend on that count (a term's
// inverse document frequency).
type countedIndex struct {
	*upsidedown.UpsideDownCouch
	// delta is the documents indexWriter added less those it removed since
	// the index was opened (upside_down counts the back index rows then).
	delta atomic.Int64
}

func newCountedIndex(storeName string, config map[string]interface{}, q *index.AnalysisQueue) (index.Index, error) {
	i, err := upsidedown.NewUpsideDownCouch(storeName, config, q)
	if err != nil {
		return nil, err
	}
	udc, ok := i.(*upsidedown.UpsideDownCouch)
	if !ok {
		return nil, fmt.Errorf("search: upside_down returned %T", i)
	}
	return &countedIndex{UpsideDownCouch: udc}, nil
}

func (c *countedIndex) Reader() (index.IndexReader, error) {
	r, err := c.UpsideDownCouch.Reader()
	if err != nil {
		return nil, err
	}
	ur, ok := r.(*upsidedown.IndexReader)
	if !ok {
		_ = r.Close()
		return nil, fmt.Errorf("search: upside_down reader is %T", r)
	}
	return &countedReader{IndexReader: ur, delta: c.delta.Load()}, nil
}

// countedReader is upside_down's reader with the projection's document
// count.
type countedReader struct {
	*upsidedown.IndexReader
	delta int64
}

func (r *countedReader) DocCount() (uint64, error) {
	n, err := r.IndexReader.DocCount()
	if err != nil {
		return 0, err
	}
	c := int64(n) + r.delta
	if c < 0 {
		return 0, errors.New("search: negative document count")
	}
	return uint64(c), nil
}

// textField is one field of a document to index.
type textField struct {
	num      uint16 // bleve's field number (allFields)
	analyzer analysis.Analyzer
	text     string
}

// indexWriter writes the index rows of one Apply into its batch.
type indexWriter struct {
	w    projections.Writer
	idx  *countedIndex
	dict map[string]int64 // dictionary row key -> change of its count
	docs int64            // documents added less documents removed
	key  []byte           // scratch
}

func newIndexWriter(w projections.Writer, idx *countedIndex) *indexWriter {
	return &indexWriter{w: w, idx: idx, dict: map[string]int64{}}
}

// docRows are the index rows of one new document (prepareDoc).
type docRows struct {
	terms [][2][]byte // term frequency rows, keys with pIndex
	back  [2][]byte   // the back index row
	dict  []string    // the dictionary row key of each term
}

// prepareDoc lays out the rows of a new document (its ID is new: it holds
// its log offset) as bleve's Batch did: per field, a term frequency row
// for each distinct term with its frequency and the field's norm (no term
// vectors, nothing stored), one back index row listing the terms of each
// field, sorted, and one more document for each term's dictionary
// counter. It reads nothing, so documents are prepared concurrently.
//
// A document's rows share two allocations: one buffer holds every term
// row's key and value, one string every dictionary key, of which the back
// index row's terms are substrings. Allocating each row, key and term on
// its own, and counting terms in bleve's map (analysis.TokenFrequency),
// was a third of preparing a message.
func prepareDoc(docID string, fields []textField) (*docRows, error) {
	id := []byte(docID)
	analysed := make([]fieldTerms, len(fields))
	rowBytes, dictBytes, nterms := 0, 0, 0
	for i, f := range fields {
		tokens := f.analyzer.Analyze([]byte(f.text))
		ft := distinctTerms(tokens)
		ft.num = f.num
		ft.norm = float32(1.0 / math.Sqrt(float64(len(tokens))))
		analysed[i] = ft
		for _, t := range ft.terms {
			tfr := upsidedown.NewTermFrequencyRow(t, f.num, id, 0, 0)
			rowBytes += 1 + tfr.KeySize() + tfr.ValueSize()
			dictBytes += upsidedown.NewDictionaryRow(t, f.num, 0).KeySize()
		}
		nterms += len(ft.terms)
	}
	rows := make([]byte, rowBytes)
	dictBuf := make([]byte, dictBytes)
	out := &docRows{terms: make([][2][]byte, 0, nterms), dict: make([]string, 0, nterms)}
	// each dictionary key's place in dictBuf, and its term's (the key's end)
	type span struct{ key, term, end int }
	spans := make([]span, 0, nterms)
	r, d := 0, 0
	for _, ft := range analysed {
		for j, t := range ft.terms {
			tfr := upsidedown.NewTermFrequencyRow(t, ft.num, id, uint64(ft.freqs[j]), ft.norm)
			rows[r] = pIndex
			n, _ := tfr.KeyTo(rows[r+1:])
			k := rows[r : r+1+n : r+1+n]
			r += 1 + n
			m, _ := tfr.ValueTo(rows[r:])
			out.terms = append(out.terms, [2][]byte{k, rows[r : r+m : r+m]})
			r += m
			dr := upsidedown.NewDictionaryRow(t, ft.num, 0)
			n, _ = dr.KeyTo(dictBuf[d:])
			spans = append(spans, span{d, d + n - len(t), d + n})
			d += n
		}
	}
	dict := string(dictBuf[:d])
	row := upsidedown.BackIndexRowValue{TermsEntries: make([]*upsidedown.BackIndexTermsEntry, 0, len(fields))}
	i := 0
	for _, ft := range analysed {
		terms := make([]string, len(ft.terms))
		for j := range ft.terms {
			sp := spans[i]
			out.dict = append(out.dict, dict[sp.key:sp.end])
			terms[j] = dict[sp.term:sp.end]
			i++
		}
		row.TermsEntries = append(row.TermsEntries, &upsidedown.BackIndexTermsEntry{Field: proto.Uint32(uint32(ft.num)), Terms: terms})
	}
	slices.SortFunc(row.TermsEntries, func(a, b *upsidedown.BackIndexTermsEntry) int {
		return int(a.GetField()) - int(b.GetField())
	})
	v, err := proto.MarshalOptions{Deterministic: true}.Marshal(&row)
	if err != nil {
		return nil, err
	}
	out.back = [2][]byte{indexKey(upsidedown.NewBackIndexRow(id, nil, nil).Key()), v}
	return out, nil
}

// fieldTerms are a field's distinct terms, sorted, with their frequencies.
type fieldTerms struct {
	num   uint16
	norm  float32
	terms [][]byte
	freqs []int
}

// distinctTerms sorts a field's tokens' terms and counts each: what
// analysis.TokenFrequency counts, without its map and an allocation per
// term, and in the order the back index row lists them.
func distinctTerms(tokens analysis.TokenStream) fieldTerms {
	all := make([][]byte, len(tokens))
	for i, t := range tokens {
		all[i] = t.Term
	}
	slices.SortFunc(all, bytes.Compare)
	ft := fieldTerms{terms: all[:0], freqs: make([]int, 0, len(all))}
	for _, t := range all {
		if n := len(ft.terms); n > 0 && bytes.Equal(t, ft.terms[n-1]) {
			ft.freqs[len(ft.freqs)-1]++
			continue
		}
		ft.terms = append(ft.terms, t)
		ft.freqs = append(ft.freqs, 1)
	}
	return ft
}

// write writes a prepared document's rows. The fold never reads a term
// frequency row (remove deletes them by the keys the back index row
// lists): they are written unread (projections.SetUnread), and deleted
// so (projections.DeleteUnread).
func (x *indexWriter) write(d *docRows) error {
	for _, kv := range d.terms {
		if err := projections.SetUnread(x.w, kv[0], kv[1]); err != nil {
			return err
		}
	}
	if err := x.w.Set(d.back[0], d.back[1]); err != nil {
		return err
	}
	for _, k := range d.dict {
		x.dict[k]++
	}
	x.docs++
	return nil
}

// remove deletes a document's rows, found from its back index row; a
// document the index does not hold changes nothing.
func (x *indexWriter) remove(docID string) error {
	bk := indexKey(upsidedown.NewBackIndexRow([]byte(docID), nil, nil).Key())
	v, ok, err := x.w.Get(bk)
	if err != nil || !ok {
		return err
	}
	br, err := upsidedown.NewBackIndexRowKV(bk[1:], v)
	if err != nil {
		return fmt.Errorf("search: decoding a back index row: %w", err)
	}
	var row upsidedown.BackIndexRowValue
	if err := proto.Unmarshal(v, &row); err != nil {
		return fmt.Errorf("search: decoding a back index row: %w", err)
	}
	if len(row.StoredEntries) > 0 {
		return fmt.Errorf("search: document %x has stored fields", docID)
	}
	for _, k := range br.AllTermKeys() {
		if err := projections.DeleteUnread(x.w, indexKey(k)); err != nil {
			return err
		}
	}
	for _, e := range row.TermsEntries {
		for _, t := range e.Terms {
			x.count(uint16(e.GetField()), []byte(t), -1)
		}
	}
	if err := x.w.Delete(bk); err != nil {
		return err
	}
	x.docs--
	return nil
}

func (x *indexWriter) count(field uint16, term []byte, delta int64) {
	dr := upsidedown.NewDictionaryRow(term, field, 0)
	x.key = slices.Grow(x.key[:0], dr.KeySize())[:dr.KeySize()]
	n, _ := dr.KeyTo(x.key)
	x.dict[string(x.key[:n])] += delta
}

// finish writes the dictionary counters, in key order so that the batch's
// contents do not depend on map iteration, and hands the document count
// to the index's readers (after the batch commits: Projection.mu keeps
// readers out until then). A term no document holds any more leaves no
// row, as in kvWriter.ExecuteBatch.
func (x *indexWriter) finish() error {
	keys := make([]string, 0, len(x.dict))
	for k, d := range x.dict {
		if d != 0 {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	for _, k := range keys {
		ik := indexKey([]byte(k))
		old, ok, err := x.w.Get(ik)
		if err != nil {
			return err
		}
		var count uint64
		if ok {
			c, n := binary.Uvarint(old)
			if n <= 0 {
				return fmt.Errorf("search: bad dictionary row %q", k)
			}
			count = c
		}
		d := x.dict[k]
		if d < 0 && uint64(-d) > count {
			return fmt.Errorf("search: dictionary row %q would fall below zero", k)
		}
		count = uint64(int64(count) + d)
		if count == 0 {
			if err := x.w.Delete(ik); err != nil {
				return err
			}
			continue
		}
		if err := x.w.Set(ik, upsidedown.NewDictionaryRow(nil, 0, count).Value()); err != nil {
			return err
		}
	}
	x.idx.delta.Add(x.docs)
	x.dict, x.docs = map[string]int64{}, 0
	return nil
}
