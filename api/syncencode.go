package api

import (
	"encoding/json"
	"maps"
	"slices"
)

// syncEvent is an event of a /sync response as syncClientEvent encodes
// it: compact JSON, escaped as json.Marshal escapes, so encodeSync copies
// it as it is. json.Marshal would scan each one again (it compacts what a
// Marshaler returns): 29% of the /sync handler's CPU with 300 syncers.
type syncEvent []byte

// MarshalJSON gives the event to json.Marshal as it is.
func (e syncEvent) MarshalJSON() ([]byte, error) { return e, nil }

// encodeSync is json.Marshal(resp) for a /sync response, byte for byte
// (TestIncrementalSyncCachedMatchesUncached), with its syncEvents copied
// rather than scanned: it walks the response's maps (keys in order) and
// slices, and leaves every other value to json.Marshal.
func encodeSync(resp map[string]any) ([]byte, error) {
	return appendSyncJSON(make([]byte, 0, syncEventBytes(resp)+4096), resp)
}

// syncEventBytes is the length of the syncEvents in v: most of a busy
// response, whose buffer is sized once rather than grown (which allocated
// five times the response).
func syncEventBytes(v any) int {
	n := 0
	switch v := v.(type) {
	case syncEvent:
		return len(v)
	case map[string]any:
		for _, e := range v {
			n += syncEventBytes(e)
		}
	case []any:
		for _, e := range v {
			n += syncEventBytes(e)
		}
	}
	return n
}

func appendSyncJSON(dst []byte, v any) ([]byte, error) {
	var err error
	switch v := v.(type) {
	case syncEvent:
		return append(dst, v...), nil
	case map[string]any:
		if v == nil {
			return append(dst, "null"...), nil
		}
		dst = append(dst, '{')
		for i, k := range slices.Sorted(maps.Keys(v)) {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = append(appendJSONString(dst, k), ':')
			if dst, err = appendSyncJSON(dst, v[k]); err != nil {
				return nil, err
			}
		}
		return append(dst, '}'), nil
	case []any:
		if v == nil {
			return append(dst, "null"...), nil
		}
		dst = append(dst, '[')
		for i, e := range v {
			if i > 0 {
				dst = append(dst, ',')
			}
			if dst, err = appendSyncJSON(dst, e); err != nil {
				return nil, err
			}
		}
		return append(dst, ']'), nil
	}
	raw, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	return append(dst, raw...), nil
}
