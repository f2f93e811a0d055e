package lru_test

import (
	"bytes"
	"math/rand/v2"
	"testing"

	"github.com/modproxy/modproxy/cache"
	"github.com/modproxy/modproxy/cache/internal/grant"
	"github.com/modproxy/modproxy/cache/lru"
)

func mustPut(t *testing.T, b *lru.Store, k cache.Key, n int) []byte {
	t.Helper()
	data := make([]byte, n)
	for i := range data {
		data[i] = byte(rand.Uint32())
	}
	if _, err := b.Put(k, bytes.NewReader(data), cache.Meta{}, grant.Write{}); err != nil {
		t.Fatal(err)
	}
	return data
}
