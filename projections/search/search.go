// Package search is the full-text index of room events behind POST
// /search: a projection that folds searchable events (m.room.message
// bodies, room names and topics) into a bleve index stored in its own
// keyspace (store.go), and removes an event's text when it is redacted.
//
// Text is analysed for Chinese, Japanese and Korean as well as for
// space-separated languages: runs of CJK characters are indexed as
// overlapping bigrams and single characters, so a word is found inside a
// sentence written without spaces.
package search

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"sort"
	"sync"

	"github.com/blevesearch/bleve/v2"
	"github.com/blevesearch/bleve/v2/analysis"
	"github.com/blevesearch/bleve/v2/analysis/lang/cjk"
	"github.com/blevesearch/bleve/v2/analysis/token/lowercase"
	"github.com/blevesearch/bleve/v2/analysis/tokenizer/single"
	"github.com/blevesearch/bleve/v2/analysis/tokenizer/unicode"
	"github.com/blevesearch/bleve/v2/document"
	"github.com/blevesearch/bleve/v2/index/upsidedown"
	index "github.com/blevesearch/bleve_index_api"

	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/projections"
	"github.com/engram-hs/engram/stateres"
	"github.com/engram-hs/engram/stateres/canonicaljson"
)

// Keyspace.
const (
	pIndex   = 'B' // B <bleve key> -> bleve's row (store.go)
	pDoc     = 'D' // D eventID -> docID roomID, for each indexed event
	pPending = 'R' // R eventID -> roomID: a redaction seen before its target
	pApplied = 'A' // A -> last offset folded (uint64 BE), for opening the index for reads
	pHit     = 'H' // H docID -> roomID 0x00 eventID: what a hit is, without bleve's stored fields
)

// Fields of an indexed document. The text fields are named as the spec's
// search keys.
const (
	FieldBody  = "content.body"
	FieldName  = "content.name"
	FieldTopic = "content.topic"

	fieldSender = "sender"
)

// fieldTypes are the event types whose text each text field holds: one
// type a field, so a filter on types is a choice of fields (Search), and
// documents need no type field.
var fieldTypes = map[string]string{FieldBody: "m.room.message", FieldName: "m.room.name", FieldTopic: "m.room.topic"}

// TextFields are the searchable keys, in the spec's order.
var TextFields = []string{FieldBody, FieldName, FieldTopic}

// allFields in the order their bleve field numbers are assigned when the
// index is created (seedSchema): fixed, so every node and every rebuild
// numbers them alike.
var allFields = []string{FieldBody, FieldName, FieldTopic, fieldSender}

// fieldNums are bleve's numbers of allFields (checkFieldNumbers).
var fieldNums = func() map[string]uint16 {
	m := make(map[string]uint16, len(allFields))
	for i, f := range allFields {
		m[f] = uint16(i)
	}
	return m
}()

// Analyzers. Indexing emits CJK bigrams and the single characters too, so
// a one-character query matches; queries use bigrams only (a run of one
// character still yields that character), so a two-character word must
// appear as such, not as two characters anywhere.
var (
	indexAnalyzer = &analysis.DefaultAnalyzer{
		Tokenizer:    unicode.NewUnicodeTokenizer(),
		TokenFilters: []analysis.TokenFilter{newWidthFilter(), lowercase.NewLowerCaseFilter(), hangulFilter{}, cjk.NewCJKBigramFilter(true)},
	}
	queryAnalyzer = &analysis.DefaultAnalyzer{
		Tokenizer:    unicode.NewUnicodeTokenizer(),
		TokenFilters: []analysis.TokenFilter{newWidthFilter(), lowercase.NewLowerCaseFilter(), hangulFilter{}, cjk.NewCJKBigramFilter(false)},
	}
	keywordAnalyzer = &analysis.DefaultAnalyzer{Tokenizer: single.NewSingleTokenTokenizer()}
)

