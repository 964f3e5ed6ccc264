package projections

import (
	"encoding/json"
	"fmt"
)

// Helpers the concrete projections share to lay out their keyspaces. A
// record key is a one-byte record type followed by its parts separated by
// 0x00, so that every part of a key is a prefix range of its own (Matrix
// identifiers never contain NUL).

// Key builds a record key: prefix, then parts joined by 0x00.
func Key(prefix byte, parts ...string) []byte {
	n := 1
	for _, p := range parts {
		n += len(p) + 1
	}
	k := make([]byte, 0, n)
	k = append(k, prefix)
	for i, p := range parts {
		if i > 0 {
			k = append(k, 0)
		}
		k = append(k, p...)
	}
	return k
}

// PrefixEnd is the smallest key greater than every key starting with p
// (nil when p is all 0xff: no upper bound).
func PrefixEnd(p []byte) []byte { return prefixEnd(p) }

// GetJSON reads and decodes the JSON record at k; nil when absent.
func GetJSON[T any](r Reader, k []byte) (*T, error) {
	b, ok, err := r.Get(k)
	if err != nil || !ok {
		return nil, err
	}
	v := new(T)
	if err := json.Unmarshal(b, v); err != nil {
		return nil, fmt.Errorf("projections: corrupt record %q: %w", k, err)
	}
	return v, nil
}

// PutJSON encodes v as JSON at k.
func PutJSON(w Writer, k []byte, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return w.Set(k, b)
}

// ListJSON decodes every JSON record whose key starts with prefix, in key
// order, keeping those keep accepts (all when keep is nil).
func ListJSON[T any](r Reader, prefix []byte, keep func(*T) bool) ([]T, error) {
	it := r.Iter(prefix, PrefixEnd(prefix))
	var out []T
	for ok := it.First(); ok; ok = it.Next() {
		var v T
		if err := json.Unmarshal(it.Value(), &v); err != nil {
			it.Close()
			return nil, fmt.Errorf("projections: corrupt record %q: %w", it.Key(), err)
		}
		if keep == nil || keep(&v) {
			out = append(out, v)
		}
	}
	return out, it.Close()
}
