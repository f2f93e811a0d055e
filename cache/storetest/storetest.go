// Package storetest is the compliance suite every storage backend passes:
// the bbolt store (cache.Store), the S3 backend (cache/s3store) and the
// tiered one. Run exercises what the proxy and the gate rely on: a reader
// sees a whole artifact or nothing (atomic publish), the first writer of a
// key wins and every other writer gets the winner's Meta (put-if-absent),
// a put that dies midway leaves nothing visible, readers and writers run
// concurrently, listings are complete and ordered, and the mutable entries'
// compare-and-swap lets exactly one of several racing writers through.
package storetest

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/modproxy/modproxy/cache"
	"github.com/modproxy/modproxy/cache/internal/grant"
)

// Backend is the storage under test.
type Backend interface {
	Put(k cache.Key, r io.Reader, m cache.Meta, w grant.Write) (cache.Meta, error)
	Stat(cache.Key) (cache.Meta, error)
	Get(cache.Key) ([]byte, cache.Meta, error)
	Open(cache.Key) (cache.ArtifactReader, error)
	Versions(path string) ([]string, error)
	Walk(func(cache.Key, cache.Meta) error) error
	Delete(cache.Key) error
	Quarantine(k cache.Key, reason string) error

	GetEntry(key string) (cache.Entry, error)
	PutEntry(key string, value []byte) error
	SwapEntry(key string, old, new []byte) (bool, error)

	GetKV(bucket, key string) ([]byte, error)
	PutKV(bucket, key string, value []byte) error
	DeleteKV(bucket, key string) error
}

// Run runs the suite; newBackend returns an empty backend, cleaned up by
// the test (t.Cleanup).
func Run(t *testing.T, newBackend func(t *testing.T) Backend) {
	tests := []struct {
		name string
		fn   func(*testing.T, Backend)
	}{
		{"RoundTrip", testRoundTrip},
		{"PutExistingReadsNothing", testPutExisting},
		{"ExpectationsChecked", testExpectations},
		{"FailedPutLeavesNothing", testFailedPut},
		{"AtomicPublish", testAtomicPublish},
		{"PutIfAbsentRace", testPutRace},
		{"ConcurrentReadersWriters", testConcurrent},
		{"Listing", testListing},
		{"DeleteAndQuarantine", testDelete},
		{"ReaderSemantics", testReader},
		{"Entries", testEntries},
		{"SwapEntryRace", testSwapRace},
		{"KV", testKV},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { tt.fn(t, newBackend(t)) })
	}
}

