package cache

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"testing"

	"go.etcd.io/bbolt"

	"github.com/modproxy/modproxy/cache/internal/grant"
)

// flipChunkByte flips one content byte of chunk idx of k's blob behind the
// store's back, as a failing disk would.
func flipChunkByte(t *testing.T, s *Store, k Key, idx uint32, at int) {
	t.Helper()
	rec, err := s.stat(k)
	if err != nil {
		t.Fatal(err)
	}
	err = s.db.Update(func(tx *bbolt.Tx) error {
		b := rec.chunkBucket(tx)
		var kb [12]byte
		key := rec.storedKey(&kb, idx)
		v := bytes.Clone(b.Get(key))
		v[at] ^= 0x10
		return b.Put(key, v)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestChunkBitFlipDetected flips one bit of a stored chunk, for chunks
// copied out of the mapping (1 KiB) and read with pread (64 KiB).
func TestChunkBitFlipDetected(t *testing.T) {
	for _, tc := range []struct {
		chunk      int
		quarantine bool
	}{{1 << 10, false}, {1 << 10, true}, {preadMinChunk, false}, {preadMinChunk, true}} {
		quarantine, cs := tc.quarantine, tc.chunk
		t.Run(fmt.Sprintf("chunk=%d,quarantine=%v", cs, quarantine), func(t *testing.T) {
			opts := testOptions()
			opts.ChunkSize = cs
			opts.QuarantineCorrupt = quarantine
			opts.largeSize = 1 // every artifact takes the pread path when its chunks are large enough
			// Not openTest: its invariant check would flag the damage.
			s, err := Open(filepath.Join(t.TempDir(), "store.db"), opts)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			zip := Key{"example.com/m", "v1.0.0", KindZip}
			mod := Key{"example.com/m", "v1.0.0", KindMod}
			content := bytes.Repeat([]byte("0123456789abcdef"), cs*5/16-10) // 5 chunks
			put(t, s, zip, content)
			put(t, s, mod, []byte("module example.com/m\n"))
			flipChunkByte(t, s, zip, 2, 100)
			flipChunkByte(t, s, mod, 0, 3)

			// Streaming stops before the damaged chunk: never a clean end.
			r, err := s.Open(zip)
			if err != nil {
				t.Fatal(err)
			}
			var got bytes.Buffer
			n, err := r.WriteTo(&got)
			r.Close()
			if !errors.Is(err, ErrCorrupt) || n > int64(2*cs) || !bytes.Equal(got.Bytes(), content[:n]) || !strings.Contains(err.Error(), "checksum") {
				t.Fatalf("WriteTo = %d, %v; want at most the %d bytes before the damaged chunk and a checksum error", n, err, 2*cs)
			}
			if errors.Is(err, ErrNotFound) != quarantine {
				t.Errorf("error %v: wraps ErrNotFound = %v, want %v", err, !quarantine, quarantine)
			}
			// Small reads of the damaged chunk fail too.
			r, _ = s.Open(zip)
			if r != nil {
				_, err = r.ReadAt(make([]byte, 10), int64(2*cs+5))
				r.Close()
			}
			if !quarantine && !errors.Is(err, ErrCorrupt) {
				t.Errorf("ReadAt of the damaged chunk: %v", err)
			}
			if _, _, err := s.Get(mod); !errors.Is(err, ErrCorrupt) {
				t.Errorf("Get of a damaged .mod: %v", err)
			}
			if c := s.Corruptions(); c != 2 {
				t.Errorf("Corruptions() = %d, want 2 (one per damaged artifact)", c)
			}
			_, statErr := s.Stat(zip)
			if quarantine {
				if !errors.Is(statErr, ErrNotFound) {
					t.Errorf("damaged zip still published: %v", statErr)
				}
				var reasons []string
				s.WalkQuarantine(func(k Key, _ Meta, reason string) error {
					reasons = append(reasons, k.String()+": "+reason)
					return nil
				})
				if len(reasons) != 2 || !strings.Contains(reasons[0], "store corruption") {
					t.Errorf("quarantined: %q", reasons)
				}
				// The next Put stores a fresh copy, which reads back whole.
				put(t, s, zip, content)
				if got := readAll(t, s, zip); !bytes.Equal(got, content) {
					t.Error("refetched copy differs")
				}
			} else if statErr != nil {
				t.Errorf("without QuarantineCorrupt the artifact stays: %v", statErr)
			}
		})
	}
}

func put(t *testing.T, s *Store, k Key, content []byte) {
	t.Helper()
	if _, err := s.put(k, bytes.NewReader(content), Meta{}); err != nil {
		t.Fatal(err)
	}
}

func readAll(t *testing.T, s *Store, k Key) []byte {
	t.Helper()
	r, err := s.Open(k)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestSchema1StoreStaysReadable opens a store written before chunks had
// checksums: its artifacts read as before (their whole-content SHA-256 is
// what verify checks), new artifacts get checksums.
func TestSchema1StoreStaysReadable(t *testing.T) {
	path := filepath.Join(t.TempDir(), "old.db")
	s, err := Open(path, testOptions())
	if err != nil {
		t.Fatal(err)
	}
	old := Key{"example.com/old", "v1.0.0", KindZip}
	content := bytes.Repeat([]byte("old content "), 200)
	writeV1Artifact(t, s, old, content)
	if err := s.db.Update(func(tx *bbolt.Tx) error { return tx.Bucket(bucketSys).Put(sysSchema, []byte{1}) }); err != nil {
		t.Fatal(err)
	}
	s.Close()

	for _, ro := range []bool{true, false} {
		opts := testOptions()
		opts.ReadOnly = ro
		s, err = Open(path, opts)
		if err != nil {
			t.Fatalf("open schema-1 store (read-only %v): %v", ro, err)
		}
		if got := readAll(t, s, old); !bytes.Equal(got, content) {
			t.Error("old artifact misread")
		}
		if !ro {
			fresh := Key{"example.com/new", "v1.0.0", KindZip}
			put(t, s, fresh, content)
			rec, _ := s.stat(fresh)
			if !rec.checksummed {
				t.Error("new artifact has no chunk checksums")
			}
			checkInvariants(t, s)
		}
		s.Close()
	}
	s, _ = Open(path, Options{ReadOnly: true})
	defer s.Close()
	s.view(func(tx *bbolt.Tx) error {
		if v := tx.Bucket(bucketSys).Get(sysSchema); !bytes.Equal(v, []byte{schemaVersion}) {
			t.Errorf("schema after a writable open = %v", v)
		}
		return nil
	})
}

// writeV1Artifact stores content the way schema 1 did: format-1 record,
// chunks without checksums.
func writeV1Artifact(t *testing.T, s *Store, k Key, content []byte) {
	t.Helper()
	rec := record{Meta: Meta{Size: int64(len(content)), SHA256: sha256.Sum256(content), Created: s.now().UTC(), State: StateExempt}, chunkSize: s.chunkSize}
	err := s.db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketChunks)
		blob, err := b.NextSequence()
		if err != nil {
			return err
		}
		rec.blob = blob
		for off := 0; off < len(content); off += s.chunkSize {
			key := chunkKey(blob, rec.chunks)
			if err := b.Put(key[:], content[off:min(off+s.chunkSize, len(content))]); err != nil {
				return err
			}
			rec.chunks++
		}
		if err := tx.Bucket(bucketArtifacts).Put(appendArtifactKey(nil, k), appendRecord(nil, nil, &rec)); err != nil {
			return err
		}
		return count(tx, k.Kind, 1, rec.Size)
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestOpenRefusesWhatIsNotAStore(t *testing.T) {
	dir := t.TempDir()
	foreignBolt := filepath.Join(dir, "other-app.db")
	db, err := bbolt.Open(foreignBolt, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	db.Update(func(tx *bbolt.Tx) error {
		b, _ := tx.CreateBucket([]byte("users"))
		return b.Put([]byte("alice"), []byte("admin"))
	})
	db.Close()
	cases := []struct {
		name    string
		content []byte // nil: use the file as prepared
		path    string
		want    string
	}{
		{"empty file", []byte{}, "", "empty (0 bytes)"},
		{"text file", []byte("GOPROXY=https://proxy.example\n"), "", "not a bbolt database file"},
		{"page of zeros", make([]byte, 16<<10), "", "not a bbolt database file"},
		{"random bytes", randBytes(64 << 10), "", "not a bbolt database file"},
		{"another program's bbolt file", nil, foreignBolt, `buckets ["users"]`},
		{"directory", nil, dir, "not a regular file"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path := c.path
			if c.content != nil {
				path = filepath.Join(dir, strings.ReplaceAll(c.name, " ", "-"))
				if err := os.WriteFile(path, c.content, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			before := fileBytes(t, path)
			for _, ro := range []bool{false, true} {
				s, err := Open(path, Options{ReadOnly: ro})
				if err == nil {
					s.Close()
					t.Fatalf("Open(read-only %v) accepted it", ro)
				}
				if !errors.Is(err, ErrNotStore) || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), path) {
					t.Errorf("Open(read-only %v) = %v; want ErrNotStore naming the file and %q", ro, err, c.want)
				}
				if strings.Contains(err.Error(), "\n") {
					t.Errorf("multi-line error %q", err)
				}
			}
			if !bytes.Equal(before, fileBytes(t, path)) {
				t.Error("the file was changed")
			}
		})
	}
}

func randBytes(n int) []byte {
	b := make([]byte, n)
	r := rand.NewChaCha8([32]byte{7})
	r.Read(b)
	return b
}

func fileBytes(t *testing.T, path string) []byte {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.IsDir() {
		return nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// damageFixture is a closed store with artifacts of every shape, and what
// it holds.
type damageFixture struct {
	path     string
	contents map[Key][]byte
}

// newDamageFixture writes the fixture; unsynced leaves the freelist
// unwritten, as stores of earlier builds did, so that bbolt's Open walks
// every page (and Open's checkFile walks them first).
func newDamageFixture(t *testing.T, unsynced bool) damageFixture {
	t.Helper()
	path := filepath.Join(t.TempDir(), "good.db")
	s, err := Open(path, Options{ChunkSize: 4 << 10})
	if err != nil {
		t.Fatal(err)
	}
	s.db.NoSync = true
	s.db.NoFreelistSync = unsynced
	fx := damageFixture{path: path, contents: map[Key][]byte{}}
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 40 {
		mod := fmt.Sprintf("example.com/mod%02d", i)
		for _, v := range []string{"v1.0.0", "v1.1.0"} {
			info := []byte(fmt.Sprintf(`{"Version":%q}`, v))
			gomod := []byte("module " + mod + "\n")
			zip := make([]byte, 1+rng.IntN(20<<10))
			for j := range zip {
				zip[j] = byte(rng.IntN(256))
			}
			for k, c := range map[Kind][]byte{KindInfo: info, KindMod: gomod, KindZip: zip} {
				key := Key{mod, v, k}
				put(t, s, key, c)
				fx.contents[key] = c
			}
		}
		if err := s.PutEntry("list/"+mod, []byte("v1.0.0\nv1.1.0\n")); err != nil {
			t.Fatal(err)
		}
		if err := s.PutKV("tiles", fmt.Sprintf("tile/%d", i), bytes.Repeat([]byte{byte(i)}, 8192)); err != nil {
			t.Fatal(err)
		}
	}
	// Some history: quarantined and deleted artifacts free pages.
	for i := range 5 {
		k := Key{fmt.Sprintf("example.com/mod%02d", i), "v1.0.0", KindZip}
		if i%2 == 0 {
			s.Quarantine(k, "test")
		} else {
			s.Delete(k)
		}
		delete(fx.contents, k)
	}
	// Damage and salvage must meet both chunk layouts.
	layouts := map[bool]int{}
	for k := range fx.contents {
		if rec, err := s.stat(k); err == nil {
			layouts[rec.ownBucket]++
		}
	}
	if layouts[true] == 0 || layouts[false] == 0 {
		t.Fatalf("fixture layouts: %d artifacts in their own bucket, %d in the shared one; want both", layouts[true], layouts[false])
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	return fx
}

// corruption damages a copy of a store file.
type corruption struct {
	name  string
	apply func(b []byte, page int, rng *rand.Rand) []byte
}

const testPageSize = 4096

var corruptions = []corruption{
	{"flip bits in the page header", func(b []byte, p int, rng *rand.Rand) []byte {
		off := p * testPageSize
		for range 1 + rng.IntN(3) {
			b[off+rng.IntN(pageHeaderLen)] ^= 1 << rng.IntN(8)
		}
		return b
	}},
	{"zero the page", func(b []byte, p int, _ *rand.Rand) []byte {
		clear(b[p*testPageSize : (p+1)*testPageSize])
		return b
	}},
	{"random bytes over the page", func(b []byte, p int, rng *rand.Rand) []byte {
		off := p * testPageSize
		for i := range testPageSize {
			b[off+i] = byte(rng.IntN(256))
		}
		return b
	}},
	{"flip bits in element headers", func(b []byte, p int, rng *rand.Rand) []byte {
		off := p*testPageSize + pageHeaderLen
		for range 1 + rng.IntN(4) {
			b[off+rng.IntN(256)] ^= 1 << rng.IntN(8)
		}
		return b
	}},
	{"huge element count", func(b []byte, p int, _ *rand.Rand) []byte {
		binary.LittleEndian.PutUint16(b[p*testPageSize+10:], 0xfff0)
		return b
	}},
	{"huge overflow", func(b []byte, p int, rng *rand.Rand) []byte {
		binary.LittleEndian.PutUint32(b[p*testPageSize+12:], uint32(rng.IntN(1<<20)))
		return b
	}},
	{"another page copied over it", func(b []byte, p int, rng *rand.Rand) []byte {
		src := 2 + rng.IntN(len(b)/testPageSize-2)
		copy(b[p*testPageSize:(p+1)*testPageSize], b[src*testPageSize:(src+1)*testPageSize])
		return b
	}},
	{"flip bits anywhere in the page", func(b []byte, p int, rng *rand.Rand) []byte {
		off := p * testPageSize
		for range 1 + rng.IntN(8) {
			b[off+rng.IntN(testPageSize)] ^= 1 << rng.IntN(8)
		}
		return b
	}},
	{"truncate the file at the page", func(b []byte, p int, rng *rand.Rand) []byte {
		return b[:p*testPageSize+rng.IntN(testPageSize)]
	}},
	{"child pointer to a random page", func(b []byte, p int, rng *rand.Rand) []byte {
		// Branch element page numbers live at bytes 8..15 of each element.
		off := p*testPageSize + pageHeaderLen + 8
		binary.LittleEndian.PutUint64(b[off:], uint64(rng.IntN(len(b)/testPageSize+8)))
		return b
	}},
}

// TestDamagedPagesNeverPanic damages the pages of a real store in 60
// different ways and runs every operation on each copy. bbolt panics (or
// faults) on such pages; the store must answer with errors. A read that
// succeeds must return the original bytes.
func TestDamagedPagesNeverPanic(t *testing.T) {
	for _, unsynced := range []bool{false, true} {
		t.Run(fmt.Sprintf("freelist unsynced=%v", unsynced), func(t *testing.T) {
			damagePages(t, newDamageFixture(t, unsynced))
		})
	}
}

func damagePages(t *testing.T, fx damageFixture) {
	good, err := os.ReadFile(fx.path)
	if err != nil {
		t.Fatal(err)
	}
	// Tree pages (branch and leaf) are where damage hurts bbolt; metas too.
	var treePages []int
	for p := 2; p < len(good)/testPageSize; p++ {
		if f := binary.LittleEndian.Uint16(good[p*testPageSize+8:]); f == branchPageFlag || f == leafPageFlag {
			if binary.LittleEndian.Uint64(good[p*testPageSize:]) == uint64(p) {
				treePages = append(treePages, p)
			}
		}
	}
	rng := rand.New(rand.NewPCG(42, 60))
	outcomes := map[string]int{}
	dir := t.TempDir()
	for i := range 60 {
		c := corruptions[i%len(corruptions)]
		page := treePages[rng.IntN(len(treePages))]
		if i%20 == 19 {
			page = i % 2 // a meta page
		}
		name := fmt.Sprintf("%02d %s (page %d)", i, c.name, page)
		damaged := c.apply(bytes.Clone(good), page, rng)
		path := filepath.Join(dir, fmt.Sprintf("damaged-%02d.db", i))
		if err := os.WriteFile(path, damaged, 0o600); err != nil {
			t.Fatal(err)
		}
		outcomes[exerciseDamaged(t, name, path, fx)]++
	}
	t.Logf("outcomes of 60 corruptions: %v", outcomes)
}

// exerciseDamaged opens a damaged store and uses all of it. It returns
// what happened: "refused at open", "damage reported", "no damage seen".
func exerciseDamaged(t *testing.T, name, path string, fx damageFixture) string {
	t.Helper()
	defer func() {
		if p := recover(); p != nil {
			t.Errorf("%s: panic escaped the store: %v\n%s", name, p, debug.Stack())
		}
	}()
	s, openErr := Open(path, Options{QuarantineCorrupt: true, LockTimeout: 100e6})
	if err := openErr; err != nil {
		if strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: multi-line error %q", name, err)
		}
		if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrNotStore) && !strings.Contains(err.Error(), "checksum") {
			t.Logf("%s: refused with %v", name, err)
		}
		// Salvage still reads what it can (and must not panic either).
		rep, err := salvageForTest(t, path, fx)
		if err != nil {
			t.Logf("%s: refused (%v); salvage: %v", name, openErr, err)
		} else {
			t.Logf("%s: refused (%v); salvaged %d of %d artifacts", name, openErr, rep.Artifacts, len(fx.contents))
		}
		return "refused at open"
	}
	defer s.Close()
	s.db.NoSync = true // the machine is shared; durability is not under test
	reported := false
	note := func(err error) {
		if err != nil && !errors.Is(err, ErrNotFound) {
			reported = true
		}
	}
	note(s.Walk(func(Key, Meta) error { return nil }))
	note(s.WalkQuarantine(func(Key, Meta, string) error { return nil }))
	for k, want := range fx.contents {
		if _, err := s.Stat(k); err != nil {
			note(err)
			continue
		}
		data, _, err := s.Get(k)
		note(err)
		if err == nil && !bytes.Equal(data, want) {
			t.Errorf("%s: Get(%s) returned wrong bytes without an error", name, k)
		}
		if r, err := s.Open(k); err == nil {
			var buf bytes.Buffer
			_, err := r.WriteTo(&buf)
			note(err)
			if err == nil && !bytes.Equal(buf.Bytes(), want) {
				t.Errorf("%s: reading %s returned wrong bytes without an error", name, k)
			}
			r.Close()
		}
		_, err = s.Versions(k.Path)
		note(err)
	}
	note(s.WalkEntries("", func(string, Entry) error { return nil }))
	note(s.WalkKV("tiles", func(string, []byte) error { return nil }))
	_, err := s.Stats()
	note(err)
	_, err = s.put(Key{"example.com/new", "v1.0.0", KindZip}, bytes.NewReader(make([]byte, 50<<10)), Meta{})
	note(err)
	note(s.Delete(Key{"example.com/mod10", "v1.0.0", KindZip}))
	note(s.Ping())
	if reported || s.Corruptions() > 0 {
		return "damage reported"
	}
	return "no damage seen"
}

// salvageForTest salvages path into a fresh store and checks that what
// it copied is exactly what the fixture stored.
func salvageForTest(t *testing.T, path string, fx damageFixture) (*SalvageReport, error) {
	t.Helper()
	dst, err := Open(path+".salvaged", Options{})
	if err != nil {
		t.Fatal(err)
	}
	dst.db.NoSync = true
	defer dst.Close()
	rep, err := Salvage(path, dst, grant.Write{})
	if err != nil {
		return nil, err
	}
	n := 0
	err = dst.Walk(func(k Key, m Meta) error {
		n++
		want, ok := fx.contents[k]
		if !ok {
			t.Errorf("salvage of %s invented %s", path, k)
			return nil
		}
		if got, _, err := dst.Get(k); err != nil || !bytes.Equal(got, want) {
			t.Errorf("salvage of %s: %s differs from what was stored (%v)", path, k, err)
		}
		return nil
	})
	if err != nil || n != rep.Artifacts {
		t.Errorf("salvaged store: %d artifacts, report says %d (%v)", n, rep.Artifacts, err)
	}
	return rep, nil
}

// TestLargeArtifactReadPaths reads an artifact on the large-artifact paths
// (whole chunks by pread, partial reads from the mapping, pages dropped once
// per chunk) every way a server does, against its content.
func TestLargeArtifactReadPaths(t *testing.T) {
	opts := testOptions()
	opts.ChunkSize = preadMinChunk
	opts.largeSize = 1
	s := openTest(t, opts)
	k := Key{"example.com/large", "v1.0.0", KindZip}
	content := randBytes(5*preadMinChunk + 123)
	put(t, s, k, content)
	r, err := s.Open(k)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	var whole bytes.Buffer
	if _, err := r.WriteTo(&whole); err != nil || !bytes.Equal(whole.Bytes(), content) {
		t.Fatalf("WriteTo: %v, equal %v", err, bytes.Equal(whole.Bytes(), content))
	}
	r.Seek(0, io.SeekStart)
	small, err := io.ReadAll(struct{ io.Reader }{r}) // 512-byte and larger reads, no WriteTo
	if err != nil || !bytes.Equal(small, content) {
		t.Fatalf("small reads: %v, equal %v", err, bytes.Equal(small, content))
	}
	part := make([]byte, 100_000)
	if _, err := r.ReadAt(part, 70_000); err != nil || !bytes.Equal(part, content[70_000:170_000]) {
		t.Fatalf("ReadAt across chunks: %v", err)
	}
	if got, _, err := s.Get(k); err != nil || !bytes.Equal(got, content) {
		t.Fatalf("Get: %v", err)
	}
}

// TestRecordUnderWrongKey: a bit flip in an artifact's key (v1.1.0 becomes
// v1.0.0 with one bit) must not serve one version's content as another's.
// Records and chunks carry checksums over their keys.
func TestRecordUnderWrongKey(t *testing.T) {
	path := filepath.Join(t.TempDir(), "store.db")
	s, err := Open(path, Options{ChunkSize: 1 << 10})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	v11 := Key{"example.com/m", "v1.1.0", KindZip}
	v10 := Key{"example.com/m", "v1.0.0", KindZip}
	put(t, s, v11, bytes.Repeat([]byte("v1.1.0 content "), 200))
	err = s.db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketArtifacts)
		v := bytes.Clone(b.Get(appendArtifactKey(nil, v11)))
		if err := b.Delete(appendArtifactKey(nil, v11)); err != nil {
			return err
		}
		return b.Put(appendArtifactKey(nil, v10), v)
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Stat(v10); !errors.Is(err, ErrCorrupt) {
		t.Errorf("Stat of a record under a damaged key: %v, want ErrCorrupt", err)
	}
	if _, _, err := s.Get(v10); !errors.Is(err, ErrCorrupt) {
		t.Errorf("Get of a record under a damaged key: %v, want ErrCorrupt", err)
	}
	if s.Corruptions() == 0 {
		t.Error("damage not counted")
	}

	// A chunk moved under another blob's key fails its checksum too.
	a := Key{"example.com/a", "v1.0.0", KindMod}
	b := Key{"example.com/b", "v1.0.0", KindMod}
	put(t, s, a, []byte("module example.com/a\n"))
	put(t, s, b, []byte("module example.com/b\n"))
	ra, _ := s.stat(a)
	rb, _ := s.stat(b)
	err = s.db.Update(func(tx *bbolt.Tx) error {
		c := tx.Bucket(bucketChunks)
		ka, kb := chunkKey(ra.blob, 0), chunkKey(rb.blob, 0)
		return c.Put(kb[:], bytes.Clone(c.Get(ka[:])))
	})
	if err != nil {
		t.Fatal(err)
	}
	if got, _, err := s.Get(b); !errors.Is(err, ErrCorrupt) {
		t.Errorf("Get of a chunk under another blob's key = %q, %v; want ErrCorrupt", got, err)
	}
}

// TestDamagedRecordIsQuarantined: a record that fails its checksum is found
// by Stat, counted and (QuarantineCorrupt) moved aside, so that the key can
// be fetched and stored again.
func TestDamagedRecordIsQuarantined(t *testing.T) {
	opts := testOptions()
	opts.QuarantineCorrupt = true
	s, err := Open(filepath.Join(t.TempDir(), "store.db"), opts)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	k := Key{"example.com/m", "v1.0.0", KindMod}
	put(t, s, k, []byte("module example.com/m\n"))
	err = s.db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketArtifacts)
		v := bytes.Clone(b.Get(appendArtifactKey(nil, k)))
		v[len(v)/2] ^= 0x04
		return b.Put(appendArtifactKey(nil, k), v)
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Stat(k); !errors.Is(err, ErrCorrupt) || !errors.Is(err, ErrNotFound) {
		t.Fatalf("Stat of a damaged record: %v; want ErrCorrupt and, quarantined, ErrNotFound", err)
	}
	if s.Corruptions() != 1 {
		t.Errorf("Corruptions() = %d, want 1", s.Corruptions())
	}
	put(t, s, k, []byte("module example.com/m\n"))
	if got, _, err := s.Get(k); err != nil || string(got) != "module example.com/m\n" {
		t.Errorf("after a fresh Put: %q, %v", got, err)
	}
	n := 0
	s.WalkQuarantine(func(Key, Meta, string) error { n++; return nil })
	if n != 1 {
		t.Errorf("%d quarantined copies, want 1", n)
	}
}
