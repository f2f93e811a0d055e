package cache

import (
	"bytes"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.etcd.io/bbolt"
)

// holdGroup starts a batch call that holds the group's transaction open
// until the returned release is called, so that the calls made meanwhile
// queue for the next one.
func holdGroup(t *testing.T, s *Store) (release func()) {
	t.Helper()
	started, hold, done := make(chan struct{}), make(chan struct{}), make(chan error, 1)
	go func() {
		done <- s.batch(func(*bbolt.Tx) error {
			close(started)
			<-hold
			return nil
		})
	}()
	<-started
	var once sync.Once
	release = func() {
		once.Do(func() {
			close(hold)
			if err := <-done; err != nil {
				t.Errorf("holding call: %v", err)
			}
		})
	}
	t.Cleanup(release)
	return release
}

// waitPending waits until n calls wait for the group's next transaction.
func waitPending(t *testing.T, s *Store, n int) {
	t.Helper()
	deadline := time.Now().Add(time.Minute) // hang guard only
	for {
		s.group.mu.Lock()
		got := len(s.group.pending)
		s.group.mu.Unlock()
		if got == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d calls pending, want %d", got, n)
		}
		time.Sleep(time.Millisecond)
	}
}

// queueCalls starts n calls of call(i), one after another, each queued
// for the group's next transaction (which holdGroup holds) before the next
// starts, so that they share it in index order. wait waits for them all.
func queueCalls(t *testing.T, s *Store, n int, call func(i int)) (wait func()) {
	t.Helper()
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { call(i) })
		waitPending(t, s, i+1)
	}
	return wg.Wait
}

func kvValue(t *testing.T, s *Store, key string) ([]byte, bool) {
	t.Helper()
	v, err := s.GetKV("test", key)
	if errors.Is(err, ErrNotFound) {
		return nil, false
	}
	if err != nil {
		t.Fatal(err)
	}
	return v, true
}

func putTest(tx *bbolt.Tx, key string) error {
	b, err := tx.Bucket(bucketKV).CreateBucketIfNotExists([]byte("test"))
	if err != nil {
		return err
	}
	return b.Put([]byte(key), []byte("v-"+key))
}

// Calls made while a transaction runs share the next one, and each sees
// its own outcome; a call that fails is rolled back alone, and the calls
// that ran with it in the failed transaction run again from scratch.
func TestBatchSharesTransactions(t *testing.T) {
	errBad := errors.New("bad call")
	cases := []struct {
		name string
		bad  int // index of the failing call, -1 none
	}{
		{"all succeed", -1},
		{"first fails", 0},
		{"middle fails", 7},
		{"last fails", 19},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := openTest(t, testOptions())
			const n = 20
			release := holdGroup(t, s)
			var (
				mu    sync.Mutex
				txIDs = map[int]int{} // call → ID of the transaction it committed in
			)
			runs := make([]atomic.Int32, n)
			errs := make([]error, n)
			wait := queueCalls(t, s, n, func(i int) {
				errs[i] = s.batch(func(tx *bbolt.Tx) error {
					runs[i].Add(1)
					if err := putTest(tx, fmt.Sprint(i)); err != nil {
						return err
					}
					if i == c.bad {
						return errBad // after its write: it must be rolled back
					}
					mu.Lock()
					txIDs[i] = tx.ID()
					mu.Unlock()
					return nil
				})
			})
			release()
			wait()
			ids := map[int]bool{}
			for i := range n {
				_, stored := kvValue(t, s, fmt.Sprint(i))
				if i == c.bad {
					if !errors.Is(errs[i], errBad) || stored {
						t.Errorf("failing call: err %v, stored %v; want its own error and nothing stored", errs[i], stored)
					}
					continue
				}
				if errs[i] != nil || !stored {
					t.Errorf("call %d: err %v, stored %v; a failure of another call must not fail it", i, errs[i], stored)
				}
				ids[txIDs[i]] = true
			}
			if len(ids) != 1 {
				t.Errorf("the successful calls committed in %d transactions, want 1", len(ids))
			}
			for i := range n {
				want := int32(1)
				if i <= c.bad {
					// Rolled back with the failing call, then again (the
					// failing call alone, for its own error).
					want = 2
				}
				if got := runs[i].Load(); got != want {
					t.Errorf("call %d ran %d times, want %d", i, got, want)
				}
			}
		})
	}
}

