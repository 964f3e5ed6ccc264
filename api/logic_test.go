package api

import (
	"testing"
)

func TestTypeMatches(t *testing.T) {
	cases := []struct {
		pattern, typ string
		want         bool
	}{
		{"m.room.message", "m.room.message", true},
		{"m.room.message", "m.room.messages", false},
		{"m.room.*", "m.room.message", true},
		{"m.room.*", "m.roomy", false},
		{"*", "anything", true},
		{"m.*.member", "m.room.member", true},
		{"m.*.member", "m.room.name", false},
		{"*.typing", "m.typing", true},
	}
	for _, c := range cases {
		if got := typeMatches(c.pattern, c.typ); got != c.want {
			t.Errorf("typeMatches(%q, %q) = %v, want %v", c.pattern, c.typ, got, c.want)
		}
	}
}

func TestParseToken(t *testing.T) {
	cases := []struct {
		tok  string
		want uint64
		ok   bool
	}{
		{"s42", 42, true}, {"t7", 7, true}, {"13", 13, true}, {"s5_extra", 5, true},
		{"", 0, false}, {"s", 0, false}, {"sx1", 0, false}, {"s-1", 0, false},
	}
	for _, c := range cases {
		got, err := parseToken(c.tok)
		if (err == nil) != c.ok || got != c.want {
			t.Errorf("parseToken(%q) = %d, %v; want %d ok=%v", c.tok, got, err, c.want, c.ok)
		}
	}
}

func TestValidLocalpart(t *testing.T) {
	for l, want := range map[string]bool{"alice": true, "a.b_c=d-e/f+g": true, "Alice": false, "a b": false, "": false, "é": false} {
		if validLocalpart(l) != want {
			t.Errorf("validLocalpart(%q) != %v", l, want)
		}
	}
}