// Content returns deterministic pseudo-random bytes.
func content(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func zipKey(path, version string) cache.Key {
	return cache.Key{Path: path, Version: version, Kind: cache.KindZip}
}

func put(t *testing.T, b Backend, k cache.Key, data []byte, m cache.Meta) cache.Meta {
	t.Helper()
	got, err := b.Put(k, bytes.NewReader(data), m, grant.Write{})
	if err != nil {
		t.Fatalf("put %s: %v", k, err)
	}
	return got
}

func mustGet(t *testing.T, b Backend, k cache.Key) ([]byte, cache.Meta) {
	t.Helper()
	data, m, err := b.Get(k)
	if err != nil {
		t.Fatalf("get %s: %v", k, err)
	}
	return data, m
}

func wantNotFound(t *testing.T, b Backend, k cache.Key) {
	t.Helper()
	if _, err := b.Stat(k); !errors.Is(err, cache.ErrNotFound) {
		t.Fatalf("stat %s: err %v, want ErrNotFound", k, err)
	}
	if _, _, err := b.Get(k); !errors.Is(err, cache.ErrNotFound) {
		t.Fatalf("get %s: err %v, want ErrNotFound", k, err)
	}
	if r, err := b.Open(k); !errors.Is(err, cache.ErrNotFound) {
		if r != nil {
			r.Close()
		}
		t.Fatalf("open %s: err %v, want ErrNotFound", k, err)
	}
}

func testRoundTrip(t *testing.T, b Backend) {
	created := time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)
	cases := []struct {
		k    cache.Key
		size int
		m    cache.Meta
	}{
		{cache.Key{Path: "example.com/a", Version: "v1.0.0", Kind: cache.KindInfo}, 40, cache.Meta{State: cache.StateExempt, Upstream: "https://up.example"}},
		{cache.Key{Path: "example.com/a", Version: "v1.0.0", Kind: cache.KindMod}, 0, cache.Meta{Hash: "h1:empty", State: cache.StateUnverified}},
		{zipKey("example.com/a", "v1.0.0"), 3<<20 + 17, cache.Meta{Hash: "h1:abc", State: cache.StateVerified, Proof: "proof record\nline 2", Created: created}},
		{zipKey("example.com/UPPER/ünïcode", "v0.0.0-20240101000000-abcdefabcdef"), 1, cache.Meta{State: cache.StateExempt}},
	}
	for i, c := range cases {
		data := content(uint64(i), c.size)
		got := put(t, b, c.k, data, c.m)
		if got.Size != int64(c.size) || got.SHA256 != sha256.Sum256(data) {
			t.Errorf("put %s: size %d sha %x, want %d %x", c.k, got.Size, got.SHA256, c.size, sha256.Sum256(data))
		}
		if got.Hash != c.m.Hash || got.State != c.m.State || got.Proof != c.m.Proof || got.Upstream != c.m.Upstream {
			t.Errorf("put %s: meta %+v, want fields of %+v", c.k, got, c.m)
		}
		if !c.m.Created.IsZero() && !got.Created.Equal(c.m.Created) {
			t.Errorf("put %s: created %v, want %v", c.k, got.Created, c.m.Created)
		}
		if c.m.Created.IsZero() && time.Since(got.Created) > time.Hour {
			t.Errorf("put %s: created %v, want about now", c.k, got.Created)
		}
		st, err := b.Stat(c.k)
		if err != nil || !sameMeta(st, got) {
			t.Errorf("stat %s: %+v %v, want %+v", c.k, st, err, got)
		}
		gd, gm := mustGet(t, b, c.k)
		if !bytes.Equal(gd, data) || !sameMeta(gm, got) {
			t.Errorf("get %s: %d bytes (want %d), meta %+v", c.k, len(gd), len(data), gm)
		}
		r, err := b.Open(c.k)
		if err != nil {
			t.Fatalf("open %s: %v", c.k, err)
		}
		var buf bytes.Buffer
		if _, err := io.Copy(&buf, r); err != nil || !bytes.Equal(buf.Bytes(), data) {
			t.Errorf("open %s: read %d bytes, %v", c.k, buf.Len(), err)
		}
		if r.Size() != int64(c.size) || !sameMeta(r.Meta(), got) {
			t.Errorf("reader of %s: size %d meta %+v", c.k, r.Size(), r.Meta())
		}
		if err := r.Close(); err != nil {
			t.Errorf("close reader: %v", err)
		}
	}
	wantNotFound(t, b, zipKey("example.com/a", "v9.9.9"))
}

// sameMeta compares Metas, times by instant.
func sameMeta(a, b cache.Meta) bool {
	ta, tb := a.Created, b.Created
	a.Created, b.Created = time.Time{}, time.Time{}
	return a == b && ta.Equal(tb)
}

// failReader fails the test's expectation if read.
type failReader struct{ read bool }

func (f *failReader) Read([]byte) (int, error) {
	f.read = true
	return 0, errors.New("must not be read")
}

func testPutExisting(t *testing.T, b Backend) {
	k := zipKey("example.com/exists", "v1.0.0")
	first := put(t, b, k, content(1, 1000), cache.Meta{Hash: "h1:first", State: cache.StateVerified, Proof: "p"})
	fr := &failReader{}
	got, err := b.Put(k, fr, cache.Meta{Hash: "h1:second", State: cache.StateExempt}, grant.Write{})
	if err != nil {
		t.Fatalf("second put: %v", err)
	}
	if fr.read {
		t.Error("second put of a stored key read its content")
	}
	if !sameMeta(got, first) {
		t.Errorf("second put returned %+v, want the stored %+v", got, first)
	}
}

