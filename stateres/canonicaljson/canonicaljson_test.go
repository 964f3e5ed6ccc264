package canonicaljson

import (
	"bytes"
	"encoding/json"
	"errors"
	"math/big"
	"reflect"
	"strconv"
	"testing"
)

func decodeNumbers(b []byte) (any, error) {
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	var v any
	if err := d.Decode(&v); err != nil {
		return nil, err
	}
	return v, nil
}

// sameValue compares decoded JSON, numbers by value (lenient mode rewrites
// 1.0 as 1 and -0 as 0).
func sameValue(a, b any) bool {
	switch x := a.(type) {
	case json.Number:
		y, ok := b.(json.Number)
		if !ok {
			return false
		}
		fx, _, ex := big.ParseFloat(string(x), 10, 256, big.ToNearestEven)
		fy, _, ey := big.ParseFloat(string(y), 10, 256, big.ToNearestEven)
		if ex != nil || ey != nil {
			return string(x) == string(y)
		}
		if fx.Cmp(fy) == 0 {
			return true
		}
		// Lenient mode reads a float as an IEEE double (as Synapse's
		// Python does), so 1000000000000000.001 becomes the integer
		// 1000000000000000: the same double.
		dx, errX := strconv.ParseFloat(string(x), 64)
		dy, errY := strconv.ParseFloat(string(y), 64)
		return errX == nil && errY == nil && dx == dy
	case []any:
		y, ok := b.([]any)
		if !ok || len(x) != len(y) {
			return false
		}
		for i := range x {
			if !sameValue(x[i], y[i]) {
				return false
			}
		}
		return true
	case map[string]any:
		y, ok := b.(map[string]any)
		if !ok || len(x) != len(y) {
			return false
		}
		for k, v := range x {
			if w, ok := y[k]; !ok || !sameValue(v, w) {
				return false
			}
		}
		return true
	default:
		return reflect.DeepEqual(a, b)
	}
}

// The examples of the spec's "Canonical JSON" section (appendices.md).
func TestSpecExamples(t *testing.T) {
	cases := []struct{ in, want string }{
		{`{}`, `{}`},
		{`{"one": 1, "two": "Two"}`, `{"one":1,"two":"Two"}`},
		{`{"b": "2", "a": "1"}`, `{"a":"1","b":"2"}`},
		{`{"b":"2","a":"1"}`, `{"a":"1","b":"2"}`},
		{`{
    "auth": {
        "success": true,
        "mxid": "@john.doe:example.com",
        "profile": {
            "display_name": "John Doe",
            "three_pids": [
                {"medium": "email", "address": "john.doe@example.org"},
                {"medium": "msisdn", "address": "123456789"}
            ]
        }
    }
}`, `{"auth":{"mxid":"@john.doe:example.com","profile":{"display_name":"John Doe","three_pids":[{"address":"john.doe@example.org","medium":"email"},{"address":"123456789","medium":"msisdn"}]},"success":true}}`},
		{`{"a": "日本語"}`, `{"a":"日本語"}`},
		{`{"本": 2, "日": 1}`, `{"日":1,"本":2}`},
		{`{"a": "\u65E5"}`, `{"a":"日"}`},
		{`{"a": null}`, `{"a":null}`},
	}
	for _, c := range cases {
		for _, strict := range []bool{false, true} {
			got, err := Canonicalize([]byte(c.in), strict)
			if err != nil {
				t.Fatalf("Canonicalize(%s, strict=%v): %v", c.in, strict, err)
			}
			if string(got) != c.want {
				t.Errorf("Canonicalize(%s, strict=%v) = %s, want %s", c.in, strict, got, c.want)
			}
		}
	}
	// The spec's number example holds in lenient mode; strict mode (room v6+
	// enforcement) rejects the float and the negative zero as the oracle
	// implementations do.
	got, err := Canonicalize([]byte(`{"a": -0, "b": 1e10}`), false)
	if err != nil || string(got) != `{"a":0,"b":10000000000}` {
		t.Errorf("lenient numbers = %s, %v", got, err)
	}
	if _, err := Canonicalize([]byte(`{"a": -0, "b": 1e10}`), true); !errors.Is(err, ErrNotCanonical) {
		t.Errorf("strict numbers: err = %v, want ErrNotCanonical", err)
	}
}

func TestEscapes(t *testing.T) {
	cases := []struct{ in, want string }{
		{`"\u0000\u0001\u001f\b\t\n\f\r\"\\\/"`, `"\u0000\u0001\u001f\b\t\n\f\r\"\\/"`},
		{`"\u007f\u2028"`, "\"\x7f\u2028\""},
		{`"\ud83d\ude00"`, `"😀"`},
		{`"<>&"`, `"<>&"`},
	}
	for _, c := range cases {
		got, err := Canonicalize([]byte(c.in), true)
		if err != nil || string(got) != c.want {
			t.Errorf("Canonicalize(%s) = %s, %v; want %s", c.in, got, err, c.want)
		}
	}
}

