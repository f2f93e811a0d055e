package cache

import (
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"go.etcd.io/bbolt"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// fakeClock is a settable clock for Options.Now.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{t: time.Date(2025, 3, 1, 12, 0, 0, 123456789, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// hangGuard bounds waits for events that must happen: long enough that no
// load on a shared machine reaches it, so reaching it means a hang, never
// slowness.
const hangGuard = 2 * time.Minute

// fileSize returns the size of the file at path.
func fileSize(t testing.TB, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

// testOptions uses small chunks and staging transactions of 4 chunks, so
// that kilobytes exercise every multi-chunk and multi-transaction path.
func testOptions() Options {
	return Options{ChunkSize: 1 << 10, stageBytes: 4 << 10, Now: newFakeClock().Now}
}

// openTest opens a store in a temporary directory. Unless sync is needed
// (crash tests), it turns fsync off: these tests are about logic, and the
// machine is shared. On cleanup it checks the invariants and closes.
func openTest(t testing.TB, opts Options) *Store {
	t.Helper()
	s, err := Open(filepath.Join(t.TempDir(), "store.db"), opts)
	if err != nil {
		t.Fatal(err)
	}
	s.db.NoSync = true
	t.Cleanup(func() {
		checkInvariants(t, s)
		if err := s.Close(); err != nil {
			t.Error(err)
		}
	})
	return s
}

// content returns n deterministic pseudo-random bytes.
func content(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 42))
	b := make([]byte, n)
	for i := 0; i < n; i += 8 {
		var w [8]byte
		binary.LittleEndian.PutUint64(w[:], r.Uint64())
		copy(b[i:], w[:])
	}
	return b
}

// checkInvariants verifies the invariants of the package comment with a
// full scan: every chunk belongs to exactly one record, every record has
// exactly its chunks with the right lengths, pending is empty (no Put or
// Delete is in flight when it runs), and the counters match the records.
func checkInvariants(t testing.TB, s *Store) {
	t.Helper()
	err := s.view(func(tx *bbolt.Tx) error {
		type ref struct {
			rec  record
			seen uint32
		}
		refs := map[uint64]*ref{}
		counts := map[string]int64{}
		add := func(where string, k, v []byte, kind Kind) error {
			ak := k
			if where != "artifact" {
				ak = k[:len(k)-9]
			}
			rec, err := decodeRecord(ak, v)
			if err != nil {
				return err
			}
			if rec.blob == 0 {
				return errors.New(where + " record with blob 0")
			}
			if _, dup := refs[rec.blob]; dup {
				t.Errorf("blob %d referenced twice (%s %q)", rec.blob, where, k)
			}
			refs[rec.blob] = &ref{rec: rec}
			if where == "artifact" {
				counts["n:"+string(kind)]++
				counts["b:"+string(kind)] += rec.Size
			} else {
				counts["n:q"]++
				counts["b:q"] += rec.Size
			}
			return nil
		}
		err := tx.Bucket(bucketArtifacts).ForEach(func(k, v []byte) error {
			key, err := parseArtifactKey(k)
			if err != nil {
				return err
			}
			return add("artifact", k, v, key.Kind)
		})
		if err != nil {
			return err
		}
		err = tx.Bucket(bucketQuarantine).ForEach(func(k, v []byte) error {
			if _, err := parseQuarantineKey(k); err != nil {
				return err
			}
			_, _, rec, err := splitQuarantine(v)
			if err != nil {
				return err
			}
			return add("quarantine", k, rec, "")
		})
		if err != nil {
			return err
		}
		chunk := func(blob uint64, idx uint32, v []byte, own bool) {
			r := refs[blob]
			if r == nil {
				t.Errorf("orphan chunk %d of blob %d", idx, blob)
				return
			}
			if own != r.rec.ownBucket {
				t.Errorf("blob %d: chunk %d in its own bucket %v, record says %v", blob, idx, own, r.rec.ownBucket)
			}
			if idx != r.seen {
				t.Errorf("blob %d: chunk %d, want %d", blob, idx, r.seen)
			}
			if idx < r.rec.chunks {
				if _, err := r.rec.checkChunk(v, idx); err != nil {
					t.Errorf("blob %d chunk %d: %v", blob, idx, err)
				}
			}
			r.seen = idx + 1
		}
		err = tx.Bucket(bucketChunks).ForEach(func(k, v []byte) error {
			chunk(binary.BigEndian.Uint64(k), binary.BigEndian.Uint32(k[8:]), v, false)
			return nil
		})
		if err != nil {
			return err
		}
		err = tx.Bucket(bucketBlobs).ForEach(func(k, v []byte) error {
			blob := binary.BigEndian.Uint64(k)
			b := tx.Bucket(bucketBlobs).Bucket(k)
			if v != nil || b == nil {
				t.Errorf("blobs: key %x is not a bucket", k)
				return nil
			}
			if n := b.Stats().KeyN; n == 0 {
				t.Errorf("blob %d: empty bucket", blob)
			}
			return b.ForEach(func(k, v []byte) error {
				chunk(blob, binary.BigEndian.Uint32(k), v, true)
				return nil
			})
		})
		if err != nil {
			return err
		}
		for blob, r := range refs {
			if r.seen != r.rec.chunks {
				t.Errorf("blob %d: %d chunks stored, record says %d", blob, r.seen, r.rec.chunks)
			}
		}
		if n := tx.Bucket(bucketPending).Stats().KeyN; n != 0 {
			t.Errorf("%d pending blobs, want 0", n)
		}
		sys := tx.Bucket(bucketSys)
		for _, key := range []string{"n:info", "b:info", "n:mod", "b:mod", "n:zip", "b:zip", "n:q", "b:q"} {
			if got := readCounter(sys.Get([]byte(key))); got != counts[key] {
				t.Errorf("counter %s = %d, records say %d", key, got, counts[key])
			}
		}
		return nil
	})
	if err != nil {
		t.Errorf("check invariants: %v", err)
	}
}

// countChunks returns the number of chunk keys and pending entries.
func countChunks(t testing.TB, s *Store) (chunks, pending int) {
	t.Helper()
	err := s.view(func(tx *bbolt.Tx) error {
		chunks = tx.Bucket(bucketChunks).Stats().KeyN
		blobs := tx.Bucket(bucketBlobs)
		err := blobs.ForEach(func(k, _ []byte) error {
			chunks += blobs.Bucket(k).Stats().KeyN
			return nil
		})
		if err != nil {
			return err
		}
		pending = tx.Bucket(bucketPending).Stats().KeyN
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return chunks, pending
}
