package sumdb

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"testing"

	"github.com/modproxy/modproxy/cache"
	"github.com/modproxy/modproxy/internal/testsumdb"
)

var _ Store = (*cache.Store)(nil)

// TestWithCacheStore runs the verifier and VerifyStore on the real bbolt
// store: the tree head survives closing and reopening the file.
func TestWithCacheStore(t *testing.T) {
	file := filepath.Join(t.TempDir(), "store.db")
	open := func() *cache.Store {
		st, err := cache.Open(file, cache.Options{})
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	db := testsumdb.New(t, "sum.example.test")
	a := makeMod(t, "example.com/a", "v1.0.0", "a")
	b := makeMod(t, "example.com/b", "v1.0.0", "b")
	db.AddModule(a.path, a.version, a.gomod, a.zip)
	ctx := context.Background()

	st := open()
	v := newVerifier(t, testConfig(db), st)
	modHash, err := v.VerifyMod(ctx, a.path, a.version, a.gomod)
	if err != nil {
		t.Fatal(err)
	}
	zipHash, err := v.VerifyZip(ctx, a.path, a.version, a.zipFile(t))
	if err != nil {
		t.Fatal(err)
	}
	modKey := cache.Key{Path: a.path, Version: a.version, Kind: cache.KindMod}
	zipKey := cache.Key{Path: a.path, Version: a.version, Kind: cache.KindZip}
	if _, err := st.Put(modKey, bytes.NewReader(a.gomod), cache.Meta{Hash: modHash}); err != nil {
		t.Fatal(err)
	}
	// A zip recorded with the wrong hash stands in for a corrupted one.
	if _, err := st.Put(zipKey, bytes.NewReader(a.zip), cache.Meta{Hash: modHash}); err != nil {
		t.Fatal(err)
	}
	rep, err := VerifyStore(ctx, CacheArtifacts(st), VerifyOptions{Quarantine: st.Quarantine, Database: v})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Checked != 2 || rep.OK != 1 || rep.Mismatched != 1 || rep.Quarantined != 1 || rep.Problems[0].Got != zipHash {
		t.Fatalf("report = %+v", rep)
	}
	if _, err := st.Stat(zipKey); !errors.Is(err, cache.ErrNotFound) {
		t.Errorf("quarantined zip still visible: %v", err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}

	// Restart on the same file after the database forked.
	db.ForkHistory()
	db.AddModule(b.path, b.version, b.gomod, b.zip)
	st = open()
	defer st.Close()
	v = newVerifier(t, testConfig(db), st)
	if _, err := v.VerifyMod(ctx, b.path, b.version, b.gomod); !errors.Is(err, ErrSecurity) {
		t.Fatalf("after restart and fork: err = %v, want ErrSecurity", err)
	}
}
