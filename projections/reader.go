package projections

import (
	"errors"
	"io"

	"github.com/cockroachdb/pebble/v2"
)

// pebbleReader is what a DB, a snapshot and an indexed batch have in common.
type pebbleReader interface {
	Get(key []byte) ([]byte, io.Closer, error)
	NewIter(o *pebble.IterOptions) (*pebble.Iterator, error)
}

// scoped reads one generation of one projection: keys given to and
// returned by it are relative to the prefix.
type scoped struct {
	r      pebbleReader
	prefix []byte
}

func (s scoped) abs(key []byte) []byte {
	k := make([]byte, 0, len(s.prefix)+len(key))
	k = append(k, s.prefix...)
	return append(k, key...)
}

func (s scoped) Get(key []byte) ([]byte, bool, error) { return s.getAbs(s.abs(key)) }

// getAbs reads an absolute key.
func (s scoped) getAbs(key []byte) ([]byte, bool, error) {
	v, closer, err := s.r.Get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	out := append([]byte(nil), v...)
	return out, true, closer.Close()
}

func (s scoped) Iter(lower, upper []byte) Iterator {
	o := &pebble.IterOptions{LowerBound: s.abs(lower)}
	if upper != nil {
		o.UpperBound = s.abs(upper)
	} else {
		o.UpperBound = prefixEnd(s.prefix)
	}
	it, err := s.r.NewIter(o)
	if err != nil {
		return errIterator{err}
	}
	return &scopedIter{it: it, prefixLen: len(s.prefix), prefix: s.prefix}
}

type scopedIter struct {
	it        *pebble.Iterator
	prefix    []byte
	prefixLen int
}

func (i *scopedIter) abs(key []byte) []byte {
	k := make([]byte, 0, i.prefixLen+len(key))
	k = append(k, i.prefix...)
	return append(k, key...)
}

func (i *scopedIter) First() bool            { return i.it.First() }
func (i *scopedIter) Last() bool             { return i.it.Last() }
func (i *scopedIter) Next() bool             { return i.it.Next() }
func (i *scopedIter) Prev() bool             { return i.it.Prev() }
func (i *scopedIter) SeekGE(key []byte) bool { return i.it.SeekGE(i.abs(key)) }
func (i *scopedIter) SeekLT(key []byte) bool { return i.it.SeekLT(i.abs(key)) }
func (i *scopedIter) Valid() bool            { return i.it.Valid() }
func (i *scopedIter) Key() []byte            { return i.it.Key()[i.prefixLen:] }
func (i *scopedIter) Value() []byte          { return i.it.Value() }
func (i *scopedIter) Close() error           { return i.it.Close() }

// errIterator is an empty iterator that reports err on Close, so that a
// failure to open an iterator is not mistaken for an empty range by a
// caller that checks Close.
type errIterator struct{ err error }

func (errIterator) First() bool        { return false }
func (errIterator) Last() bool         { return false }
func (errIterator) Next() bool         { return false }
func (errIterator) Prev() bool         { return false }
func (errIterator) SeekGE([]byte) bool { return false }
func (errIterator) SeekLT([]byte) bool { return false }
func (errIterator) Valid() bool        { return false }
func (errIterator) Key() []byte        { return nil }
func (errIterator) Value() []byte      { return nil }
func (e errIterator) Close() error     { return e.err }

// batchWriter is the Writer handed to Apply: an indexed batch scoped to
// the generation being written, so Apply reads its own pending writes.
// written, when set, holds every key ever written to the generation: a
// Get of a key it never held skips the DB. unread holds the writes made
// with SetUnread, which the batch's index does not.
type batchWriter struct {
	scoped
	b       *pebble.Batch
	written *writtenKeys
	pdus    *pduMemo
	unread  unreadWrites
}

func newBatchWriter(b *pebble.Batch, prefix []byte, written *writtenKeys, pdus *pduMemo) *batchWriter {
	return &batchWriter{scoped: scoped{r: b, prefix: prefix}, b: b, written: written, pdus: pdus}
}

func (w *batchWriter) Get(key []byte) ([]byte, bool, error) {
	k := w.abs(key)
	if w.written != nil && !w.written.mayHold(k) {
		return nil, false, nil
	}
	return w.getAbs(k)
}

func (w *batchWriter) Set(key, value []byte) error {
	k := w.abs(key)
	if w.written != nil {
		w.written.add(k)
	}
	return w.b.Set(k, value, nil)
}

func (w *batchWriter) Delete(key []byte) error { return w.b.Delete(w.abs(key), nil) }

func (w *batchWriter) DeleteRange(start, end []byte) error {
	hi := prefixEnd(w.prefix)
	if end != nil {
		hi = w.abs(end)
	}
	return w.b.DeleteRange(w.abs(start), hi, nil)
}

// waitingReader is the live Reader of a handle: it resolves the serving
// generation at each call (a rebuild may switch it between calls) and,
// while no generation is readable, blocks until one is.
type waitingReader struct{ h *Handle }

func (r waitingReader) Get(key []byte) ([]byte, bool, error) {
	var (
		v   []byte
		ok  bool
		err error
	)
	if werr := r.h.withServing(func(s scoped) { v, ok, err = damageAware{s, r.h}.Get(key) }); werr != nil {
		return nil, false, werr
	}
	return v, ok, err
}

func (r waitingReader) Iter(lower, upper []byte) Iterator {
	var it Iterator
	if err := r.h.withServing(func(s scoped) { it = damageAware{s, r.h}.Iter(lower, upper) }); err != nil {
		return errIterator{err}
	}
	return it
}

// damaged reports damage found through the live reader: it is in whichever
// generation serves now.
func (r waitingReader) damaged(err error) error {
	r.h.rw.RLock()
	gen := r.h.servingPrefix
	r.h.rw.RUnlock()
	return r.h.reportDamage(gen, err)
}
