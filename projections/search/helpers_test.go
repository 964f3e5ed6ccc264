package search_test

import (
	"bytes"
	"fmt"

	"github.com/engram-hs/engram/projections"
)

func dumpDiff(a, b projections.Reader) string {
	load := func(r projections.Reader) map[string][]byte {
		m := map[string][]byte{}
		it := r.Iter(nil, nil)
		for ok := it.First(); ok; ok = it.Next() {
			m[string(it.Key())] = append([]byte(nil), it.Value()...)
		}
		it.Close()
		return m
	}
	ma, mb := load(a), load(b)
	out := ""
	n := 0
	for k, v := range ma {
		if w, ok := mb[k]; !ok || !bytes.Equal(v, w) {
			if n < 10 {
				out += fmt.Sprintf("key %q: %x vs %x (present %v)\n", k, v, w, ok)
			}
			n++
		}
	}
	for k := range mb {
		if _, ok := ma[k]; !ok {
			if n < 20 {
				out += fmt.Sprintf("only in b: %q\n", k)
			}
			n++
		}
	}
	return fmt.Sprintf("%d diffs (%d vs %d keys)\n", n, len(ma), len(mb)) + out
}