func testExpectations(t *testing.T, b Backend) {
	data := content(2, 5000)
	sum := sha256.Sum256(data)
	bad := sum
	bad[0] ^= 1
	cases := []struct {
		name string
		m    cache.Meta
		ok   bool
	}{
		{"size and sha match", cache.Meta{Size: 5000, SHA256: sum}, true},
		{"lying size, shorter", cache.Meta{Size: 4999}, false},
		{"lying size, longer", cache.Meta{Size: 5001}, false},
		{"wrong sha", cache.Meta{SHA256: bad}, false},
		{"bad state", cache.Meta{State: "trusted-me"}, false},
		{"negative size", cache.Meta{Size: -1}, false},
	}
	for i, c := range cases {
		k := zipKey("example.com/expect", fmt.Sprintf("v1.0.%d", i))
		_, err := b.Put(k, bytes.NewReader(data), c.m, grant.Write{})
		if (err == nil) != c.ok {
			t.Errorf("%s: put err %v, want ok=%v", c.name, err, c.ok)
		}
		if !c.ok {
			wantNotFound(t, b, k)
		}
	}
	for _, k := range []cache.Key{
		{Path: "", Version: "v1.0.0", Kind: cache.KindZip},
		{Path: "example.com/x", Version: "", Kind: cache.KindZip},
		{Path: "example.com/x", Version: "v1.0.0", Kind: "exe"},
		{Path: "example.com/x\x00y", Version: "v1.0.0", Kind: cache.KindZip},
	} {
		if _, err := b.Put(k, bytes.NewReader(data), cache.Meta{}, grant.Write{}); err == nil {
			t.Errorf("put of invalid key %q succeeded", k)
		}
	}
}

// brokenReader returns n bytes, then fails (a client or upstream dying
// mid-transfer, or a process being killed, as far as the store sees it).
type brokenReader struct {
	r    io.Reader
	left int
}

func (b *brokenReader) Read(p []byte) (int, error) {
	if b.left <= 0 {
		return 0, errors.New("connection reset midway")
	}
	if len(p) > b.left {
		p = p[:b.left]
	}
	n, err := b.r.Read(p)
	b.left -= n
	return n, err
}

func testFailedPut(t *testing.T, b Backend) {
	k := zipKey("example.com/broken", "v1.0.0")
	data := content(3, 6<<20)
	for _, at := range []int{0, 1, 1 << 20, 6<<20 - 1} {
		_, err := b.Put(k, &brokenReader{r: bytes.NewReader(data), left: at}, cache.Meta{}, grant.Write{})
		if err == nil {
			t.Fatalf("put failing after %d bytes succeeded", at)
		}
		wantNotFound(t, b, k)
		n := 0
		if err := b.Walk(func(cache.Key, cache.Meta) error { n++; return nil }); err != nil {
			t.Fatal(err)
		}
		if n != 0 {
			t.Fatalf("after a failed put, walk lists %d artifacts", n)
		}
	}
	m := put(t, b, k, data, cache.Meta{})
	if got, _ := mustGet(t, b, k); !bytes.Equal(got, data) || m.Size != int64(len(data)) {
		t.Fatalf("put after failed puts: got %d bytes", len(got))
	}
}

// gatedReader delivers its content in two halves, the second only after
// release is closed.
type gatedReader struct {
	data    []byte
	off     int
	halfway chan struct{}
	release chan struct{}
	once    sync.Once
}

func (g *gatedReader) Read(p []byte) (int, error) {
	if g.off >= len(g.data) {
		return 0, io.EOF
	}
	if g.off >= len(g.data)/2 {
		g.once.Do(func() { close(g.halfway) })
		<-g.release
	}
	end := len(g.data)
	if g.off < len(g.data)/2 {
		end = len(g.data) / 2
	}
	n := copy(p, g.data[g.off:end])
	g.off += n
	return n, nil
}

