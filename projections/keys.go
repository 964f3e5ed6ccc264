package projections

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"strings"
)

// Keyspace. The log owns Pebble keys starting with 'L'; projections own
// those starting with 'P':
//
//	'P' 0x00 name                   -> meta (JSON): versions, generations, checkpoints
//	'P' name 0x00 gen(uint32 BE) key -> the projection's own key/value pairs
//
// A name is non-empty and never starts with or contains 0x00, so a meta key
// can never be confused with a data key and the data of "a" never overlaps
// the data of "ab" (0x00 sorts before every other byte).
//
// Generations let a projection be rebuilt beside the one that serves: the
// rebuild folds a fresh generation (in a scratch store of its own, from
// which it is ingested: scratch.go) and one batch switches the meta to it
// and deletes the old one.
const prefixByte = 'P'

func validateName(name string) error {
	if name == "" || strings.IndexByte(name, 0) >= 0 {
		return fmt.Errorf("projections: invalid projection name %q: it must be non-empty and contain no NUL byte", name)
	}
	return nil
}

func metaKey(name string) []byte {
	k := make([]byte, 0, 2+len(name))
	k = append(k, prefixByte, 0)
	return append(k, name...)
}

func dataPrefix(name string, gen uint32) []byte {
	k := make([]byte, 0, 1+len(name)+1+4)
	k = append(k, prefixByte)
	k = append(k, name...)
	k = append(k, 0)
	return binary.BigEndian.AppendUint32(k, gen)
}

// prefixEnd is the smallest key greater than every key with the prefix.
func prefixEnd(prefix []byte) []byte {
	end := append([]byte(nil), prefix...)
	for i := len(end) - 1; i >= 0; i-- {
		end[i]++
		if end[i] != 0 {
			return end[:i+1]
		}
	}
	return nil // the prefix was all 0xff: no upper bound
}

// meta is what the engine remembers about one projection. It is written in
// the same batch as every batch of the projection's writes, so the
// checkpoint (Applied / ShadowApplied) never disagrees with the data.
type meta struct {
	// The generation that serves readers, the schema version it was
	// written with and the last log offset folded into it.
	Version int    `json:"version"`
	Gen     uint32 `json:"gen"`
	Applied uint64 `json:"applied"`

	// A rebuild in progress (ShadowGen != 0): a generation being filled
	// from offset 1 with ShadowVersion's code.
	ShadowVersion int    `json:"shadow_version,omitempty"`
	ShadowGen     uint32 `json:"shadow_gen,omitempty"`
	ShadowApplied uint64 `json:"shadow_applied,omitempty"`

	// NextGen is the next unused generation number; numbers are never
	// reused so a leftover of an abandoned generation can't leak into a
	// new one.
	NextGen uint32 `json:"next_gen"`
}

func (m meta) encode() []byte {
	b, err := json.Marshal(m)
	if err != nil {
		panic(err) // a struct of integers always marshals
	}
	return b
}

func decodeMeta(b []byte) (meta, error) {
	var m meta
	if err := json.Unmarshal(b, &m); err != nil {
		return meta{}, err
	}
	if m.Gen == 0 || m.NextGen <= m.Gen || (m.ShadowGen != 0 && m.NextGen <= m.ShadowGen) {
		return meta{}, fmt.Errorf("inconsistent generations %+v", m)
	}
	return m, nil
}
