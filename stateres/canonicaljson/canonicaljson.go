// Package canonicaljson implements the Canonical JSON encoding of the Matrix
// specification (appendices, "Canonical JSON"): object keys sorted by Unicode
// codepoint, no insignificant whitespace, strings in UTF-8 with only the
// escapes the grammar allows, and integers only.
//
// Two modes exist because room versions 1-5 predate the integer rules:
//   - strict (room v6+, and everything Engram produces itself): any number
//     with a fraction or an exponent is a float and rejected, as are "-0" and
//     integers outside [-(2^53)+1, 2^53-1];
//   - lenient (verifying events of rooms v1-v5): such numbers are accepted;
//     a fraction/exponent number whose value is an integer in the safe range is
//     written as that integer (the spec's example turns -0 into 0 and 1e10
//     into 10000000000), any other number token is kept verbatim so that
//     canonicalising stays idempotent.
//
// Objects with duplicate keys are rejected in both modes: two parsers that
// pick different duplicates would see different events behind one signature.
package canonicaljson

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"unicode/utf16"
	"unicode/utf8"
)

// MaxDepth bounds the nesting of arrays and objects. The limit protects the
// recursive encoder from stack exhaustion on hostile input; no legitimate
// event comes anywhere near it.
const MaxDepth = 256

// MaxSafeInteger is the largest integer canonical JSON allows, 2^53-1.
const MaxSafeInteger = 1<<53 - 1

// Error reports why input is not acceptable JSON, with the byte offset.
type Error struct {
	Offset int
	Msg    string
}

func (e *Error) Error() string {
	return fmt.Sprintf("canonical json: %s at byte %d", e.Msg, e.Offset)
}

// ErrNotCanonical is wrapped by errors about values that are valid JSON but
// that strict canonical JSON forbids (floats, out-of-range integers, -0).
var ErrNotCanonical = errors.New("value not allowed in canonical JSON")

// strictError is an *Error that also matches errors.Is(err, ErrNotCanonical).
type strictError struct{ inner Error }

func (e *strictError) Error() string { return e.inner.Error() }
func (e *strictError) Unwrap() error { return ErrNotCanonical }

// Canonicalize returns the canonical encoding of the JSON text raw.
func Canonicalize(raw []byte, strict bool) ([]byte, error) {
	return Append(make([]byte, 0, len(raw)), raw, strict)
}

// Append appends the canonical encoding of raw to dst.
func Append(dst, raw []byte, strict bool) ([]byte, error) {
	e := encoder{in: raw, strict: strict}
	e.skipSpace()
	out, err := e.value(dst, 0)
	if err != nil {
		return dst, err
	}
	e.skipSpace()
	if e.pos != len(e.in) {
		return dst, e.fail("trailing data after JSON value")
	}
	return out, nil
}

// Marshal encodes v with encoding/json and canonicalises the result
// strictly, so that whatever Engram produces is valid in every room version.
func Marshal(v any) ([]byte, error) {
	raw, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	return Canonicalize(raw, true)
}

// member locates one "key":value pair written to the output of an object.
type member struct {
	keyStart, keyEnd int // decoded key bytes in encoder.keys
	start, end       int // the encoded pair in the output
}

type encoder struct {
	in      []byte
	pos     int
	strict  bool
	keys    []byte   // decoded keys of the objects being encoded
	members []member // a stack shared by nested objects
	scratch []byte
}

func (e *encoder) fail(msg string) error {
	return &Error{Offset: e.pos, Msg: msg}
}

func (e *encoder) failStrict(msg string) error {
	return &strictError{Error{Offset: e.pos, Msg: msg}}
}

func (e *encoder) skipSpace() {
	for e.pos < len(e.in) {
		switch e.in[e.pos] {
		case ' ', '\t', '\n', '\r':
			e.pos++
		default:
			return
		}
	}
}

func (e *encoder) literal(dst []byte, word string) ([]byte, error) {
	if !bytes.HasPrefix(e.in[e.pos:], []byte(word)) {
		return dst, e.fail("invalid literal")
	}
	e.pos += len(word)
	return append(dst, word...), nil
}

func (e *encoder) value(dst []byte, depth int) ([]byte, error) {
	if e.pos >= len(e.in) {
		return dst, e.fail("unexpected end of input")
	}
	switch c := e.in[e.pos]; {
	case c == '{':
		return e.object(dst, depth+1)
	case c == '[':
		return e.array(dst, depth+1)
	case c == '"':
		s, err := e.decodeString(e.scratch[:0])
		e.scratch = s
		if err != nil {
			return dst, err
		}
		return appendString(dst, s), nil
	case c == 't':
		return e.literal(dst, "true")
	case c == 'f':
		return e.literal(dst, "false")
	case c == 'n':
		return e.literal(dst, "null")
	case c == '-' || (c >= '0' && c <= '9'):
		return e.number(dst)
	default:
		return dst, e.fail(fmt.Sprintf("unexpected character %q", c))
	}
}

