package cache

import (
	"sync"

	"go.etcd.io/bbolt"
)

// Small writes share transactions. bbolt runs one write transaction at a
// time and syncs the file twice per commit, so every checksum-database
// tile, lookup record and small artifact used to wait in line for a commit
// of its own: a cold download of a 250-module project made about 3,000
// commits, and a .mod miss waited 3.4 ms (median) for its turn. Writes that
// arrive while a transaction runs are committed together in the next one,
// as one transaction, by whichever of their callers came first. A lone
// write commits at once: unlike bbolt's DB.Batch there is no timer to wait
// for.
//
// A function given to batch may run more than once (a shared transaction
// that fails is rolled back and its calls run again), so it must set every
// result it reports from scratch on each run and change nothing outside
// the transaction it is given.

// commitGroup queues the calls waiting for the next shared transaction.
type commitGroup struct {
	mu      sync.Mutex
	pending []*groupCall
	busy    bool // a caller is running a transaction for the group
}

type groupCall struct {
	fn   func(*bbolt.Tx) error
	err  error
	done chan struct{} // closed when err is set
	lead chan struct{} // the caller is to run the next transaction
}

// batch runs fn in a write transaction shared with the other batch calls
// that are waiting when it starts, and returns fn's own outcome: an error
// of one call does not fail the others.
func (s *Store) batch(fn func(*bbolt.Tx) error) error {
	c := &groupCall{fn: fn, done: make(chan struct{}), lead: make(chan struct{}, 1)}
	g := &s.group
	g.mu.Lock()
	g.pending = append(g.pending, c)
	if g.busy {
		g.mu.Unlock()
		select {
		case <-c.done:
			return c.err
		case <-c.lead:
		}
		g.mu.Lock()
	}
	g.busy = true
	calls := g.pending
	g.pending = nil
	g.mu.Unlock()

	s.runGroup(calls)

	// Hand the next transaction to the first caller waiting for one, or
	// end the group's turn.
	g.mu.Lock()
	if len(g.pending) > 0 {
		g.pending[0].lead <- struct{}{}
	} else {
		g.busy = false
	}
	g.mu.Unlock()
	return c.err
}

// runGroup commits calls in one transaction, in order, so that each sees
// the writes of those before it as if they had run alone. When one fails,
// the transaction is rolled back: that call runs alone, for its own error,
// and the others are committed again without it. A commit that fails as a
// whole (the disk is full, the store is damaged) is tried once for each
// call alone.
func (s *Store) runGroup(calls []*groupCall) {
	for len(calls) > 0 {
		if len(calls) == 1 {
			calls[0].finish(s.update(calls[0].fn))
			return
		}
		failed := -1
		err := s.update(func(tx *bbolt.Tx) error {
			for i, c := range calls {
				if err := c.fn(tx); err != nil {
					failed = i
					return err
				}
			}
			return nil
		})
		switch {
		case err == nil:
			for _, c := range calls {
				c.finish(nil)
			}
			return
		case failed < 0:
			for _, c := range calls {
				c.finish(s.update(c.fn))
			}
			return
		}
		bad := calls[failed]
		bad.finish(s.update(bad.fn))
		calls = append(calls[:failed:failed], calls[failed+1:]...)
	}
}

func (c *groupCall) finish(err error) {
	c.err = err
	close(c.done)
}
