package lru

import (
	"bytes"
	"errors"
	"path/filepath"
	"testing"

	"github.com/modproxy/modproxy/cache"
	"github.com/modproxy/modproxy/cache/internal/grant"
)

// TestOpenRefusesZipBeingEvicted: while eviction deletes a zip outside
// the lock, Open answers not found rather than start a reader on it.
func TestOpenRefusesZipBeingEvicted(t *testing.T) {
	s, err := cache.Open(filepath.Join(t.TempDir(), "store.db"), cache.Options{ChunkSize: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	b, err := New(s, 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := b.Wait(); err != nil {
		t.Fatal(err)
	}
	k := cache.Key{Path: "example.com/m", Version: "v1.0.0", Kind: cache.KindZip}
	if _, err := b.Put(k, bytes.NewReader(bytes.Repeat([]byte("z"), 1000)), cache.Meta{}, grant.Write{}); err != nil {
		t.Fatal(err)
	}
	b.mu.Lock()
	b.items[k].Value.(*item).evicting = true
	b.mu.Unlock()
	if r, err := b.Open(k); !errors.Is(err, cache.ErrNotFound) {
		if r != nil {
			r.Close()
		}
		t.Fatalf("Open of a zip being evicted: %v, want not found", err)
	}
	b.mu.Lock()
	b.items[k].Value.(*item).evicting = false
	b.mu.Unlock()
	r, err := b.Open(k)
	if err != nil {
		t.Fatalf("Open after the eviction gave up: %v", err)
	}
	r.Close()
}