func testAtomicPublish(t *testing.T, b Backend) {
	k := zipKey("example.com/atomic", "v1.0.0")
	data := content(4, 5<<20)
	g := &gatedReader{data: data, halfway: make(chan struct{}), release: make(chan struct{})}
	done := make(chan error, 1)
	go func() {
		_, err := b.Put(k, g, cache.Meta{}, grant.Write{})
		done <- err
	}()
	select {
	case <-g.halfway:
	case err := <-done:
		t.Fatalf("put returned before its content was complete: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("put never read half its content")
	}
	// Half the content is in the backend's hands: nothing may be visible.
	wantNotFound(t, b, k)
	close(g.release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got, _ := mustGet(t, b, k); !bytes.Equal(got, data) {
		t.Fatalf("after publish: %d bytes, want %d", len(got), len(data))
	}
}

func testPutRace(t *testing.T, b Backend) {
	const writers = 8
	k := zipKey("example.com/race", "v1.0.0")
	var (
		wg    sync.WaitGroup
		metas [writers]cache.Meta
		errs  [writers]error
	)
	start := make(chan struct{})
	for i := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			data := content(uint64(100+i), 256<<10+i)
			metas[i], errs[i] = b.Put(k, bytes.NewReader(data), cache.Meta{Hash: fmt.Sprint("h1:", i)}, grant.Write{})
		}()
	}
	close(start)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("writer %d: %v", i, err)
		}
	}
	data, stored := mustGet(t, b, k)
	if stored.SHA256 != sha256.Sum256(data) {
		t.Fatal("stored content does not match its own SHA-256")
	}
	winners := 0
	for i := range writers {
		if !sameMeta(metas[i], stored) {
			t.Errorf("writer %d got %+v, stored is %+v", i, metas[i], stored)
		}
		if bytes.Equal(data, content(uint64(100+i), 256<<10+i)) {
			winners++
			if stored.Hash != fmt.Sprint("h1:", i) {
				t.Errorf("content of writer %d stored with the Meta of another (%q)", i, stored.Hash)
			}
		}
	}
	if winners != 1 {
		t.Fatalf("stored content is from %d writers, want exactly 1", winners)
	}
}