// Compare-and-swaps sharing a transaction see each other's writes: of many
// concurrent swaps from the empty value, exactly one wins, as if each had
// run alone.
func TestBatchSwapEntrySerializes(t *testing.T) {
	s := openTest(t, testOptions())
	const n = 16
	release := holdGroup(t, s)
	swapped := make([]bool, n)
	errs := make([]error, n)
	wait := queueCalls(t, s, n, func(i int) {
		swapped[i], errs[i] = s.SwapEntry("head", nil, fmt.Appendf(nil, "value %d", i))
	})
	release()
	wait()
	winners := 0
	winner := -1
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("swap %d: %v", i, errs[i])
		}
		if swapped[i] {
			winners++
			winner = i
		}
	}
	if winners != 1 {
		t.Fatalf("%d swaps from the empty value won, want 1", winners)
	}
	e, err := s.GetEntry("head")
	if err != nil || string(e.Value) != fmt.Sprintf("value %d", winner) {
		t.Errorf("head = %q, %v; want the winner's value %d", e.Value, err, winner)
	}
}

// A transaction that fails as a whole (here: the store refuses writes,
// as after damage) fails each of its calls, tried alone, and nobody waits
// for a transaction that never comes.
func TestBatchCommitFailureFailsEach(t *testing.T) {
	s := openTest(t, testOptions())
	const n = 8
	release := holdGroup(t, s)
	errs := make([]error, n)
	wait := queueCalls(t, s, n, func(i int) {
		errs[i] = s.PutKV("test", fmt.Sprint(i), []byte("v"))
	})
	blocked := fmt.Errorf("%w: test: writes refused", ErrCorrupt)
	s.writeBlocked.Store(&blocked)
	release()
	wait()
	s.writeBlocked.Store(nil)
	for i, err := range errs {
		if !errors.Is(err, ErrCorrupt) {
			t.Errorf("put %d: %v, want the store's refusal", i, err)
		}
		if _, ok := kvValue(t, s, fmt.Sprint(i)); ok {
			t.Errorf("put %d stored although refused", i)
		}
	}
}

// Many writers at once, some failing: every successful write is stored,
// no failing one is, and the group ends idle (run with -race).
func TestBatchConcurrentWriters(t *testing.T) {
	s := openTest(t, testOptions())
	errBad := errors.New("bad call")
	const writers, each = 8, 100
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				key := fmt.Sprintf("%d-%d", w, i)
				err := s.batch(func(tx *bbolt.Tx) error {
					if err := putTest(tx, key); err != nil {
						return err
					}
					if i%10 == 3 {
						return errBad
					}
					return nil
				})
				if (i%10 == 3) != errors.Is(err, errBad) {
					t.Errorf("%s: err %v", key, err)
				}
			}
		}()
	}
	wg.Wait()
	for w := range writers {
		for i := range each {
			key := fmt.Sprintf("%d-%d", w, i)
			if _, ok := kvValue(t, s, key); ok != (i%10 != 3) {
				t.Errorf("%s stored = %v", key, ok)
			}
		}
	}
	s.group.mu.Lock()
	defer s.group.mu.Unlock()
	if s.group.busy || len(s.group.pending) != 0 {
		t.Errorf("group busy %v with %d pending after every writer returned", s.group.busy, len(s.group.pending))
	}
}

// Artifacts published in a shared transaction that is rolled back (another
// call in it failed) are published again from scratch: each gets its own
// content, under a blob of its own.
func TestBatchedPublishRetries(t *testing.T) {
	s := openTest(t, testOptions())
	errBad := errors.New("bad call")
	release := holdGroup(t, s)
	keys := []Key{
		{Path: "example.com/a", Version: "v1.0.0", Kind: KindMod},
		{Path: "example.com/b", Version: "v1.0.0", Kind: KindMod},
	}
	data := [][]byte{content(1500, 1), content(2500, 2)} // more than one chunk each
	errs := make([]error, len(keys)+1)
	var wg sync.WaitGroup
	put := func(i int) {
		defer wg.Done()
		_, errs[i] = s.put(keys[i], bytes.NewReader(data[i]), Meta{Size: int64(len(data[i])), State: StateExempt})
	}
	wg.Add(3)
	go put(0)
	waitPending(t, s, 1)
	go func() { // fails after its write, rolling back the first publish
		defer wg.Done()
		errs[2] = s.batch(func(tx *bbolt.Tx) error {
			if err := putTest(tx, "bad"); err != nil {
				return err
			}
			return errBad
		})
	}()
	waitPending(t, s, 2)
	go put(1)
	waitPending(t, s, 3)
	release()
	wg.Wait()
	if !errors.Is(errs[2], errBad) {
		t.Errorf("failing call: %v", errs[2])
	}
	for i, k := range keys {
		if errs[i] != nil {
			t.Fatalf("put %v: %v", k, errs[i])
		}
		got, _, err := s.Get(k)
		if err != nil || !bytes.Equal(got, data[i]) {
			t.Errorf("%v after a rolled-back shared publish: %d bytes, %v; want its own %d bytes", k, len(got), err, len(data[i]))
		}
	}
}