func (e *encoder) array(dst []byte, depth int) ([]byte, error) {
	if depth > MaxDepth {
		return dst, e.fail("nesting too deep")
	}
	e.pos++ // [
	dst = append(dst, '[')
	e.skipSpace()
	if e.pos < len(e.in) && e.in[e.pos] == ']' {
		e.pos++
		return append(dst, ']'), nil
	}
	for {
		var err error
		e.skipSpace()
		if dst, err = e.value(dst, depth); err != nil {
			return dst, err
		}
		e.skipSpace()
		if e.pos >= len(e.in) {
			return dst, e.fail("unterminated array")
		}
		switch e.in[e.pos] {
		case ',':
			e.pos++
			dst = append(dst, ',')
		case ']':
			e.pos++
			return append(dst, ']'), nil
		default:
			return dst, e.fail("expected ',' or ']' in array")
		}
	}
}

func (e *encoder) object(dst []byte, depth int) ([]byte, error) {
	if depth > MaxDepth {
		return dst, e.fail("nesting too deep")
	}
	e.pos++ // {
	dst = append(dst, '{')
	bodyStart := len(dst)
	base := len(e.members)
	keysBase := len(e.keys)
	defer func() {
		e.members = e.members[:base]
		e.keys = e.keys[:keysBase]
	}()
	e.skipSpace()
	if e.pos < len(e.in) && e.in[e.pos] == '}' {
		e.pos++
		return append(dst, '}'), nil
	}
	sorted := true
	for {
		e.skipSpace()
		if e.pos >= len(e.in) || e.in[e.pos] != '"' {
			return dst, e.fail("expected string key in object")
		}
		keyStart := len(e.keys)
		var err error
		if e.keys, err = e.decodeString(e.keys); err != nil {
			return dst, err
		}
		m := member{keyStart: keyStart, keyEnd: len(e.keys), start: len(dst)}
		dst = appendString(dst, e.keys[keyStart:])
		e.skipSpace()
		if e.pos >= len(e.in) || e.in[e.pos] != ':' {
			return dst, e.fail("expected ':' after object key")
		}
		e.pos++
		dst = append(dst, ':')
		e.skipSpace()
		if dst, err = e.value(dst, depth); err != nil {
			return dst, err
		}
		m.end = len(dst)
		if n := len(e.members); n > base {
			prev := e.members[n-1]
			switch bytes.Compare(e.keys[prev.keyStart:prev.keyEnd], e.keys[m.keyStart:m.keyEnd]) {
			case 0:
				return dst, e.fail("duplicate object key")
			case 1:
				sorted = false
			}
		}
		e.members = append(e.members, m)
		e.skipSpace()
		if e.pos >= len(e.in) {
			return dst, e.fail("unterminated object")
		}
		if e.in[e.pos] == ',' {
			e.pos++
			dst = append(dst, ',')
			continue
		}
		if e.in[e.pos] != '}' {
			return dst, e.fail("expected ',' or '}' in object")
		}
		e.pos++
		break
	}
	if !sorted {
		// UTF-8 byte order is codepoint order, so comparing the decoded key
		// bytes sorts by codepoint as the spec requires.
		ms := e.members[base:]
		slices.SortFunc(ms, func(a, b member) int {
			return bytes.Compare(e.keys[a.keyStart:a.keyEnd], e.keys[b.keyStart:b.keyEnd])
		})
		for i := 1; i < len(ms); i++ {
			if bytes.Equal(e.keys[ms[i-1].keyStart:ms[i-1].keyEnd], e.keys[ms[i].keyStart:ms[i].keyEnd]) {
				return dst, e.fail("duplicate object key")
			}
		}
		body := append([]byte(nil), dst[bodyStart:]...)
		dst = dst[:bodyStart]
		for i, m := range ms {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = append(dst, body[m.start-bodyStart:m.end-bodyStart]...)
		}
	}
	return append(dst, '}'), nil
}

// number validates a JSON number token and writes its canonical form.
func (e *encoder) number(dst []byte) ([]byte, error) {
	start := e.pos
	in := e.in
	i := e.pos
	if in[i] == '-' {
		i++
	}
	if i >= len(in) {
		return dst, e.fail("truncated number")
	}
	switch {
	case in[i] == '0':
		i++
	case in[i] >= '1' && in[i] <= '9':
		for i < len(in) && in[i] >= '0' && in[i] <= '9' {
			i++
		}
	default:
		return dst, e.fail("invalid number")
	}
	integer := true
	if i < len(in) && in[i] == '.' {
		integer = false
		i++
		d := i
		for i < len(in) && in[i] >= '0' && in[i] <= '9' {
			i++
		}
		if i == d {
			e.pos = i
			return dst, e.fail("invalid number: no digits after '.'")
		}
	}
	if i < len(in) && (in[i] == 'e' || in[i] == 'E') {
		integer = false
		i++
		if i < len(in) && (in[i] == '+' || in[i] == '-') {
			i++
		}
		d := i
		for i < len(in) && in[i] >= '0' && in[i] <= '9' {
			i++
		}
		if i == d {
			e.pos = i
			return dst, e.fail("invalid number: no digits in exponent")
		}
	}
	tok := in[start:i]
	if integer {
		if string(tok) == "-0" {
			if e.strict {
				return dst, e.failStrict("-0 is not allowed")
			}
			e.pos = i
			return append(dst, '0'), nil
		}
		if e.strict {
			digits := len(tok)
			if tok[0] == '-' {
				digits--
			}
			n, err := strconv.ParseInt(string(tok), 10, 64)
			if digits > 16 || err != nil || n > MaxSafeInteger || n < -MaxSafeInteger {
				return dst, e.failStrict("integer outside [-(2^53)+1, 2^53-1]")
			}
		}
		e.pos = i
		return append(dst, tok...), nil
	}
	if e.strict {
		return dst, e.failStrict("floats are not allowed")
	}
	e.pos = i
	f, err := strconv.ParseFloat(string(tok), 64)
	if err == nil && f == math.Trunc(f) && math.Abs(f) <= MaxSafeInteger {
		return strconv.AppendInt(dst, int64(f), 10), nil
	}
	return append(dst, tok...), nil
}