func testConcurrent(t *testing.T, b Backend) {
	const (
		keys    = 12
		readers = 6
	)
	sizes := func(i int) int { return 1 + i*97<<10 }
	var wg sync.WaitGroup
	errc := make(chan error, keys+readers)
	for i := range keys {
		wg.Add(1)
		go func() {
			defer wg.Done()
			k := zipKey("example.com/conc", fmt.Sprintf("v1.0.%d", i))
			if _, err := b.Put(k, bytes.NewReader(content(uint64(i), sizes(i))), cache.Meta{}, grant.Write{}); err != nil {
				errc <- err
			}
		}()
	}
	stop := make(chan struct{})
	var rwg sync.WaitGroup
	for range readers {
		rwg.Add(1)
		go func() {
			defer rwg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				i := rand.IntN(keys)
				k := zipKey("example.com/conc", fmt.Sprintf("v1.0.%d", i))
				data, m, err := b.Get(k)
				if errors.Is(err, cache.ErrNotFound) {
					continue
				}
				if err != nil {
					errc <- err
					return
				}
				if !bytes.Equal(data, content(uint64(i), sizes(i))) || m.SHA256 != sha256.Sum256(data) {
					errc <- fmt.Errorf("reader saw %d bytes of %s, not its whole content", len(data), k)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(stop)
	rwg.Wait()
	close(errc)
	for err := range errc {
		t.Error(err)
	}
}

func testListing(t *testing.T, b Backend) {
	var want []cache.Key
	for _, p := range []string{"example.com/b", "example.com/a", "example.com/a/sub"} {
		for _, v := range []string{"v1.10.0", "v1.2.0", "v1.2.0-pre", "v0.1.0"} {
			for _, kind := range []cache.Kind{cache.KindInfo, cache.KindMod, cache.KindZip} {
				if p == "example.com/b" && v == "v0.1.0" && kind == cache.KindInfo {
					continue // a version without .info is not listed by Versions
				}
				k := cache.Key{Path: p, Version: v, Kind: kind}
				put(t, b, k, []byte(k.String()), cache.Meta{})
				want = append(want, k)
			}
		}
	}
	var got []cache.Key
	err := b.Walk(func(k cache.Key, m cache.Meta) error {
		if m.Size != int64(len(k.String())) {
			t.Errorf("walk: %s has size %d", k, m.Size)
		}
		got = append(got, k)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	less := func(a, b cache.Key) int {
		if c := cmpStr(a.Path, b.Path); c != 0 {
			return c
		}
		if c := cmpStr(a.Version, b.Version); c != 0 {
			return c
		}
		return cmpStr(string(a.Kind), string(b.Kind))
	}
	slices.SortFunc(want, less)
	if !slices.Equal(got, want) {
		t.Errorf("walk listed\n%v\nwant (path, version, kind byte order)\n%v", got, want)
	}
	stop := errors.New("stop")
	n := 0
	if err := b.Walk(func(cache.Key, cache.Meta) error { n++; return stop }); !errors.Is(err, stop) || n != 1 {
		t.Errorf("walk stopped by fn: err %v after %d calls", err, n)
	}
	vs, err := b.Versions("example.com/a")
	if err != nil || !slices.Equal(vs, []string{"v0.1.0", "v1.2.0-pre", "v1.2.0", "v1.10.0"}) {
		t.Errorf("versions of a: %v %v", vs, err)
	}
	vs, err = b.Versions("example.com/b")
	if err != nil || !slices.Equal(vs, []string{"v1.2.0-pre", "v1.2.0", "v1.10.0"}) {
		t.Errorf("versions of b: %v %v", vs, err)
	}
	if vs, err := b.Versions("example.com"); err != nil || len(vs) != 0 {
		t.Errorf("versions of a path prefix: %v %v, want none", vs, err)
	}
}

func cmpStr(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func testDelete(t *testing.T, b Backend) {
	k := zipKey("example.com/del", "v1.0.0")
	if err := b.Delete(k); !errors.Is(err, cache.ErrNotFound) {
		t.Errorf("delete of a missing key: %v, want ErrNotFound", err)
	}
	put(t, b, k, content(5, 2000), cache.Meta{})
	if err := b.Delete(k); err != nil {
		t.Fatal(err)
	}
	wantNotFound(t, b, k)
	// A deleted key takes new content.
	data := content(6, 3000)
	put(t, b, k, data, cache.Meta{})
	if got, _ := mustGet(t, b, k); !bytes.Equal(got, data) {
		t.Fatal("put after delete did not store the new content")
	}
	if err := b.Quarantine(k, "test: found bad"); err != nil {
		t.Fatal(err)
	}
	wantNotFound(t, b, k)
	data = content(7, 100)
	put(t, b, k, data, cache.Meta{})
	if got, _ := mustGet(t, b, k); !bytes.Equal(got, data) {
		t.Fatal("put after quarantine did not store the new content")
	}
	if err := b.Quarantine(zipKey("example.com/del", "v2.0.0"), "x"); !errors.Is(err, cache.ErrNotFound) {
		t.Errorf("quarantine of a missing key: %v, want ErrNotFound", err)
	}
}

func testReader(t *testing.T, b Backend) {
	k := zipKey("example.com/reader", "v1.0.0")
	data := content(8, 2<<20+5)
	put(t, b, k, data, cache.Meta{})
	r, err := b.Open(k)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	for _, off := range []int64{0, 1, 1 << 20, int64(len(data)) - 3} {
		p := make([]byte, 3)
		if n, err := r.ReadAt(p, off); n != 3 || (err != nil && err != io.EOF) || !bytes.Equal(p, data[off:off+3]) {
			t.Errorf("ReadAt(%d): %d %v", off, n, err)
		}
	}
	p := make([]byte, 10)
	if n, err := r.ReadAt(p, int64(len(data))-4); n != 4 || err != io.EOF {
		t.Errorf("ReadAt over the end: %d %v, want 4 io.EOF", n, err)
	}
	if _, err := r.Seek(int64(len(data))-10, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	rest, err := io.ReadAll(r)
	if err != nil || !bytes.Equal(rest, data[len(data)-10:]) {
		t.Errorf("read after seek: %d bytes %v", len(rest), err)
	}
	if pos, err := r.Seek(-5, io.SeekEnd); err != nil || pos != int64(len(data))-5 {
		t.Errorf("seek from end: %d %v", pos, err)
	}
	if _, err := r.Seek(-1, io.SeekStart); err == nil {
		t.Error("seek to a negative position succeeded")
	}
	if _, err := r.Seek(0, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if n, err := r.WriteTo(&buf); err != nil || n != int64(len(data)) || !bytes.Equal(buf.Bytes(), data) {
		t.Errorf("WriteTo: %d %v", n, err)
	}
}

func testEntries(t *testing.T, b Backend) {
	if _, err := b.GetEntry("list/example.com/none"); !errors.Is(err, cache.ErrNotFound) {
		t.Errorf("get of a missing entry: %v", err)
	}
	before := time.Now().Add(-time.Minute)
	for _, v := range [][]byte{[]byte("v1.0.0\n"), {}, []byte("v1.0.0\nv1.1.0\n")} {
		if err := b.PutEntry("list/example.com/x", v); err != nil {
			t.Fatal(err)
		}
		e, err := b.GetEntry("list/example.com/x")
		if err != nil || !bytes.Equal(e.Value, v) || e.Fetched.Before(before) {
			t.Errorf("entry after put %q: %q fetched %v, %v", v, e.Value, e.Fetched, err)
		}
	}
	key := "sumdb/sum.example/latest"
	cases := []struct {
		old, new []byte
		want     bool
	}{
		{[]byte("x"), []byte("tree 1"), false}, // absent, old given
		{nil, []byte("tree 1"), true},          // absent, create
		{nil, []byte("tree 0"), false},         // present, create
		{[]byte("tree 0"), []byte("tree 2"), false},
		{[]byte("tree 1"), []byte("tree 2"), true},
		{[]byte("tree 1"), []byte("tree 1b"), false}, // stale writer cannot move it back
	}
	for i, c := range cases {
		ok, err := b.SwapEntry(key, c.old, c.new)
		if err != nil || ok != c.want {
			t.Errorf("swap %d (%q -> %q): %v %v, want %v", i, c.old, c.new, ok, err, c.want)
		}
	}
	if e, err := b.GetEntry(key); err != nil || string(e.Value) != "tree 2" {
		t.Errorf("after swaps: %q %v, want tree 2", e.Value, err)
	}
}

func testSwapRace(t *testing.T, b Backend) {
	const writers = 8
	key := "sumdb/sum.example/latest"
	if err := b.PutEntry(key, []byte("tree 1")); err != nil {
		t.Fatal(err)
	}
	var (
		wg  sync.WaitGroup
		won [writers]bool
	)
	start := make(chan struct{})
	for i := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			ok, err := b.SwapEntry(key, []byte("tree 1"), fmt.Appendf(nil, "tree 2 by %d", i))
			if err != nil {
				t.Error(err)
			}
			won[i] = ok
		}()
	}
	close(start)
	wg.Wait()
	e, err := b.GetEntry(key)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for i, ok := range won {
		if ok {
			n++
			if string(e.Value) != fmt.Sprintf("tree 2 by %d", i) {
				t.Errorf("writer %d won but the value is %q", i, e.Value)
			}
		}
	}
	if n != 1 {
		t.Fatalf("%d writers won the swap from one old value, want exactly 1", n)
	}
}

func testKV(t *testing.T, b Backend) {
	if _, err := b.GetKV("sumdb", "tile/8/0/0"); !errors.Is(err, cache.ErrNotFound) {
		t.Errorf("get of a missing kv: %v", err)
	}
	v := content(9, 8192)
	if err := b.PutKV("sumdb", "tile/8/0/0", v); err != nil {
		t.Fatal(err)
	}
	if got, err := b.GetKV("sumdb", "tile/8/0/0"); err != nil || !bytes.Equal(got, v) {
		t.Errorf("get kv: %d bytes %v", len(got), err)
	}
	if _, err := b.GetKV("sumdb-unverified", "tile/8/0/0"); !errors.Is(err, cache.ErrNotFound) {
		t.Errorf("buckets are not separate: %v", err)
	}
	if err := b.DeleteKV("sumdb", "tile/8/0/0"); err != nil {
		t.Fatal(err)
	}
	if _, err := b.GetKV("sumdb", "tile/8/0/0"); !errors.Is(err, cache.ErrNotFound) {
		t.Errorf("get after delete: %v", err)
	}
	if err := b.DeleteKV("sumdb", "never"); err != nil {
		t.Errorf("delete of a missing kv: %v", err)
	}
}
