package cache

import (
	"bytes"
	"fmt"

	"go.etcd.io/bbolt"
)

// GetEntry returns the mutable entry at key, wrapping ErrNotFound.
func (s *Store) GetEntry(key string) (Entry, error) {
	var e Entry
	err := s.view(func(tx *bbolt.Tx) (err error) {
		v := tx.Bucket(bucketEntries).Get([]byte(key))
		if v == nil {
			return ErrNotFound
		}
		e, err = decodeEntry(v)
		return err
	})
	if err != nil {
		return Entry{}, fmt.Errorf("get entry %q: %w", key, err)
	}
	return e, nil
}

// PutEntry replaces the mutable entry at key, with Fetched set to now.
func (s *Store) PutEntry(key string, value []byte) error {
	v := appendEntry(make([]byte, 0, 16+len(value)), s.now(), value)
	err := s.batch(func(tx *bbolt.Tx) error {
		return tx.Bucket(bucketEntries).Put([]byte(key), v)
	})
	if err != nil {
		return fmt.Errorf("put entry %q: %w", key, err)
	}
	return nil
}

// SwapEntry replaces the entry at key with new if its value is old, in one
// transaction (compare-and-swap), and reports whether it did. An empty old
// means the key must be absent. It keeps a shared value such as the
// checksum database's tree head from being overwritten with an older one by
// a concurrent writer that read it before.
func (s *Store) SwapEntry(key string, old, new []byte) (bool, error) {
	v := appendEntry(make([]byte, 0, 16+len(new)), s.now(), new)
	swapped := false
	err := s.batch(func(tx *bbolt.Tx) error {
		swapped = false
		b := tx.Bucket(bucketEntries)
		if cur := b.Get([]byte(key)); cur == nil {
			if len(old) != 0 {
				return nil
			}
		} else {
			e, err := decodeEntry(cur)
			if err != nil {
				return err
			}
			if len(old) == 0 || !bytes.Equal(e.Value, old) {
				return nil
			}
		}
		swapped = true
		return b.Put([]byte(key), v)
	})
	if err != nil {
		return false, fmt.Errorf("swap entry %q: %w", key, err)
	}
	return swapped, nil
}

// WalkEntries calls fn for every entry whose key starts with prefix, in key
// order, outside any transaction (see Walk).
func (s *Store) WalkEntries(prefix string, fn func(key string, e Entry) error) error {
	type item struct {
		k string
		e Entry
	}
	err := walkBatched(s, bucketEntries, nil, []byte(prefix),
		func(k, v []byte) (item, error) {
			e, err := decodeEntry(v)
			if err != nil {
				return item{}, fmt.Errorf("entry %q: %w", k, err)
			}
			return item{string(k), e}, nil
		},
		func(it item) error { return fn(it.k, it.e) })
	if err != nil {
		return fmt.Errorf("walk entries %q: %w", prefix, err)
	}
	return nil
}

// GetKV returns a copy of the value at key in bucket, wrapping ErrNotFound
// if either is missing.
func (s *Store) GetKV(bucket, key string) ([]byte, error) {
	var out []byte
	err := s.view(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketKV).Bucket([]byte(bucket))
		if b == nil {
			return ErrNotFound
		}
		v := b.Get([]byte(key))
		if v == nil {
			return ErrNotFound
		}
		out = bytes.Clone(v)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("get %s/%s: %w", bucket, key, err)
	}
	return out, nil
}

// PutKV stores value at key in bucket, creating the bucket. The data is
// meant to be immutable (tiles, lookups); a second Put replaces the value.
func (s *Store) PutKV(bucket, key string, value []byte) error {
	if bucket == "" {
		return fmt.Errorf("put %s/%s: empty bucket name", bucket, key)
	}
	err := s.batch(func(tx *bbolt.Tx) error {
		b, err := tx.Bucket(bucketKV).CreateBucketIfNotExists([]byte(bucket))
		if err != nil {
			return err
		}
		return b.Put([]byte(key), value)
	})
	if err != nil {
		return fmt.Errorf("put %s/%s: %w", bucket, key, err)
	}
	return nil
}

// DeleteKV removes key from bucket; a missing key or bucket is no error.
// It is for data found bad (a checksum-database tile or record that fails
// authentication), which must not be served again.
func (s *Store) DeleteKV(bucket, key string) error {
	err := s.batch(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketKV).Bucket([]byte(bucket))
		if b == nil {
			return nil
		}
		return b.Delete([]byte(key))
	})
	if err != nil {
		return fmt.Errorf("delete %s/%s: %w", bucket, key, err)
	}
	return nil
}

// WalkKV calls fn for every key in bucket, in key order, outside any
// transaction (see Walk). A missing bucket is empty.
func (s *Store) WalkKV(bucket string, fn func(key string, value []byte) error) error {
	type item struct {
		k string
		v []byte
	}
	err := walkBatched(s, []byte(bucket), bucketKV, nil,
		func(k, v []byte) (item, error) { return item{string(k), bytes.Clone(v)}, nil },
		func(it item) error { return fn(it.k, it.v) })
	if err != nil {
		return fmt.Errorf("walk %s: %w", bucket, err)
	}
	return nil
}
