package cache

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/iotest"
	"time"
)

var (
	keyInfo = Key{Path: "example.com/m", Version: "v1.0.0", Kind: KindInfo}
	keyMod  = Key{Path: "example.com/m", Version: "v1.0.0", Kind: KindMod}
	keyZip  = Key{Path: "example.com/m", Version: "v1.0.0", Kind: KindZip}
)

func TestRoundTrip(t *testing.T) {
	opts := testOptions()
	clock := newFakeClock()
	opts.Now = clock.Now
	s := openTest(t, opts)
	cs := opts.ChunkSize
	stage := opts.stageBytes
	tests := []struct {
		name string
		size int
		kind Kind
	}{
		{"empty info", 0, KindInfo},
		{"empty zip", 0, KindZip},
		{"one byte", 1, KindMod},
		{"chunk minus one", cs - 1, KindZip},
		{"one chunk", cs, KindZip},
		{"chunk plus one", cs + 1, KindZip},
		{"one staging txn", stage, KindZip},
		{"staging txn plus one", stage + 1, KindZip},
		{"many staging txns", 5*stage + 3*cs + 7, KindZip},
	}
	for i, tt := range tests {
		// A size the caller declares picks the buffer of a small artifact.
		for _, declared := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/declared=%v", tt.name, declared), func(t *testing.T) {
				k := Key{Path: "example.com/rt", Version: fmt.Sprintf("v0.%d.0", i), Kind: tt.kind}
				if declared {
					k.Path = "example.com/rtsized"
				}
				data := content(tt.size, uint64(i))
				want := Meta{
					Size:     int64(tt.size),
					Created:  clock.Now(),
					SHA256:   sha256.Sum256(data),
					Hash:     "h1:test=",
					Upstream: "https://mirror.example.com/go",
				}
				in := Meta{Hash: want.Hash, Upstream: want.Upstream}
				if declared {
					in.Size = want.Size
				}
				got, err := s.put(k, bytes.NewReader(data), in)
				if err != nil {
					t.Fatal(err)
				}
				if got != want {
					t.Fatalf("Put = %+v, want %+v", got, want)
				}
				if m, err := s.Stat(k); err != nil || m != want {
					t.Fatalf("Stat = %+v, %v; want %+v", m, err, want)
				}
				b, m, err := s.Get(k)
				if err != nil || m != want || !bytes.Equal(b, data) {
					t.Fatalf("Get = %d bytes, %+v, %v; want %d bytes, %+v", len(b), m, err, len(data), want)
				}
				r, err := s.Open(k)
				if err != nil {
					t.Fatal(err)
				}
				if r.Size() != int64(tt.size) || r.Meta() != want {
					t.Errorf("Reader Size, Meta = %d, %+v", r.Size(), r.Meta())
				}
				if err := iotest.TestReader(r, data); err != nil {
					t.Error(err)
				}
				if _, err := r.Seek(0, io.SeekStart); err != nil {
					t.Fatal(err)
				}
				var buf bytes.Buffer
				if n, err := io.Copy(&buf, r); err != nil || n != int64(tt.size) || !bytes.Equal(buf.Bytes(), data) {
					t.Errorf("io.Copy (WriteTo) = %d, %v", n, err)
				}
				if err := r.Close(); err != nil {
					t.Error(err)
				}
			})
		}
	}
}

// A Created supplied by the caller (import) is kept; Size and SHA256 that
// match are accepted.
func TestPutKeepsCallerMeta(t *testing.T) {
	s := openTest(t, testOptions())
	data := content(3000, 1)
	created := time.Date(2020, 1, 2, 3, 4, 5, 6, time.UTC)
	m, err := s.put(keyZip, bytes.NewReader(data), Meta{Size: 3000, SHA256: sha256.Sum256(data), Created: created})
	if err != nil {
		t.Fatal(err)
	}
	if !m.Created.Equal(created) {
		t.Errorf("Created = %v, want %v", m.Created, created)
	}
}

var errUpstream = errors.New("upstream reset")

