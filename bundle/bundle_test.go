package bundle

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	xsumdb "golang.org/x/mod/sumdb"

	"github.com/modproxy/modproxy/cache"
	"github.com/modproxy/modproxy/cache/gate"
	"github.com/modproxy/modproxy/internal/testsumdb"
	"github.com/modproxy/modproxy/internal/testupstream"
	"github.com/modproxy/modproxy/sumdb"
)

// fixture is a store filled the way the proxy fills it: artifacts verified
// by a sumdb.Verifier whose state lives in the same store, with the test
// database growing between lookups so that records carry different tree
// sizes.
type fixture struct {
	store *cache.Store
	db    *testsumdb.DB
	mods  []testupstream.Module
}

func newFixture(t *testing.T, n int) *fixture {
	t.Helper()
	f := newLiveFixture(t, n)
	f.db.Close() // everything below works offline
	return f
}

// newLiveFixture is newFixture with the test database left running.
func newLiveFixture(t *testing.T, n int) *fixture {
	t.Helper()
	var mods []testupstream.Module
	for i := range n {
		mods = append(mods, testupstream.Module{Path: fmt.Sprintf("example.com/M%d", i), Version: "v1.0.0",
			Files: map[string]string{"m.go": fmt.Sprintf("package m\n\nconst N = %d\n", i)}})
	}
	up, err := testupstream.New(mods...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(up.Close)
	db := testsumdb.New(t, "sum.bundle.test")
	store, err := cache.Open(filepath.Join(t.TempDir(), "src.db"), cache.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	v, err := sumdb.New(sumdb.Config{VerifierKey: db.VerifierKey(), URL: db.URL()}, store)
	if err != nil {
		t.Fatal(err)
	}
	g, err := gate.New(gate.Config{Store: store, Verifier: v, TempDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range mods {
		gomod, zip := up.GoMod(m.Path, m.Version), up.Zip(m.Path, m.Version)
		db.AddModule(m.Path, m.Version, gomod, zip) // the tree grows
		info := fmt.Sprintf(`{"Version":%q,"Time":"2024-01-02T03:04:05Z"}`, m.Version)
		admit(t, g, cache.Key{Path: m.Path, Version: m.Version, Kind: cache.KindInfo}, []byte(info), cache.StateExempt)
		admit(t, g, cache.Key{Path: m.Path, Version: m.Version, Kind: cache.KindMod}, gomod, cache.StateVerified)
		admit(t, g, cache.Key{Path: m.Path, Version: m.Version, Kind: cache.KindZip}, zip, cache.StateVerified)
	}
	return &fixture{store: store, db: db, mods: mods}
}

// admit passes data through g into its store and checks the state.
func admit(t *testing.T, g *gate.Gate, k cache.Key, data []byte, want cache.State) {
	t.Helper()
	var tk *gate.Ticket
	var err error
	if k.Kind == cache.KindZip {
		tk, err = g.CheckZip(context.Background(), k, func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil }, gate.Origin{})
	} else {
		tk, err = g.CheckSmall(context.Background(), k, data, gate.Origin{})
	}
	if err != nil {
		t.Fatalf("admit %s: %v", k, err)
	}
	if tk.State() != want {
		t.Fatalf("admit %s: state %q, want %q", k, tk.State(), want)
	}
	if _, err := g.Commit(tk); err != nil {
		t.Fatalf("commit %s: %v", k, err)
	}
}

// opts are the import options of a store that trusts the fixture's
// database.
func (f *fixture) opts() ImportOptions { return ImportOptions{VerifierKey: f.db.VerifierKey()} }

func keysOf(t *testing.T, s *cache.Store) []string {
	t.Helper()
	var keys []string
	if err := s.Walk(func(k cache.Key, m cache.Meta) error {
		keys = append(keys, k.String()+" "+m.Hash)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return keys
}

// dirOps is a go command's checksum-database client state, reading the
// database from a GOPROXY directory as the go command does from file://.
type dirOps struct {
	dir, name, vkey string
	mu              sync.Mutex
	latest          []byte
}

func (o *dirOps) ReadRemote(path string) ([]byte, error) {
	return os.ReadFile(filepath.Join(o.dir, "sumdb", o.name, filepath.FromSlash(path)))
}
func (o *dirOps) ReadConfig(file string) ([]byte, error) {
	if file == "key" {
		return []byte(o.vkey), nil
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	return slices.Clone(o.latest), nil
}
func (o *dirOps) WriteConfig(file string, old, new []byte) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if !bytes.Equal(old, o.latest) {
		return xsumdb.ErrWriteConflict
	}
	o.latest = slices.Clone(new)
	return nil
}
func (o *dirOps) ReadCache(file string) ([]byte, error) { return nil, os.ErrNotExist }
func (o *dirOps) WriteCache(file string, data []byte)   {}
func (o *dirOps) Log(msg string)                        {}
func (o *dirOps) SecurityError(msg string)              { panic(msg) }

func TestExportDirServesEveryLookupOrder(t *testing.T) {
	f := newFixture(t, 5)
	dir := filepath.Join(t.TempDir(), "goproxy")
	rep, err := ExportDir(f.store, dir, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Artifacts != 15 || rep.SumDB == 0 {
		t.Fatalf("ExportDir: %+v", rep)
	}
	if _, err := os.Stat(filepath.Join(dir, "example.com", "!m0", "@v", "list")); err != nil {
		t.Errorf("list of an uppercase path: %v", err)
	}
	// A fresh go command client verifies the records in any order from
	// the directory alone, although each record carries another tree size.
	orders := [][]int{{0, 1, 2, 3, 4}, {4, 3, 2, 1, 0}, {2, 0, 4, 1, 3}, {3, 4, 0, 2, 1}}
	for _, order := range orders {
		c := xsumdb.NewClient(&dirOps{dir: dir, name: f.db.Name(), vkey: f.db.VerifierKey()})
		for _, i := range order {
			m := f.mods[i]
			for _, vers := range []string{m.Version + "/go.mod", m.Version} {
				if _, err := c.Lookup(m.Path, vers); err != nil {
					t.Fatalf("order %v: lookup %s %s: %v", order, m.Path, vers, err)
				}
			}
		}
	}

	// The directory imports into a fresh store with the recorded hashes.
	dst, err := cache.Open(filepath.Join(t.TempDir(), "dst.db"), cache.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	rep, err = ImportDir(dst, dir, f.opts())
	if err != nil || len(rep.Failed) > 0 || rep.Artifacts != 15 {
		t.Fatalf("ImportDir: %+v, %v", rep, err)
	}
	if got, want := keysOf(t, dst), keysOf(t, f.store); !slices.Equal(got, want) {
		t.Errorf("after ImportDir:\n got %v\nwant %v", got, want)
	}
	// A tampered zip in the directory is refused by its recorded hash.
	zf := filepath.Join(dir, "example.com", "!m1", "@v", "v1.0.0.zip")
	good, _ := os.ReadFile(zf)
	bad, err := testupstream.MakeZip("example.com/M1", "v1.0.0", map[string]string{"m.go": "package m\n\nconst N = 666\n"})
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(zf, bad, 0o644)
	dst2, err := cache.Open(filepath.Join(t.TempDir(), "dst2.db"), cache.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer dst2.Close()
	rep, err = ImportDir(dst2, dir, f.opts())
	if err != nil || len(rep.Failed) != 1 || !strings.Contains(rep.Failed[0], "checksum mismatch") || rep.Artifacts != 0 {
		t.Errorf("ImportDir of a tampered zip: %+v, %v", rep, err)
	}
	if n := len(keysOf(t, dst2)); n != 0 {
		t.Errorf("a refused directory left %d artifacts", n)
	}
	os.WriteFile(zf, good, 0o644)
}

func TestExportImportStore(t *testing.T) {
	f := newFixture(t, 3)
	out := filepath.Join(t.TempDir(), "bundle.db")
	keep := func(k cache.Key) bool { return k.Path != "example.com/M2" }
	rep, err := Export(f.store, out, keep, false)
	if err != nil || rep.Artifacts != 6 {
		t.Fatalf("Export: %+v, %v", rep, err)
	}
	if _, err := Export(f.store, out, nil, false); err == nil {
		t.Error("Export over an existing file succeeded")
	}
	dst, err := cache.Open(filepath.Join(t.TempDir(), "dst.db"), cache.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	rep, err = Import(dst, out, f.opts())
	if err != nil || len(rep.Failed) > 0 || rep.Artifacts != 6 || rep.SumDB == 0 {
		t.Fatalf("Import: %+v, %v", rep, err)
	}
	var want []string
	for _, k := range keysOf(t, f.store) {
		if !strings.HasPrefix(k, "example.com/M2@") {
			want = append(want, k)
		}
	}
	if got := keysOf(t, dst); !slices.Equal(got, want) {
		t.Errorf("after Import:\n got %v\nwant %v", got, want)
	}
	// The checksum-database data came along: lookups of every module.
	if _, err := dst.GetKV("sumdb", "sum.bundle.test/lookup/example.com/!m2@v1.0.0"); err != nil {
		t.Errorf("checksum-database record not imported: %v", err)
	}
	// Importing again finds everything present.
	rep, err = Import(dst, out, f.opts())
	if err != nil || rep.Artifacts != 0 || rep.Existing != 6 {
		t.Errorf("second Import: %+v, %v", rep, err)
	}
	// The bundle is marked and refused as a store to serve; the store it
	// was imported into, and the source, are not marked.
	b, err := cache.Open(out, cache.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := CheckServable(b, out); err == nil || !strings.Contains(err.Error(), "modproxy import --db STORE "+out) {
		t.Errorf("CheckServable(bundle) = %v, want a refusal naming modproxy import", err)
	}
	for name, s := range map[string]*cache.Store{"imported store": dst, "source": f.store} {
		if err := CheckServable(s, name); err != nil {
			t.Errorf("CheckServable(%s) = %v", name, err)
		}
	}
}
