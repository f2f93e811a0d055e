// Package testsumdb provides a checksum database for tests: a real
// golang.org/x/mod/sumdb server over an in-memory transparency log, signed
// with a freshly generated note key and served by an httptest server on
// 127.0.0.1.
//
// Its URL serves the checksum-database protocol at the root (/lookup/…,
// /tile/…, /latest), so the go command accepts it with
//
//	GOSUMDB="<VerifierKey> <URL>"   (see DB.GOSUMDB)
//
// Records are added up front with Add or AddModule, or lazily through a
// LookupFunc installed with SetLookup. Faults: SetDown makes every request
// fail with 503, ForkHistory switches to a conflicting log so that clients
// that saw the earlier tree head detect a fork.
package testsumdb

import (
	"archive/zip"
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/mod/module"
	"golang.org/x/mod/sumdb"
	"golang.org/x/mod/sumdb/dirhash"
	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
	modzip "golang.org/x/mod/zip"
)

// LookupFunc registers a module version on demand. It returns the "h1:"
// hashes of the module's go.mod file and zip file (zipHash may be "" to
// publish only the go.mod line). An error wrapping fs.ErrNotExist makes the
// database answer 404 Not Found; any other error answers 500.
type LookupFunc func(path, version string) (modHash, zipHash string, err error)

// DB is a checksum database for tests. Its methods are safe for concurrent
// use; those that take no error result report misuse with t.Fatalf and must
// be called from the test goroutine.
type DB struct {
	t      testing.TB
	name   string
	signer note.Signer
	vkey   string
	srv    *httptest.Server

	mu       sync.Mutex
	records  [][]byte         // record texts by ID
	hashes   []tlog.Hash      // stored hashes of the log over records
	ids      map[string]int64 // "path@version" → record ID
	lookup   LookupFunc       // lazily registers records; may be nil
	down     bool             // answer 503
	requests map[string]int   // URL path → count
	forks    int              // times ForkHistory was called
}

// New starts a test checksum database named name (a host name such as
// "sum.example.test"; "" means "sum.test") and registers its shutdown with
// t.Cleanup.
func New(t testing.TB, name string) *DB {
	t.Helper()
	db, err := Start(name)
	if err != nil {
		t.Fatalf("testsumdb.New: %v", err)
	}
	db.t = t
	t.Cleanup(db.Close)
	return db
}

// Start is New for programs that have no testing.TB (the benchmark): the
// caller closes the DB. Misuse that New reports with t.Fatalf (Add with
// conflicting hashes, ForkHistory of an empty log) panics instead; records
// are best added with SetLookup, whose errors are answers, not panics.
func Start(name string) (*DB, error) {
	if name == "" {
		name = "sum.test"
	}
	if err := checkName(name); err != nil {
		return nil, err
	}
	skey, vkey, err := note.GenerateKey(rand.Reader, name)
	if err != nil {
		return nil, fmt.Errorf("generating key: %w", err)
	}
	signer, err := note.NewSigner(skey)
	if err != nil {
		return nil, err
	}
	db := &DB{
		name:     name,
		signer:   signer,
		vkey:     vkey,
		ids:      make(map[string]int64),
		requests: make(map[string]int),
	}
	srv := sumdb.NewServer(serverOps{db})
	db.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		db.mu.Lock()
		db.requests[r.URL.Path]++
		down := db.down
		db.mu.Unlock()
		if down {
			http.Error(w, "checksum database is down (testsumdb)", http.StatusServiceUnavailable)
			return
		}
		srv.ServeHTTP(w, r)
	}))
	db.srv.Start()
	return db, nil
}

// fatalf reports misuse: a test failure under New, a panic under Start.
func (db *DB) fatalf(format string, args ...any) {
	if db.t == nil {
		panic(fmt.Sprintf(format, args...))
	}
	db.t.Helper()
	db.t.Fatalf(format, args...)
}

// checkName applies the go command's rule for database names: host[/path],
// usable as https://<name>.
func checkName(name string) error {
	u, err := url.Parse("https://" + name)
	if err != nil || strings.HasSuffix(name, "/") || u.Host == "" || u.RawPath != "" ||
		*u != (url.URL{Scheme: "https", Host: u.Host, Path: u.Path}) || strings.ContainsAny(name, "+ \t\n") {
		return fmt.Errorf("invalid checksum database name %q (must be host[/path])", name)
	}
	return nil
}

