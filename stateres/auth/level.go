package auth

import (
	"math"
	"strconv"
)

// Level is a power level. From room version 12 the room's creators have an
// infinitely high level (content/rooms/v12.md, "Authorisation rules"): no
// integer a power levels event can hold reaches it. Level carries that
// without borrowing a value from the int64 range, so comparisons with the
// largest integer levels stay exact.
type Level struct {
	n        int64
	infinite bool
}

// Infinite is the power level of a v12 room creator.
var Infinite = Level{infinite: true}

// LevelOf returns the finite level n.
func LevelOf(n int64) Level { return Level{n: n} }

// IsInfinite reports whether l is the creators' level.
func (l Level) IsInfinite() bool { return l.infinite }

// Int64 returns the level as an integer; Infinite maps to math.MaxInt64,
// which callers that must print a number (clients see no creators' level in
// power levels content) may use as "above everything".
func (l Level) Int64() int64 {
	if l.infinite {
		return math.MaxInt64
	}
	return l.n
}

// Cmp returns -1, 0 or +1 as l is below, equal to or above o.
func (l Level) Cmp(o Level) int {
	switch {
	case l.infinite && o.infinite:
		return 0
	case l.infinite:
		return 1
	case o.infinite:
		return -1
	case l.n < o.n:
		return -1
	case l.n > o.n:
		return 1
	}
	return 0
}

// AtLeast reports l >= o.
func (l Level) AtLeast(o Level) bool { return l.Cmp(o) >= 0 }

// Above reports l > o.
func (l Level) Above(o Level) bool { return l.Cmp(o) > 0 }

func (l Level) String() string {
	if l.infinite {
		return "infinite"
	}
	return strconv.FormatInt(l.n, 10)
}