// failingReader returns n bytes of content, then err.
type failingReader struct {
	r   io.Reader
	err error
}

func (f *failingReader) Read(p []byte) (int, error) {
	n, err := f.r.Read(p)
	if err == io.EOF {
		return n, f.err
	}
	return n, err
}

func TestPutFailureLeavesNothing(t *testing.T) {
	opts := testOptions()
	data := content(10*opts.stageBytes+100, 7)
	tests := []struct {
		name    string
		r       io.Reader
		meta    Meta
		wantErr error  // errors.Is target, or nil
		wantMsg string // substring
	}{
		{"reader fails at once", iotest.ErrReader(errUpstream), Meta{}, errUpstream, "upstream reset"},
		{"reader fails in first batch", &failingReader{bytes.NewReader(data[:100]), errUpstream}, Meta{}, errUpstream, ""},
		{"reader fails after staging", &failingReader{bytes.NewReader(data[:3*opts.stageBytes+5]), errUpstream}, Meta{}, errUpstream, ""},
		{"timeout mid-stream", iotest.TimeoutReader(bytes.NewReader(data)), Meta{}, iotest.ErrTimeout, ""},
		{"short content", bytes.NewReader(data[:5000]), Meta{Size: int64(len(data))}, nil, "expected"},
		{"short content after staging", bytes.NewReader(data[:len(data)-1]), Meta{Size: int64(len(data))}, nil, "expected"},
		{"long content", bytes.NewReader(data), Meta{Size: 5000}, nil, "longer than expected 5000"},
		{"sha mismatch", bytes.NewReader(data), Meta{SHA256: sha256.Sum256([]byte("other"))}, nil, "SHA-256"},
		{"sha mismatch small", bytes.NewReader(data[:10]), Meta{SHA256: sha256.Sum256([]byte("other"))}, nil, "SHA-256"},
		// Known sizes under a chunk get a buffer of that size plus one.
		{"small content longer by one", bytes.NewReader(data[:100]), Meta{Size: 99}, nil, "longer than expected 99"},
		{"small content much longer", bytes.NewReader(data), Meta{Size: 99}, nil, "longer than expected 99"},
		{"a chunk declared one byte short", bytes.NewReader(data[:opts.ChunkSize]), Meta{Size: int64(opts.ChunkSize) - 1}, nil, "longer than expected"},
		{"small content short by one", bytes.NewReader(data[:98]), Meta{Size: 99}, nil, "expected"},
		{"small content empty", bytes.NewReader(nil), Meta{Size: 99}, nil, "expected"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := openTest(t, opts)
			if _, err := s.put(keyMod, strings.NewReader("module example.com/m\n"), Meta{}); err != nil {
				t.Fatal(err)
			}
			_, err := s.put(keyZip, tt.r, tt.meta)
			if err == nil {
				t.Fatal("Put succeeded")
			}
			if !strings.HasPrefix(err.Error(), "put example.com/m@v1.0.0.zip: ") {
				t.Errorf("error %q lacks the put prefix", err)
			}
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Errorf("error %v does not wrap %v", err, tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("error %q does not mention %q", err, tt.wantMsg)
			}
			if _, err := s.Stat(keyZip); !errors.Is(err, ErrNotFound) {
				t.Errorf("Stat after failed Put: %v, want ErrNotFound", err)
			}
			if chunks, pending := countChunks(t, s); chunks != 1 || pending != 0 {
				t.Errorf("after failed Put: %d chunks, %d pending; want only the .mod chunk", chunks, pending)
			}
			// And the key can be stored afterwards.
			if _, err := s.put(keyZip, bytes.NewReader(data), Meta{}); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// unreadable fails the test if read: Put of an existing key must not drain.
type unreadable struct{ t *testing.T }

func (u unreadable) Read([]byte) (int, error) {
	u.t.Error("Put read from its reader although the key exists")
	return 0, io.EOF
}

func TestPutImmutable(t *testing.T) {
	s := openTest(t, testOptions())
	first := content(5000, 1)
	m1, err := s.put(keyZip, bytes.NewReader(first), Meta{Upstream: "a"})
	if err != nil {
		t.Fatal(err)
	}
	m2, err := s.put(keyZip, unreadable{t}, Meta{Upstream: "b", Size: 12})
	if err != nil {
		t.Fatal(err)
	}
	if m2 != m1 {
		t.Errorf("second Put = %+v, want stored %+v", m2, m1)
	}
	got, _, err := s.Get(keyZip)
	if err != nil || !bytes.Equal(got, first) {
		t.Errorf("Get after second Put: %v, content changed: %v", err, !bytes.Equal(got, first))
	}
}

func TestConcurrentPuts(t *testing.T) {
	s := openTest(t, testOptions())
	const n = 6
	datas := make([][]byte, n)
	for i := range datas {
		datas[i] = content(20<<10+i, uint64(i)) // several staging transactions each
	}
	var (
		wg    sync.WaitGroup
		metas [n]Meta
		errs  [n]error
	)
	for i := range n {
		wg.Go(func() {
			metas[i], errs[i] = s.put(keyZip, iotest.HalfReader(bytes.NewReader(datas[i])), Meta{})
		})
		wg.Go(func() { // other keys at the same time
			k := Key{Path: "example.com/other", Version: fmt.Sprintf("v1.%d.0", i), Kind: KindZip}
			if _, err := s.put(k, bytes.NewReader(datas[i]), Meta{}); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("Put %d: %v", i, errs[i])
		}
		if metas[i] != metas[0] {
			t.Errorf("Put %d returned %+v, Put 0 %+v: every Put must return the winner", i, metas[i], metas[0])
		}
	}
	got, m, err := s.Get(keyZip)
	if err != nil {
		t.Fatal(err)
	}
	if m != metas[0] || sha256.Sum256(got) != m.SHA256 {
		t.Errorf("stored artifact does not match the returned Meta")
	}
	// checkInvariants (cleanup) proves the losers' staged chunks are gone.
}

// Put does not hold a write transaction while waiting on its reader.
func TestPutDoesNotBlockOtherWriters(t *testing.T) {
	opts := testOptions()
	s := openTest(t, opts)
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		_, err := s.put(keyZip, pr, Meta{})
		done <- err
	}()
	data := content(3*opts.stageBytes, 3)
	if _, err := pw.Write(data[:2*opts.stageBytes+10]); err != nil { // staged, then blocked mid-batch
		t.Fatal(err)
	}
	for i := range 5 {
		k := Key{Path: "example.com/x", Version: fmt.Sprintf("v1.%d.0", i), Kind: KindMod}
		if _, err := s.put(k, strings.NewReader("module example.com/x\n"), Meta{}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Ping(); err != nil {
		t.Fatal(err)
	}
	if _, err := pw.Write(data[2*opts.stageBytes+10:]); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	got, _, err := s.Get(keyZip)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("Get: %v", err)
	}
}

// A reader being read slowly must not stall writers, even when they grow
// the file and bbolt has to remap (which waits for open read transactions).
//
// The reader is parked between two Reads — provably mid-artifact — until
// every write has committed: if a Reader held a read transaction between
// calls, the first remap would wait for it forever and the hang guard would
// fire. No wall-clock window decides the outcome.
func TestSlowReaderDoesNotBlockWriters(t *testing.T) {
	opts := testOptions()
	opts.initialMmapSize = -1 // bbolt's minimum, so the writes below remap
	s := openTest(t, opts)
	data := content(24*opts.ChunkSize, 5)
	if _, err := s.put(keyZip, bytes.NewReader(data), Meta{}); err != nil {
		t.Fatal(err)
	}
	sizeBefore := fileSize(t, s.path)
	r, err := s.Open(keyZip)
	if err != nil {
		t.Fatal(err)
	}
	midRead := make(chan struct{}) // the reader has read part, not all
	resume := make(chan struct{})  // the writer is done: read the rest
	readerDone := make(chan []byte, 1)
	go func() {
		var got []byte
		buf := make([]byte, 512)
		for i := 0; ; i++ {
			n, err := r.Read(buf)
			got = append(got, buf[:n]...)
			if err != nil {
				break
			}
			if i == 0 {
				close(midRead)
				<-resume
			}
		}
		readerDone <- got
	}()
	<-midRead

	writerDone := make(chan error, 1)
	go func() {
		big := content(256<<10, 6)
		for i := range 12 { // 3 MiB: several remaps from bbolt's 32 KiB minimum
			k := Key{Path: "example.com/w", Version: fmt.Sprintf("v1.%d.0", i), Kind: KindZip}
			if _, err := s.put(k, bytes.NewReader(big), Meta{}); err != nil {
				writerDone <- err
				return
			}
		}
		writerDone <- nil
	}()
	select {
	case err := <-writerDone:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(hangGuard):
		close(resume) // let the test end either way
		t.Fatalf("writer still blocked after %v while a reader was between two Reads", hangGuard)
	}
	// The writes really grew the file past the old mapping, so bbolt did remap
	// while the reader was parked.
	if sizeAfter := fileSize(t, s.path); sizeAfter < sizeBefore+3<<20 {
		t.Fatalf("file grew from %d to %d bytes only: the writes did not force a remap", sizeBefore, sizeAfter)
	}
	close(resume)
	select {
	case got := <-readerDone:
		if !bytes.Equal(got, data) {
			t.Error("slow reader read wrong content")
		}
	case <-time.After(hangGuard):
		t.Fatalf("reader did not finish within %v after the writer was done", hangGuard)
	}
}

func TestNotFound(t *testing.T) {
	s := openTest(t, testOptions())
	if _, err := s.Stat(keyZip); !errors.Is(err, ErrNotFound) {
		t.Errorf("Stat: %v", err)
	}
	if _, _, err := s.Get(keyZip); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get: %v", err)
	}
	if _, err := s.Open(keyZip); !errors.Is(err, ErrNotFound) {
		t.Errorf("Open: %v", err)
	}
	if err := s.Quarantine(keyZip, "x"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Quarantine: %v", err)
	}
	if err := s.Delete(keyZip); !errors.Is(err, ErrNotFound) {
		t.Errorf("Delete: %v", err)
	}
	if _, err := s.GetEntry("list/example.com/m"); !errors.Is(err, ErrNotFound) {
		t.Errorf("GetEntry: %v", err)
	}
	if _, err := s.GetKV("tiles", "x"); !errors.Is(err, ErrNotFound) {
		t.Errorf("GetKV (no bucket): %v", err)
	}
	if err := s.PutKV("tiles", "y", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetKV("tiles", "x"); !errors.Is(err, ErrNotFound) {
		t.Errorf("GetKV (no key): %v", err)
	}
}

func TestInvalidKeys(t *testing.T) {
	s := openTest(t, testOptions())
	for _, k := range []Key{
		{Path: "", Version: "v1.0.0", Kind: KindZip},
		{Path: "example.com/m", Version: "", Kind: KindZip},
		{Path: "example.com/m", Version: "v1.0.0", Kind: "tar"},
		{Path: "example.com/\x00m", Version: "v1.0.0", Kind: KindZip},
	} {
		if _, err := s.put(k, strings.NewReader("x"), Meta{}); err == nil {
			t.Errorf("Put(%q) succeeded", k)
		}
		if _, err := s.Stat(k); err == nil || errors.Is(err, ErrNotFound) {
			t.Errorf("Stat(%q) = %v, want an invalid-key error", k, err)
		}
	}
}

func TestQuarantine(t *testing.T) {
	clock := newFakeClock()
	opts := testOptions()
	opts.Now = clock.Now
	s := openTest(t, opts)
	bad, good := content(5000, 1), content(6000, 2)
	for _, k := range []Key{keyInfo, keyMod} {
		if _, err := s.put(k, strings.NewReader("x"), Meta{}); err != nil {
			t.Fatal(err)
		}
	}
	badMeta, err := s.put(keyZip, bytes.NewReader(bad), Meta{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Quarantine(keyZip, "h1 mismatch"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Stat(keyZip); !errors.Is(err, ErrNotFound) {
		t.Errorf("Stat of quarantined: %v", err)
	}
	if _, _, err := s.Get(keyZip); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get of quarantined: %v", err)
	}
	if _, err := s.Open(keyZip); !errors.Is(err, ErrNotFound) {
		t.Errorf("Open of quarantined: %v", err)
	}
	var walked []Key
	if err := s.Walk(func(k Key, _ Meta) error { walked = append(walked, k); return nil }); err != nil {
		t.Fatal(err)
	}
	if want := []Key{keyInfo, keyMod}; !slices.Equal(walked, want) {
		t.Errorf("Walk = %v, want %v", walked, want)
	}

	// A fresh Put stores other content; quarantining again keeps both copies.
	if _, err := s.put(keyZip, bytes.NewReader(good), Meta{}); err != nil {
		t.Fatal(err)
	}
	got, _, err := s.Get(keyZip)
	if err != nil || !bytes.Equal(got, good) {
		t.Fatalf("Get after re-put: %v", err)
	}
	if err := s.Quarantine(keyZip, "second"); err != nil {
		t.Fatal(err)
	}
	type q struct {
		k      Key
		size   int64
		reason string
	}
	var qs []q
	err = s.WalkQuarantine(func(k Key, m Meta, reason string) error {
		qs = append(qs, q{k, m.Size, reason})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := []q{{keyZip, badMeta.Size, "h1 mismatch"}, {keyZip, 6000, "second"}}; !slices.Equal(qs, want) {
		t.Errorf("WalkQuarantine = %v, want %v", qs, want)
	}
	st, err := s.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.Quarantined != 2 || st.QuarantinedBytes != 11000 || st.Artifacts[KindZip] != 0 {
		t.Errorf("Stats = %+v", st)
	}

	// Quarantining the .info hides the version from Versions.
	if err := s.Quarantine(keyInfo, "bad info"); err != nil {
		t.Fatal(err)
	}
	if v, err := s.Versions(keyInfo.Path); err != nil || len(v) != 0 {
		t.Errorf("Versions = %v, %v; want none", v, err)
	}

	// Delete removes the quarantined copies and their content.
	if err := s.Delete(keyZip); err != nil {
		t.Fatal(err)
	}
	qs = qs[:0]
	if err := s.WalkQuarantine(func(k Key, m Meta, reason string) error {
		qs = append(qs, q{k, m.Size, reason})
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(qs) != 1 || qs[0].k != keyInfo {
		t.Errorf("after Delete, WalkQuarantine = %v", qs)
	}
}

func TestDeleteWhileReading(t *testing.T) {
	opts := testOptions()
	s := openTest(t, opts)
	data := content(10*opts.ChunkSize, 9)
	if _, err := s.put(keyZip, bytes.NewReader(data), Meta{}); err != nil {
		t.Fatal(err)
	}
	r, err := s.Open(keyZip)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, opts.ChunkSize)
	if _, err := io.ReadFull(r, buf); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(keyZip); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(r, buf); !errors.Is(err, ErrNotFound) {
		t.Errorf("Read after Delete: %v, want ErrNotFound", err)
	}
	// A new Put gets a new blob: the old reader never sees its bytes.
	if _, err := s.put(keyZip, bytes.NewReader(content(len(data), 10)), Meta{}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.ReadAt(buf, 0); !errors.Is(err, ErrNotFound) {
		t.Errorf("ReadAt after re-put: %v, want ErrNotFound", err)
	}
}

func TestReaderSemantics(t *testing.T) {
	opts := testOptions()
	s := openTest(t, opts)
	data := content(3*opts.ChunkSize+10, 4)
	if _, err := s.put(keyZip, bytes.NewReader(data), Meta{}); err != nil {
		t.Fatal(err)
	}
	r, err := s.Open(keyZip)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		offset  int64
		whence  int
		wantPos int64
		wantErr bool
	}{
		{10, io.SeekStart, 10, false},
		{5, io.SeekCurrent, 15, false},
		{-10, io.SeekEnd, int64(len(data)) - 10, false},
		{100, io.SeekEnd, int64(len(data)) + 100, false}, // past the end is allowed
		{-1, io.SeekStart, 0, true},
		{0, 7, 0, true},
	}
	for _, tt := range tests {
		pos, err := r.Seek(tt.offset, tt.whence)
		if (err != nil) != tt.wantErr || (!tt.wantErr && pos != tt.wantPos) {
			t.Errorf("Seek(%d, %d) = %d, %v; want %d, error %v", tt.offset, tt.whence, pos, err, tt.wantPos, tt.wantErr)
		}
	}
	if n, err := r.Read(make([]byte, 10)); n != 0 || err != io.EOF {
		t.Errorf("Read past end = %d, %v; want 0, EOF", n, err)
	}
	// ReadAt spanning every chunk fills p in several transactions.
	p := make([]byte, len(data)-1)
	if n, err := r.ReadAt(p, 1); n != len(p) || err != nil || !bytes.Equal(p, data[1:]) {
		t.Errorf("ReadAt(all but one) = %d, %v", n, err)
	}
	if n, err := r.ReadAt(make([]byte, 20), int64(len(data))-5); n != 5 || err != io.EOF {
		t.Errorf("ReadAt across the end = %d, %v; want 5, EOF", n, err)
	}
	if _, err := r.ReadAt(p, -1); err == nil {
		t.Error("ReadAt at a negative offset succeeded")
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Read(p); err == nil {
		t.Error("Read after Close succeeded")
	}
	if err := r.Close(); err == nil {
		t.Error("second Close succeeded")
	}
}

func TestVersions(t *testing.T) {
	s := openTest(t, testOptions())
	put := func(path, version string, kind Kind) {
		t.Helper()
		if _, err := s.put(Key{Path: path, Version: version, Kind: kind}, strings.NewReader("{}"), Meta{}); err != nil {
			t.Fatal(err)
		}
	}
	for _, v := range []string{"v1.10.0", "v1.2.0", "v1.2.0-pre.1", "v0.1.0", "v2.0.0+incompatible", "v1.9.9-0.20240101000000-abcdefabcdef"} {
		put("example.com/a", v, KindInfo)
	}
	put("example.com/a", "v1.3.0", KindMod)    // no .info: not listed
	put("example.com/a", "v1.3.0", KindZip)    // idem
	put("example.com/ab", "v9.0.0", KindInfo)  // a path sharing the prefix
	put("example.com/a/b", "v8.0.0", KindInfo) // a nested module
	put("example.com/A", "v7.0.0", KindInfo)   // a path differing in case
	got, err := s.Versions("example.com/a")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"v0.1.0", "v1.2.0-pre.1", "v1.2.0", "v1.9.9-0.20240101000000-abcdefabcdef", "v1.10.0", "v2.0.0+incompatible"}
	if !slices.Equal(got, want) {
		t.Errorf("Versions = %q, want %q", got, want)
	}
	if got, err := s.Versions("example.com/none"); err != nil || len(got) != 0 {
		t.Errorf("Versions of unknown path = %q, %v", got, err)
	}
	if _, err := s.Versions(""); err == nil {
		t.Error("Versions(\"\") succeeded")
	}
}

func TestWalk(t *testing.T) {
	s := openTest(t, testOptions())
	var want []Key
	for i := range walkBatchSize + 20 { // more than one batch
		k := Key{Path: fmt.Sprintf("example.com/m%03d", i), Version: "v1.0.0", Kind: KindZip}
		if _, err := s.put(k, strings.NewReader(k.Path), Meta{}); err != nil {
			t.Fatal(err)
		}
		want = append(want, k)
	}
	var got []Key
	// fn may write to the store (no transaction is open during fn).
	err := s.Walk(func(k Key, m Meta) error {
		got = append(got, k)
		if m.Size != int64(len(k.Path)) {
			t.Errorf("%s: size %d", k, m.Size)
		}
		if len(got)%2 == 0 {
			return s.Quarantine(k, "walk")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, want) {
		t.Errorf("Walk visited %d keys, want %d", len(got), len(want))
	}
	stop := errors.New("stop")
	n := 0
	err = s.Walk(func(Key, Meta) error { n++; return stop })
	if !errors.Is(err, stop) || n != 1 {
		t.Errorf("Walk with failing fn = %v after %d calls", err, n)
	}
}

func TestMeta(t *testing.T) {
	clock := newFakeClock()
	opts := testOptions()
	opts.Now = clock.Now
	s := openTest(t, opts)
	if err := s.PutEntry("list/example.com/m", []byte("v1.0.0\n")); err != nil {
		t.Fatal(err)
	}
	t0 := clock.Now()
	clock.Advance(time.Minute)
	if err := s.PutEntry("latest/example.com/m", []byte(`{"Version":"v1.0.0"}`)); err != nil {
		t.Fatal(err)
	}
	if err := s.PutEntry("list/example.com/n", nil); err != nil {
		t.Fatal(err)
	}
	e, err := s.GetEntry("list/example.com/m")
	if err != nil || string(e.Value) != "v1.0.0\n" || !e.Fetched.Equal(t0) {
		t.Errorf("GetEntry = %q %v, %v", e.Value, e.Fetched, err)
	}
	clock.Advance(time.Minute)
	if err := s.PutEntry("list/example.com/m", []byte("v1.0.0\nv1.1.0\n")); err != nil {
		t.Fatal(err)
	}
	e, err = s.GetEntry("list/example.com/m")
	if err != nil || string(e.Value) != "v1.0.0\nv1.1.0\n" || !e.Fetched.Equal(clock.Now()) {
		t.Errorf("GetEntry after replace = %q %v, %v", e.Value, e.Fetched, err)
	}
	var keys []string
	err = s.WalkEntries("list/", func(k string, e Entry) error {
		keys = append(keys, k)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"list/example.com/m", "list/example.com/n"}; !slices.Equal(keys, want) {
		t.Errorf("WalkEntries(list/) = %q, want %q", keys, want)
	}
}

func TestKV(t *testing.T) {
	s := openTest(t, testOptions())
	for i := range 3 {
		if err := s.PutKV("sumdb/tiles", fmt.Sprintf("tile/8/0/%03d", i), []byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.PutKV("sumdb/lookup", "example.com/m@v1.0.0", []byte("42")); err != nil {
		t.Fatal(err)
	}
	v, err := s.GetKV("sumdb/tiles", "tile/8/0/001")
	if err != nil || !bytes.Equal(v, []byte{1}) {
		t.Fatalf("GetKV = %v, %v", v, err)
	}
	v[0] = 99 // a copy: the stored value is unchanged
	if v, _ := s.GetKV("sumdb/tiles", "tile/8/0/001"); v[0] != 1 {
		t.Error("GetKV returned bbolt's memory, not a copy")
	}
	var keys []string
	if err := s.WalkKV("sumdb/tiles", func(k string, v []byte) error { keys = append(keys, k); return nil }); err != nil {
		t.Fatal(err)
	}
	if want := []string{"tile/8/0/000", "tile/8/0/001", "tile/8/0/002"}; !slices.Equal(keys, want) {
		t.Errorf("WalkKV = %q, want %q", keys, want)
	}
	if err := s.WalkKV("none", func(string, []byte) error { t.Error("called"); return nil }); err != nil {
		t.Error(err)
	}
	if err := s.PutKV("", "k", nil); err == nil {
		t.Error("PutKV with an empty bucket name succeeded")
	}
}

func TestStatsAndPing(t *testing.T) {
	s := openTest(t, testOptions())
	if err := s.Ping(); err != nil {
		t.Fatal(err)
	}
	sizes := map[Key]int{keyInfo: 30, keyMod: 20, keyZip: 5000}
	for k, n := range sizes {
		if _, err := s.put(k, bytes.NewReader(content(n, 1)), Meta{}); err != nil {
			t.Fatal(err)
		}
	}
	st, err := s.Stats()
	if err != nil {
		t.Fatal(err)
	}
	for k, n := range sizes {
		if st.Artifacts[k.Kind] != 1 || st.Bytes[k.Kind] != int64(n) {
			t.Errorf("Stats[%s] = %d artifacts, %d bytes; want 1, %d", k.Kind, st.Artifacts[k.Kind], st.Bytes[k.Kind], n)
		}
	}
	if st.FileSize <= 0 || st.Pending != 0 {
		t.Errorf("Stats = %+v", st)
	}
	if err := s.Delete(keyZip); err != nil {
		t.Fatal(err)
	}
	if st, _ := s.Stats(); st.Artifacts[KindZip] != 0 || st.Bytes[KindZip] != 0 {
		t.Errorf("after Delete: %+v", st)
	}
}

// Reopening with another chunk size reads old artifacts (the chunk size
// is in each record) and writes new ones with the new size.
func TestReopenChunkSizeChange(t *testing.T) {
	path := filepath.Join(t.TempDir(), "store.db")
	opts := testOptions()
	s, err := Open(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	old := content(5*opts.ChunkSize+3, 1)
	if _, err := s.put(keyZip, bytes.NewReader(old), Meta{}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	opts.ChunkSize = 3000
	s, err = Open(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	got, _, err := s.Get(keyZip)
	if err != nil || !bytes.Equal(got, old) {
		t.Fatalf("Get after reopen: %v", err)
	}
	k := Key{Path: "example.com/n", Version: "v1.0.0", Kind: KindZip}
	data := content(10000, 2)
	if _, err := s.put(k, bytes.NewReader(data), Meta{}); err != nil {
		t.Fatal(err)
	}
	r, err := s.Open(k)
	if err != nil {
		t.Fatal(err)
	}
	if err := iotest.TestReader(r, data); err != nil {
		t.Error(err)
	}
	checkInvariants(t, s)
}

func TestReadOnly(t *testing.T) {
	path := filepath.Join(t.TempDir(), "store.db")
	if _, err := Open(path, Options{ReadOnly: true}); err == nil {
		t.Fatal("read-only Open of a missing file succeeded")
	}
	s, err := Open(path, testOptions())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.put(keyMod, strings.NewReader("module example.com/m\n"), Meta{}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	ro, err := Open(path, Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	if b, _, err := ro.Get(keyMod); err != nil || string(b) != "module example.com/m\n" {
		t.Errorf("Get = %q, %v", b, err)
	}
	if _, err := ro.put(keyZip, strings.NewReader("x"), Meta{}); err == nil {
		t.Error("Put on a read-only store succeeded")
	}
	if err := ro.PutEntry("k", nil); err == nil {
		t.Error("PutEntry on a read-only store succeeded")
	}
	if err := ro.Ping(); err == nil {
		t.Error("Ping on a read-only store succeeded")
	}
}

func TestOpenRejectsHugeChunks(t *testing.T) {
	if _, err := Open(filepath.Join(t.TempDir(), "s.db"), Options{ChunkSize: 1 << 30}); err == nil {
		t.Error("Open with a 1 GiB chunk size succeeded")
	}
}

func TestFitBuffer(t *testing.T) {
	const cs, limit = 1024, 4 * (1024 + chunkCRCLen)
	for _, tt := range []struct {
		size int64
		want int
	}{
		{0, 0}, {-1, 0},
		{1, 2 + chunkCRCLen},
		{cs - 1, cs + chunkCRCLen},
		{cs, cs + 1 + 2*chunkCRCLen}, // a whole chunk, then the byte that must not come
		{3*cs - 1, 3*cs + 3*chunkCRCLen},
		{3 * cs, 3*cs + 1 + 4*chunkCRCLen},
		{4 * cs, 0}, // needs more than limit: a staging buffer
		{limit, 0},
		{1 << 62, 0},
	} {
		if got := fitBuffer(tt.size, cs, limit); got != tt.want {
			t.Errorf("fitBuffer(%d) = %d, want %d", tt.size, got, tt.want)
		}
	}
}