// URL is the base URL of the database (no trailing slash).
func (db *DB) URL() string { return db.srv.URL }

// Name is the database name, the first element of its verifier key.
func (db *DB) Name() string { return db.name }

// VerifierKey is the note verifier key "<name>+<hash>+<key>" that clients
// must trust. It already begins with the name.
func (db *DB) VerifierKey() string { return db.vkey }

// GOSUMDB is the value of the go command's GOSUMDB variable that reaches this
// database directly: "<VerifierKey> <URL>".
func (db *DB) GOSUMDB() string { return db.vkey + " " + db.srv.URL }

// GoEnv returns the go command environment variables that make it download
// modules from the module proxy at proxyURL and verify them against this
// database through that proxy's /sumdb/<name>/ endpoints (the go command
// uses them when <proxyURL>/sumdb/<name>/supported answers 200). GOSUMDB
// holds the verifier key alone: a URL in GOSUMDB would bypass the proxy.
// Callers add GOPATH, GOMODCACHE, GOCACHE, GOFLAGS=-modcacherw and the like.
func (db *DB) GoEnv(proxyURL string) []string {
	return []string{
		"GOPROXY=" + proxyURL,
		"GOSUMDB=" + db.vkey,
		"GONOSUMDB=",
		"GOPRIVATE=",
		"GONOPROXY=",
		"GOINSECURE=",
	}
}

// Close shuts the server down. It is registered with t.Cleanup by New and
// may be called more than once.
func (db *DB) Close() {
	db.srv.CloseClientConnections()
	db.srv.Close()
}

// SetDown makes every request fail with 503 Service Unavailable while down
// is true. Requests are still counted.
func (db *DB) SetDown(down bool) {
	db.mu.Lock()
	db.down = down
	db.mu.Unlock()
	if down {
		db.srv.CloseClientConnections()
	}
}

// SetLookup installs f to register module versions that are looked up but
// not yet in the log. nil removes it: unknown versions answer 404.
func (db *DB) SetLookup(f LookupFunc) {
	db.mu.Lock()
	db.lookup = f
	db.mu.Unlock()
}

// Add appends the record for path@version with the given "h1:" hashes of
// its go.mod file and zip file (zipHash may be ""). Adding a version again
// with the same hashes does nothing; with different hashes it is a test
// failure, because records are immutable.
func (db *DB) Add(path, version, modHash, zipHash string) {
	if db.t != nil {
		db.t.Helper()
	}
	if _, err := db.add(path, version, modHash, zipHash); err != nil {
		db.fatalf("testsumdb.Add: %v", err)
	}
}

// Publish is Add returning its error instead of failing the test, for
// programs started with Start.
func (db *DB) Publish(path, version, modHash, zipHash string) error {
	_, err := db.add(path, version, modHash, zipHash)
	return err
}

// AddModule is Add with the hashes computed from the go.mod content and the
// module zip file content (zipData may be nil to publish only go.mod).
func (db *DB) AddModule(path, version string, gomod, zipData []byte) {
	if db.t != nil {
		db.t.Helper()
	}
	modHash, err := HashMod(gomod)
	if err != nil {
		db.fatalf("testsumdb.AddModule: %v", err)
	}
	zipHash := ""
	if zipData != nil {
		if zipHash, err = HashZip(zipData); err != nil {
			db.fatalf("testsumdb.AddModule %s@%s: %v", path, version, err)
		}
	}
	db.Add(path, version, modHash, zipHash)
}

// recordText formats the record body the way the real database does.
func recordText(path, version, modHash, zipHash string) []byte {
	var b strings.Builder
	if zipHash != "" {
		fmt.Fprintf(&b, "%s %s %s\n", path, version, zipHash)
	}
	fmt.Fprintf(&b, "%s %s/go.mod %s\n", path, version, modHash)
	return []byte(b.String())
}

