package cache

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

const (
	defaultChunkSize   = 512 << 10
	maxChunkSize       = 16 << 20
	defaultLockTimeout = time.Second

	// stageBytes bounds the content written by one staging transaction:
	// bbolt keeps a transaction's dirty pages in memory until commit, so a
	// 500 MB zip is committed a few MB at a time.
	stageBytes = 4 << 20

	// gcBatch bounds the chunk deletions of one write transaction
	// (discarding staged content, Delete, garbage collection at Open).
	gcBatch = 1024

	// defaultMmapSize is bbolt's initial mmap size. Growing the mapping
	// (remap) waits for every open read transaction; mapping 1 GiB of
	// address space up front (no memory, no file growth) avoids most remaps.
	defaultMmapSize = 1 << 30
)

// Options configure Open. The zero value is usable.
type Options struct {
	ChunkSize   int              // bytes per content chunk; default 512 KiB, at most 16 MiB
	LockTimeout time.Duration    // how long to wait for the file lock; default 1s, so a second process fails fast
	ReadOnly    bool             // open with a shared lock; writes fail
	Now         func() time.Time // clock for Created, Fetched and heartbeats; default time.Now

	// QuarantineCorrupt quarantines an artifact when a read finds it
	// damaged (a chunk failing its checksum, an undecodable record), so
	// that the next request refetches it instead of failing again. Off,
	// damage is only reported (modproxy verify without --quarantine).
	QuarantineCorrupt bool

	// Test hooks.
	initialMmapSize int   // 0 means defaultMmapSize, negative means bbolt's minimum
	stageBytes      int   // 0 means stageBytes
	skipCheck       bool  // open without checkFile (salvage reads damaged files)
	largeSize       int64 // 0 means dropMappedSize
	ownBucketSize   int64 // 0 means ownBucketSize, negative never (the layout of schema 2)
}

// Store is a bbolt-backed module artifact store. See the package comment.
type Store struct {
	db        *bbolt.DB
	path      string
	chunkSize int
	now       func() time.Time
	readOnly  bool

	// stagePool holds *[]byte buffers of stageLen bytes for Put.
	stagePool sync.Pool
	stageLen  int

	// file is the store file opened for reading, for preadChunk.
	file      *os.File
	largeSize int64 // artifacts this large are read with pread (dropMappedSize)
	// ownBucketSize: content this large is stored in a bucket of its own
	// (ownBucketSize); negative: never.
	ownBucketSize int64

	quarantineCorrupt bool
	corruptions       atomic.Int64
	damagedBlobs      sync.Map              // blob ID -> struct{}: damage counted
	writeBlocked      atomic.Pointer[error] // set after a write transaction failed on damage

	group commitGroup // small writes sharing transactions (see batch)
}

