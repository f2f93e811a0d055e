package main

import (
	"bytes"
	"testing"

	"go.etcd.io/bbolt"
)

// corruptZipChunk flips a byte inside every stored chunk that starts a zip
// (the local-file-header signature), as a failing disk or an operator
// editing the file might, bypassing the store's API.
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
		bad := map[string][]byte{}
		c := b.Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			if bytes.HasPrefix(v, []byte("PK\x03\x04")) && len(v) > 80 {
				nv := append([]byte(nil), v...)
				nv[len(nv)/2] ^= 0xff
				bad[string(k)] = nv
			}
		}
		if len(bad) == 0 {
			t.Fatal("no zip chunk found")
		}
		for k, v := range bad {
			if err := b.Put([]byte(k), v); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
