// Package lru bounds a bbolt store's content with least-recently-used
// eviction of zips (--cache-size). It wraps a *cache.Store and passes
// everything through, recording which artifacts are read; when committed
// content exceeds the limit, the zips read longest ago are deleted. An
// evicted zip is fetched again when next asked for (from the upstream, or
// from S3 in tiered mode).
//
// Only zips are evicted: they are nearly all of a store's bytes, while .info
// and .mod files are small and answer list and @latest lookups. A zip being
// read is never evicted under its reader. Recency lives in memory; at Open
// it starts from the artifacts' commit times (one walk over the records,
// not the content, in the background). The bbolt file does not shrink when zips are deleted:
// bbolt reuses the freed pages for new content, so the file stays near the
// limit rather than growing past it.
package lru

import (
	"container/list"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/modproxy/modproxy/cache"
	"github.com/modproxy/modproxy/cache/internal/grant"
)

// Store is a size-bounded *cache.Store. It is safe for concurrent use.
type Store struct {
	*cache.Store
	limit int64 // content bytes; 0: unbounded (recency is still tracked)

	mu    sync.Mutex
	order *list.List // of *item, most recently used first
	items map[cache.Key]*list.Element
	used  int64 // content bytes of every artifact (all kinds)

	stop      chan struct{}
	loaded    chan struct{} // closed when the background walk is done
	loadErr   error         // set before loaded is closed
	known     atomic.Bool   // the walk has added every stored artifact
	closeOnce sync.Once

	evictions     atomic.Int64
	evictedBytes  atomic.Int64
	evictFailures atomic.Int64
}

type item struct {
	key     cache.Key
	size    int64
	readers int // open readers; an item with readers is not evicted
	// evicting is set while the item is deleted outside the lock; Open
	// treats it as gone, so no reader starts on a zip being deleted.
	evicting bool
}

// New wraps s with a limit of limit content bytes (0: none). It learns
// what the store holds (oldest commit least recent) by walking the records
// in the background, so that opening costs the same whatever the store's
// size; eviction starts once that walk is done. Close stops it.
func New(s *cache.Store, limit int64) (*Store, error) {
	if limit < 0 {
		return nil, fmt.Errorf("cache size limit %d: must not be negative", limit)
	}
	b := &Store{Store: s, limit: limit, order: list.New(), items: map[cache.Key]*list.Element{},
		stop: make(chan struct{}), loaded: make(chan struct{})}
	go b.load()
	return b, nil
}

var errStopped = errors.New("stopped")

// load seeds recency from the records. Artifacts touched meanwhile are
// more recent than any it adds.
func (b *Store) load() {
	defer close(b.loaded)
	type rec struct {
		k       cache.Key
		size    int64
		created time.Time
	}
	var recs []rec
	err := b.Store.Walk(func(k cache.Key, m cache.Meta) error {
		select {
		case <-b.stop:
			return errStopped
		default:
		}
		recs = append(recs, rec{k, m.Size, m.Created})
		return nil
	})
	if err != nil {
		b.loadErr = err
		return
	}
	slices.SortStableFunc(recs, func(a, b rec) int { return b.created.Compare(a.created) })
	b.mu.Lock()
	for _, r := range recs {
		if _, ok := b.items[r.k]; !ok {
			b.items[r.k] = b.order.PushBack(&item{key: r.k, size: r.size})
			b.used += r.size
		}
	}
	b.mu.Unlock()
	b.known.Store(true)
	b.evict(cache.Key{})
}

// Wait waits until the store's content is known (the background walk of
// New is done) and returns its error, if any.
func (b *Store) Wait() error {
	<-b.loaded
	return b.loadErr
}

// Close stops the background walk; it does not close the wrapped store.
func (b *Store) Close() error {
	b.closeOnce.Do(func() { close(b.stop) })
	<-b.loaded
	return nil
}

// Limit is the configured limit in bytes (0: none).
func (b *Store) Limit() int64 { return b.limit }

// Used is the content bytes of the stored artifacts.
func (b *Store) Used() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.used
}

// Evictions returns the zips evicted so far and their bytes, and how many
// evictions failed.
func (b *Store) Evictions() (n, bytes, failed int64) {
	return b.evictions.Load(), b.evictedBytes.Load(), b.evictFailures.Load()
}