// A document's ID is its room's code followed by its log offset
// (docID), so that the postings of a term in one room are one contiguous
// run of keys: a search over a user's rooms seeks once per room and term
// and reads the postings of those rooms only (roomTermQuery). Version 2
// intersected a term over the whole index with a room_id field, one seek
// per posting of the rarer side: p50 182 ms over 1,000,000 entries, most
// of it in Pebble seeks.
//
// roomCode is a hash of the room ID, fixed-length so that no code is the
// prefix of another: it needs no state to assign and no read to find. Two
// rooms whose codes collided (2^-56) would share a run of postings; a hit
// names its true room (pHit) and the caller checks what the user may see.
// Seven bits a byte: see docID.
func roomCode(roomID string) string {
	sum := sha256.Sum256([]byte(roomID))
	code := sum[:roomCodeLen]
	for i := range code {
		code[i] &= 0x7f
	}
	return string(code)
}

const roomCodeLen = 8

// Projection is the search index.
type Projection struct {
	// mu is held by Apply while the index writes into its batch, and by
	// readers while they query: the store serves one or the other.
	mu      sync.RWMutex
	store   *kvStore
	idx     bleve.Index
	ci      *countedIndex // idx's index, which the fold writes (indexWriter)
	applied uint64        // the last offset folded into idx's state, 0 unknown
}

// New returns the projection. Wire it to its handle with Searcher.
func New() *Projection { return &Projection{store: &kvStore{}} }

func (p *Projection) Name() string { return "search" }

// Version 1: bleve upside_down index of m.room.message bodies, names and
// topics; Han, Kana and Hangul as bigrams and single characters.
// Version 2: a term no document holds any more has no dictionary row
// (version 1 kept it with a count of zero).
// Version 3: document IDs lead with their room's code (docID); no room_id
// field; a hit's room and event ID in pHit rows instead of bleve's stored
// fields. Versions 1 and 2 cannot answer version 3's queries: searches
// wait for the rebuild.
// Version 4: document IDs are binary, 16 bytes (version 3's were 28
// characters, in every posting's key).
// Version 5: no type field (fieldTypes): a row fewer per document, and the
// one term whose postings every message wrote.
func (p *Projection) Version() int { return 5 }

// open opens bleve over the store as it is now (the pending batch during
// Apply): an existing index loads its field numbers and document count,
// an empty one is created.
func (p *Projection) open() error {
	if p.idx != nil {
		_ = p.idx.Close()
		p.idx = nil
	}
	m := bleve.NewIndexMapping()
	idx, err := bleve.NewUsing("", m, indexTypeName, storeName, map[string]interface{}{configKey: p.store})
	if err != nil {
		return fmt.Errorf("search: opening the index: %w", err)
	}
	ii, err := idx.Advanced()
	if err != nil {
		_ = idx.Close()
		return fmt.Errorf("search: opening the index: %w", err)
	}
	ci, ok := ii.(*countedIndex)
	if !ok {
		_ = idx.Close()
		return fmt.Errorf("search: the index is a %T", ii)
	}
	p.idx, p.ci = idx, ci
	return nil
}

// Apply folds a batch.
func (p *Projection) Apply(w projections.Writer, entries []englog.Entry) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.store.mu.Lock()
	p.store.w = w
	p.store.mu.Unlock()
	defer func() {
		p.store.mu.Lock()
		p.store.w = nil
		p.store.mu.Unlock()
	}()

	// The index keeps a document count and field numbers in memory: they
	// are valid while batches follow each other. Anything else (the first
	// batch, a rebuild starting again from offset 1 into a new generation)
	// reopens it over what the keyspace holds.
	if p.idx == nil || entries[0].Offset != p.applied+1 {
		p.applied = 0
		if err := p.open(); err != nil {
			return err
		}
		if _, ok, err := w.Get([]byte{pApplied}); err != nil {
			return err
		} else if !ok {
			if err := p.seedSchema(); err != nil {
				return err
			}
		}
		if err := checkFieldNumbers(w); err != nil {
			return err
		}
	}
	x := newIndexWriter(w, p.ci)
	if err := prepareAll(w, entries, func(d pdu) error { return p.apply(w, x, d) }); err != nil {
		return err
	}
	if err := x.finish(); err != nil {
		return err
	}
	last := entries[len(entries)-1].Offset
	if err := w.Set([]byte{pApplied}, binary.BigEndian.AppendUint64(nil, last)); err != nil {
		return err
	}
	p.applied = last
	return nil
}

