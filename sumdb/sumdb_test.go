package sumdb

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	xsumdb "golang.org/x/mod/sumdb"
	"golang.org/x/mod/sumdb/note"

	"github.com/modproxy/modproxy/cache"
	"github.com/modproxy/modproxy/internal/testsumdb"
)

// memStore is an in-memory Store.
type memStore struct {
	mu   sync.Mutex
	kv   map[string][]byte
	meta map[string]cache.Entry
	gets atomic.Int64
	puts atomic.Int64
}

func newMemStore() *memStore {
	return &memStore{kv: map[string][]byte{}, meta: map[string]cache.Entry{}}
}

func (s *memStore) GetKV(bucket, key string) ([]byte, error) {
	s.gets.Add(1)
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.kv[bucket+"\x00"+key]
	if !ok {
		return nil, fmt.Errorf("%s/%s: %w", bucket, key, cache.ErrNotFound)
	}
	return bytes.Clone(v), nil
}

func (s *memStore) PutKV(bucket, key string, value []byte) error {
	s.puts.Add(1)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.kv[bucket+"\x00"+key] = bytes.Clone(value)
	return nil
}

func (s *memStore) DeleteKV(bucket, key string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.kv, bucket+"\x00"+key)
	return nil
}

func (s *memStore) GetEntry(key string) (cache.Entry, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.meta[key]
	if !ok {
		return cache.Entry{}, fmt.Errorf("%s: %w", key, cache.ErrNotFound)
	}
	return e, nil
}

func (s *memStore) PutEntry(key string, value []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.meta[key] = cache.Entry{Value: bytes.Clone(value), Fetched: time.Now()}
	return nil
}

func (s *memStore) SwapEntry(key string, old, new []byte) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.meta[key]
	if ok != (len(old) != 0) || ok && !bytes.Equal(e.Value, old) {
		return false, nil
	}
	s.meta[key] = cache.Entry{Value: bytes.Clone(new), Fetched: time.Now()}
	return true, nil
}

func (s *memStore) keys(bucket string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for k := range s.kv {
		if b, key, _ := strings.Cut(k, "\x00"); b == bucket {
			out = append(out, key)
		}
	}
	return out
}

func counterValue(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

func seriesCount(g prometheus.Gatherer, name string) (int, error) {
	fams, err := g.Gather()
	for _, f := range fams {
		if f.GetName() == name {
			return len(f.GetMetric()), err
		}
	}
	return 0, err
}

type mod struct {
	path, version string
	gomod, zip    []byte
}

func makeMod(t *testing.T, path, version, body string) mod {
	t.Helper()
	gomod := []byte("module " + path + "\n\ngo 1.21\n")
	zip, err := testsumdb.MakeZip(path, version, map[string][]byte{
		"go.mod": gomod,
		"a.go":   []byte("package a\n\n// " + body + "\n"),
	})
	if err != nil {
		t.Fatal(err)
	}
	return mod{path, version, gomod, zip}
}

func (m mod) zipFile(t *testing.T) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "m.zip")
	if err := os.WriteFile(f, m.zip, 0o644); err != nil {
		t.Fatal(err)
	}
	return f
}

func testConfig(db *testsumdb.DB) Config {
	return Config{
		VerifierKey: db.VerifierKey(),
		URL:         db.URL(),
		Timeout:     time.Minute, // a hang guard: no test waits it out
		Logger:      slog.New(slog.DiscardHandler),
	}
}

