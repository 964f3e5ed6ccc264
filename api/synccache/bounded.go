package synccache

// bounded is a map whose entries' sizes (the caller's estimate of the
// heap bytes an entry keeps alive, its key's included) add up to at most
// its budget: two generations of up to half the budget each. When the
// current one fills up, the older is dropped and the current one becomes
// the older; a hit in the older moves the entry back into the current
// one, so entries in use stay. An entry larger than half the budget is
// not kept. Its owner locks.
type bounded[K comparable, V any] struct {
	half               int
	cur, old           map[K]sized[V]
	curBytes, oldBytes int
}

type sized[V any] struct {
	v    V
	size int
}

// entryOverhead is what a map entry costs beyond the sizes callers count:
// the bucket slot, the key's and value's headers, the allocator's
// rounding (a rough figure, the same for every entry).
const entryOverhead = 64

func newBounded[K comparable, V any](budget int) bounded[K, V] {
	return bounded[K, V]{half: max(budget/2, 1), cur: map[K]sized[V]{}}
}

func (b *bounded[K, V]) get(k K) (V, bool) {
	if e, ok := b.cur[k]; ok {
		return e.v, true
	}
	e, ok := b.old[k]
	if ok {
		delete(b.old, k)
		b.oldBytes -= e.size
		b.insert(k, e)
	}
	return e.v, ok
}

func (b *bounded[K, V]) put(k K, v V, size int) {
	b.delete(k)
	if size += entryOverhead; size <= b.half {
		b.insert(k, sized[V]{v, size})
	}
}

func (b *bounded[K, V]) insert(k K, e sized[V]) {
	if b.curBytes+e.size > b.half {
		b.old, b.oldBytes = b.cur, b.curBytes
		b.cur, b.curBytes = map[K]sized[V]{}, 0
	}
	b.cur[k] = e
	b.curBytes += e.size
}

func (b *bounded[K, V]) delete(k K) {
	if e, ok := b.cur[k]; ok {
		delete(b.cur, k)
		b.curBytes -= e.size
	}
	if e, ok := b.old[k]; ok {
		delete(b.old, k)
		b.oldBytes -= e.size
	}
}

func (b *bounded[K, V]) reset() {
	b.cur, b.old = map[K]sized[V]{}, nil
	b.curBytes, b.oldBytes = 0, 0
}

// bytes is what the entries add up to.
func (b *bounded[K, V]) bytes() int { return b.curBytes + b.oldBytes }
