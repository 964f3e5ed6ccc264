// Package xmatrix signs and checks the X-Matrix Authorization header of
// server-server requests (server-server API, "Request Authentication").
// It is pure: the caller supplies keys and clocks.
package xmatrix

import (
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/engram-hs/engram/stateres/signing"
)

// Params are the parameters of one X-Matrix header.
type Params struct {
	Origin string
	// Destination is empty when the sender did not include it (older
	// servers); recipients accept that.
	Destination string
	Key         string // "ed25519:<version>"
	Sig         string // unpadded base64
}

// ErrMalformed wraps every parse failure.
var ErrMalformed = errors.New("malformed X-Matrix Authorization header")

// maxHeader bounds what Parse reads: a real header is well under 1 KiB.
const maxHeader = 8 << 10

// Parse reads an Authorization header value. It follows RFC 9110 section
// 11.4 as the spec asks: scheme, one or more spaces, comma-separated
// name=value pairs with optional whitespace around commas, case-insensitive
// names, values quoted (with backslash escapes) or bare tokens; bare
// values may contain colons for older senders. Unknown parameters are
// ignored; origin, key and sig are required.
func Parse(header string) (Params, error) {
	var p Params
	if len(header) > maxHeader {
		return p, fmt.Errorf("%w: longer than %d bytes", ErrMalformed, maxHeader)
	}
	scheme, rest, ok := strings.Cut(header, " ")
	if !ok || !strings.EqualFold(scheme, "X-Matrix") {
		return p, fmt.Errorf("%w: the scheme must be X-Matrix", ErrMalformed)
	}
	seen := map[string]bool{}
	i := 0
	skipWS := func() {
		for i < len(rest) && (rest[i] == ' ' || rest[i] == '\t') {
			i++
		}
	}
	for {
		skipWS()
		if i >= len(rest) {
			break
		}
		start := i
		for i < len(rest) && isTokenChar(rest[i]) {
			i++
		}
		name := strings.ToLower(rest[start:i])
		if name == "" {
			return p, fmt.Errorf("%w: expected a parameter name at byte %d", ErrMalformed, start)
		}
		skipWS()
		if i >= len(rest) || rest[i] != '=' {
			return p, fmt.Errorf("%w: parameter %q has no value", ErrMalformed, name)
		}
		i++
		skipWS()
		var val strings.Builder
		if i < len(rest) && rest[i] == '"' {
			i++
			closed := false
			for i < len(rest) {
				c := rest[i]
				if c == '\\' {
					if i+1 >= len(rest) {
						return p, fmt.Errorf("%w: dangling backslash in %q", ErrMalformed, name)
					}
					val.WriteByte(rest[i+1])
					i += 2
					continue
				}
				if c == '"' {
					closed = true
					i++
					break
				}
				val.WriteByte(c)
				i++
			}
			if !closed {
				return p, fmt.Errorf("%w: unterminated quoted value of %q", ErrMalformed, name)
			}
		} else {
			start := i
			for i < len(rest) && (isTokenChar(rest[i]) || rest[i] == ':') {
				i++
			}
			if i == start {
				return p, fmt.Errorf("%w: parameter %q has an empty value", ErrMalformed, name)
			}
			val.WriteString(rest[start:i])
		}
		if seen[name] {
			return p, fmt.Errorf("%w: parameter %q appears twice", ErrMalformed, name)
		}
		seen[name] = true
		switch name {
		case "origin":
			p.Origin = val.String()
		case "destination":
			p.Destination = val.String()
		case "key":
			p.Key = val.String()
		case "sig":
			p.Sig = val.String()
		}
		skipWS()
		if i >= len(rest) {
			break
		}
		if rest[i] != ',' {
			return p, fmt.Errorf("%w: expected a comma at byte %d", ErrMalformed, i)
		}
		i++
	}
	switch {
	case p.Origin == "":
		return p, fmt.Errorf("%w: origin is missing", ErrMalformed)
	case p.Key == "":
		return p, fmt.Errorf("%w: key is missing", ErrMalformed)
	case p.Sig == "":
		return p, fmt.Errorf("%w: sig is missing", ErrMalformed)
	}
	return p, nil
}

// isTokenChar: RFC 9110 tchar.
func isTokenChar(c byte) bool {
	switch {
	case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}

// Format writes the header as the spec asks senders to: one space after
// the scheme, lower-case names, quoted values, no spaces around commas.
func (p Params) Format() string {
	q := func(s string) string { return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"` }
	return "X-Matrix origin=" + q(p.Origin) + ",destination=" + q(p.Destination) + ",key=" + q(p.Key) + ",sig=" + q(p.Sig)
}

// requestJSON is the object whose signature the header carries.
func requestJSON(method, uri, origin, destination string, content []byte) ([]byte, error) {
	obj := map[string]any{"method": method, "uri": uri, "origin": origin}
	if destination != "" {
		obj["destination"] = destination
	}
	if len(content) > 0 {
		if !json.Valid(content) {
			return nil, errors.New("the request body is not JSON")
		}
		obj["content"] = json.RawMessage(content)
	}
	return json.Marshal(obj)
}

// Sign returns the Authorization header for a request from origin to
// destination. uri is the path with its query string, as sent; content
// is the JSON body (nil for none).
func Sign(origin, destination string, key signing.Key, method, uri string, content []byte) (string, error) {
	obj, err := requestJSON(method, uri, origin, destination, content)
	if err != nil {
		return "", err
	}
	signed, err := signing.SignJSON(origin, key.ID, key.Private, obj)
	if err != nil {
		return "", err
	}
	var s struct {
		Signatures map[string]map[string]string `json:"signatures"`
	}
	if err := json.Unmarshal(signed, &s); err != nil {
		return "", err
	}
	return Params{Origin: origin, Destination: destination, Key: key.ID, Sig: s.Signatures[origin][key.ID]}.Format(), nil
}

// Verify checks that p's signature covers the request with pub, the key
// p.Key of p.Origin.
func Verify(p Params, pub ed25519.PublicKey, method, uri string, content []byte) error {
	obj, err := requestJSON(method, uri, p.Origin, p.Destination, content)
	if err != nil {
		return err
	}
	sigs, err := json.Marshal(map[string]map[string]string{p.Origin: {p.Key: p.Sig}})
	if err != nil {
		return err
	}
	// Merge the signature in and let the signing package check it the
	// one way signatures are checked.
	full := append(append(obj[:len(obj)-1:len(obj)-1], `,"signatures":`...), sigs...)
	full = append(full, '}')
	return signing.VerifyJSON(p.Origin, p.Key, pub, full)
}