func newVerifier(t *testing.T, cfg Config, st Store) *Verifier {
	t.Helper()
	v, err := New(cfg, st)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestParseGOSUMDB(t *testing.T) {
	_, key, _ := note.GenerateKey(nil, "sum.example.test")
	tests := []struct {
		in              string
		name, vkey, url string
		off             bool
		wantErr         string
	}{
		{in: "off", off: true},
		{in: "sum.golang.org", name: "sum.golang.org", vkey: DefaultVerifierKey, url: "https://sum.golang.org"},
		{in: "sum.golang.org https://mirror.example.test/sumdb", name: "sum.golang.org", vkey: DefaultVerifierKey, url: "https://mirror.example.test/sumdb"},
		{in: "sum.golang.google.cn", name: "sum.golang.org", vkey: DefaultVerifierKey, url: "https://sum.golang.google.cn"},
		{in: DefaultVerifierKey, name: "sum.golang.org", vkey: DefaultVerifierKey, url: "https://sum.golang.org"},
		{in: key, name: "sum.example.test", vkey: key, url: "https://sum.example.test"},
		{in: "  " + key + "   http://127.0.0.1:9/db/  ", name: "sum.example.test", vkey: key, url: "http://127.0.0.1:9/db"},
		// Empty means the default database, as for the go command.
		{in: "", name: defaultName(), vkey: DefaultVerifierKey, url: "https://" + defaultName()},
		{in: " \t ", name: defaultName(), vkey: DefaultVerifierKey, url: "https://" + defaultName()},
		{in: "sum.example.test", wantErr: "unknown checksum database name"},
		{in: key + " http://a b", wantErr: "too many fields"},
		{in: key + " ftp://x", wantErr: "invalid URL"},
		{in: "sum.golang.org+033de0ae+Ac4zctda0e5eza+HJyk9SxEdh+s3Ry18zTkUUDCk/8Z+J", wantErr: "invalid GOSUMDB"},
	}
	for _, tt := range tests {
		name, vkey, u, off, err := ParseGOSUMDB(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParseGOSUMDB(%q) error = %v, want %q", tt.in, err, tt.wantErr)
			}
			continue
		}
		if err != nil || name != tt.name || vkey != tt.vkey || u != tt.url || off != tt.off {
			t.Errorf("ParseGOSUMDB(%q) = %q, %q, %q, %v, %v; want %q, %q, %q, %v",
				tt.in, name, vkey, u, off, err, tt.name, tt.vkey, tt.url, tt.off)
		}
	}
}

func TestNewConfigErrors(t *testing.T) {
	st := newMemStore()
	if _, err := New(Config{Name: "sum.example.test"}, st); err == nil {
		t.Error("unknown name without key: no error")
	}
	_, key, _ := note.GenerateKey(nil, "sum.example.test")
	if _, err := New(Config{Name: "other.test", VerifierKey: key}, st); err == nil {
		t.Error("name not matching key: no error")
	}
	if _, err := New(Config{VerifierKey: key}, nil); err == nil {
		t.Error("nil store: no error")
	}
	v, err := New(Config{}, st)
	if err != nil || v.Name() != "sum.golang.org" || v.cfg.URL != "https://sum.golang.org" {
		t.Errorf("default database: %v, %v", v, err)
	}
}

