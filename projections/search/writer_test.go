package search

import (
	"bytes"
	"fmt"
	"math"
	"slices"
	"strings"
	"testing"

	"github.com/blevesearch/bleve/v2/analysis"
	"github.com/blevesearch/bleve/v2/index/upsidedown"
	index "github.com/blevesearch/bleve_index_api"
	"google.golang.org/protobuf/proto"
)

// bleveRows lays out a document's rows with bleve's own pieces
// (analysis.TokenFrequency, upside_down's row types, one allocation
// each) and bleve's width filter (bleveChain), as prepareDoc did before
// it shared its allocations: the reference prepareDoc must match byte for
// byte.
func bleveRows(docID string, fields []textField) *docRows {
	id := []byte(docID)
	out := &docRows{}
	var row upsidedown.BackIndexRowValue
	for _, f := range fields {
		a := f.analyzer
		if a == indexAnalyzer {
			a = bleveChain(true)
		}
		tokens := a.Analyze([]byte(f.text))
		freqs := analysis.TokenFrequency(tokens, nil, index.IndexField)
		norm := float32(1.0 / math.Sqrt(float64(len(tokens))))
		var terms []string
		for t, tf := range freqs {
			terms = append(terms, t)
			tfr := upsidedown.NewTermFrequencyRow(tf.Term, f.num, id, uint64(tf.Frequency()), norm)
			out.terms = append(out.terms, [2][]byte{indexKey(tfr.Key()), tfr.Value()})
			out.dict = append(out.dict, string(upsidedown.NewDictionaryRow(tf.Term, f.num, 0).Key()))
		}
		slices.Sort(terms)
		row.TermsEntries = append(row.TermsEntries, &upsidedown.BackIndexTermsEntry{Field: proto.Uint32(uint32(f.num)), Terms: terms})
	}
	slices.SortFunc(row.TermsEntries, func(a, b *upsidedown.BackIndexTermsEntry) int {
		return int(a.GetField()) - int(b.GetField())
	})
	v, err := proto.MarshalOptions{Deterministic: true}.Marshal(&row)
	if err != nil {
		panic(err)
	}
	out.back = [2][]byte{indexKey(upsidedown.NewBackIndexRow(id, nil, nil).Key()), v}
	return out
}

// sortedRows are a document's term rows and dictionary keys in key order
// (bleve's map visits terms in no set order; the batch sorts them).
func sortedRows(d *docRows) ([]string, []string) {
	var terms []string
	for _, kv := range d.terms {
		terms = append(terms, fmt.Sprintf("%x=%x", kv[0], kv[1]))
	}
	slices.Sort(terms)
	dict := slices.Clone(d.dict)
	slices.Sort(dict)
	return terms, dict
}

// TestPrepareDocWritesBleveRows: over varied text (analysisTexts, and
// repeated words), prepareDoc's rows are the ones bleve's pieces lay out.
func TestPrepareDocWritesBleveRows(t *testing.T) {
	texts := append(slices.Clone(analysisTexts),
		"a a a a a a a a a a b",
		strings.Repeat("long text with many repeated words ", 50))
	senders := []string{"@alice:example.org", "@Bob:例え.jp", ""}
	for i, text := range texts {
		sender := senders[i%len(senders)]
		for _, num := range []uint16{fieldNums[FieldBody], fieldNums[FieldTopic]} {
			fields := []textField{
				{num: num, analyzer: indexAnalyzer, text: text},
				{num: fieldNums[fieldSender], analyzer: keywordAnalyzer, text: sender},
			}
			id := docID(fmt.Sprintf("!room%d:example.org", i), uint64(1000+i))
			got, err := prepareDoc(id, fields)
			if err != nil {
				t.Fatal(err)
			}
			want := bleveRows(id, fields)
			gt, gd := sortedRows(got)
			wt, wd := sortedRows(want)
			if !slices.Equal(gt, wt) {
				t.Errorf("%q: term rows\n got %v\nwant %v", text, gt, wt)
			}
			if !slices.Equal(gd, wd) {
				t.Errorf("%q: dictionary keys\n got %q\nwant %q", text, gd, wd)
			}
			if !bytes.Equal(got.back[0], want.back[0]) || !bytes.Equal(got.back[1], want.back[1]) {
				t.Errorf("%q: back index row %x=%x, want %x=%x", text, got.back[0], got.back[1], want.back[0], want.back[1])
			}
		}
	}
}
