package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/engram-hs/engram/stateres/canonicaljson"
)

// readContentByMap is how readContent read a body before its one-pass
// path: decoded into a map and marshalled back. The oracle it must agree
// with.
func readContentByMap(body string) (json.RawMessage, error) {
	b := []byte(body)
	if len(b) == 0 {
		b = []byte("{}")
	}
	var obj map[string]json.RawMessage
	if err := decodeJSON(b, &obj); err != nil {
		return nil, err
	}
	return mustJSON(obj), nil
}

// TestReadContentMatchesMapDecoding: for every body a client may send
// (ordinary, spaced, escaped, floats, -0, a key twice at the top or
// nested, not an object, not JSON, not UTF-8, empty), readContent gives
// the same error, or content the event builder makes the same canonical
// JSON of in both canonical modes (strict rooms v6+, lenient v1-v5), as
// the map decoding it replaces.
func TestReadContentMatchesMapDecoding(t *testing.T) {
	for _, body := range []string{
		`{"msgtype":"m.text","body":"hello"}`,
		" { \"b\" : [ 1 , 2 ] ,\n\"a\" : { \"y\" : null , \"x\" : true } } ",
		`{"body":"<b>&amp;</b> \u003c \u2028 \ud83d\ude00 \"q\" \\ \/"}`,
		`{"n":1.5}`,
		`{"n":1.0,"m":-0,"e":1e3}`,
		`{"n":9007199254740993}`,
		`{"a":1,"a":2}`,
		`{"a":{"b":1,"b":2}}`,
		`[1,2]`,
		`"x"`,
		`null`,
		`{"a":`,
		"{\"a\":\"\xff\"}",
		``,
		`{}`,
	} {
		want, wantErr := readContentByMap(body)
		got, err := readContent(httptest.NewRequest("PUT", "/send", strings.NewReader(body)))
		if (err != nil) != (wantErr != nil) {
			t.Errorf("%q: error %v, the map decoding's %v", body, err, wantErr)
			continue
		}
		if err != nil {
			var a, b *matrixError
			if !errors.As(err, &a) || !errors.As(wantErr, &b) || a.Code != b.Code || a.Status != b.Status {
				t.Errorf("%q: error %v, the map decoding's %v", body, err, wantErr)
			}
			continue
		}
		for _, strict := range []bool{true, false} {
			w, werr := canonicaljson.Canonicalize(want, strict)
			g, gerr := canonicaljson.Canonicalize(got, strict)
			if (werr != nil) != (gerr != nil) || !bytes.Equal(w, g) {
				t.Errorf("%q strict=%v: builds %s (%v), the map decoding %s (%v)", body, strict, g, gerr, w, werr)
			}
		}
	}
}

// BenchmarkReadContent: a typical message body read for PUT /send, one
// canonicalising pass against the map decoding.
func BenchmarkReadContent(b *testing.B) {
	body := `{"msgtype":"m.text","body":"a message of about sixty-four bytes, like a short chat line"}`
	b.Run("canonical", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := readContent(httptest.NewRequest("PUT", "/send", strings.NewReader(body))); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("map", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			httptest.NewRequest("PUT", "/send", strings.NewReader(body)) // the same request cost
			if _, err := readContentByMap(body); err != nil {
				b.Fatal(err)
			}
		}
	})
}