func TestVerify(t *testing.T) {
	db := testsumdb.New(t, "sum.example.test")
	good := makeMod(t, "example.com/m", "v1.0.0", "good")
	db.AddModule(good.path, good.version, good.gomod, good.zip)
	reg := prometheus.NewRegistry()
	cfg := testConfig(db)
	cfg.Registerer = reg
	v := newVerifier(t, cfg, newMemStore())
	ctx := context.Background()

	h, err := v.VerifyMod(ctx, good.path, good.version, good.gomod)
	if want, _ := testsumdb.HashMod(good.gomod); err != nil || h != want {
		t.Fatalf("VerifyMod = %q, %v; want %q", h, err, want)
	}
	h, err = v.VerifyZip(ctx, good.path, good.version, good.zipFile(t))
	if want, _ := testsumdb.HashZip(good.zip); err != nil || h != want {
		t.Fatalf("VerifyZip = %q, %v; want %q", h, err, want)
	}
	modHash, zipHash, err := v.Lookup(ctx, good.path, good.version)
	if err != nil || modHash == "" || zipHash == "" {
		t.Fatalf("Lookup = %q, %q, %v", modHash, zipHash, err)
	}

	// Tampered go.mod.
	_, err = v.VerifyMod(ctx, good.path, good.version, append(bytes.Clone(good.gomod), "require evil.test v1.0.0\n"...))
	var me *MismatchError
	if !errors.As(err, &me) || me.Kind != "mod" || me.Want != modHash || !errors.Is(err, ErrMismatch) {
		t.Fatalf("tampered go.mod: err = %v, want *MismatchError", err)
	}
	if msg := err.Error(); !strings.Contains(msg, "example.com/m@v1.0.0/go.mod") || !strings.Contains(msg, me.Want) || !strings.Contains(msg, me.Got) {
		t.Errorf("mismatch message %q does not name module and both hashes", msg)
	}

	// Tampered zip: a valid module zip with one file changed.
	bad := makeMod(t, good.path, good.version, "evil")
	_, err = v.VerifyZip(ctx, bad.path, bad.version, bad.zipFile(t))
	if !errors.As(err, &me) || me.Kind != "zip" || me.Want != zipHash {
		t.Fatalf("tampered zip: err = %v, want *MismatchError", err)
	}

	// Not in the database.
	other := makeMod(t, "example.com/unknown", "v1.0.0", "x")
	if _, err := v.VerifyMod(ctx, other.path, other.version, other.gomod); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown module: err = %v, want ErrNotFound", err)
	}

	for _, c := range []struct {
		kind, result string
		want         float64
	}{{"mod", "ok", 1}, {"zip", "ok", 1}, {"mod", "mismatch", 1}, {"zip", "mismatch", 1}, {"mod", "not_found", 1}} {
		if got := counterValue(t, v.metrics.verifications.WithLabelValues(c.kind, c.result)); got != c.want {
			t.Errorf("verifications{%s,%s} = %v, want %v", c.kind, c.result, got, c.want)
		}
	}
	if n, err := seriesCount(reg, "modproxy_sumdb_verifications_total"); err != nil || n != 5 {
		t.Errorf("registered verification series = %d, %v; want 5", n, err)
	}
}

func TestUnavailableFailsClosed(t *testing.T) {
	db := testsumdb.New(t, "sum.example.test")
	m := makeMod(t, "example.com/m", "v1.0.0", "m")
	db.AddModule(m.path, m.version, m.gomod, m.zip)
	v := newVerifier(t, testConfig(db), newMemStore())
	ctx := context.Background()

	db.SetDown(true)
	_, err := v.VerifyMod(ctx, m.path, m.version, m.gomod)
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("database down: err = %v, want ErrUnavailable", err)
	}
	if got := counterValue(t, v.metrics.verifications.WithLabelValues("mod", "unavailable")); got != 1 {
		t.Errorf("unavailable count = %v", got)
	}
	// The failure is not remembered: once the database is back, it works.
	db.SetDown(false)
	if _, err := v.VerifyMod(ctx, m.path, m.version, m.gomod); err != nil {
		t.Fatalf("database back: %v", err)
	}

	// An unreachable address and an offline verifier fail closed too.
	cfg := testConfig(db)
	cfg.URL = "http://127.0.0.1:1"
	v2 := newVerifier(t, cfg, newMemStore())
	if _, err := v2.VerifyMod(ctx, m.path, m.version, m.gomod); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("unreachable: err = %v, want ErrUnavailable", err)
	}
	cfg = testConfig(db)
	cfg.Offline = true
	v3 := newVerifier(t, cfg, newMemStore())
	if _, err := v3.VerifyMod(ctx, m.path, m.version, m.gomod); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("offline, empty store: err = %v, want ErrUnavailable", err)
	}
}

