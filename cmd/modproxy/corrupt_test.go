package main

import (
	"bytes"
	"testing"

	"go.etcd.io/bbolt"
)

// corruptZipChunk flips a byte inside the first stored chunk that holds a
// zip (it starts with the local-file-header signature), as a disk or an
// operator editing the file might, bypassing the store's API.
func corruptZipChunk(t *testing.T, path string) {
	t.Helper()
	db, err := bbolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket([]byte("chunks"))
		if b == nil {
			t.Fatal("no chunks bucket")
		}
		c := b.Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			if bytes.HasPrefix(v, []byte("PK\x03\x04")) && len(v) > 80 {
				bad := append([]byte(nil), v...)
				bad[len(bad)/2] ^= 0xff
				return b.Put(append([]byte(nil), k...), bad)
			}
		}
		t.Fatal("no zip chunk found")
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