func (db *DB) add(path, version, modHash, zipHash string) (int64, error) {
	if err := module.Check(path, version); err != nil {
		return 0, err
	}
	for _, h := range []string{modHash, zipHash} {
		if h != "" && !strings.HasPrefix(h, "h1:") {
			return 0, fmt.Errorf("%s@%s: hash %q does not start with h1:", path, version, h)
		}
	}
	if modHash == "" {
		return 0, fmt.Errorf("%s@%s: missing go.mod hash", path, version)
	}
	text := recordText(path, version, modHash, zipHash)
	key := path + "@" + version

	db.mu.Lock()
	defer db.mu.Unlock()
	if id, ok := db.ids[key]; ok {
		if !bytes.Equal(db.records[id], text) {
			return 0, fmt.Errorf("%s: already recorded with different hashes (records are immutable)", key)
		}
		return id, nil
	}
	id := int64(len(db.records))
	hashes, err := tlog.StoredHashes(id, text, hashReader(db.hashes))
	if err != nil {
		return 0, fmt.Errorf("%s: %v", key, err)
	}
	db.records = append(db.records, text)
	db.hashes = append(db.hashes, hashes...)
	db.ids[key] = id
	return id, nil
}

// ForkHistory replaces the log with a conflicting one: the first record's
// zip hash is changed and one more record is appended, so the new signed
// tree heads are larger than, and inconsistent with, every earlier head. A
// client that saw an earlier head must report a security error on its next
// contact. The log must not be empty.
func (db *DB) ForkHistory() {
	if db.t != nil {
		db.t.Helper()
	}
	db.mu.Lock()
	defer db.mu.Unlock()
	if len(db.records) == 0 {
		db.fatalf("testsumdb.ForkHistory: the log is empty; add a record first")
	}
	db.forks++
	records := append([][]byte(nil), db.records...)
	fake := fmt.Sprintf("fork %d of %s", db.forks, db.name)
	first := string(records[0])
	line, rest, _ := strings.Cut(first, "\n")
	f := strings.Fields(line)
	if len(f) == 3 {
		f[2] = "h1:" + hashString(fake)
		records[0] = []byte(strings.Join(f, " ") + "\n" + rest)
	}
	extra := recordText(fmt.Sprintf("fork.test/m%d", db.forks), "v0.0.1", "h1:"+hashString(fake+" mod"), "")
	records = append(records, extra)

	var hashes []tlog.Hash
	for i, text := range records {
		h, err := tlog.StoredHashes(int64(i), text, hashReader(hashes))
		if err != nil {
			db.fatalf("testsumdb.ForkHistory: %v", err)
		}
		hashes = append(hashes, h...)
	}
	db.records = records
	db.hashes = hashes
}

func hashString(s string) string {
	h := tlog.RecordHash([]byte(s))
	return h.String()
}

// Size is the number of records in the log.
func (db *DB) Size() int {
	db.mu.Lock()
	defer db.mu.Unlock()
	return len(db.records)
}

// Requests returns how many requests each URL path received, for example
// "/lookup/example.com/m@v1.0.0", "/tile/8/0/000.p/3", "/latest".
func (db *DB) Requests() map[string]int {
	db.mu.Lock()
	defer db.mu.Unlock()
	m := make(map[string]int, len(db.requests))
	for k, v := range db.requests {
		m[k] = v
	}
	return m
}

// RequestCount is the number of requests whose URL path begins with prefix
// ("" counts all).
func (db *DB) RequestCount(prefix string) int {
	db.mu.Lock()
	defer db.mu.Unlock()
	n := 0
	for k, v := range db.requests {
		if strings.HasPrefix(k, prefix) {
			n += v
		}
	}
	return n
}

// LookupCount is the number of lookups of any version of the module path
// (in decoded form, for example "example.com/Private").
func (db *DB) LookupCount(path string) int {
	epath, err := module.EscapePath(path)
	if err != nil {
		return 0
	}
	return db.RequestCount("/lookup/" + epath + "@")
}

// ResetRequests forgets the request counts.
func (db *DB) ResetRequests() {
	db.mu.Lock()
	clear(db.requests)
	db.mu.Unlock()
}

// hashReader serves stored hashes from a slice.
type hashReader []tlog.Hash

func (h hashReader) ReadHashes(indexes []int64) ([]tlog.Hash, error) {
	out := make([]tlog.Hash, len(indexes))
	for i, x := range indexes {
		if x < 0 || x >= int64(len(h)) {
			return nil, fmt.Errorf("stored hash index %d out of range [0, %d)", x, len(h))
		}
		out[i] = h[x]
	}
	return out, nil
}

// serverOps implements sumdb.ServerOps over the DB.
type serverOps struct{ db *DB }

func (o serverOps) Signed(ctx context.Context) ([]byte, error) {
	db := o.db
	db.mu.Lock()
	n := int64(len(db.records))
	h, err := tlog.TreeHash(n, hashReader(db.hashes))
	db.mu.Unlock()
	if err != nil {
		return nil, err
	}
	return note.Sign(&note.Note{Text: string(tlog.FormatTree(tlog.Tree{N: n, Hash: h}))}, db.signer)
}

