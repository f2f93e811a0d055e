package sumdb

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/modproxy/modproxy/cache"
	"github.com/modproxy/modproxy/internal/testsumdb"
)

var _ Store = (*cache.Store)(nil)

// TestWithCacheStore runs the verifier on the real bbolt
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
	if proof, err := v.VerifyHash(ctx, "zip", a.path, a.version, zipHash); err != nil || !strings.Contains(proof, "lookup/example.com/a@v1.0.0 record 0") {
		t.Fatalf("VerifyHash = %q, %v", proof, err)
	}
	if _, err := v.VerifyHash(ctx, "zip", a.path, a.version, modHash); !errors.Is(err, ErrMismatch) {
		t.Fatalf("VerifyHash of a wrong hash: %v", err)
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