func TestRejects(t *testing.T) {
	both := []string{
		``, `{`, `{"a":1,}`, `[1,]`, `{"a" 1}`, `{"a":1,"a":2}`, `{"b":1,"a":2,"b":3}`,
		`"\ud83d"`, `"\ude00x"`, "\"\xff\"", "\"a\x01\"", `01`, `1.`, `1e`, `-`, `tru`, `{} {}`,
		`"\x"`, `{1:2}`,
	}
	for _, in := range both {
		for _, strict := range []bool{false, true} {
			if out, err := Canonicalize([]byte(in), strict); err == nil {
				t.Errorf("Canonicalize(%q, %v) = %s, want error", in, strict, out)
			}
		}
	}
	strictOnly := []string{`1.5`, `1.0`, `1e3`, `-0`, `9007199254740992`, `-9007199254740992`, `123456789012345678901234`}
	for _, in := range strictOnly {
		if _, err := Canonicalize([]byte(in), true); !errors.Is(err, ErrNotCanonical) {
			t.Errorf("strict Canonicalize(%s): err = %v, want ErrNotCanonical", in, err)
		}
		if _, err := Canonicalize([]byte(in), false); err != nil {
			t.Errorf("lenient Canonicalize(%s): %v", in, err)
		}
	}
	for _, in := range []string{`9007199254740991`, `-9007199254740991`, `0`} {
		if got, err := Canonicalize([]byte(in), true); err != nil || string(got) != in {
			t.Errorf("strict Canonicalize(%s) = %s, %v", in, got, err)
		}
	}
	deep := bytes.Repeat([]byte("["), MaxDepth+1)
	if _, err := Canonicalize(deep, false); err == nil {
		t.Error("nesting beyond MaxDepth accepted")
	}
}

func TestLenientNumbers(t *testing.T) {
	cases := map[string]string{`1.0`: `1`, `1.5`: `1.5`, `1E2`: `100`, `12345678901234567890`: `12345678901234567890`, `1e400`: `1e400`}
	for in, want := range cases {
		got, err := Canonicalize([]byte(in), false)
		if err != nil || string(got) != want {
			t.Errorf("lenient %s = %s, %v; want %s", in, got, err, want)
		}
	}
}

func TestMarshal(t *testing.T) {
	got, err := Marshal(map[string]any{"z": []int{1, 2}, "a": "<b>", "m": map[string]bool{"y": true, "x": false}})
	if err != nil || string(got) != `{"a":"<b>","m":{"x":false,"y":true},"z":[1,2]}` {
		t.Errorf("Marshal = %s, %v", got, err)
	}
}

func TestReaders(t *testing.T) {
	obj := []byte(`{"a":[1,{"x":"}"}],"b\"c":"d\\e\u0001","n":-3}`)
	var keys []string
	if err := ObjectEach(obj, func(k, v []byte) error { keys = append(keys, string(k)+"="+string(v)); return nil }); err != nil {
		t.Fatal(err)
	}
	want := []string{`"a"=[1,{"x":"}"}]`, `"b\"c"="d\\e\u0001"`, `"n"=-3`}
	if !reflect.DeepEqual(keys, want) {
		t.Errorf("ObjectEach = %q, want %q", keys, want)
	}
	s, err := Unquote(Get(obj, `b"c`))
	if err == nil {
		t.Errorf("Get with an escaped key should not match a raw name, got %q", s)
	}
	s, err = Unquote([]byte(`"d\\e\u0001"`))
	if err != nil || s != "d\\e\x01" {
		t.Errorf("Unquote = %q, %v", s, err)
	}
	n, err := Int(Get(obj, "n"))
	if err != nil || n != -3 {
		t.Errorf("Int = %d, %v", n, err)
	}
}

func FuzzCanonicalize(f *testing.F) {
	for _, s := range []string{`{}`, `{"b":[1,2,{"d":null,"c":true}],"a":"\u00e9\n"}`, `[-0,1e10,1.5,"\ud83d\ude00"]`, `{"a":9007199254740992}`} {
		f.Add([]byte(s), false)
		f.Add([]byte(s), true)
	}
	f.Fuzz(func(t *testing.T, in []byte, strict bool) {
		out, err := Canonicalize(in, strict)
		if err != nil {
			return
		}
		// Whatever encoding/json's grammar rejects we must reject too (it
		// accepts duplicate keys and bad UTF-8, which we reject, so the
		// converse does not hold).
		if !json.Valid(in) {
			t.Fatalf("accepted %q, which is not valid JSON", in)
		}
		again, err := Canonicalize(out, strict)
		if err != nil {
			t.Fatalf("canonical output %s rejected: %v", out, err)
		}
		if !bytes.Equal(out, again) {
			t.Fatalf("not idempotent: %s -> %s", out, again)
		}
		// The canonical form denotes the same value as the input.
		a, errA := decodeNumbers(in)
		b, errB := decodeNumbers(out)
		if errB != nil {
			t.Fatalf("output %s does not parse: %v", out, errB)
		}
		if errA != nil {
			t.Fatalf("accepted %q, which encoding/json cannot decode: %v", in, errA)
		}
		if !sameValue(a, b) {
			t.Fatalf("value changed: %s -> %s", in, out)
		}
	})
}

// Unquote decodes every escape the canonicaliser accepts, surrogate pairs
// included, and refuses what it refuses.
func TestUnquoteEscapes(t *testing.T) {
	for in, want := range map[string]string{
		`"plain"`:           "plain",
		`"\ud83d\ude00"`:    "\U0001F600",
		`"\u003c\/\t"`:      "</\t",
		`"caf\u00e9 \"q\""`: "café \"q\"",
	} {
		if got, err := Unquote([]byte(in)); err != nil || got != want {
			t.Errorf("Unquote(%s) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{`"\ud83d"`, `"\x"`, `"a"b"`, `"\u12"`, `"abc`} {
		if got, err := Unquote([]byte(in)); err == nil {
			t.Errorf("Unquote(%s) = %q, want an error", in, got)
		}
	}
}
