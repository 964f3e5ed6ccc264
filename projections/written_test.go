package projections

import (
	"strconv"
	"testing"
)

// TestWrittenKeysHasNoFalseNegatives adds keys across several filter
// growths: every key added must be reported as possibly held (a miss
// would make a fold see an absent key where one exists), and keys never
// added are mostly reported absent (the point of the filter).
func TestWrittenKeysHasNoFalseNegatives(t *testing.T) {
	w := newWrittenKeys(7)
	const n = 5*bloomFirstKeys + 123
	for i := range n {
		w.add([]byte("key/" + strconv.Itoa(i)))
	}
	if len(w.filters) < 3 {
		t.Fatalf("%d filters after %d keys: the growth was not exercised", len(w.filters), n)
	}
	for i := range n {
		if !w.mayHold([]byte("key/" + strconv.Itoa(i))) {
			t.Fatalf("key %d was added but the filter says it never was", i)
		}
	}
	falsePositives := 0
	for i := range n {
		if w.mayHold([]byte("other/" + strconv.Itoa(i))) {
			falsePositives++
		}
	}
	// About 1% per filter; a handful of filters are checked.
	if rate := float64(falsePositives) / n; rate > 0.05 {
		t.Errorf("false positive rate %.3f, want under 0.05", rate)
	}
}