// Open opens (creating if needed) the store in the file at path and
// garbage-collects content left behind by a process that died mid-Put.
//
// If another process holds the file, Open fails after opts.LockTimeout with
// an error wrapping ErrLocked.
func Open(path string, opts Options) (*Store, error) {
	if opts.ChunkSize <= 0 {
		opts.ChunkSize = defaultChunkSize
	}
	if opts.ChunkSize > maxChunkSize {
		return nil, fmt.Errorf("open store %s: chunk size %d exceeds %d", path, opts.ChunkSize, maxChunkSize)
	}
	if opts.LockTimeout <= 0 {
		opts.LockTimeout = defaultLockTimeout
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	mmapSize := defaultMmapSize
	if opts.initialMmapSize != 0 {
		mmapSize = max(opts.initialMmapSize, 0)
	}
	if err := checkExisting(path, opts); err != nil {
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	db, err := openBolt(path, &bbolt.Options{
		Timeout:  opts.LockTimeout,
		ReadOnly: opts.ReadOnly,
		// The hashmap freelist allocates and frees runs of pages in O(1);
		// the default array freelist degrades as freed multi-page chunks
		// fragment it.
		FreelistType: bbolt.FreelistMapType,
		// The freelist is written on every commit, so that Open reads it
		// from its page instead of rebuilding it: without it
		// (NoFreelistSync), bbolt's Open walks every page of the file,
		// about 0.35 s per GiB, which made restarts proportional to the
		// store's size. Its cost per commit is proportional to the free
		// pages, not to the file. A store last written without it is
		// walked once, at its first Open by this build.
		NoFreelistSync:  false,
		InitialMmapSize: mmapSize,
	})
	if err != nil {
		if errors.Is(err, berrors.ErrTimeout) {
			return nil, fmt.Errorf("open store %s: %w (e.g. a running `modproxy serve` holds its lock): stop it, or work through its HTTP API", path, ErrLocked)
		}
		if errors.Is(err, berrors.ErrInvalid) || errors.Is(err, berrors.ErrVersionMismatch) {
			return nil, fmt.Errorf("open store %s: %w: not a bbolt database file (%v); refusing to use it", path, ErrNotStore, err)
		}
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	s := &Store{
		db:        db,
		path:      path,
		chunkSize: opts.ChunkSize,
		now:       opts.Now,
		readOnly:  opts.ReadOnly,

		quarantineCorrupt: opts.QuarantineCorrupt,
		largeSize:         dropMappedSize,
		ownBucketSize:     ownBucketSize,
	}
	if opts.largeSize > 0 {
		s.largeSize = opts.largeSize
	}
	if opts.ownBucketSize != 0 {
		s.ownBucketSize = opts.ownBucketSize
	}
	// Whole chunks per staging transaction, at least one.
	stage := stageBytes
	if opts.stageBytes > 0 {
		stage = opts.stageBytes
	}
	s.stageLen = max(stage/s.chunkSize, 1) * (s.chunkSize + chunkCRCLen)
	s.stagePool.New = func() any {
		b := make([]byte, s.stageLen)
		return &b
	}
	if err := s.init(); err != nil {
		return nil, errors.Join(fmt.Errorf("open store %s: %w", path, err), db.Close())
	}
	// Without it, chunks are copied out of the mapping instead.
	if f, err := os.Open(path); err == nil {
		s.file = f
	}
	return s, nil
}

// init creates or checks the schema, then collects garbage. A bbolt file
// that holds other buckets but no modproxy schema belongs to someone else
// and is refused, never written to.
func (s *Store) init() error {
	if s.readOnly {
		return s.view(func(tx *bbolt.Tx) error {
			if err := checkOwned(tx); err != nil {
				return err
			}
			for _, name := range requiredBuckets {
				if tx.Bucket(name) == nil {
					return fmt.Errorf("%w (no %q bucket)", ErrNotStore, name)
				}
			}
			return checkSchema(tx.Bucket(bucketSys))
		})
	}
	err := s.update(func(tx *bbolt.Tx) error {
		if err := checkOwned(tx); err != nil {
			return err
		}
		for _, name := range allBuckets {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return fmt.Errorf("create bucket %s: %w", name, err)
			}
		}
		sys := tx.Bucket(bucketSys)
		if sys.Get(sysSchema) != nil {
			if err := checkSchema(sys); err != nil {
				return err
			}
		}
		// New stores, and stores of older schemas (upgraded in place:
		// their records say which artifacts have chunk checksums and
		// where their chunks are).
		return sys.Put(sysSchema, []byte{schemaVersion})
	})
	if err != nil {
		return err
	}
	return s.collectGarbage()
}

// checkOwned refuses a bbolt file with buckets but no modproxy schema.
func checkOwned(tx *bbolt.Tx) error {
	if sys := tx.Bucket(bucketSys); sys != nil && sys.Get(sysSchema) != nil {
		return nil
	}
	var names []string
	err := tx.ForEach(func(name []byte, _ *bbolt.Bucket) error {
		names = append(names, string(name))
		return nil
	})
	if err != nil {
		return err
	}
	if len(names) > 0 {
		return fmt.Errorf("%w: a bbolt file with buckets %q but no modproxy schema; refusing to write to it", ErrNotStore, names)
	}
	return nil
}

func checkSchema(sys *bbolt.Bucket) error {
	if v := sys.Get(sysSchema); len(v) != 1 || v[0] < minSchemaVersion || v[0] > schemaVersion {
		return fmt.Errorf("unsupported store schema %v (this build reads %d to %d)", v, minSchemaVersion, schemaVersion)
	}
	return nil
}

// collectGarbage deletes the chunks of every blob no record references.
// Such blobs exist only if pending is non-empty (see the invariants), that
// is after a process died mid-Put or mid-Delete, so the full sweep runs only
// then. The sweep seeks blob by blob (not chunk by chunk), and deletion goes
// in transactions of at most gcBatch chunks.
func (s *Store) collectGarbage() error {
	var orphans []uint64
	err := s.view(func(tx *bbolt.Tx) error {
		if k, _ := tx.Bucket(bucketPending).Cursor().First(); k == nil {
			return nil
		}
		referenced := make(map[uint64]struct{})
		err := tx.Bucket(bucketArtifacts).ForEach(func(k, v []byte) error {
			// An undecodable record cannot be read anyway: its blob, if
			// any, is collected rather than failing every Open.
			if blob, err := recordBlob(v); err == nil {
				referenced[blob] = struct{}{}
			}
			return nil
		})
		if err != nil {
			return err
		}
		err = tx.Bucket(bucketQuarantine).ForEach(func(k, v []byte) error {
			if _, _, rec, err := splitQuarantine(v); err == nil {
				if blob, err := recordBlob(rec); err == nil {
					referenced[blob] = struct{}{}
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
		c := tx.Bucket(bucketChunks).Cursor()
		for k, _ := c.First(); k != nil; {
			if len(k) < 8 {
				return fmt.Errorf("%w: chunk key %x", errCorrupt, k)
			}
			blob := binary.BigEndian.Uint64(k)
			if _, ok := referenced[blob]; !ok {
				orphans = append(orphans, blob)
			}
			next := blobPrefix(blob + 1)
			k, _ = c.Seek(next[:])
		}
		// Blobs of their own bucket: one key each.
		return tx.Bucket(bucketBlobs).ForEach(func(k, _ []byte) error {
			if len(k) != 8 {
				return fmt.Errorf("%w: blob key %x", errCorrupt, k)
			}
			if _, ok := referenced[binary.BigEndian.Uint64(k)]; !ok {
				orphans = append(orphans, binary.BigEndian.Uint64(k))
			}
			return nil
		})
	})
	if err != nil {
		return fmt.Errorf("collect garbage: %w", err)
	}
	for _, blob := range orphans {
		if err := s.discard(blob); err != nil {
			return fmt.Errorf("collect garbage: %w", err)
		}
	}
	// What is left in pending had no chunks (killed before its first
	// staging commit had any, or a finished discard); pending is small.
	err = s.update(func(tx *bbolt.Tx) error {
		p := tx.Bucket(bucketPending)
		c := p.Cursor()
		for k, _ := c.First(); k != nil; k, _ = c.First() {
			if err := c.Delete(); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("collect garbage: clear pending: %w", err)
	}
	return nil
}

// discard deletes the chunks of blob, then its pending entry. blob must be
// in pending or unreferenced already, so a crash part-way leaves it for the
// next Open. A blob's own bucket goes with one DeleteBucket, which frees its
// pages without rewriting a leaf, in the first transaction: a blob of
// either layout costs one commit unless it has more than gcBatch chunks in
// the shared bucket, which go at most gcBatch per transaction, since each
// delete rewrites its leaf.
func (s *Store) discard(blob uint64) error {
	prefix := blobPrefix(blob)
	for done := false; !done; {
		err := s.update(func(tx *bbolt.Tx) error {
			if err := deleteOwnBucket(tx, prefix); err != nil {
				return err
			}
			c := tx.Bucket(bucketChunks).Cursor()
			// Seek afresh after each delete: a bbolt cursor's Next after
			// Delete can skip a key.
			for n := 0; n < gcBatch; n++ {
				k, _ := c.Seek(prefix[:])
				if k == nil || !bytes.HasPrefix(k, prefix[:]) {
					done = true
					return tx.Bucket(bucketPending).Delete(prefix[:])
				}
				if err := c.Delete(); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("discard blob %d: %w", blob, err)
		}
	}
	return nil
}

// deleteOwnBucket deletes the bucket of the blob with prefix in blobs, if
// it has one.
func deleteOwnBucket(tx *bbolt.Tx, prefix [8]byte) error {
	blobs := tx.Bucket(bucketBlobs)
	err := blobs.DeleteBucket(prefix[:])
	switch {
	case errors.Is(err, berrors.ErrBucketNotFound):
		return nil
	case errors.Is(err, berrors.ErrIncompatibleValue):
		// A value where the blob's bucket belongs: damage, and
		// unreferenced like the rest of the blob.
		return blobs.Delete(prefix[:])
	}
	return err
}

// Close closes the store. Readers opened from it fail afterwards.
func (s *Store) Close() error {
	if s.file != nil {
		s.file.Close()
	}
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("close store %s: %w", s.path, err)
	}
	return nil
}

// Path returns the file name the store was opened with.
func (s *Store) Path() string { return s.path }

// Ping commits a tiny write transaction (a heartbeat time), proving the
// file is open, locked by us and writable, for /readyz.
func (s *Store) Ping() error {
	err := s.update(func(tx *bbolt.Tx) error {
		return tx.Bucket(bucketSys).Put(sysHeartbeat, appendTime(nil, s.now()))
	})
	if err != nil {
		return fmt.Errorf("ping store %s: %w", s.path, err)
	}
	return nil
}

// Stats describes the store's content.
type Stats struct {
	Artifacts        map[Kind]int64 // published artifacts per kind
	Bytes            map[Kind]int64 // content bytes of published artifacts per kind
	Quarantined      int64          // quarantined artifacts
	QuarantinedBytes int64          // their content bytes
	Pending          int64          // blobs being staged or awaiting deletion
	FileSize         int64          // size of the database file
}

// Stats returns counters maintained on every change, without a scan.
func (s *Store) Stats() (Stats, error) {
	st := Stats{Artifacts: make(map[Kind]int64, 3), Bytes: make(map[Kind]int64, 3)}
	err := s.view(func(tx *bbolt.Tx) error {
		sys := tx.Bucket(bucketSys)
		for _, k := range []Kind{KindInfo, KindMod, KindZip} {
			n, b := counterKeys(k)
			st.Artifacts[k] = readCounter(sys.Get(n))
			st.Bytes[k] = readCounter(sys.Get(b))
		}
		st.Quarantined = readCounter(sys.Get(counterQuarantineN))
		st.QuarantinedBytes = readCounter(sys.Get(counterQuarantineB))
		st.Pending = int64(tx.Bucket(bucketPending).Stats().KeyN)
		st.FileSize = tx.Size()
		return nil
	})
	if err != nil {
		return Stats{}, fmt.Errorf("store stats: %w", err)
	}
	return st, nil
}

// addCounter adds delta to the int64 counter at key in the sys bucket.
func addCounter(tx *bbolt.Tx, key []byte, delta int64) error {
	sys := tx.Bucket(bucketSys)
	v := readCounter(sys.Get(key)) + delta
	return sys.Put(key, binary.BigEndian.AppendUint64(make([]byte, 0, 8), uint64(v)))
}

// count records n artifacts of kind with size bytes being published
// (n = 1) or removed (n = -1).
func count(tx *bbolt.Tx, kind Kind, n, size int64) error {
	nk, bk := counterKeys(kind)
	if err := addCounter(tx, nk, n); err != nil {
		return err
	}
	return addCounter(tx, bk, n*size)
}

func countQuarantine(tx *bbolt.Tx, n, size int64) error {
	if err := addCounter(tx, counterQuarantineN, n); err != nil {
		return err
	}
	return addCounter(tx, counterQuarantineB, n*size)
}
