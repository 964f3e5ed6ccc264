package canonicaljson

import (
	"errors"
	"strconv"
)

// The readers below walk JSON that is already canonical (the output of
// Canonicalize): no whitespace, valid UTF-8, no duplicate keys. They slice the
// input instead of decoding it into maps, which keeps event parsing cheap.

var errMalformed = errors.New("canonical json: malformed input to reader (was it canonicalised?)")

// skipValue returns the index just past the value starting at b[i].
func skipValue(b []byte, i int) (int, error) {
	if i >= len(b) {
		return 0, errMalformed
	}
	switch b[i] {
	case '"':
		return skipString(b, i)
	case '{', '[':
		depth := 0
		for i < len(b) {
			switch b[i] {
			case '{', '[':
				depth++
				i++
			case '}', ']':
				depth--
				i++
				if depth == 0 {
					return i, nil
				}
			case '"':
				var err error
				if i, err = skipString(b, i); err != nil {
					return 0, err
				}
			default:
				i++
			}
		}
		return 0, errMalformed
	default:
		for i < len(b) && b[i] != ',' && b[i] != '}' && b[i] != ']' {
			i++
		}
		return i, nil
	}
}

func skipString(b []byte, i int) (int, error) {
	i++
	for i < len(b) {
		switch b[i] {
		case '\\':
			i += 2
		case '"':
			return i + 1, nil
		default:
			i++
		}
	}
	return 0, errMalformed
}

// ObjectEach calls fn for every member of the canonical JSON object obj, in
// key order. key is the encoded key including its quotes (canonical keys of
// plain ASCII names such as "type" encode to themselves), value is the raw
// canonical value. fn must not retain key or value beyond obj's lifetime.
func ObjectEach(obj []byte, fn func(key, value []byte) error) error {
	if len(obj) < 2 || obj[0] != '{' || obj[len(obj)-1] != '}' {
		return errors.New("canonical json: not an object")
	}
	i := 1
	end := len(obj) - 1
	for i < end {
		ke, err := skipString(obj, i)
		if err != nil || ke >= end || obj[ke] != ':' {
			return errMalformed
		}
		ve, err := skipValue(obj, ke+1)
		if err != nil || ve > end {
			return errMalformed
		}
		if err := fn(obj[i:ke], obj[ke+1:ve]); err != nil {
			return err
		}
		i = ve
		if i < end {
			if obj[i] != ',' {
				return errMalformed
			}
			i++
		}
	}
	return nil
}

// ArrayEach calls fn for every element of the canonical JSON array arr.
func ArrayEach(arr []byte, fn func(value []byte) error) error {
	if len(arr) < 2 || arr[0] != '[' || arr[len(arr)-1] != ']' {
		return errors.New("canonical json: not an array")
	}
	i := 1
	end := len(arr) - 1
	for i < end {
		ve, err := skipValue(arr, i)
		if err != nil || ve > end {
			return errMalformed
		}
		if err := fn(arr[i:ve]); err != nil {
			return err
		}
		i = ve
		if i < end {
			if arr[i] != ',' {
				return errMalformed
			}
			i++
		}
	}
	return nil
}

// Get returns the raw value of key in the canonical object obj, or nil.
func Get(obj []byte, key string) []byte {
	var found []byte
	_ = ObjectEach(obj, func(k, v []byte) error {
		if len(k) == len(key)+2 && string(k[1:len(k)-1]) == key {
			found = v
			return errStop
		}
		return nil
	})
	return found
}

var errStop = errors.New("stop")

// Unquote decodes a canonical JSON string value (including its quotes).
func Unquote(s []byte) (string, error) {
	if len(s) < 2 || s[0] != '"' || s[len(s)-1] != '"' {
		return "", errors.New("canonical json: not a string")
	}
	body := s[1 : len(s)-1]
	simple := true
	for _, c := range body {
		if c == '\\' || c == '"' {
			simple = false
			break
		}
	}
	if simple {
		return string(body), nil
	}
	// Escapes are rare here (canonical form writes UTF-8 directly); decode
	// them with the canonicaliser's own string decoder.
	e := encoder{in: s}
	out, err := e.decodeString(nil)
	if err != nil || e.pos != len(s) {
		return "", errMalformed
	}
	return string(out), nil
}

// Int parses a canonical JSON integer value.
func Int(v []byte) (int64, error) {
	return strconv.ParseInt(string(v), 10, 64)
}
