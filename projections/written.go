package projections

import (
	"hash/maphash"
	"math/bits"
)

// writtenKeys remembers every key written to one generation since it was
// created empty, in about 10 bits per key (Bloom filters: no false
// negatives, about 1% false positives). A rebuild folds into a fresh
// shadow generation, and most of its reads are a fold's "is this new?"
// checks of keys that were never written there (an event seen before, a
// transaction ID taken, a search document indexed); a filter that says
// "never written" answers them without searching the LSM, which costs a
// table iterator per level for each absent key (measured: 11-16 µs each,
// a sixth of a rebuild's CPU). A key the filter may hold is read as
// before, so what a fold reads, and therefore writes, is the same with or
// without it; the random hash seed changes only which reads take the
// long way.
//
// Only a generation this process created, and whose every write went
// through the filter, may have one; every shadow generation is such a
// one, as a rebuild cut short starts over (scratch.go).
type writtenKeys struct {
	gen     uint32
	seed    maphash.Seed
	filters []bloom // the last one takes new keys; each twice the last
}

// bloom is one fixed-size filter; n counts the keys added, up to capacity.
type bloom struct {
	words    []uint64
	n, limit int
}

const (
	bloomBitsPerKey = 10
	bloomProbes     = 7
	bloomFirstKeys  = 1 << 16
)

func newWrittenKeys(gen uint32) *writtenKeys {
	return &writtenKeys{gen: gen, seed: maphash.MakeSeed()}
}

func newBloom(keys int) bloom {
	return bloom{words: make([]uint64, (keys*bloomBitsPerKey+63)/64), limit: keys}
}

func (f *bloom) add(h uint64) {
	m := uint64(len(f.words) * 64)
	h1, h2 := h, bits.RotateLeft64(h, 32)|1
	for i := uint64(0); i < bloomProbes; i++ {
		b := (h1 + i*h2) % m
		f.words[b/64] |= 1 << (b % 64)
	}
	f.n++
}

func (f *bloom) mayHold(h uint64) bool {
	m := uint64(len(f.words) * 64)
	h1, h2 := h, bits.RotateLeft64(h, 32)|1
	for i := uint64(0); i < bloomProbes; i++ {
		b := (h1 + i*h2) % m
		if f.words[b/64]&(1<<(b%64)) == 0 {
			return false
		}
	}
	return true
}

func (w *writtenKeys) add(key []byte) {
	if len(w.filters) == 0 || w.filters[len(w.filters)-1].n >= w.filters[len(w.filters)-1].limit {
		next := bloomFirstKeys
		if len(w.filters) > 0 {
			next = 2 * w.filters[len(w.filters)-1].limit
		}
		w.filters = append(w.filters, newBloom(next))
	}
	w.filters[len(w.filters)-1].add(maphash.Bytes(w.seed, key))
}

// mayHold is false when key was certainly never added.
func (w *writtenKeys) mayHold(key []byte) bool {
	h := maphash.Bytes(w.seed, key)
	for i := len(w.filters) - 1; i >= 0; i-- {
		if w.filters[i].mayHold(h) {
			return true
		}
	}
	return false
}
