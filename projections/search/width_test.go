package search

import (
	"slices"
	"testing"

	"github.com/blevesearch/bleve/v2/analysis"
	"github.com/blevesearch/bleve/v2/analysis/lang/cjk"
	"github.com/blevesearch/bleve/v2/analysis/token/lowercase"
	"github.com/blevesearch/bleve/v2/analysis/tokenizer/unicode"
)

// bleveChain is an analyzer with bleve's own width filter, otherwise
// indexAnalyzer (bigrams with single characters) or queryAnalyzer: the
// reference widthFilter must match.
func bleveChain(singles bool) analysis.Analyzer {
	return &analysis.DefaultAnalyzer{
		Tokenizer:    unicode.NewUnicodeTokenizer(),
		TokenFilters: []analysis.TokenFilter{cjk.NewCJKWidthFilter(), lowercase.NewLowerCaseFilter(), hangulFilter{}, cjk.NewCJKBigramFilter(singles)},
	}
}

var bleveIndexAnalyzer = bleveChain(true)

// analysisTexts are varied text: ASCII, case, full-width ASCII, half-width
// Katakana with voiced marks, Han, Kana, Hangul, emoji, URLs, numbers,
// invalid UTF-8.
var analysisTexts = []string{
	"hello world hello",
	"Hello HELLO hello, world! World?",
	"",
	"   \t\n ",
	"東京タワーに行きました",
	"我们明天去北京天安门广场",
	"내일서울에서만나요 see you 내일",
	"Ｆｕｌｌ　ｗｉｄｔｈ ＡＢＣ１２３ ｶﾀｶﾅ ｶﾞｷﾞｸﾞ ﾊﾟﾋﾟ ｳﾞ",
	"mixedＷＩＤＴＨword ａｂｃdef",
	"emoji 🎉🎉 party 🚀 launch 👩‍👩‍👧 \uFEFF bom \uFFFD",
	"see https://example.org/a/b?c=d&e=f#g and mailto:someone@example.com",
	"pi is 3.14159, e is 2.71828; 1,000,000 and v1.2.3",
	"don't can't won't l'été naïve café",
	"bad \xff\xfe bytes \xef\xbc and ok\xef",
	"mixed 日本語 text with ひらがな and 한국어 and English",
}

// TestWidthFilterIsBleves: the analyzers' tokens, with widthFilter, are
// those of the same chain with bleve's width filter.
func TestWidthFilterIsBleves(t *testing.T) {
	for _, singles := range []bool{true, false} {
		ours := queryAnalyzer
		if singles {
			ours = indexAnalyzer
		}
		ref := bleveChain(singles)
		for _, text := range analysisTexts {
			got, want := ours.Analyze([]byte(text)), ref.Analyze([]byte(text))
			if !slices.EqualFunc(got, want, func(a, b *analysis.Token) bool { return a.String() == b.String() }) {
				t.Errorf("singles %v, %q:\n got %v\nwant %v", singles, text, got, want)
			}
		}
	}
}