// seedSchema creates every field of a fresh index in a fixed order. bleve
// numbers a field when it first analyses one, and analyses the documents
// of a batch concurrently: without this, two nodes could number "name" and
// "body" differently.
func (p *Projection) seedSchema() error {
	const seedID = "~seed"
	doc := document.NewDocument(seedID)
	for _, f := range allFields {
		doc.AddField(document.NewTextFieldCustom(f, nil, nil, index.IndexField, keywordAnalyzer))
	}
	b := p.idx.NewBatch()
	if err := b.IndexAdvanced(doc); err != nil {
		return err
	}
	if err := p.idx.Batch(b); err != nil {
		return err
	}
	b = p.idx.NewBatch()
	b.Delete(seedID)
	return p.idx.Batch(b)
}

// checkFieldNumbers checks that the index numbers its fields as fieldNums
// says, which indexWriter writes without asking bleve.
func checkFieldNumbers(r projections.Reader) error {
	for _, name := range allFields {
		want := upsidedown.NewFieldRow(fieldNums[name], name)
		v, ok, err := r.Get(indexKey(want.Key()))
		if err != nil {
			return err
		}
		if !ok || !bytes.Equal(v, want.Value()) {
			return fmt.Errorf("search: the index does not number field %q %d", name, fieldNums[name])
		}
	}
	lo := indexKey([]byte{'f'})
	it := r.Iter(lo, projections.PrefixEnd(lo))
	defer it.Close()
	n := 0
	for ok := it.First(); ok; ok = it.Next() {
		n++
	}
	if n != len(allFields) {
		return fmt.Errorf("search: the index has %d fields, the projection %d", n, len(allFields))
	}
	return nil
}

// docID groups documents by room (roomCode), then orders them by log
// offset: the offset part sorts as the offsets do, which is the recency
// order (sortRecent). Binary, 16 bytes as version 2's hex offsets were: a
// document ID is in every posting's key. upside_down ends a document ID
// at a 0xff byte in some rows (the back index), so every byte holds seven
// bits.
func docID(roomID string, offset uint64) string {
	return roomCode(roomID) + offsetBytes(offset)
}

const docIDLen = roomCodeLen + offsetLen

// offsetLen bytes of seven bits each: offsets below 2^56.
const offsetLen = 8

// offsetBytes encodes an offset in seven bits a byte, most significant
// first (so the encodings sort as the offsets do).
func offsetBytes(offset uint64) string {
	var b [offsetLen]byte
	for i := offsetLen - 1; i >= 0; i-- {
		b[i] = byte(offset & 0x7f)
		offset >>= 7
	}
	return string(b[:])
}

// offsetPart is the offset of a document ID as offsetBytes encodes it.
func offsetPart(id string) string {
	if len(id) != docIDLen {
		return id
	}
	return id[roomCodeLen:]
}

// offsetOf is the log offset of a document ID.
func offsetOf(id string) uint64 {
	if len(id) != docIDLen {
		return 0
	}
	var n uint64
	for _, c := range []byte(id[roomCodeLen:]) {
		n = n<<7 | uint64(c)
	}
	return n
}

// pdu is what the fold does with one PDU entry, worked out without the
// keyspace (prepare), so that entries are prepared concurrently; apply
// then decides with the keyspace, in log order.
type pdu struct {
	eventID, roomID string
	redacts         string   // the target of a redaction
	doc             *docRows // the rows of a searchable event
	did             string   // its document ID
}

