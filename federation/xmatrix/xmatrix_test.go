package xmatrix

import (
	"crypto/rand"
	"errors"
	"testing"

	"github.com/engram-hs/engram/stateres/signing"
)

func TestParseForms(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Params
	}{
		{`X-Matrix origin="a.example",destination="b.example",key="ed25519:k1",sig="c2ln"`, Params{"a.example", "b.example", "ed25519:k1", "c2ln"}},
		// Unquoted tokens, colons in bare values, mixed case names, spaces
		// and tabs around commas, several spaces after the scheme.
		{"X-Matrix   Origin=a.example:8448 ,\tKEY=ed25519:k1 , sig=c2ln", Params{"a.example:8448", "", "ed25519:k1", "c2ln"}},
		{`x-matrix origin="a\"b",key="ed25519:k1",sig="s\\ig",unknown="x"`, Params{`a"b`, "", "ed25519:k1", `s\ig`}},
		{`X-Matrix sig="c2ln",key="ed25519:k1",origin=a`, Params{"a", "", "ed25519:k1", "c2ln"}},
	} {
		got, err := Parse(tc.in)
		if err != nil {
			t.Fatalf("%q: %v", tc.in, err)
		}
		if got != tc.want {
			t.Fatalf("%q: got %+v want %+v", tc.in, got, tc.want)
		}
	}
}

func TestParseRejects(t *testing.T) {
	for _, in := range []string{
		``,
		`Bearer abc`,
		`X-Matrix`,
		`X-Matrix origin="a",key="ed25519:k"`, // no sig
		`X-Matrix key="ed25519:k",sig="x"`,    // no origin
		`X-Matrix origin="a,key="ed25519:k",sig="x"`,     // unterminated
		`X-Matrix origin="a" key="ed25519:k",sig="x"`,    // no comma
		`X-Matrix origin=,key="ed25519:k",sig="x"`,       // empty value
		`X-Matrix origin="a",origin="b",key="k",sig="x"`, // duplicate
		`X-Matrix ="a",key="k",sig="x"`,
		`X-Matrix origin="a\`,
	} {
		if _, err := Parse(in); !errors.Is(err, ErrMalformed) {
			t.Fatalf("%q: got %v, want ErrMalformed", in, err)
		}
	}
}

func TestSignVerify(t *testing.T) {
	key, _ := signing.GenerateKey(rand.Reader, "k1")
	body := []byte(`{"pdus":[],"edus":[{"edu_type":"m.typing"}]}`)
	h, err := Sign("a.example", "b.example", key, "PUT", "/_matrix/federation/v1/send/1?x=y", body)
	if err != nil {
		t.Fatal(err)
	}
	p, err := Parse(h)
	if err != nil {
		t.Fatal(err)
	}
	if err := Verify(p, key.Public(), "PUT", "/_matrix/federation/v1/send/1?x=y", body); err != nil {
		t.Fatalf("verify: %v", err)
	}
	// Any change to what is signed breaks it.
	for _, c := range []struct{ m, u, b string }{
		{"POST", "/_matrix/federation/v1/send/1?x=y", string(body)},
		{"PUT", "/_matrix/federation/v1/send/2?x=y", string(body)},
		{"PUT", "/_matrix/federation/v1/send/1?x=y", `{"pdus":[]}`},
	} {
		if err := Verify(p, key.Public(), c.m, c.u, []byte(c.b)); err == nil {
			t.Fatalf("%+v verified", c)
		}
	}
	p2 := p
	p2.Destination = "c.example"
	if err := Verify(p2, key.Public(), "PUT", "/_matrix/federation/v1/send/1?x=y", body); err == nil {
		t.Fatal("changed destination verified")
	}
	other, _ := signing.GenerateKey(rand.Reader, "k1")
	if err := Verify(p, other.Public(), "PUT", "/_matrix/federation/v1/send/1?x=y", body); err == nil {
		t.Fatal("wrong key verified")
	}
	// A GET has no content.
	h, _ = Sign("a.example", "b.example", key, "GET", "/_matrix/federation/v1/version", nil)
	p, _ = Parse(h)
	if err := Verify(p, key.Public(), "GET", "/_matrix/federation/v1/version", nil); err != nil {
		t.Fatal(err)
	}
}

// Parse must never panic and what it accepts must round-trip through
// Format.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		`X-Matrix origin="a.example",destination="b.example",key="ed25519:k1",sig="c2ln"`,
		"X-Matrix origin=a:1 ,\tkey=ed25519:k , sig=x",
		`X-Matrix origin="a\"b",key="k",sig="s\\"`,
		`X-Matrix origin="`,
		"",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := Parse(s)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error not ErrMalformed: %v", err)
			}
			return
		}
		q, err := Parse(p.Format())
		if err != nil {
			t.Fatalf("Format of %+v does not parse: %v", p, err)
		}
		if p.Destination == "" {
			q.Destination = ""
		}
		if q != p {
			t.Fatalf("round trip: %+v -> %+v", p, q)
		}
	})
}
