// Package storedamage damages a cache.Store's bbolt file behind the
// store's back, the way a failing disk or an operator editing the file
// would, for tests of what the proxy does with damaged content. It knows
// the chunk layout of the package comment of cache: the shared chunks
// bucket and the blobs' own buckets (schema 3).
package storedamage

import (
	"encoding/binary"
	"testing"

	"go.etcd.io/bbolt"
)

// FlipChunks flips one byte of every stored chunk for which match reports
// true, given the chunk's index within its blob and its stored bytes
// (content and checksum trailer). The store file at path must not be open.
// It fails t if no chunk matched.
func FlipChunks(t testing.TB, path string, match func(idx uint32, v []byte) bool) {
	t.Helper()
	db, err := bbolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	n := 0
	err = db.Update(func(tx *bbolt.Tx) error {
		flip := func(b *bbolt.Bucket, idx func(k []byte) (uint32, bool)) error {
			bad := map[string][]byte{}
			err := b.ForEach(func(k, v []byte) error {
				if i, ok := idx(k); ok && v != nil && match(i, v) {
					nv := append([]byte(nil), v...)
					nv[len(nv)/3] ^= 0x01
					bad[string(k)] = nv
				}
				return nil
			})
			if err != nil {
				return err
			}
			for k, v := range bad {
				if err := b.Put([]byte(k), v); err != nil {
					return err
				}
			}
			n += len(bad)
			return nil
		}
		if b := tx.Bucket([]byte("chunks")); b != nil {
			err := flip(b, func(k []byte) (uint32, bool) {
				if len(k) != 12 {
					return 0, false
				}
				return binary.BigEndian.Uint32(k[8:]), true
			})
			if err != nil {
				return err
			}
		}
		blobs := tx.Bucket([]byte("blobs"))
		if blobs == nil {
			return nil
		}
		return blobs.ForEach(func(k, _ []byte) error {
			b := blobs.Bucket(k)
			if b == nil {
				return nil
			}
			return flip(b, func(k []byte) (uint32, bool) {
				if len(k) != 4 {
					return 0, false
				}
				return binary.BigEndian.Uint32(k), true
			})
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	if n == 0 {
		t.Fatal("no stored chunk to damage")
	}
}
