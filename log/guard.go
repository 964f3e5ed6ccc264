package log

import (
	"fmt"
	"sync/atomic"
)

// Pebble treats a failed WAL write or sync as fatal ("the commit pipeline
// will be horked") and calls Logger.Fatalf. Our Pebble logger panics with
// pebbleFatal instead of exiting, and every write the log makes goes
// through diskGuard.do, which turns that panic into an error for the
// caller (so Append fails and acknowledges nothing) and trips the guard:
// from then on every write fails fast until the operator restarts engram.
// A Fatalf on a Pebble background goroutine still crashes the process,
// which is the only safe thing left to do there.
type pebbleFatal struct{ msg string }

type diskGuard struct {
	err atomic.Pointer[error]
}

func (g *diskGuard) failed() error {
	if p := g.err.Load(); p != nil {
		return *p
	}
	return nil
}

func (g *diskGuard) trip(err error) error {
	g.err.CompareAndSwap(nil, &err)
	return g.failed()
}

// do runs one Pebble write.
func (g *diskGuard) do(what string, fn func() error) (err error) {
	if err := g.failed(); err != nil {
		return err
	}
	defer func() {
		if r := recover(); r != nil {
			pf, ok := r.(pebbleFatal)
			if !ok {
				panic(r)
			}
			err = g.trip(fmt.Errorf("log: %s failed: %s: the disk is full or failing; free space or replace it, then restart engram (acknowledged entries are safe; raft re-applies the rest on restart)", what, pf.msg))
		}
	}()
	return fn()
}
