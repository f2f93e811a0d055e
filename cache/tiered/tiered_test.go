package tiered_test

import (
	"bytes"
	"context"
	"path/filepath"
	"testing"

	"github.com/modproxy/modproxy/cache"
	"github.com/modproxy/modproxy/cache/lru"
	"github.com/modproxy/modproxy/cache/s3store"
	"github.com/modproxy/modproxy/cache/storetest"
	"github.com/modproxy/modproxy/cache/tiered"
	"github.com/modproxy/modproxy/internal/tests3"
)

func newLocal(t *testing.T) *lru.Store {
	t.Helper()
	s, err := cache.Open(filepath.Join(t.TempDir(), "local.db"), cache.Options{ChunkSize: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	b, err := lru.New(s, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() }) // before the store closes
	return b
}

func newRemote(t *testing.T, srv *tests3.Server, bucket string) *s3store.Store {
	t.Helper()
	r, err := s3store.New(context.Background(), s3store.Config{Bucket: bucket, Prefix: "p", Endpoint: srv.URL, PathStyle: true, TempDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestCompliance(t *testing.T) {
	srv := tests3.Start(t)
	srv.SetEnv(t)
	storetest.Run(t, func(t *testing.T) storetest.Backend {
		return tiered.New(newLocal(t), newRemote(t, srv, srv.NewBucket(t)))
	})
}

// Two replicas on one bucket: what A stored, B serves from S3 and then
// from its own local tier; a replica that lost its local tier refills it.
func TestReplicasShareTheBucket(t *testing.T) {
	srv := tests3.Start(t)
	srv.SetEnv(t)
	bucket := srv.NewBucket(t)
	a := tiered.New(newLocal(t), newRemote(t, srv, bucket))
	b := tiered.New(newLocal(t), newRemote(t, srv, bucket))
	k := cache.Key{Path: "example.com/m", Version: "v1.0.0", Kind: cache.KindZip}
	data := bytes.Repeat([]byte("zip"), 100000)
	ma, err := a.Put(k, bytes.NewReader(data), cache.Meta{State: cache.StateVerified, Proof: "p", Hash: "h1:x"}, grantWrite())
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range []tiered.TierStats{{RemoteHits: 1}, {RemoteHits: 1, LocalHits: 1}} {
		r, err := b.Open(k)
		if err != nil {
			t.Fatal(err)
		}
		var got bytes.Buffer
		if _, err := r.WriteTo(&got); err != nil || !bytes.Equal(got.Bytes(), data) || r.Meta().Proof != ma.Proof || r.Meta().SHA256 != ma.SHA256 {
			t.Fatalf("read %d through B: %d bytes, %v, meta %+v", i, got.Len(), err, r.Meta())
		}
		r.Close()
		if st := b.Stats(); st != want {
			t.Errorf("after read %d: %+v, want %+v", i, st, want)
		}
	}
	if _, err := b.Local().Stat(k); err != nil {
		t.Errorf("B's local tier after an S3 hit: %v", err)
	}
	// B's write of the same key loses to A's: same Meta, local copy is A's.
	mb, err := b.Put(k, bytes.NewReader([]byte("other content")), cache.Meta{}, grantWrite())
	if err != nil || mb.SHA256 != ma.SHA256 {
		t.Fatalf("second replica's put: %+v %v, want A's", mb, err)
	}
}
