package media_test

import (
	"mime"
	"strings"
	"testing"
	"unicode/utf8"

	apimedia "github.com/engram-hs/engram/api/media"
	repomedia "github.com/engram-hs/engram/media"
)

// FuzzParseOpenGraph: any page parses without a panic, into bounded
// values.
func FuzzParseOpenGraph(f *testing.F) {
	f.Add([]byte(`<html><head><title>T</title><meta property="og:title" content="x"><meta name="description" content="d"></head><body></body></html>`))
	f.Add([]byte(`<meta property="og:image" content="/a.png"><meta property=og:url content=http://x>`))
	f.Add([]byte("<title>"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, page []byte) {
		for k, v := range apimedia.ParseOpenGraph(page, 10_000) {
			if !strings.HasPrefix(k, "og:") || len(k) >= 100 || len(v) > 1000 {
				t.Fatalf("%q = %q", k, v)
			}
		}
	})
}

// FuzzContentDisposition: the header always parses back, with the file
// name intact when it is valid UTF-8 without control characters, and
// inline only for the safe types.
func FuzzContentDisposition(f *testing.F) {
	f.Add("image/png", "a.png")
	f.Add("text/html", `x"; filename="evil.html`)
	f.Add("image/png; charset=x", "☃.png")
	f.Add("", "../../etc/passwd")
	f.Fuzz(func(t *testing.T, ct, name string) {
		h := repomedia.ContentDisposition(ct, name)
		disp, params, err := mime.ParseMediaType(h)
		if err != nil {
			t.Fatalf("%q does not parse: %v", h, err)
		}
		if disp != "inline" && disp != "attachment" {
			t.Fatalf("disposition %q", disp)
		}
		if disp == "inline" && (strings.Contains(strings.ToLower(ct), "html") || strings.Contains(strings.ToLower(ct), "svg")) {
			t.Fatalf("%q served inline", ct)
		}
		clean := utf8.ValidString(name) && !strings.ContainsFunc(name, func(r rune) bool { return r < 0x20 || r == 0x7f })
		if clean && name != "" && params["filename"] != name {
			t.Fatalf("name %q came back as %q (%s)", name, params["filename"], h)
		}
	})
}

// FuzzParseMXC: an accepted mxc URI never yields a part that could act as
// a path.
func FuzzParseMXC(f *testing.F) {
	f.Add("mxc://example.org/abcDEF123_-")
	f.Add("mxc://[::1]:8448/x")
	f.Add("mxc://../../etc/passwd")
	f.Add("mxc://a/b/c")
	f.Fuzz(func(t *testing.T, s string) {
		ref, ok := apimedia.ParseMXC(s)
		if !ok {
			return
		}
		for _, p := range []string{ref.Origin, ref.MediaID} {
			if p == "" || strings.ContainsAny(p, "/\\\x00") || p == "." || p == ".." || strings.Contains(ref.MediaID, ".") {
				t.Fatalf("%q accepted as %+v", s, ref)
			}
		}
	})
}