// decodeString decodes the JSON string at e.pos and appends its UTF-8 bytes to
// dst. Invalid UTF-8 and unpaired surrogate escapes are rejected, because the
// output must be UTF-8.
func (e *encoder) decodeString(dst []byte) ([]byte, error) {
	in := e.in
	i := e.pos + 1
	for {
		// Copy the run of bytes that need no attention.
		j := i
		for j < len(in) && in[j] != '"' && in[j] != '\\' && in[j] >= 0x20 && in[j] < utf8.RuneSelf {
			j++
		}
		dst = append(dst, in[i:j]...)
		i = j
		if i >= len(in) {
			e.pos = i
			return dst, e.fail("unterminated string")
		}
		c := in[i]
		switch {
		case c == '"':
			e.pos = i + 1
			return dst, nil
		case c < 0x20:
			e.pos = i
			return dst, e.fail("control character in string")
		case c >= utf8.RuneSelf:
			r, size := utf8.DecodeRune(in[i:])
			if r == utf8.RuneError && size == 1 {
				e.pos = i
				return dst, e.fail("invalid UTF-8 in string")
			}
			dst = append(dst, in[i:i+size]...)
			i += size
		default: // backslash
			if i+1 >= len(in) {
				e.pos = i
				return dst, e.fail("unterminated escape")
			}
			esc := in[i+1]
			i += 2
			switch esc {
			case '"', '\\', '/':
				dst = append(dst, esc)
			case 'b':
				dst = append(dst, '\b')
			case 'f':
				dst = append(dst, '\f')
			case 'n':
				dst = append(dst, '\n')
			case 'r':
				dst = append(dst, '\r')
			case 't':
				dst = append(dst, '\t')
			case 'u':
				r, ok := hex4(in, i)
				if !ok {
					e.pos = i
					return dst, e.fail("invalid \\u escape")
				}
				i += 4
				if utf16.IsSurrogate(r) {
					var r2 rune = -1
					if i+6 <= len(in) && in[i] == '\\' && in[i+1] == 'u' {
						r2, ok = hex4(in, i+2)
						if !ok {
							r2 = -1
						}
					}
					combined := utf16.DecodeRune(r, r2)
					if combined == utf8.RuneError {
						e.pos = i
						return dst, e.fail("unpaired surrogate in \\u escape")
					}
					i += 6
					r = combined
				}
				dst = utf8.AppendRune(dst, r)
			default:
				e.pos = i - 1
				return dst, e.fail("invalid escape")
			}
		}
	}
}

func hex4(in []byte, i int) (rune, bool) {
	if i+4 > len(in) {
		return 0, false
	}
	var r rune
	for _, c := range in[i : i+4] {
		r <<= 4
		switch {
		case c >= '0' && c <= '9':
			r |= rune(c - '0')
		case c >= 'a' && c <= 'f':
			r |= rune(c - 'a' + 10)
		case c >= 'A' && c <= 'F':
			r |= rune(c - 'A' + 10)
		default:
			return 0, false
		}
	}
	return r, true
}

const hexDigits = "0123456789abcdef"

// appendString writes s (valid UTF-8) as a canonical JSON string: only '"',
// '\\' and control characters are escaped, with the short escapes where the
// grammar has one and \u00xx (lower-case hex) otherwise.
func appendString(dst, s []byte) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' {
			continue
		}
		dst = append(dst, s[start:i]...)
		switch c {
		case '"', '\\':
			dst = append(dst, '\\', c)
		case '\b':
			dst = append(dst, '\\', 'b')
		case '\t':
			dst = append(dst, '\\', 't')
		case '\n':
			dst = append(dst, '\\', 'n')
		case '\f':
			dst = append(dst, '\\', 'f')
		case '\r':
			dst = append(dst, '\\', 'r')
		default:
			dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
		}
		start = i + 1
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

// AppendString appends s as a canonical JSON string. s must be valid UTF-8.
func AppendString(dst []byte, s string) []byte {
	return appendString(dst, []byte(s))
}
