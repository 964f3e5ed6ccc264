package search

import (
	"bytes"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"syscall"
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
			a = bleveIndexAnalyzer
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

// processCPU is the process's user and system CPU seconds so far: on a
// loaded machine a benchmark's wall time per op says little.
func processCPU() float64 {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return float64(ru.Utime.Sec+ru.Stime.Sec) + float64(ru.Utime.Usec+ru.Stime.Usec)/1e6
}

// BenchmarkPrepareDoc lays out the rows of 64-byte messages of common
// words (as bench generate writes) and of analysisTexts, with prepareDoc
// and with bleve's pieces (bleveRows, how prepareDoc did it before): run
// with -benchmem; cpu-ns/op is the process's CPU per document, GC
// included.
func BenchmarkPrepareDoc(b *testing.B) {
	words := strings.Fields("the a to and of in is it you that for on was with he as I his they be at one have this from or had by hot word but what some we can out other were all there when up use your how said deploy merge review lunch coffee meeting release bug fix server matrix room sync log")
	rng := rand.New(rand.NewPCG(1, 2))
	var bodies []string
	for range 200 {
		var s strings.Builder
		for s.Len() < 64 {
			if s.Len() > 0 {
				s.WriteByte(' ')
			}
			s.WriteString(words[rng.IntN(len(words))])
		}
		bodies = append(bodies, s.String())
	}
	bodies = append(bodies, analysisTexts...)
	docs := make([][]textField, len(bodies))
	for i, body := range bodies {
		docs[i] = []textField{
			{num: fieldNums[FieldBody], analyzer: indexAnalyzer, text: body},
			{num: fieldNums[fieldSender], analyzer: keywordAnalyzer, text: fmt.Sprintf("@u%d:example.org", i%50)},
		}
	}
	id := docID("!room:example.org", 1)
	for _, impl := range []struct {
		name string
		rows func(string, []textField) *docRows
	}{
		{"prepareDoc", func(id string, f []textField) *docRows {
			d, err := prepareDoc(id, f)
			if err != nil {
				b.Fatal(err)
			}
			return d
		}},
		{"bleveRows", bleveRows},
	} {
		b.Run(impl.name, func(b *testing.B) {
			b.ReportAllocs()
			cpu0 := processCPU()
			n := 0
			for ; b.Loop(); n++ {
				impl.rows(id, docs[n%len(docs)])
			}
			b.ReportMetric((processCPU()-cpu0)*1e9/float64(n), "cpu-ns/op")
		})
	}
}