// prepare decodes a PDU entry (ReadPDU, r being the Writer of its batch)
// and, for a searchable event, analyses its text into the rows
// indexWriter writes. A zero pdu is an entry the fold skips.
func prepare(r projections.Reader, e englog.Entry) (pdu, error) {
	f, err := projections.ReadPDU(r, e)
	if err != nil {
		return pdu{}, err
	}
	if f.Rejected != "" || f.SoftFailed || f.Outlier {
		return pdu{}, nil
	}
	ev := f.Parsed
	if ev == nil {
		return pdu{}, nil // unknown room version, or malformed: refused before proposing
	}
	out := pdu{eventID: ev.EventID(), roomID: ev.RoomID()}
	if ev.Type() == stateres.MRoomRedaction && ev.Redacts() != "" {
		out.redacts = ev.Redacts()
		return out, nil
	}
	text := searchableText(ev)
	if text == nil {
		return pdu{}, nil
	}
	out.did = docID(out.roomID, e.Offset)
	fields := make([]textField, 0, 3)
	for _, fl := range TextFields {
		if t, ok := text[fl]; ok {
			fields = append(fields, textField{num: fieldNums[fl], analyzer: indexAnalyzer, text: t})
		}
	}
	fields = append(fields, textField{num: fieldNums[fieldSender], analyzer: keywordAnalyzer, text: ev.Sender()})
	if out.doc, err = prepareDoc(out.did, fields); err != nil {
		return pdu{}, err
	}
	return out, nil
}

// apply folds a prepared PDU.
func (p *Projection) apply(w projections.Writer, x *indexWriter, d pdu) error {
	if d.redacts != "" {
		return p.redact(w, x, d.redacts, d.roomID)
	}
	if d.doc == nil {
		return nil
	}
	id, roomID := d.eventID, d.roomID
	dk := projections.Key(pDoc, id)
	if _, ok, err := w.Get(dk); err != nil || ok {
		return err // indexed already (a duplicate)
	}
	pk := projections.Key(pPending, id)
	if r, ok, err := w.Get(pk); err != nil {
		return err
	} else if ok {
		if err := w.Delete(pk); err != nil {
			return err
		}
		if string(r) == roomID {
			return nil // redacted before it arrived
		}
	}
	if err := x.write(d.doc); err != nil {
		return err
	}
	if err := w.Set(projections.Key(pHit, d.did), append(append([]byte(roomID), 0), id...)); err != nil {
		return err
	}
	return w.Set(dk, append([]byte(d.did), roomID...))
}

// redact removes the target's text from the index, when the target is an
// event of the same room; a redaction of an event not seen yet is kept
// until it arrives.
func (p *Projection) redact(w projections.Writer, x *indexWriter, targetID, roomID string) error {
	dk := projections.Key(pDoc, targetID)
	v, ok, err := w.Get(dk)
	if err != nil {
		return err
	}
	if !ok {
		return w.Set(projections.Key(pPending, targetID), []byte(roomID))
	}
	if len(v) < docIDLen {
		return fmt.Errorf("search: bad document row for %s", targetID)
	}
	did, room := string(v[:docIDLen]), string(v[docIDLen:])
	if room != roomID {
		return nil
	}
	if err := x.remove(did); err != nil {
		return err
	}
	if err := w.Delete(projections.Key(pHit, did)); err != nil {
		return err
	}
	return w.Delete(dk)
}

func cut(v []byte) (string, string, bool) {
	for i, c := range v {
		if c == 0 {
			return string(v[:i]), string(v[i+1:]), true
		}
	}
	return string(v), "", false
}

// searchableText returns the text fields of an event the index keeps, or
// nil: the body of an m.room.message, the name of m.room.name, the topic
// of m.room.topic (spec: search keys content.body, content.name,
// content.topic).
func searchableText(ev stateres.PDU) map[string]string {
	var field, key string
	switch ev.Type() {
	case "m.room.message":
		field, key = FieldBody, "body"
	case "m.room.name":
		field, key = FieldName, "name"
	case "m.room.topic":
		field, key = FieldTopic, "topic"
	default:
		return nil
	}
	// The content is canonical JSON (a parsed event's): read the one
	// member instead of decoding the object.
	v := canonicaljson.Get(ev.Content(), key)
	if len(v) == 0 || v[0] != '"' {
		return nil
	}
	s, err := canonicaljson.Unquote(v)
	if err != nil || s == "" {
		return nil
	}
	return map[string]string{field: s}
}

func sortStrings(s []string) { sort.Strings(s) }
