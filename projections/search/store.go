package search

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/blevesearch/bleve/v2/index/upsidedown"
	"google.golang.org/protobuf/proto"

	"github.com/blevesearch/bleve/v2/registry"
	store "github.com/blevesearch/upsidedown_store_api"

	"github.com/engram-hs/engram/projections"
)

// The bleve index lives in this projection's own Pebble keyspace, under
// prefix pIndex, through bleve's key/value store seam (the upside_down
// index type over a store.KVStore). Why not a bleve index directory under
// data_dir: a directory has its own durability and its own checkpoint,
// which can disagree with the engine's after a crash, is invisible to
// engram verify (digests) and to a cluster's other nodes, and is not
// rebuilt by the engine. Over the keyspace, every index write rides in the
// batch that carries the projection's checkpoint: rebuild, verify and
// read-your-writes work as for every other projection.
//
// The store reads and writes the pending batch while Apply runs (kvStore.w),
// and a Pebble snapshot of the serving generation otherwise. The two never
// overlap: Projection.mu excludes queries while Apply uses the index.

const storeName = "engram_projection"

func init() {
	if err := registry.RegisterKVStore(storeName, newKVStore); err != nil {
		panic(err)
	}
}

// kvStore is the store.KVStore bleve opens; the config carries the
// *kvStore built by the projection (configKey).
type kvStore struct {
	mo store.MergeOperator

	mu sync.Mutex
	// w is the pending batch of the Apply in progress, nil outside Apply.
	w projections.Writer
	// snapshot opens a consistent view of the serving generation for a
	// query (nil until the projection is wired to its handle).
	snapshot func() (projections.Reader, func())
}

const configKey = "engram_store"

func newKVStore(mo store.MergeOperator, config map[string]interface{}) (store.KVStore, error) {
	s, ok := config[configKey].(*kvStore)
	if !ok {
		return nil, errors.New("search: bleve store opened without its projection")
	}
	s.mo = mo
	return s, nil
}

func indexKey(k []byte) []byte {
	out := make([]byte, 0, 1+len(k))
	return append(append(out, pIndex), k...)
}

func (s *kvStore) Reader() (store.KVReader, error) {
	s.mu.Lock()
	w, snap := s.w, s.snapshot
	s.mu.Unlock()
	if w != nil {
		return &kvReader{r: w, release: func() {}}, nil
	}
	if snap == nil {
		return nil, errors.New("search: index read before the projection was registered")
	}
	r, release := snap()
	return &kvReader{r: r, release: release}, nil
}

func (s *kvStore) Writer() (store.KVWriter, error) { return &kvWriter{s: s}, nil }
func (s *kvStore) Close() error                    { return nil }

type kvReader struct {
	r       projections.Reader
	release func()
}

func (r *kvReader) Get(key []byte) ([]byte, error) {
	v, ok, err := r.r.Get(indexKey(key))
	if err != nil || !ok {
		return nil, err
	}
	return v, nil
}

func (r *kvReader) MultiGet(keys [][]byte) ([][]byte, error) {
	out := make([][]byte, len(keys))
	for i, k := range keys {
		v, err := r.Get(k)
		if err != nil {
			return nil, err
		}
		out[i] = v
	}
	return out, nil
}

func (r *kvReader) PrefixIterator(prefix []byte) store.KVIterator {
	lo := indexKey(prefix)
	return newKVIterator(r.r, lo, projections.PrefixEnd(lo))
}

func (r *kvReader) RangeIterator(start, end []byte) store.KVIterator {
	lo := indexKey(start)
	var hi []byte
	if end == nil {
		hi = projections.PrefixEnd([]byte{pIndex})
	} else {
		hi = indexKey(end)
	}
	return newKVIterator(r.r, lo, hi)
}

func (r *kvReader) Close() error {
	r.release()
	return nil
}

type kvIterator struct {
	it projections.Iterator
	lo []byte
}

func newKVIterator(r projections.Reader, lo, hi []byte) *kvIterator {
	it := &kvIterator{it: r.Iter(lo, hi), lo: lo}
	it.it.First()
	return it
}

func (i *kvIterator) Seek(key []byte) {
	k := indexKey(key)
	if bytes.Compare(k, i.lo) < 0 {
		k = i.lo
	}
	i.it.SeekGE(k)
}
func (i *kvIterator) Next()       { i.it.Next() }
func (i *kvIterator) Valid() bool { return i.it.Valid() }
func (i *kvIterator) Key() []byte {
	if !i.it.Valid() {
		return nil
	}
	return i.it.Key()[1:]
}
func (i *kvIterator) Value() []byte {
	if !i.it.Valid() {
		return nil
	}
	return i.it.Value()
}
func (i *kvIterator) Current() ([]byte, []byte, bool) {
	if !i.it.Valid() {
		return nil, nil, false
	}
	return i.it.Key()[1:], i.it.Value(), true
}
func (i *kvIterator) Close() error { return i.it.Close() }

