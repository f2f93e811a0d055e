// Package tiered puts a replica's local bbolt store (bounded by
// cache/lru) in front of a shared S3 store (cache/s3store).
//
// Artifacts are read from the local tier, then from S3, copying an S3 hit
// into the local tier before it is served (so the next read is local);
// writes go to S3 first, which decides the winner among replicas, then the
// winner's object is copied into the local tier. The local tier is a cache
// of S3: anything in it is in S3 with the same content and Meta, so losing
// it (a new pod, an emptyDir) costs only S3 reads.
//
// Mutable entries (list and @latest answers, the checksum database's tree
// head) live only in S3, shared by every replica; the tree head's
// compare-and-swap needs one copy. Checksum-database tiles and records
// (immutable) are cached locally like artifacts.
package tiered

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sync/atomic"

	"github.com/modproxy/modproxy/cache"
	"github.com/modproxy/modproxy/cache/internal/grant"
	"github.com/modproxy/modproxy/cache/lru"
	"github.com/modproxy/modproxy/cache/s3store"
)

// Store is a local tier over a shared one. It is safe for concurrent use.
type Store struct {
	local  *lru.Store
	remote *s3store.Store

	localHits, remoteHits, misses atomic.Int64
	fillFailures                  atomic.Int64
}

// New returns the tiered store.
func New(local *lru.Store, remote *s3store.Store) *Store {
	return &Store{local: local, remote: remote}
}

// Local is the local tier.
func (s *Store) Local() *lru.Store { return s.local }

// TierStats counts where artifact reads were answered from.
type TierStats struct {
	LocalHits, RemoteHits, Misses int64
	FillFailures                  int64 // S3 hits that could not be copied locally (served from S3)
}

// Stats returns the read counters.
func (s *Store) Stats() TierStats {
	return TierStats{s.localHits.Load(), s.remoteHits.Load(), s.misses.Load(), s.fillFailures.Load()}
}

// fill copies k from S3 into the local tier and reports whether it did.
func (s *Store) fill(k cache.Key) (bool, error) {
	r, err := s.remote.Open(k)
	if err != nil {
		if errors.Is(err, cache.ErrNotFound) {
			s.misses.Add(1)
		}
		return false, err
	}
	defer r.Close()
	s.remoteHits.Add(1)
	if _, err := s.local.Put(k, r, r.Meta(), grant.Write{}); err != nil {
		s.fillFailures.Add(1)
		return false, nil
	}
	return true, nil
}

// Stat returns the Meta from the local tier, else from S3.
func (s *Store) Stat(k cache.Key) (cache.Meta, error) {
	if m, err := s.local.Stat(k); err == nil {
		return m, nil
	}
	return s.remote.Stat(k)
}

// Get returns a small artifact from the local tier, else from S3 (and
// keeps it locally).
func (s *Store) Get(k cache.Key) ([]byte, cache.Meta, error) {
	if data, m, err := s.local.Get(k); err == nil {
		s.localHits.Add(1)
		return data, m, nil
	}
	data, m, err := s.remote.Get(k)
	if err != nil {
		if errors.Is(err, cache.ErrNotFound) {
			s.misses.Add(1)
		}
		return nil, cache.Meta{}, err
	}
	s.remoteHits.Add(1)
	if _, perr := s.local.Put(k, bytes.NewReader(data), m, grant.Write{}); perr != nil {
		s.fillFailures.Add(1)
	}
	return data, m, nil
}

// Open returns a reader from the local tier; on a local miss the artifact
// is first copied from S3 into the local tier (or, if that fails, read
// from S3 directly).
func (s *Store) Open(k cache.Key) (cache.ArtifactReader, error) {
	if r, err := s.local.Open(k); err == nil {
		s.localHits.Add(1)
		return r, nil
	}
	filled, err := s.fill(k)
	if err != nil {
		return nil, err
	}
	if filled {
		if r, err := s.local.Open(k); err == nil {
			return r, nil
		}
	}
	return s.remote.Open(k)
}

// Put writes to S3 (the first replica to write wins), then copies the
// stored object into the local tier. The content is read once, by the S3
// upload; the local copy is read back from S3 so that it is the winner's.
func (s *Store) Put(k cache.Key, r io.Reader, m cache.Meta, w grant.Write) (cache.Meta, error) {
	stored, err := s.remote.Put(k, r, m, w)
	if err != nil {
		return cache.Meta{}, err
	}
	if _, err := s.local.Stat(k); err == nil {
		return stored, nil
	}
	if _, err := s.fill(k); err != nil {
		return cache.Meta{}, fmt.Errorf("put %s: copy into the local tier: %w", k, err)
	}
	return stored, nil
}

// Versions lists from S3, which holds every replica's artifacts.
func (s *Store) Versions(path string) ([]string, error) { return s.remote.Versions(path) }

// Walk walks S3.
func (s *Store) Walk(fn func(cache.Key, cache.Meta) error) error { return s.remote.Walk(fn) }

// Delete removes k from both tiers.
func (s *Store) Delete(k cache.Key) error {
	lerr := s.local.Delete(k)
	rerr := s.remote.Delete(k)
	if rerr != nil && !(errors.Is(rerr, cache.ErrNotFound) && lerr == nil) {
		return rerr
	}
	return nil
}

// Quarantine moves k aside in S3 and drops the local copy.
func (s *Store) Quarantine(k cache.Key, reason string) error {
	if err := s.local.Delete(k); err != nil && !errors.Is(err, cache.ErrNotFound) {
		return fmt.Errorf("quarantine %s: drop the local copy: %w", k, err)
	}
	return s.remote.Quarantine(k, reason)
}

// GetEntry reads S3.
func (s *Store) GetEntry(key string) (cache.Entry, error) { return s.remote.GetEntry(key) }

// PutEntry writes S3.
func (s *Store) PutEntry(key string, value []byte) error { return s.remote.PutEntry(key, value) }

// SwapEntry swaps in S3.
func (s *Store) SwapEntry(key string, old, new []byte) (bool, error) {
	return s.remote.SwapEntry(key, old, new)
}

// GetKV reads the local tier, else S3 (keeping the value locally).
func (s *Store) GetKV(bucket, key string) ([]byte, error) {
	if v, err := s.local.GetKV(bucket, key); err == nil {
		return v, nil
	}
	v, err := s.remote.GetKV(bucket, key)
	if err != nil {
		return nil, err
	}
	_ = s.local.PutKV(bucket, key, v) // a cache fill; S3 has it
	return v, nil
}

// PutKV writes S3, then the local tier.
func (s *Store) PutKV(bucket, key string, value []byte) error {
	if err := s.remote.PutKV(bucket, key, value); err != nil {
		return err
	}
	return s.local.PutKV(bucket, key, value)
}

// DeleteKV removes the value from both tiers.
func (s *Store) DeleteKV(bucket, key string) error {
	return errors.Join(s.remote.DeleteKV(bucket, key), s.local.DeleteKV(bucket, key))
}

// Ping checks both tiers.
func (s *Store) Ping() error {
	return errors.Join(s.local.Ping(), s.remote.Ping())
}

// AcquireFetch takes the S3 store's fetch lease (see
// s3store.Store.AcquireFetch).
func (s *Store) AcquireFetch(ctx context.Context, k cache.Key) (release func(), stored bool, err error) {
	return s.remote.AcquireFetch(ctx, k)
}