func TestForkIsSecurityError(t *testing.T) {
	db := testsumdb.New(t, "sum.example.test")
	a := makeMod(t, "example.com/a", "v1.0.0", "a")
	b := makeMod(t, "example.com/b", "v1.0.0", "b")
	db.AddModule(a.path, a.version, a.gomod, a.zip)
	var logs bytes.Buffer
	cfg := testConfig(db)
	cfg.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	reg := prometheus.NewRegistry()
	cfg.Registerer = reg
	v := newVerifier(t, cfg, newMemStore())
	ctx := context.Background()
	if _, err := v.VerifyMod(ctx, a.path, a.version, a.gomod); err != nil {
		t.Fatal(err)
	}

	db.ForkHistory()
	db.AddModule(b.path, b.version, b.gomod, b.zip)
	_, err := v.VerifyMod(ctx, b.path, b.version, b.gomod)
	if !errors.Is(err, ErrSecurity) {
		t.Fatalf("after fork: err = %v, want ErrSecurity", err)
	}
	if got := counterValue(t, v.metrics.security.WithLabelValues("sum.example.test")); got != 1 {
		t.Errorf("security errors metric = %v, want 1", got)
	}
	if !strings.Contains(logs.String(), "level=ERROR") || !strings.Contains(logs.String(), "SECURITY ERROR") {
		t.Errorf("security error not logged at Error level:\n%s", logs.String())
	}
	// Every later verification fails, even of content verified before.
	if _, err := v.VerifyMod(ctx, a.path, a.version, a.gomod); !errors.Is(err, ErrSecurity) {
		t.Fatalf("later verification: err = %v, want ErrSecurity", err)
	}
	if got := counterValue(t, v.metrics.verifications.WithLabelValues("mod", "security")); got != 2 {
		t.Errorf("verifications{mod,security} = %v, want 2", got)
	}
}

func TestRestartKeepsTreeHead(t *testing.T) {
	db := testsumdb.New(t, "sum.example.test")
	a := makeMod(t, "example.com/a", "v1.0.0", "a")
	b := makeMod(t, "example.com/b", "v1.0.0", "b")
	c := makeMod(t, "example.com/c", "v1.0.0", "c")
	db.AddModule(a.path, a.version, a.gomod, a.zip)
	db.AddModule(b.path, b.version, b.gomod, b.zip)
	st := newMemStore()
	ctx := context.Background()

	v1 := newVerifier(t, testConfig(db), st)
	if _, err := v1.VerifyZip(ctx, a.path, a.version, a.zipFile(t)); err != nil {
		t.Fatal(err)
	}
	if _, err := st.GetEntry("sumdb/sum.example.test/latest"); err != nil {
		t.Fatalf("tree head not persisted: %v", err)
	}

	// A restart serves known records from the store without the network.
	db.SetDown(true)
	v2 := newVerifier(t, testConfig(db), st)
	if _, err := v2.VerifyMod(ctx, a.path, a.version, a.gomod); err != nil {
		t.Fatalf("restart, database down, cached record: %v", err)
	}
	db.SetDown(false)

	// The database forks; a restarted verifier still holds the old head.
	db.ForkHistory()
	db.AddModule(c.path, c.version, c.gomod, c.zip)
	v3 := newVerifier(t, testConfig(db), st)
	if _, err := v3.VerifyMod(ctx, c.path, c.version, c.gomod); !errors.Is(err, ErrSecurity) {
		t.Fatalf("restart after fork: err = %v, want ErrSecurity", err)
	}
}

func TestWriteConfigCompareAndSwap(t *testing.T) {
	db := testsumdb.New(t, "sum.example.test")
	v := newVerifier(t, testConfig(db), newMemStore())
	ops := &clientOps{v: v}
	file := "sum.example.test/latest"
	if err := ops.WriteConfig(file, nil, []byte("one")); err != nil {
		t.Fatal(err)
	}
	if err := ops.WriteConfig(file, []byte("zero"), []byte("two")); err != xsumdb.ErrWriteConflict {
		t.Fatalf("stale old: err = %v, want ErrWriteConflict", err)
	}
	if err := ops.WriteConfig(file, []byte("one"), []byte("two")); err != nil {
		t.Fatal(err)
	}
	if got, _ := ops.ReadConfig(file); string(got) != "two" {
		t.Fatalf("config = %q, want two", got)
	}
	if err := ops.WriteConfig("key", nil, []byte("x")); err == nil {
		t.Fatal("writing key: no error")
	}
}

