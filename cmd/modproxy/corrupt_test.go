package main

import (
	"bytes"
	"testing"

	"github.com/modproxy/modproxy/cache/storedamage"
)

// corruptZipChunk flips a byte inside every stored chunk that starts a zip
// (the local-file-header signature), as a failing disk or an operator
// editing the file might, bypassing the store's API.
func corruptZipChunk(t *testing.T, path string) {
	t.Helper()
	storedamage.FlipChunks(t, path, func(_ uint32, v []byte) bool {
		return bytes.HasPrefix(v, []byte("PK\x03\x04")) && len(v) > 80
	})
}
