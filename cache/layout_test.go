package cache

import (
	"bytes"
	"errors"
	"fmt"
	"path/filepath"
	"testing"

	"go.etcd.io/bbolt"
)

// TestBlobLayout: content of ownBucketSize and more, declared or not, is
// stored in a bucket of its own; smaller content in the shared chunks
// bucket. Both read back, and Delete leaves neither a bucket nor a chunk.
func TestBlobLayout(t *testing.T) {
	opts := testOptions()
	opts.ChunkSize = 4 << 10
	opts.stageBytes = 16 << 10
	s := openTest(t, opts)
	for i, tc := range []struct {
		size     int
		declared bool
		own      bool
	}{
		{0, false, false},
		{100, true, false},
		{ownBucketSize - 1, true, false},
		{ownBucketSize - 1, false, false},
		{ownBucketSize, true, true},
		{ownBucketSize, false, true},            // published in one transaction
		{3*16<<10 + 5, false, true},             // staged
		{3*16<<10 + 5, true, true},              // staged, declared
		{ownBucketSize + 4<<10 + 1, true, true}, // a short last chunk
	} {
		k := Key{fmt.Sprintf("example.com/m%d", i), "v1.0.0", KindZip}
		data := content(tc.size, uint64(i))
		m := Meta{}
		if tc.declared {
			m.Size = int64(tc.size)
		}
		if _, err := s.put(k, bytes.NewReader(data), m); err != nil {
			t.Fatalf("size %d: %v", tc.size, err)
		}
		rec, err := s.stat(k)
		if err != nil {
			t.Fatal(err)
		}
		if rec.ownBucket != tc.own {
			t.Errorf("size %d (declared %v): own bucket %v, want %v", tc.size, tc.declared, rec.ownBucket, tc.own)
		}
		if got, _, err := s.Get(k); err != nil || !bytes.Equal(got, data) {
			t.Errorf("size %d: Get: %v, equal %v", tc.size, err, bytes.Equal(got, data))
		}
		if got := readAll(t, s, k); !bytes.Equal(got, data) {
			t.Errorf("size %d: Open and read: wrong bytes", tc.size)
		}
	}
	checkInvariants(t, s)
	for i := range 9 {
		if err := s.Delete(Key{fmt.Sprintf("example.com/m%d", i), "v1.0.0", KindZip}); err != nil {
			t.Fatal(err)
		}
	}
	if chunks, pending := countChunks(t, s); chunks != 0 || pending != 0 {
		t.Errorf("after deleting everything: %d chunks, %d pending", chunks, pending)
	}
	s.view(func(tx *bbolt.Tx) error {
		if n := tx.Bucket(bucketBlobs).Stats().BucketN; n != 1 { // itself
			t.Errorf("after deleting everything: %d blob buckets left", n-1)
		}
		return nil
	})
}

// TestDeletedOwnBucketWhileReading: a Reader whose artifact is deleted
// under it fails with ErrNotFound, as with shared chunks.
func TestDeletedOwnBucketWhileReading(t *testing.T) {
	s := openTest(t, testOptions())
	k := Key{"example.com/m", "v1.0.0", KindZip}
	put(t, s, k, content(ownBucketSize*2, 1))
	r, err := s.Open(k)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if err := s.Delete(k); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Read(make([]byte, 10)); !errors.Is(err, ErrNotFound) {
		t.Errorf("read after Delete: %v, want ErrNotFound", err)
	}
}