// passthrough is an upstream module proxy that passes the database through
// at /sumdb/<name>/ when supported.
type passthrough struct {
	*httptest.Server
	supported bool
	hits      atomic.Int64
}

func newPassthrough(t *testing.T, db *testsumdb.DB, supported bool) *passthrough {
	u, _ := url.Parse(db.URL())
	rp := httputil.NewSingleHostReverseProxy(u)
	p := &passthrough{supported: supported}
	prefix := "/sumdb/" + db.Name()
	p.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.hits.Add(1)
		rest, ok := strings.CutPrefix(r.URL.Path, prefix)
		if !ok || !p.supported {
			http.NotFound(w, r)
			return
		}
		if rest == "/supported" {
			return
		}
		r.URL.Path = rest
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(p.Close)
	return p
}

func TestPassthroughUpstream(t *testing.T) {
	ctx := context.Background()
	for _, supported := range []bool{true, false} {
		t.Run(fmt.Sprint("supported=", supported), func(t *testing.T) {
			db := testsumdb.New(t, "sum.example.test")
			m := makeMod(t, "example.com/m", "v1.0.0", "m")
			db.AddModule(m.path, m.version, m.gomod, m.zip)
			up := newPassthrough(t, db, supported)
			cfg := testConfig(db)
			cfg.Upstreams = []string{up.URL + "/", "direct"}
			if supported {
				cfg.URL = "http://127.0.0.1:1" // never used
			}
			v := newVerifier(t, cfg, newMemStore())
			if _, err := v.VerifyMod(ctx, m.path, m.version, m.gomod); err != nil {
				t.Fatal(err)
			}
			m2 := makeMod(t, "example.com/m", "v1.1.0", "m2")
			db.AddModule(m2.path, m2.version, m2.gomod, m2.zip)
			if _, err := v.VerifyZip(ctx, m2.path, m2.version, m2.zipFile(t)); err != nil {
				t.Fatal(err)
			}
			dbLookups := db.RequestCount("/lookup/")
			if dbLookups != 2 {
				t.Errorf("database lookups = %d, want 2", dbLookups)
			}
			hits := up.hits.Load()
			if supported && hits < 3 { // probe + 2 lookups (+ tiles)
				t.Errorf("passthrough hits = %d, want the probe and every request", hits)
			}
			if !supported && hits != 1 {
				t.Errorf("unsupported passthrough hits = %d, want exactly one probe", hits)
			}
		})
	}
}

func TestPassthroughProbeErrorIsUnavailable(t *testing.T) {
	db := testsumdb.New(t, "sum.example.test")
	m := makeMod(t, "example.com/m", "v1.0.0", "m")
	db.AddModule(m.path, m.version, m.gomod, m.zip)
	broken := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "boom", http.StatusInternalServerError)
	}))
	defer broken.Close()
	cfg := testConfig(db)
	cfg.Upstreams = []string{broken.URL}
	v := newVerifier(t, cfg, newMemStore())
	if _, err := v.VerifyMod(context.Background(), m.path, m.version, m.gomod); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("err = %v, want ErrUnavailable (no silent switch to direct)", err)
	}
	if n := db.RequestCount(""); n != 0 {
		t.Errorf("database got %d requests, want 0", n)
	}
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// handlerOps is a fresh go-command-like client of the Handler.
type handlerOps struct {
	base, key string
	mu        sync.Mutex
	config    map[string][]byte
}

