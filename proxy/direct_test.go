package proxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"strings"
	"sync"
	"testing"

	"github.com/modproxy/modproxy/cache"
	"github.com/modproxy/modproxy/internal/testsumdb"
	"github.com/modproxy/modproxy/internal/testupstream"
)

// fakeDirect serves files by "path@version.kind" ("path/@v/list" for
// lists); a missing key is not found; fail makes every call fail.
type fakeDirect struct {
	mu    sync.Mutex
	files map[string]string
	fail  error
	calls []string
}

func (d *fakeDirect) Open(_ context.Context, path, kind, version string) (io.ReadCloser, int64, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	key := path + "@" + version + "." + kind
	if kind == "list" || kind == "latest" {
		key = path + "/@" + kind
	}
	d.calls = append(d.calls, key)
	if d.fail != nil {
		return nil, 0, d.fail
	}
	data, ok := d.files[key]
	if !ok {
		return nil, 0, fmt.Errorf("%s: %w", key, fs.ErrNotExist)
	}
	return io.NopCloser(strings.NewReader(data)), int64(len(data)), nil
}

func directFiles() map[string]string {
	zip, err := testupstream.MakeZip("git.example/lib", "v1.0.0", map[string]string{"go.mod": "module git.example/lib\n", "l.go": "package lib\n"})
	if err != nil {
		panic(err)
	}
	return map[string]string{
		"git.example/lib/@list":          "v1.0.0\n",
		"git.example/lib@v1.0.0.info":    `{"Version":"v1.0.0","Time":"2024-01-01T00:00:00Z","Origin":{"VCS":"git","URL":"https://git.example/lib"}}`,
		"git.example/lib@v1.0.0.mod":     "module git.example/lib\n",
		"git.example/lib@v1.0.0.zip":     string(zip),
		"git.example/lib@master.info":    `{"Version":"v1.0.1-0.20240101000000-abcdefabcdef","Time":"2024-01-01T00:00:00Z"}`,
		"private.example/p@v0.1.0.mod":   "module private.example/p\n",
		"private.example/p@v0.1.0.info":  `{"Version":"v0.1.0","Time":"2024-01-01T00:00:00Z"}`,
		"git.example/garbage@v1.0.0.mod": "this is not a go.mod \x00",
	}
}

// TestDirectEntry: "direct" is reached as the go command reaches it,
// after a not-found from the proxies before it; its answers are
// validated, verified and stored like any upstream's.
func TestDirectEntry(t *testing.T) {
	up := newUpstream(t)
	d := &fakeDirect{files: directFiles()}
	zip := d.files["git.example/lib@v1.0.0.zip"]
	zh, err := testsumdb.HashZip([]byte(zip))
	mh, err2 := testsumdb.HashMod([]byte("module git.example/lib\n"))
	v := &hashVerifier{good: map[string]string{
		"git.example/lib@v1.0.0.zip": mustHash(t, zh, err),
		"git.example/lib@v1.0.0.mod": mustHash(t, mh, err2),
	}}
	e := newEnv(t, up.URL()+",direct", func(c *Config) { c.Direct = d; c.Verifier = v })

	r := e.mustGet("/git.example/lib/@v/list", 200)
	if r.body != "v1.0.0\n" || r.header.Get(headerUpstream) != "direct" {
		t.Errorf("list %q from %q", r.body, r.header.Get(headerUpstream))
	}
	for _, p := range []string{"/git.example/lib/@v/v1.0.0.info", "/git.example/lib/@v/v1.0.0.mod", "/git.example/lib/@v/v1.0.0.zip"} {
		e.mustGet(p, 200)
	}
	waitFlights(t, e.f)
	if r := e.mustGet("/git.example/lib/@v/v1.0.0.zip", 200); r.body != zip || r.header.Get(headerCache) != "hit" {
		t.Errorf("zip not stored: cache %q", r.header.Get(headerCache))
	}
	m, err := e.store.Stat(cache.Key{Path: "git.example/lib", Version: "v1.0.0", Kind: cache.KindZip})
	if err != nil || m.Upstream != "direct" || m.Hash == "" {
		t.Errorf("stored zip meta %+v %v", m, err)
	}
	if r := e.mustGet("/git.example/lib/@v/master.info", 200); !strings.Contains(r.body, "v1.0.1-0.") {
		t.Errorf("query %q", r.body)
	}
	// Not found at direct is not found for the client.
	if r := e.get("/git.example/none/@v/v1.0.0.info"); r.status != 404 || !strings.Contains(r.body, "direct") {
		t.Errorf("missing: %d %q", r.status, r.body)
	}
	// Garbage from direct is refused like any upstream's.
	if r := e.get("/git.example/garbage/@v/v1.0.0.mod"); r.status != 502 {
		t.Errorf("garbage go.mod: %d %q", r.status, r.body)
	}
	// The public upstream answered first: direct is the last resort.
	d.mu.Lock()
	calls := len(d.calls)
	d.mu.Unlock()
	e.mustGet("/example.com/hello/@v/v1.0.0.info", 200)
	d.mu.Lock()
	if len(d.calls) != calls {
		t.Errorf("direct asked for a module the proxy before it has")
	}
	d.mu.Unlock()
}