type kvWriter struct{ s *kvStore }

func (w *kvWriter) NewBatch() store.KVBatch { return store.NewEmulatedBatch(w.s.mo) }
func (w *kvWriter) NewBatchEx(o store.KVBatchOptions) ([]byte, store.KVBatch, error) {
	return make([]byte, o.TotalBytes), w.NewBatch(), nil
}
func (w *kvWriter) Close() error { return nil }

// ExecuteBatch writes into the Apply's pending batch. Outside Apply (bleve
// opening an existing index for a query re-writes its mapping) a write is
// allowed only when it changes nothing: the keyspace is written by Apply
// alone.
func (w *kvWriter) ExecuteBatch(b store.KVBatch) error {
	eb, ok := b.(*store.EmulatedBatch)
	if !ok {
		return fmt.Errorf("search: foreign batch type %T", b)
	}
	w.s.mu.Lock()
	pw := w.s.w
	w.s.mu.Unlock()
	if pw == nil {
		return w.checkUnchanged(eb)
	}
	// Merges first, then the other operations, as bleve's own stores do.
	// The merged keys are visited in sorted order so the batch's contents
	// do not depend on map iteration (the result would not either, but
	// the order of writes into the Pebble batch then is reproducible).
	keys := make([]string, 0, len(eb.Merger.Merges))
	for k := range eb.Merger.Merges {
		keys = append(keys, k)
	}
	sortStrings(keys)
	for _, k := range keys {
		ik := indexKey([]byte(k))
		old, _, err := pw.Get(ik)
		if err != nil {
			return err
		}
		merged, ok := w.s.mo.FullMerge([]byte(k), old, eb.Merger.Merges[k])
		if !ok {
			return fmt.Errorf("search: bleve merge of key %q failed", k)
		}
		// A term no document holds any more leaves no row, as
		// indexWriter.finish does. (The fold's documents are written by
		// indexWriter; bleve's Batch writes only the seed document of a
		// fresh index, seedSchema.)
		if count, n := binary.Uvarint(merged); n == len(merged) && count == 0 {
			if err := pw.Delete(ik); err != nil {
				return err
			}
			continue
		}
		if err := pw.Set(ik, merged); err != nil {
			return err
		}
	}
	for _, op := range eb.Ops {
		var err error
		if op.V != nil {
			v := op.V
			if len(op.K) > 0 && op.K[0] == 'b' {
				if v, err = canonicalBackIndex(v); err != nil {
					return err
				}
			}
			err = pw.Set(indexKey(op.K), v)
		} else {
			err = pw.Delete(indexKey(op.K))
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// canonicalBackIndex sorts a back index row (a document's fields and
// terms, which bleve lists in map order) so that the same document is
// always stored as the same bytes: a projection's keyspace must be a
// function of the log (engram verify compares digests).
func canonicalBackIndex(v []byte) ([]byte, error) {
	var row upsidedown.BackIndexRowValue
	if err := proto.Unmarshal(v, &row); err != nil {
		return nil, fmt.Errorf("search: decoding a back index row: %w", err)
	}
	slices.SortFunc(row.TermsEntries, func(a, b *upsidedown.BackIndexTermsEntry) int {
		return cmp.Compare(a.GetField(), b.GetField())
	})
	for _, e := range row.TermsEntries {
		slices.Sort(e.Terms)
	}
	slices.SortFunc(row.StoredEntries, func(a, b *upsidedown.BackIndexStoreEntry) int {
		if c := cmp.Compare(a.GetField(), b.GetField()); c != 0 {
			return c
		}
		return slices.Compare(a.ArrayPositions, b.ArrayPositions)
	})
	return proto.MarshalOptions{Deterministic: true}.Marshal(&row)
}

func (w *kvWriter) checkUnchanged(eb *store.EmulatedBatch) error {
	if len(eb.Merger.Merges) > 0 {
		return errors.New("search: bleve index written outside Apply")
	}
	r, err := w.s.Reader()
	if err != nil {
		return err
	}
	defer r.Close()
	for _, op := range eb.Ops {
		old, err := r.Get(op.K)
		if err != nil {
			return err
		}
		if op.V == nil || !bytes.Equal(old, op.V) {
			return errors.New("search: bleve index written outside Apply")
		}
	}
	return nil
}
