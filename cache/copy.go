package cache

import (
	"bytes"
	"errors"
	"fmt"

	"go.etcd.io/bbolt"

	"github.com/modproxy/modproxy/cache/internal/grant"
)

// CopyStats counts what a copy wrote into the destination store.
type CopyStats struct {
	Artifacts int   // artifacts published in the destination
	Bytes     int64 // their content bytes
	Existing  int   // artifacts the destination already held (left as they were)
}

// CopyTo copies every published artifact of s for which keep returns true
// (every artifact when keep is nil) into dst, with its Meta (hash, upstream,
// creation time, state). It is for cache/gate (see Put). Each artifact is published in dst the way Put publishes:
// whole or not at all, its size and SHA-256 checked against the source
// record. Artifacts dst already holds are left untouched (artifacts are
// immutable). Quarantined copies are not copied.
func (s *Store) CopyTo(dst *Store, keep func(Key, Meta) bool, _ grant.Write) (CopyStats, error) {
	return s.copyTo(dst, keep)
}

func (s *Store) copyTo(dst *Store, keep func(Key, Meta) bool) (CopyStats, error) {
	var st CopyStats
	if s == dst {
		return st, errors.New("copy store: source and destination are the same store")
	}
	var keys []Key
	err := s.Walk(func(k Key, m Meta) error {
		if keep == nil || keep(k, m) {
			keys = append(keys, k)
		}
		return nil
	})
	if err != nil {
		return st, fmt.Errorf("copy store %s: %w", s.path, err)
	}
	for _, k := range keys {
		if _, err := dst.Stat(k); err == nil {
			st.Existing++
			continue
		} else if !errors.Is(err, ErrNotFound) {
			return st, fmt.Errorf("copy %s: %w", k, err)
		}
		r, err := s.Open(k)
		if errors.Is(err, ErrNotFound) {
			continue // deleted or quarantined since the walk
		}
		if err != nil {
			return st, fmt.Errorf("copy %s: %w", k, err)
		}
		m := r.Meta()
		_, err = dst.put(k, r, m)
		r.Close()
		if err != nil {
			return st, fmt.Errorf("copy %s to %s: %w", k, dst.path, err)
		}
		st.Artifacts++
		st.Bytes += m.Size
	}
	return st, nil
}

// rawPair is a raw key/value pair read from a source bucket.
type rawPair struct{ k, v []byte }

// CopyMetaTo copies the mutable entries of s whose key keep accepts (every
// entry when keep is nil) into dst, keeping their fetched times. An entry
// dst already holds is replaced only when overwrite is set. It returns the
// number of entries written. Entries are written a batch per transaction.
func (s *Store) CopyMetaTo(dst *Store, keep func(key string) bool, overwrite bool) (int, error) {
	if dst.readOnly {
		return 0, fmt.Errorf("copy meta to %s: %w", dst.path, errReadOnly)
	}
	n, err := copyPairs(s, dst, bucketEntries, nil, overwrite,
		func(k, v []byte) (bool, error) {
			if _, err := decodeEntry(v); err != nil {
				return false, fmt.Errorf("meta %q: %w", k, err)
			}
			return keep == nil || keep(string(k)), nil
		},
		func(tx *bbolt.Tx) (*bbolt.Bucket, error) { return tx.Bucket(bucketEntries), nil })
	if err != nil {
		return n, fmt.Errorf("copy meta from %s to %s: %w", s.path, dst.path, err)
	}
	return n, nil
}

// copyPairs copies the pairs of bucket (nested in parent when non-nil) of
// s that accept keeps into the bucket of dst that dstBucket returns, a
// batch per transaction. Keys dst holds already are replaced only when
// overwrite is set. It returns the number of pairs written.
func copyPairs(s, dst *Store, bucket, parent []byte, overwrite bool,
	accept func(k, v []byte) (bool, error), dstBucket func(*bbolt.Tx) (*bbolt.Bucket, error)) (int, error) {
	n := 0
	var batch []rawPair
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		err := dst.update(func(tx *bbolt.Tx) error {
			b, err := dstBucket(tx)
			if err != nil {
				return err
			}
			for _, p := range batch {
				if !overwrite && b.Get(p.k) != nil {
					continue
				}
				if err := b.Put(p.k, p.v); err != nil {
					return err
				}
				n++
			}
			return nil
		})
		batch = batch[:0]
		return err
	}
	err := walkBatched(s, bucket, parent, nil,
		func(k, v []byte) (rawPair, error) {
			ok, err := accept(k, v)
			if err != nil || !ok {
				return rawPair{}, err
			}
			return rawPair{bytes.Clone(k), bytes.Clone(v)}, nil
		},
		func(p rawPair) error {
			if p.k == nil { // not accepted
				return nil
			}
			batch = append(batch, p)
			if len(batch) == walkBatchSize {
				return flush()
			}
			return nil
		})
	if err == nil {
		err = flush()
	}
	return n, err
}

// KVBuckets returns the names of the key/value buckets (see PutKV), sorted.
func (s *Store) KVBuckets() ([]string, error) {
	var names []string
	err := s.view(func(tx *bbolt.Tx) error {
		return tx.Bucket(bucketKV).ForEachBucket(func(k []byte) error {
			names = append(names, string(k))
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("list key/value buckets of %s: %w", s.path, err)
	}
	return names, nil
}

// CopyKVTo copies the key/value buckets of s that keep accepts (every
// bucket when keep is nil) into dst, a batch of keys per transaction. Keys
// dst already holds keep their value (key/value data is immutable). It
// returns the number of keys written.
func (s *Store) CopyKVTo(dst *Store, keep func(bucket string) bool) (int, error) {
	if dst.readOnly {
		return 0, fmt.Errorf("copy key/value data to %s: %w", dst.path, errReadOnly)
	}
	names, err := s.KVBuckets()
	if err != nil {
		return 0, err
	}
	n := 0
	for _, name := range names {
		if keep != nil && !keep(name) {
			continue
		}
		name := name
		written, err := copyPairs(s, dst, []byte(name), bucketKV, false,
			func(k, v []byte) (bool, error) { return true, nil },
			func(tx *bbolt.Tx) (*bbolt.Bucket, error) {
				return tx.Bucket(bucketKV).CreateBucketIfNotExists([]byte(name))
			})
		n += written
		if err != nil {
			return n, fmt.Errorf("copy key/value bucket %s from %s to %s: %w", name, s.path, dst.path, err)
		}
	}
	return n, nil
}