// TestChunkUnderAnotherOwnBucket: a chunk that turns up in another blob's
// bucket, even at the right index, fails its checksum.
func TestChunkUnderAnotherOwnBucket(t *testing.T) {
	s := openTest(t, testOptions())
	a := Key{"example.com/a", "v1.0.0", KindZip}
	b := Key{"example.com/b", "v1.0.0", KindZip}
	put(t, s, a, content(ownBucketSize, 1))
	put(t, s, b, content(ownBucketSize, 2))
	ra, _ := s.stat(a)
	rb, _ := s.stat(b)
	if !ra.ownBucket || !rb.ownBucket {
		t.Fatal("fixture not in own buckets")
	}
	err := s.db.Update(func(tx *bbolt.Tx) error {
		var ka, kb [12]byte
		return rb.chunkBucket(tx).Put(rb.storedKey(&kb, 1), bytes.Clone(ra.chunkBucket(tx).Get(ra.storedKey(&ka, 1))))
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Get(b); !errors.Is(err, ErrCorrupt) {
		t.Errorf("Get with another blob's chunk: %v, want ErrCorrupt", err)
	}
	s.Delete(b)
}

// TestSchema2StoreStaysReadable opens a store of the previous schema, with
// every chunk in the shared bucket and no blobs bucket: it reads read-only
// and writable, is upgraded to this schema by a writable Open, and its old
// artifacts can be deleted and garbage-collected like new ones.
func TestSchema2StoreStaysReadable(t *testing.T) {
	path := filepath.Join(t.TempDir(), "old.db")
	opts := testOptions()
	opts.ownBucketSize = -1 // the layout of schema 2
	s, err := Open(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	big, small := Key{"example.com/big", "v1.0.0", KindZip}, Key{"example.com/small", "v1.0.0", KindMod}
	bigData, smallData := content(3*ownBucketSize+7, 1), []byte("module example.com/small\n")
	put(t, s, big, bigData)
	put(t, s, small, smallData)
	err = s.db.Update(func(tx *bbolt.Tx) error {
		if err := tx.DeleteBucket(bucketBlobs); err != nil {
			return err
		}
		return tx.Bucket(bucketSys).Put(sysSchema, []byte{2})
	})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()

	ro := testOptions()
	ro.ReadOnly = true
	if s, err = Open(path, ro); err != nil {
		t.Fatalf("read-only open of a schema-2 store: %v", err)
	}
	if got := readAll(t, s, big); !bytes.Equal(got, bigData) {
		t.Error("read-only: old large artifact misread")
	}
	s.Close()

	if s, err = Open(path, testOptions()); err != nil {
		t.Fatalf("writable open of a schema-2 store: %v", err)
	}
	defer s.Close()
	s.view(func(tx *bbolt.Tx) error {
		if v := tx.Bucket(bucketSys).Get(sysSchema); !bytes.Equal(v, []byte{schemaVersion}) {
			t.Errorf("schema after a writable open = %v", v)
		}
		return nil
	})
	for k, want := range map[Key][]byte{big: bigData, small: smallData} {
		if got, _, err := s.Get(k); err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s after upgrade: %v", k, err)
		}
	}
	fresh := Key{"example.com/fresh", "v1.0.0", KindZip}
	put(t, s, fresh, bigData)
	if rec, _ := s.stat(fresh); !rec.ownBucket {
		t.Error("new large artifact of an upgraded store not in its own bucket")
	}
	checkInvariants(t, s)
	if err := s.Delete(big); err != nil {
		t.Fatal(err)
	}
	if chunks, _ := countChunks(t, s); chunks != 1+int(chunkCount(int64(len(bigData)), s.chunkSize)) {
		t.Errorf("%d chunks after deleting the old artifact, want those of small and fresh", chunks)
	}
	checkInvariants(t, s)
}

// TestNewerSchemaRefused: a store of a schema this build does not know is
// refused, not misread.
func TestNewerSchemaRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "new.db")
	s, err := Open(path, testOptions())
	if err != nil {
		t.Fatal(err)
	}
	if err := s.db.Update(func(tx *bbolt.Tx) error { return tx.Bucket(bucketSys).Put(sysSchema, []byte{schemaVersion + 1}) }); err != nil {
		t.Fatal(err)
	}
	s.Close()
	for _, ro := range []bool{true, false} {
		opts := testOptions()
		opts.ReadOnly = ro
		if s, err := Open(path, opts); err == nil {
			s.Close()
			t.Errorf("read-only %v: a store of schema %d opened", ro, schemaVersion+1)
		}
	}
}

// TestSalvageIntactStore: salvaging an undamaged store copies every
// artifact, of both chunk layouts, and reports nothing lost.
func TestSalvageIntactStore(t *testing.T) {
	fx := newDamageFixture(t, false)
	rep, err := salvageForTest(t, fx.path, fx)
	if err != nil {
		t.Fatal(err)
	}
	if !rep.Complete() || rep.Artifacts != len(fx.contents) {
		t.Errorf("salvage of an intact store: %d of %d artifacts, lost %v", rep.Artifacts, len(fx.contents), rep.Lost)
	}
}

// TestGarbageInBlobsCollected: what a killed Put or damage leaves in blobs
// (an unreferenced bucket, a value where a bucket belongs) goes at the next
// Open, and the store's own artifacts stay.
func TestGarbageInBlobsCollected(t *testing.T) {
	path := filepath.Join(t.TempDir(), "store.db")
	s, err := Open(path, testOptions())
	if err != nil {
		t.Fatal(err)
	}
	k := Key{"example.com/kept", "v1.0.0", KindZip}
	data := content(ownBucketSize, 3)
	put(t, s, k, data)
	err = s.db.Update(func(tx *bbolt.Tx) error {
		blobs := tx.Bucket(bucketBlobs)
		for _, blob := range []uint64{1000, 1001} {
			p := blobPrefix(blob)
			if err := tx.Bucket(bucketPending).Put(p[:], appendTime(nil, s.now())); err != nil {
				return err
			}
		}
		p := blobPrefix(1000)
		b, err := blobs.CreateBucket(p[:])
		if err != nil {
			return err
		}
		if err := b.Put([]byte{0, 0, 0, 0}, make([]byte, 100)); err != nil {
			return err
		}
		p = blobPrefix(1001)
		return blobs.Put(p[:], []byte("not a bucket"))
	})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	if s, err = Open(path, testOptions()); err != nil {
		t.Fatalf("open with garbage in blobs: %v", err)
	}
	defer s.Close()
	checkInvariants(t, s) // no orphan, nothing pending
	s.view(func(tx *bbolt.Tx) error {
		if n := tx.Bucket(bucketBlobs).Stats().KeyN; n != 1+int(chunkCount(int64(len(data)), s.chunkSize)) {
			t.Errorf("blobs holds %d keys after garbage collection, want the kept artifact's bucket and chunks", n)
		}
		return nil
	})
	if got, _, err := s.Get(k); err != nil || !bytes.Equal(got, data) {
		t.Errorf("kept artifact: %v", err)
	}
}