func (o serverOps) ReadRecords(ctx context.Context, id, n int64) ([][]byte, error) {
	db := o.db
	db.mu.Lock()
	defer db.mu.Unlock()
	if id < 0 || n < 0 || id+n > int64(len(db.records)) {
		return nil, fmt.Errorf("records [%d, %d) not in log of size %d", id, id+n, len(db.records))
	}
	return append([][]byte(nil), db.records[id:id+n]...), nil
}

func (o serverOps) Lookup(ctx context.Context, m module.Version) (int64, error) {
	db := o.db
	key := m.String()
	db.mu.Lock()
	id, ok := db.ids[key]
	f := db.lookup
	db.mu.Unlock()
	if !ok {
		if f == nil {
			return 0, notExist(key)
		}
		modHash, zipHash, err := f(m.Path, m.Version)
		if errors.Is(err, fs.ErrNotExist) {
			return 0, notExist(key)
		}
		if err != nil {
			return 0, fmt.Errorf("%s: %v", key, err)
		}
		if id, err = db.add(m.Path, m.Version, modHash, zipHash); err != nil {
			return 0, err
		}
	}
	return id, nil
}

// notExist returns an error that sumdb.Server turns into 404 (it tests with
// os.IsNotExist, which does not unwrap %w chains).
func notExist(key string) error {
	return &fs.PathError{Op: "lookup", Path: key, Err: fs.ErrNotExist}
}

func (o serverOps) ReadTileData(ctx context.Context, t tlog.Tile) ([]byte, error) {
	db := o.db
	db.mu.Lock()
	defer db.mu.Unlock()
	if t.L >= 0 {
		// Refuse tiles beyond the current tree, as a real server does.
		need := (t.N<<uint(t.H) + int64(t.W)) << uint(t.L*t.H)
		if need > int64(len(db.records)) {
			return nil, &fs.PathError{Op: "tile", Path: t.Path(), Err: fs.ErrNotExist}
		}
	}
	return tlog.ReadTileData(t, hashReader(db.hashes))
}

// HashMod returns the "h1:" hash of a go.mod file, as recorded in go.sum
// lines for "<version>/go.mod".
func HashMod(gomod []byte) (string, error) {
	return dirhash.Hash1([]string{"go.mod"}, func(string) (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(gomod)), nil
	})
}

// HashZip returns the "h1:" hash of a module zip file's content, the same
// value as dirhash.HashZip on a file holding zipData.
func HashZip(zipData []byte) (string, error) {
	z, err := zip.NewReader(bytes.NewReader(zipData), int64(len(zipData)))
	if err != nil {
		return "", err
	}
	names := make([]string, 0, len(z.File))
	files := make(map[string]*zip.File, len(z.File))
	for _, f := range z.File {
		names = append(names, f.Name)
		files[f.Name] = f
	}
	return dirhash.Hash1(names, func(name string) (io.ReadCloser, error) {
		return files[name].Open()
	})
}

// MakeZip builds a module zip file for path@version with golang.org/x/mod/zip
// from in-memory files (slash-separated paths relative to the module root,
// for example "go.mod", "a.go", "sub/b.go").
func MakeZip(path, version string, files map[string][]byte) ([]byte, error) {
	list := make([]modzip.File, 0, len(files))
	for name, data := range files {
		list = append(list, memFile{name: name, data: data})
	}
	var buf bytes.Buffer
	if err := modzip.Create(&buf, module.Version{Path: path, Version: version}, list); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// memFile is an in-memory modzip.File.
type memFile struct {
	name string
	data []byte
}

func (f memFile) Path() string                 { return f.name }
func (f memFile) Lstat() (os.FileInfo, error)  { return memInfo(f), nil }
func (f memFile) Open() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(f.data)), nil }

type memInfo memFile

func (i memInfo) Name() string       { return i.name[strings.LastIndex(i.name, "/")+1:] }
func (i memInfo) Size() int64        { return int64(len(i.data)) }
func (i memInfo) Mode() os.FileMode  { return 0o644 }
func (i memInfo) ModTime() time.Time { return time.Time{} }
func (i memInfo) IsDir() bool        { return false }
func (i memInfo) Sys() any           { return nil }