func (o *handlerOps) ReadRemote(path string) ([]byte, error) {
	resp, err := http.Get(o.base + path)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return nil, fmt.Errorf("%s: %s: %s", path, resp.Status, b)
	}
	return b, err
}
func (o *handlerOps) ReadConfig(file string) ([]byte, error) {
	if file == "key" {
		return []byte(o.key), nil
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.config[file], nil
}
func (o *handlerOps) WriteConfig(file string, old, new []byte) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if !bytes.Equal(o.config[file], old) {
		return xsumdb.ErrWriteConflict
	}
	o.config[file] = new
	return nil
}
func (o *handlerOps) ReadCache(string) ([]byte, error) { return nil, os.ErrNotExist }
func (o *handlerOps) WriteCache(string, []byte)        {}
func (o *handlerOps) Log(string)                       {}
func (o *handlerOps) SecurityError(msg string)         { panic(msg) }

func TestHandler(t *testing.T) {
	db := testsumdb.New(t, "sum.example.test")
	var mods []mod
	for i := range 5 {
		m := makeMod(t, "example.com/m", fmt.Sprintf("v1.%d.0", i), fmt.Sprint(i))
		db.AddModule(m.path, m.version, m.gomod, m.zip)
		mods = append(mods, m)
	}
	st := newMemStore()
	cfg := testConfig(db)
	cfg.Private = "corp.example.com"
	v := newVerifier(t, cfg, st)
	srv := httptest.NewServer(v.Handler())
	defer srv.Close()
	base := srv.URL + "/sumdb/sum.example.test"

	if code, _ := get(t, base+"/supported"); code != 200 {
		t.Fatalf("supported: %d", code)
	}
	if code, _ := get(t, srv.URL+"/sumdb/other.example.test/supported"); code != 404 {
		t.Fatalf("other database: %d, want 404", code)
	}
	if code, body := get(t, base+"/latest"); code != 200 || !strings.HasPrefix(body, "go.sum database tree\n") {
		t.Fatalf("latest: %d %q", code, body)
	}

	lookupAll := func() {
		t.Helper()
		c := xsumdb.NewClient(&handlerOps{base: base, key: db.VerifierKey(), config: map[string][]byte{}})
		for _, m := range mods {
			lines, err := c.Lookup(m.path, m.version)
			want, _ := testsumdb.HashZip(m.zip)
			if err != nil || len(lines) != 1 || !strings.HasSuffix(lines[0], " "+want) {
				t.Fatalf("lookup %s@%s through handler: %q, %v", m.path, m.version, lines, err)
			}
		}
	}
	lookupAll()
	if len(st.keys(bucketVerified)) == 0 {
		t.Fatal("nothing stored")
	}

	// With the database down, a fresh client is served from the store.
	db.SetDown(true)
	db.ResetRequests()
	lookupAll()
	if code, _ := get(t, base+"/latest"); code != 200 {
		t.Fatalf("latest with database down: %d", code)
	}
	// A partial tile of an older tree is cut from the stored tile.
	if code, body := get(t, base+"/tile/8/0/000.p/2"); code != 200 || len(body) != 2*32 {
		t.Fatalf("partial tile from store: %d, %d bytes", code, len(body))
	}
	if code, _ := get(t, base+"/lookup/example.com/m@v9.0.0"); code != http.StatusBadGateway {
		t.Fatalf("uncached lookup with database down: %d, want 502", code)
	}

	// Private paths are refused without asking the database.
	code, body := get(t, base+"/lookup/corp.example.com/secret@v1.0.0")
	if code != 404 || !strings.Contains(body, "private") || strings.Count(strings.TrimSpace(body), "\n") != 0 {
		t.Fatalf("private lookup: %d %q", code, body)
	}
	if _, err := v.VerifyMod(context.Background(), "corp.example.com/secret", "v1.0.0", []byte("module corp.example.com/secret\n")); !errors.Is(err, ErrExempt) {
		t.Fatalf("private VerifyMod: err = %v, want ErrExempt", err)
	}
	if n := db.LookupCount("corp.example.com/secret"); n != 0 {
		t.Fatalf("database saw %d lookups of a private path", n)
	}
	if got := counterValue(t, v.metrics.requests.WithLabelValues("lookup", "private")); got != 1 {
		t.Errorf("requests{lookup,private} = %v", got)
	}
	if got := counterValue(t, v.metrics.requests.WithLabelValues("lookup", "hit")); got != 5 {
		t.Errorf("requests{lookup,hit} = %v, want 5", got)
	}
	if n := db.RequestCount("/lookup/"); n != 1 { // the uncached v9.0.0
		t.Errorf("database lookups while down = %d, want 1", n)
	}
}