// touch marks k used now, adding it if unknown; it returns its item.
func (b *Store) touch(k cache.Key, size int64) *item {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.touchLocked(k, size)
}

func (b *Store) touchLocked(k cache.Key, size int64) *item {
	if e, ok := b.items[k]; ok {
		b.order.MoveToFront(e)
		return e.Value.(*item)
	}
	it := &item{key: k, size: size}
	b.items[k] = b.order.PushFront(it)
	b.used += size
	return it
}

func (b *Store) forget(k cache.Key) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if e, ok := b.items[k]; ok {
		b.order.Remove(e)
		delete(b.items, k)
		b.used -= e.Value.(*item).size
	}
}

// evict deletes least recently used zips (never keep, never one being
// read) until the content fits the limit.
func (b *Store) evict(keep cache.Key) {
	if b.limit <= 0 {
		return
	}
	if !b.known.Load() {
		return // load evicts once it knows the whole content
	}
	for {
		b.mu.Lock()
		var victim *item
		for e := b.order.Back(); e != nil && b.used > b.limit; e = e.Prev() {
			it := e.Value.(*item)
			if it.key.Kind == cache.KindZip && it.key != keep && it.readers == 0 && !it.evicting {
				victim = it
				break
			}
		}
		if victim == nil {
			b.mu.Unlock()
			return
		}
		// Delete outside the lock (a write transaction with an fsync must
		// not stall every warm read that records its use); Open refuses
		// the victim meanwhile, so no reader starts on a zip being deleted.
		victim.evicting = true
		b.mu.Unlock()
		err := b.Store.Delete(victim.key)
		b.mu.Lock()
		victim.evicting = false
		if err != nil && !errors.Is(err, cache.ErrNotFound) {
			b.mu.Unlock()
			b.evictFailures.Add(1)
			return // try again on the next put
		}
		if e := b.items[victim.key]; e != nil && e.Value.(*item) == victim {
			b.order.Remove(e)
			delete(b.items, victim.key)
			b.used -= victim.size
		}
		b.mu.Unlock()
		b.evictions.Add(1)
		b.evictedBytes.Add(victim.size)
	}
}

// Stat is cache.Store's Stat, counting as a use.
func (b *Store) Stat(k cache.Key) (cache.Meta, error) {
	m, err := b.Store.Stat(k)
	if err == nil {
		b.touch(k, m.Size)
	}
	return m, err
}

// Get is cache.Store's Get, counting as a use.
func (b *Store) Get(k cache.Key) ([]byte, cache.Meta, error) {
	data, m, err := b.Store.Get(k)
	if err == nil {
		b.touch(k, m.Size)
	}
	return data, m, err
}

// Open is cache.Store's Open; the artifact is not evicted while the
// reader is open.
func (b *Store) Open(k cache.Key) (cache.ArtifactReader, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if e := b.items[k]; e != nil && e.Value.(*item).evicting {
		return nil, fmt.Errorf("open %s: being evicted: %w", k, cache.ErrNotFound)
	}
	r, err := b.Store.Open(k)
	if err != nil {
		return nil, err
	}
	it := b.touchLocked(k, r.Size())
	it.readers++
	return &reader{ArtifactReader: r, b: b, it: it}, nil
}

// Put is cache.Store's Put, then evicts what no longer fits.
func (b *Store) Put(k cache.Key, r io.Reader, m cache.Meta, w grant.Write) (cache.Meta, error) {
	stored, err := b.Store.Put(k, r, m, w)
	if err != nil {
		return stored, err
	}
	b.touch(k, stored.Size)
	b.evict(k)
	return stored, nil
}

// Delete is cache.Store's Delete.
func (b *Store) Delete(k cache.Key) error {
	err := b.Store.Delete(k)
	b.forget(k)
	return err
}

// Quarantine is cache.Store's Quarantine.
func (b *Store) Quarantine(k cache.Key, reason string) error {
	err := b.Store.Quarantine(k, reason)
	if err == nil {
		b.forget(k)
	}
	return err
}

type reader struct {
	cache.ArtifactReader
	b    *Store
	it   *item
	once sync.Once
}

func (r *reader) Close() error {
	r.once.Do(func() {
		r.b.mu.Lock()
		r.it.readers--
		r.b.mu.Unlock()
	})
	return r.ArtifactReader.Close()
}
