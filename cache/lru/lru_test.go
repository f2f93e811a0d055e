package lru_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"testing"

	"github.com/modproxy/modproxy/cache"
	"github.com/modproxy/modproxy/cache/lru"
	"github.com/modproxy/modproxy/cache/storetest"
)

func open(t *testing.T, limit int64) *lru.Store {
	t.Helper()
	s, err := cache.Open(filepath.Join(t.TempDir(), "store.db"), cache.Options{ChunkSize: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	b, err := lru.New(s, limit)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() }) // before the store closes
	if err := b.Wait(); err != nil {
		t.Fatal(err)
	}
	return b
}

func TestCompliance(t *testing.T) {
	// Unbounded: a bound evicts by design, which the suite does not expect.
	storetest.Run(t, func(t *testing.T) storetest.Backend { return open(t, 0) })
}

func zip(v string) cache.Key {
	return cache.Key{Path: "example.com/m", Version: v, Kind: cache.KindZip}
}

func TestEvictsLeastRecentlyUsedZips(t *testing.T) {
	b := open(t, 3000)
	info := cache.Key{Path: "example.com/m", Version: "v1.0.0", Kind: cache.KindInfo}
	mustPut(t, b, info, 500)
	for i := range 3 {
		mustPut(t, b, zip(fmt.Sprintf("v1.0.%d", i)), 800)
	}
	// Use v1.0.0 so that v1.0.1 is the least recently used zip.
	if _, err := b.Stat(zip("v1.0.0")); err != nil {
		t.Fatal(err)
	}
	mustPut(t, b, zip("v1.0.3"), 800) // 500 + 4*800 = 3700 > 3000
	if _, err := b.Stat(zip("v1.0.1")); !errors.Is(err, cache.ErrNotFound) {
		t.Errorf("least recently used zip: %v, want evicted", err)
	}
	for _, k := range []cache.Key{info, zip("v1.0.0"), zip("v1.0.2"), zip("v1.0.3")} {
		if _, err := b.Stat(k); err != nil {
			t.Errorf("%s: %v, want kept", k, err)
		}
	}
	if n, by, failed := b.Evictions(); n != 1 || by != 800 || failed != 0 {
		t.Errorf("evictions %d (%d bytes, %d failed), want 1 (800)", n, by, failed)
	}
	if b.Used() > b.Limit() {
		t.Errorf("used %d over the limit %d", b.Used(), b.Limit())
	}
}

func TestReadZipIsNotEvicted(t *testing.T) {
	b := open(t, 1000)
	data := mustPut(t, b, zip("v1.0.0"), 900)
	r, err := b.Open(zip("v1.0.0"))
	if err != nil {
		t.Fatal(err)
	}
	mustPut(t, b, zip("v1.0.1"), 900) // over the limit; v1.0.0 is being read
	got, err := io.ReadAll(r)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("reader of a zip over the limit: %d bytes, %v", len(got), err)
	}
	r.Close()
	mustPut(t, b, zip("v1.0.2"), 900)
	if _, err := b.Stat(zip("v1.0.0")); !errors.Is(err, cache.ErrNotFound) {
		t.Errorf("after its reader closed, the old zip: %v, want evicted", err)
	}
}

func TestRecencySurvivesReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "store.db")
	s, err := cache.Open(path, cache.Options{})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := lru.New(s, 0)
	for i := range 4 {
		mustPut(t, b, zip(fmt.Sprintf("v1.0.%d", i)), 1000)
	}
	b.Close()
	s.Close()
	s, err = cache.Open(path, cache.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	b, err = lru.New(s, 2500) // over the limit at open: the oldest go
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := b.Wait(); err != nil {
		t.Fatal(err)
	}
	if b.Used() > 2500 {
		t.Errorf("used %d after opening with a smaller limit", b.Used())
	}
	if _, err := b.Stat(zip("v1.0.3")); err != nil {
		t.Errorf("newest zip: %v", err)
	}
	if _, err := b.Stat(zip("v1.0.0")); !errors.Is(err, cache.ErrNotFound) {
		t.Errorf("oldest zip: %v, want evicted", err)
	}
	if _, err := lru.New(s, -1); err == nil {
		t.Error("negative limit accepted")
	}
}