func TestHandlerOffline(t *testing.T) {
	db := testsumdb.New(t, "sum.example.test")
	m := makeMod(t, "example.com/m", "v1.0.0", "m")
	db.AddModule(m.path, m.version, m.gomod, m.zip)
	st := newMemStore()
	v := newVerifier(t, testConfig(db), st)
	if _, err := v.VerifyMod(context.Background(), m.path, m.version, m.gomod); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(db)
	cfg.Offline = true
	off := newVerifier(t, cfg, st)
	srv := httptest.NewServer(off.Handler())
	defer srv.Close()
	db.ResetRequests()
	base := srv.URL + "/sumdb/sum.example.test"
	if code, _ := get(t, base+"/lookup/example.com/m@v1.0.0"); code != 200 {
		t.Fatalf("offline cached lookup: %d", code)
	}
	code, body := get(t, base+"/lookup/example.com/m@v2.0.0")
	if code != 404 || !strings.Contains(body, "offline") {
		t.Fatalf("offline missing lookup: %d %q", code, body)
	}
	if code, body := get(t, base+"/tile/8/0/123"); code != 404 || !strings.Contains(body, "offline") {
		t.Fatalf("offline missing tile: %d %q", code, body)
	}
	if code, _ := get(t, base+"/latest"); code != 200 {
		t.Fatalf("offline latest (the verifier's tree head): %d", code)
	}
	if n := db.RequestCount(""); n != 0 {
		t.Fatalf("offline handler sent %d requests to the database", n)
	}
}

func TestConcurrentVerifyAndClientRecycling(t *testing.T) {
	old := maxClientLookups
	maxClientLookups = 3
	defer func() { maxClientLookups = old }()

	db := testsumdb.New(t, "sum.example.test")
	var mods []mod
	for i := range 12 {
		m := makeMod(t, fmt.Sprintf("example.com/m%d", i), "v1.0.0", fmt.Sprint(i))
		db.AddModule(m.path, m.version, m.gomod, m.zip)
		mods = append(mods, m)
	}
	st := newMemStore()
	v := newVerifier(t, testConfig(db), st)
	errs := make(chan error, 3*len(mods))
	for round := range 3 {
		var wg sync.WaitGroup
		for _, m := range mods {
			wg.Go(func() {
				if _, err := v.VerifyMod(context.Background(), m.path, m.version, m.gomod); err != nil {
					errs <- fmt.Errorf("round %d: %w", round, err)
				}
			})
		}
		wg.Wait()
		if round == 0 {
			db.ResetRequests()
		}
	}
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	// Recycled clients read records back from the store.
	if n := db.RequestCount("/lookup/"); n != 0 {
		t.Errorf("database lookups after the first round = %d; the store should serve repeats", n)
	}
}

func TestCanceledContext(t *testing.T) {
	block := make(chan struct{})
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-block:
		case <-r.Context().Done():
		}
	}))
	defer slow.Close()
	defer close(block)
	db := testsumdb.New(t, "sum.example.test")
	cfg := testConfig(db)
	cfg.URL = slow.URL
	v := newVerifier(t, cfg, newMemStore())
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	// The database never answers before the test ends: only the context
	// can end VerifyMod. The bound is a hang guard.
	const hangGuard = 2 * time.Minute
	errc := make(chan error, 1)
	go func() {
		_, err := v.VerifyMod(ctx, "example.com/m", "v1.0.0", []byte("module example.com/m\n"))
		errc <- err
	}()
	select {
	case err := <-errc:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("err = %v, want deadline exceeded", err)
		}
	case <-time.After(hangGuard):
		t.Fatalf("VerifyMod still waiting for the database %v after its context expired", hangGuard)
	}
}

