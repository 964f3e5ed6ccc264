package search

import (
	"bytes"
	"unicode/utf8"

	"github.com/blevesearch/bleve/v2/analysis"
	"github.com/blevesearch/bleve/v2/analysis/lang/cjk"
)

// widthFilter is bleve's CJK width filter (full-width ASCII and half-width
// Katakana to their usual forms) for the tokens it changes only. bleve's
// rebuilds every token's term from its runes, two allocations a token,
// though it changes only runes U+FF01 to U+FF9F: in valid UTF-8 those
// begin with byte 0xEF, and a valid token without that byte comes out as
// it went in. (An invalid one does not: bleve's turns its bad bytes into
// U+FFFD, so it still goes through bleve's.)
type widthFilter struct{ cjk analysis.TokenFilter }

func newWidthFilter() widthFilter { return widthFilter{cjk.NewCJKWidthFilter()} }

func (f widthFilter) Filter(input analysis.TokenStream) analysis.TokenStream {
	for i, tok := range input {
		if bytes.IndexByte(tok.Term, 0xef) >= 0 || !utf8.Valid(tok.Term) {
			f.cjk.Filter(input[i : i+1])
		}
	}
	return input
}
