package cache_test

import (
	"path/filepath"
	"testing"

	"github.com/modproxy/modproxy/cache"
	"github.com/modproxy/modproxy/cache/storetest"
)

func TestCompliance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) storetest.Backend {
		s, err := cache.Open(filepath.Join(t.TempDir(), "store.db"), cache.Options{ChunkSize: 64 << 10})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := s.Close(); err != nil {
				t.Error(err)
			}
		})
		return s
	})
}
