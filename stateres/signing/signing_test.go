package signing

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"testing"

	"github.com/engram-hs/engram/stateres/canonicaljson"
)

// The spec's test vectors (appendices, "Cryptographic Test Vectors").
const (
	vectorSeed   = "YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1"
	vectorServer = "domain"
	vectorKeyID  = "ed25519:1"
)

func vectorKey(t testing.TB) ed25519.PrivateKey {
	t.Helper()
	keys, err := DecodeKeyFile([]byte("ed25519 1 " + vectorSeed + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	return keys[0].Private
}

func TestSpecJSONSigningVectors(t *testing.T) {
	key := vectorKey(t)
	cases := []struct{ in, want string }{
		{`{}`, `{"signatures":{"domain":{"ed25519:1":"K8280/U9SSy9IVtjBuVeLr+HpOB4BQFWbg+UZaADMtTdGYI7Geitb76LTrr5QV/7Xg4ahLwYGYZzuHGZKM5ZAQ"}}}`},
		{`{"one": 1, "two": "Two"}`, `{"one":1,"signatures":{"domain":{"ed25519:1":"KqmLSbO39/Bzb0QIYE82zqLwsA+PDzYIpIRA2sRQ4sL53+sN6/fpNSoqE7BP7vBZhG6kYdD13EIMJpvhJI+6Bw"}},"two":"Two"}`},
	}
	for _, c := range cases {
		got, err := SignJSON(vectorServer, vectorKeyID, key, []byte(c.in))
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != c.want {
			t.Errorf("SignJSON(%s) =\n%s\nwant\n%s", c.in, got, c.want)
		}
		pub := key.Public().(ed25519.PublicKey)
		if err := VerifyJSON(vectorServer, vectorKeyID, pub, []byte(c.want)); err != nil {
			t.Errorf("VerifyJSON of the spec's vector: %v", err)
		}
	}
}

func TestSignMergesAndKeepsUnsigned(t *testing.T) {
	a, _ := GenerateKey(rand.Reader, "a")
	b, _ := GenerateKey(rand.Reader, "b")
	obj := []byte(`{"x":1,"unsigned":{"age":3},"signatures":{"other.org":{"ed25519:z":"zz"}}}`)
	s1, err := SignJSON("one.org", a.ID, a.Private, obj)
	if err != nil {
		t.Fatal(err)
	}
	s2, err := SignJSON("two.org", b.ID, b.Private, s1)
	if err != nil {
		t.Fatal(err)
	}
	if err := VerifyJSON("one.org", a.ID, a.Public(), s2); err != nil {
		t.Errorf("first signature lost: %v", err)
	}
	if err := VerifyJSON("two.org", b.ID, b.Public(), s2); err != nil {
		t.Errorf("second signature: %v", err)
	}
	if Lookup(canonicaljson.Get(s2, "signatures"), "other.org", "ed25519:z") != "zz" {
		t.Errorf("foreign signature dropped: %s", s2)
	}
	if !bytes.Contains(s2, []byte(`"unsigned":{"age":3}`)) {
		t.Errorf("unsigned dropped: %s", s2)
	}
	// unsigned is not covered: changing it keeps the signature valid.
	changed := bytes.Replace(s2, []byte(`"age":3`), []byte(`"age":4`), 1)
	if err := VerifyJSON("one.org", a.ID, a.Public(), changed); err != nil {
		t.Errorf("unsigned change broke the signature: %v", err)
	}
	tampered := bytes.Replace(s2, []byte(`"x":1`), []byte(`"x":2`), 1)
	if err := VerifyJSON("one.org", a.ID, a.Public(), tampered); !errors.Is(err, ErrBadSignature) {
		t.Errorf("tampered object: err = %v, want ErrBadSignature", err)
	}
	if err := VerifyJSON("three.org", a.ID, a.Public(), s2); !errors.Is(err, ErrNoSignature) {
		t.Errorf("missing server: err = %v, want ErrNoSignature", err)
	}
	if err := VerifyJSON("one.org", a.ID, b.Public(), s2); !errors.Is(err, ErrBadSignature) {
		t.Errorf("wrong key: err = %v, want ErrBadSignature", err)
	}
	if got := KeyIDs(canonicaljson.Get(s2, "signatures"), "one.org"); len(got) != 1 || got[0] != a.ID {
		t.Errorf("KeyIDs = %v", got)
	}
}

func TestKeyFile(t *testing.T) {
	k1, err := GenerateKey(rand.Reader, "abc_1")
	if err != nil {
		t.Fatal(err)
	}
	k2, _ := GenerateKey(rand.Reader, "Z9")
	keys, err := DecodeKeyFile(EncodeKeyFile(k1, k2))
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 2 || keys[0].ID != "ed25519:abc_1" || !keys[0].Private.Equal(k1.Private) || !keys[1].Private.Equal(k2.Private) {
		t.Errorf("key file round trip changed the keys")
	}
	if _, err := GenerateKey(rand.Reader, "bad:id"); err == nil {
		t.Error("key version with ':' accepted")
	}
	// The spec's vector seed has non-zero trailing bits, so compare the seed
	// bytes, not the text.
	seed, _ := DecodeBase64(vectorSeed)
	again, err := DecodeKeyFile(EncodeKeyFile(Key{ID: "ed25519:1", Private: vectorKey(t)}))
	if err != nil || !bytes.Equal(again[0].Private.Seed(), seed) {
		t.Errorf("seed not preserved: %v", err)
	}
	for _, bad := range []string{"", "rsa 1 " + vectorSeed, "ed25519 1", "ed25519 1 AAAA", "ed25519 a:b " + vectorSeed} {
		if _, err := DecodeKeyFile([]byte(bad)); err == nil {
			t.Errorf("DecodeKeyFile(%q) accepted", bad)
		}
	}
}

func TestBase64(t *testing.T) {
	for in, want := range map[string]string{"": "", "f": "Zg", "fo": "Zm8", "foo": "Zm9v", "foob": "Zm9vYg", "fooba": "Zm9vYmE", "foobar": "Zm9vYmFy"} {
		if got := EncodeBase64([]byte(in)); got != want {
			t.Errorf("EncodeBase64(%q) = %s, want %s", in, got, want)
		}
		if got, err := DecodeBase64(want); err != nil || string(got) != in {
			t.Errorf("DecodeBase64(%s) = %q, %v", want, got, err)
		}
	}
	if got, err := DecodeBase64("Zg=="); err != nil || string(got) != "f" {
		t.Errorf("padded input rejected: %v", err)
	}
	if got, err := DecodeBase64("-_8"); err != nil || !bytes.Equal(got, []byte{0xfb, 0xff}) {
		t.Errorf("URL-safe input: %x, %v", got, err)
	}
}