// hedgeHealth hedges every upstream after a fixed delay and records the
// decisions.
type hedgeHealth struct {
	after     time.Duration
	mu        sync.Mutex
	decisions []string
}

func (h *hedgeHealth) HedgeAfter(string) (time.Duration, bool) { return h.after, true }

func (h *hedgeHealth) RecordDecision(upstream, decision, reason string) {
	h.mu.Lock()
	h.decisions = append(h.decisions, upstream+" "+decision)
	h.mu.Unlock()
}

func TestHedgeSlowPassthrough(t *testing.T) {
	db := testsumdb.New(t, "sum.example.test")
	m := makeMod(t, "example.com/m", "v1.0.0", "m")
	db.AddModule(m.path, m.version, m.gomod, m.zip)
	fast := newPassthrough(t, db, true)
	// The slow upstream answers "supported" at once but stalls every
	// database read well past the hedge delay.
	slowInner := newPassthrough(t, db, true)
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasSuffix(r.URL.Path, "/supported") {
			<-r.Context().Done() // until the verifier abandons it
			return
		}
		resp, err := http.Get(slowInner.URL + r.URL.Path)
		if err != nil {
			http.Error(w, err.Error(), 502)
			return
		}
		defer resp.Body.Close()
		w.WriteHeader(resp.StatusCode)
		io.Copy(w, resp.Body)
	}))
	t.Cleanup(slow.Close)

	h := &hedgeHealth{after: 30 * time.Millisecond}
	cfg := testConfig(db)
	cfg.Upstreams = []string{slow.URL, fast.URL}
	cfg.URL = "http://127.0.0.1:1" // never used
	cfg.Health = h
	v := newVerifier(t, cfg, newMemStore())
	// Only the hedge can answer; the bound is a hang guard.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := v.VerifyMod(ctx, m.path, m.version, m.gomod); err != nil {
		t.Fatalf("%v (it waited for the stalled upstream)", err)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	got := strings.Join(h.decisions, "; ")
	if !strings.Contains(got, slow.URL+" hedged") || !strings.Contains(got, fast.URL+" hedge_won") {
		t.Errorf("decisions: %s", got)
	}
}

// A retry of a failed passthrough probe must not make verifications queue
// behind it: they go on with the upstreams already known to pass through.
func TestProbeRetryRunsInTheBackground(t *testing.T) {
	old := probeRetry
	probeRetry = 0
	t.Cleanup(func() { probeRetry = old })
	db := testsumdb.New(t, "sum.example.test")
	good := newPassthrough(t, db, true)
	var probes atomic.Int64
	hanging := make(chan struct{})
	var hangOnce sync.Once
	release := func() { hangOnce.Do(func() { close(hanging) }) }
	t.Cleanup(release)
	flaky := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if probes.Add(1) == 1 {
			http.Error(w, "boom", http.StatusInternalServerError)
			return
		}
		select { // later probes hang until the test is done
		case <-hanging:
		case <-r.Context().Done():
		}
		http.NotFound(w, r)
	}))
	t.Cleanup(flaky.Close)
	cfg := testConfig(db)
	cfg.Upstreams = []string{flaky.URL, good.URL}
	v := newVerifier(t, cfg, newMemStore())
	ctx := context.Background()
	for i := range 3 {
		m := makeMod(t, "example.com/m", fmt.Sprintf("v1.%d.0", i), "m")
		db.AddModule(m.path, m.version, m.gomod, m.zip)
		if _, err := v.VerifyMod(ctx, m.path, m.version, m.gomod); err != nil {
			t.Fatalf("verification %d: %v", i, err)
		}
	}
	if n := probes.Load(); n < 2 {
		t.Fatalf("flaky upstream probed %d times, want the failed probe and a retry", n)
	}
	select {
	case <-hanging:
		t.Fatal("released early")
	default: // the retry is still hanging, and the verifications are done
	}
	release()
}