// TestDirectChecksumMismatch: a public module from direct that disagrees
// with the checksum database is refused and not stored.
func TestDirectChecksumMismatch(t *testing.T) {
	d := &fakeDirect{files: directFiles()}
	v := &hashVerifier{good: map[string]string{"git.example/lib@v1.0.0.zip": "h1:other"}}
	e := newEnv(t, "direct", func(c *Config) { c.Direct = d; c.Verifier = v })
	if r := e.get("/git.example/lib/@v/v1.0.0.zip"); r.status != 502 || !strings.Contains(r.body, "checksum mismatch") {
		t.Errorf("mismatch: %d %q", r.status, r.body)
	}
	if _, err := e.store.Stat(cache.Key{Path: "git.example/lib", Version: "v1.0.0", Kind: cache.KindZip}); !errors.Is(err, cache.ErrNotFound) {
		t.Errorf("mismatching zip stored: %v", err)
	}
}

// TestDirectFailures: a failing direct is a 502 with its reason; without
// a configured Direct the entry is a clear not-found.
func TestDirectFailures(t *testing.T) {
	d := &fakeDirect{fail: errors.New("git fetch: fatal: early EOF\nsecond line")}
	e := newEnv(t, "direct", func(c *Config) { c.Direct = d })
	if r := e.get("/git.example/lib/@v/v1.0.0.info"); r.status != 502 || !strings.Contains(r.body, "early EOF") || strings.Count(r.body, "\n") > 1 {
		t.Errorf("failing direct: %d %q", r.status, r.body)
	}
	up := newUpstream(t)
	e = newEnv(t, up.URL()+",direct", nil)
	if r := e.get("/git.example/lib/@v/v1.0.0.info"); r.status != 404 || !strings.Contains(r.body, "not configured") {
		t.Errorf("unconfigured direct: %d %q", r.status, r.body)
	}
}

// TestDirectPrivate: private paths go to a direct private upstream only
// and are not verified.
func TestDirectPrivate(t *testing.T) {
	up := newUpstream(t)
	d := &fakeDirect{files: directFiles()}
	ups, _ := ParseUpstreams("direct")
	v := &hashVerifier{good: map[string]string{"private.example/p@v0.1.0.mod": "h1:x"}}
	e := newEnv(t, up.URL(), func(c *Config) {
		c.Direct, c.PrivateUpstreams, c.Private, c.Verifier = d, ups, "private.example", v
	})
	if r := e.mustGet("/private.example/p/@v/v0.1.0.mod", 200); !bytes.Equal([]byte(r.body), []byte("module private.example/p\n")) {
		t.Errorf("private mod %q", r.body)
	}
	if n := up.Count("private.example"); n != 0 {
		t.Errorf("public upstream saw %d private requests", n)
	}
}
