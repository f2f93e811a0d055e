package cache

import (
	"testing"
	"time"
)

// FuzzDecodeRecord feeds artifact records of every format, and damaged
// ones, to the decoder, which reads them from a file that may be damaged.
// It must never panic, and a record it accepts must encode and decode to
// itself.
func FuzzDecodeRecord(f *testing.F) {
	key := appendArtifactKey(nil, Key{"example.com/m", "v1.0.0", KindZip})
	base := record{
		Meta: Meta{Size: 3 << 20, Created: time.Unix(1700000000, 5).UTC(), Hash: "h1:abc=", Upstream: "http://127.0.0.1:1", State: StateVerified, Proof: "proof"},
		blob: 7, chunkSize: 512 << 10, chunks: 6,
	}
	for _, r := range []record{
		base,
		func() record { r := base; r.checksummed = true; return r }(),
		func() record { r := base; r.checksummed, r.ownBucket = true, true; return r }(),
		{Meta: Meta{State: StateUnverified}, chunkSize: 1},
	} {
		b := appendRecord(nil, key, &r)
		f.Add(key, b)
		f.Add(key, b[:len(b)-1])
		f.Add(key[1:], b)
	}
	f.Fuzz(func(t *testing.T, key, b []byte) {
		r, err := decodeRecord(key, b)
		if _, berr := recordBlob(b); err == nil && berr != nil {
			t.Fatalf("record decodes but its blob does not: %v", berr)
		}
		if err != nil {
			return
		}
		if r.ownBucket && !r.checksummed {
			t.Fatal("own-bucket record without chunk checksums")
		}
		again, err := decodeRecord(key, appendRecord(nil, key, &r))
		if err != nil {
			t.Fatalf("re-encoded record does not decode: %v", err)
		}
		if again.Meta != r.Meta || again.blob != r.blob || again.chunkSize != r.chunkSize || again.chunks != r.chunks ||
			again.checksummed != r.checksummed || again.ownBucket != r.ownBucket {
			t.Fatalf("round trip changed the record:\n%+v\n%+v", r, again)
		}
	})
}
