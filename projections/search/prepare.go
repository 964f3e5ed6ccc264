package search

import (
	"runtime"
	"sync"

	englog "github.com/engram-hs/engram/log"
	"github.com/engram-hs/engram/projections"
)

// prepareAll prepares the PDU entries of a batch on worker goroutines and
// hands each to apply in log order, as it becomes ready. Decoding,
// parsing and analysing the text are most of the fold's own work and need
// nothing but the entry; only apply (the keyspace's decisions and writes)
// is sequential. A rebuild's fold is otherwise one goroutine: the search
// projection, the slowest, set the pace of a replay of every projection.
func prepareAll(r projections.Reader, entries []englog.Entry, apply func(pdu) error) error {
	type chunk struct {
		entries []englog.Entry
		out     []pdu
		err     error
		done    chan struct{}
	}
	var chunks []*chunk
	for len(entries) > 0 {
		n := min(len(entries), prepareChunk)
		chunks = append(chunks, &chunk{entries: entries[:n], done: make(chan struct{})})
		entries = entries[n:]
	}
	workers := min(runtime.GOMAXPROCS(0), maxPrepareWorkers, len(chunks))
	if workers <= 1 {
		for _, c := range chunks {
			for _, e := range c.entries {
				if e.Kind != englog.KindPDU {
					continue
				}
				d, err := prepare(r, e)
				if err != nil {
					return err
				}
				if err := apply(d); err != nil {
					return err
				}
			}
		}
		return nil
	}
	// Workers take chunks in order, at most prepareAhead ahead of apply
	// (bounding the memory of prepared rows); stop ends them early.
	next := make(chan *chunk)
	stop := make(chan struct{})
	slots := make(chan struct{}, prepareAhead)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(next)
		for _, c := range chunks {
			select {
			case slots <- struct{}{}:
			case <-stop:
				return
			}
			select {
			case next <- c:
			case <-stop:
				return
			}
		}
	}()
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for c := range next {
				c.out = make([]pdu, 0, len(c.entries))
				for _, e := range c.entries {
					if e.Kind != englog.KindPDU {
						continue
					}
					d, err := prepare(r, e)
					if err != nil {
						c.err = err
						break
					}
					c.out = append(c.out, d)
				}
				close(c.done)
			}
		}()
	}
	defer func() {
		close(stop)
		wg.Wait()
	}()
	for _, c := range chunks {
		<-c.done
		if c.err != nil {
			return c.err
		}
		for _, d := range c.out {
			if err := apply(d); err != nil {
				return err
			}
		}
		c.out = nil
		<-slots
	}
	return nil
}

const (
	prepareChunk      = 128 // entries a worker prepares at a time
	prepareAhead      = 16  // chunks prepared ahead of apply, at most
	maxPrepareWorkers = 4
)
