package testsumdb

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"golang.org/x/mod/sumdb"
	"golang.org/x/mod/sumdb/dirhash"
)

// memOps is a minimal in-memory sumdb.ClientOps talking to a DB.
type memOps struct {
	url, key string
	mu       sync.Mutex
	config   map[string][]byte
	cache    map[string][]byte
	security []string
}

func newOps(db *DB) *memOps {
	return &memOps{url: db.URL(), key: db.VerifierKey(), config: map[string][]byte{}, cache: map[string][]byte{}}
}

func (o *memOps) ReadRemote(path string) ([]byte, error) {
	resp, err := http.Get(o.url + path)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return nil, errors.New(resp.Status + ": " + string(data))
	}
	return data, err
}

func (o *memOps) ReadConfig(file string) ([]byte, error) {
	if file == "key" {
		return []byte(o.key), nil
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.config[file], nil
}

func (o *memOps) WriteConfig(file string, old, new []byte) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if string(o.config[file]) != string(old) {
		return sumdb.ErrWriteConflict
	}
	o.config[file] = new
	return nil
}

func (o *memOps) ReadCache(file string) ([]byte, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if d, ok := o.cache[file]; ok {
		return d, nil
	}
	return nil, os.ErrNotExist
}

func (o *memOps) WriteCache(file string, data []byte) {
	o.mu.Lock()
	o.cache[file] = data
	o.mu.Unlock()
}

func (o *memOps) Log(string) {}

func (o *memOps) SecurityError(msg string) {
	o.mu.Lock()
	o.security = append(o.security, msg)
	o.mu.Unlock()
}

func makeModule(t *testing.T, path, version, body string) (gomod, zip []byte) {
	t.Helper()
	gomod = []byte("module " + path + "\n\ngo 1.21\n")
	zip, err := MakeZip(path, version, map[string][]byte{"go.mod": gomod, "a.go": []byte("package a\n// " + body + "\n")})
	if err != nil {
		t.Fatal(err)
	}
	return gomod, zip
}

func TestLookupAndHashes(t *testing.T) {
	db := New(t, "sum.example.test")
	gomod, zip := makeModule(t, "example.com/m", "v1.0.0", "one")
	db.AddModule("example.com/m", "v1.0.0", gomod, zip)

	c := sumdb.NewClient(newOps(db))
	lines, err := c.Lookup("example.com/m", "v1.0.0")
	if err != nil {
		t.Fatal(err)
	}
	zipFile := filepath.Join(t.TempDir(), "m.zip")
	if err := os.WriteFile(zipFile, zip, 0o644); err != nil {
		t.Fatal(err)
	}
	want, err := dirhash.HashZip(zipFile, dirhash.Hash1)
	if err != nil {
		t.Fatal(err)
	}
	if len(lines) != 1 || lines[0] != "example.com/m v1.0.0 "+want {
		t.Fatalf("lookup lines = %q, want zip hash %s", lines, want)
	}
	modLines, err := c.Lookup("example.com/m", "v1.0.0/go.mod")
	if err != nil {
		t.Fatal(err)
	}
	modHash, _ := HashMod(gomod)
	if len(modLines) != 1 || !strings.HasSuffix(modLines[0], " "+modHash) {
		t.Fatalf("go.mod lines = %q, want hash %s", modLines, modHash)
	}
	if _, err := c.Lookup("example.com/missing", "v1.0.0"); err == nil || !strings.Contains(err.Error(), "404") {
		t.Fatalf("missing module: err = %v, want 404", err)
	}
	if n := db.LookupCount("example.com/m"); n != 1 {
		t.Errorf("LookupCount = %d, want 1 (the client caches the record)", n)
	}
	if got := db.GOSUMDB(); got != db.VerifierKey()+" "+db.URL() || !strings.HasPrefix(got, "sum.example.test+") {
		t.Errorf("GOSUMDB() = %q", got)
	}
}

func TestLazyLookupDownAndFork(t *testing.T) {
	db := New(t, "")
	db.SetLookup(func(path, version string) (string, string, error) {
		if path != "example.com/lazy" {
			return "", "", os.ErrNotExist
		}
		return "h1:" + strings.Repeat("A", 43) + "=", "h1:" + strings.Repeat("B", 43) + "=", nil
	})
	ops := newOps(db)
	c := sumdb.NewClient(ops)
	if _, err := c.Lookup("example.com/lazy", "v0.1.0"); err != nil {
		t.Fatal(err)
	}
	if db.Size() != 1 {
		t.Fatalf("Size = %d, want 1", db.Size())
	}

	db.SetDown(true)
	resp, err := http.Get(db.URL() + "/latest")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("down: status %d, want 503", resp.StatusCode)
	}
	db.SetDown(false)

	db.ForkHistory()
	db.Add("example.com/other", "v1.0.0", "h1:"+strings.Repeat("C", 43)+"=", "")
	_, err = c.Lookup("example.com/other", "v1.0.0/go.mod")
	if !strings.Contains(errString(err), sumdb.ErrSecurity.Error()) || len(ops.security) == 0 {
		t.Fatalf("after fork: err = %v, security reports %d; want a security error", err, len(ops.security))
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// fatalTB records Fatalf instead of ending the test, so that a test can
// check the misuse New reports.
type fatalTB struct {
	testing.TB
	msg string
}

type fatalCalled struct{}

func (f *fatalTB) Fatalf(format string, args ...any) {
	f.msg = fmt.Sprintf(format, args...)
	panic(fatalCalled{})
}

// Misuse under New is the test's failure (Fatalf), not a panic or a crash.
func TestMisuseFailsTheTest(t *testing.T) {
	tb := &fatalTB{TB: t}
	db := New(tb, "sum.example.test")
	db.Add("example.com/m", "v1.0.0", "h1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", "")
	func() {
		defer func() {
			if r := recover(); r != nil {
				if _, ok := r.(fatalCalled); !ok {
					panic(r)
				}
			}
		}()
		db.Add("example.com/m", "v1.0.0", "h1:BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB=", "")
	}()
	if !strings.Contains(tb.msg, "testsumdb.Add") {
		t.Errorf("re-adding a record with other hashes: Fatalf(%q), want it reported", tb.msg)
	}
}
