package search

import (
	"unicode"
	"unicode/utf8"

	"github.com/blevesearch/bleve/v2/analysis"
)

// hangulFilter marks runs of Hangul as CJK text for the bigram filter
// after it. bleve's tokenizer types Han and Kana as ideographic but Hangul
// as letters (Unicode word boundaries keep a Korean word-group, "내일서울에서"
// with its particles, as one token), so without this a Korean word is
// found only when it is a whole space-separated group. A token mixing
// Hangul and other letters is split at the run boundaries.
type hangulFilter struct{}

func isHangul(r rune) bool { return unicode.Is(unicode.Hangul, r) }

func (hangulFilter) Filter(input analysis.TokenStream) analysis.TokenStream {
	i := 0
	for i < len(input) && (input[i].Type != analysis.AlphaNumeric || !containsHangul(input[i].Term)) {
		i++
	}
	if i == len(input) {
		return input // no Hangul: most text, left as it is without a copy
	}
	out := make(analysis.TokenStream, 0, len(input)+1)
	out = append(out, input[:i]...)
	input = input[i:]
	for _, tok := range input {
		if tok.Type != analysis.AlphaNumeric || !containsHangul(tok.Term) {
			out = append(out, tok)
			continue
		}
		start := 0
		for start < len(tok.Term) {
			r, _ := utf8.DecodeRune(tok.Term[start:])
			h := isHangul(r)
			end := start
			for end < len(tok.Term) {
				r2, n := utf8.DecodeRune(tok.Term[end:])
				if isHangul(r2) != h {
					break
				}
				end += n
			}
			typ := analysis.AlphaNumeric
			if h {
				typ = analysis.Ideographic
			}
			out = append(out, &analysis.Token{
				Term: tok.Term[start:end], Start: tok.Start + start, End: tok.Start + end,
				Position: tok.Position, Type: typ, KeyWord: tok.KeyWord,
			})
			start = end
		}
	}
	return out
}

func containsHangul(b []byte) bool {
	for len(b) > 0 {
		r, n := utf8.DecodeRune(b)
		if isHangul(r) {
			return true
		}
		b = b[n:]
	}
	return false
}
