package gate

import (
	"archive/zip"
	"bytes"
	"compress/flate"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/modproxy/modproxy/cache"
	"github.com/modproxy/modproxy/internal/testsumdb"
	"github.com/modproxy/modproxy/sumdb"
)

const modPath, modVersion = "example.com/m", "v1.0.0"

func goodZip(t *testing.T, files map[string]string) []byte {
	t.Helper()
	fs := map[string][]byte{}
	for name, data := range files {
		fs[name] = []byte(data)
	}
	z, err := testsumdb.MakeZip(modPath, modVersion, fs)
	if err != nil {
		t.Fatal(err)
	}
	return z
}

// lyingZip is a module zip whose single entry declares declared bytes and
// inflates to real bytes.
func lyingZip(t *testing.T, declared uint64, real int64) []byte {
	t.Helper()
	return lyingZipAmong(t, declared, real, 0)
}

// lyingZipAmong is lyingZip with good honest entries besides the liar,
// so that hashZip's workers meet it while the others inflate.
func lyingZipAmong(t *testing.T, declared uint64, real int64, good int) []byte {
	t.Helper()
	var comp bytes.Buffer
	fw, _ := flate.NewWriter(&comp, flate.BestSpeed)
	if _, err := io.CopyN(fw, zeros{}, real); err != nil {
		t.Fatal(err)
	}
	fw.Close()
	var out bytes.Buffer
	zw := zip.NewWriter(&out)
	w, err := zw.CreateRaw(&zip.FileHeader{
		Name: modPath + "@" + modVersion + "/big.go", Method: zip.Deflate,
		CompressedSize64: uint64(comp.Len()), UncompressedSize64: declared,
		CRC32: crc32.ChecksumIEEE(make([]byte, declared)),
	})
	if err != nil {
		t.Fatal(err)
	}
	w.Write(comp.Bytes())
	for i := range good {
		w, err := zw.Create(fmt.Sprintf("%s@%s/good%03d.go", modPath, modVersion, i))
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(w, "package m\n// %s\n", strings.Repeat("y", 4096+i))
	}
	zw.Close()
	return out.Bytes()
}

// damagedZip is a module zip whose entry big.go, Go-like text of 1 MiB,
// has its deflate stream passed through damage, and its CRC-32 changed when
// badCRC is set. Its declared sizes stay those of the real content.
func damagedZip(t *testing.T, damage func([]byte) []byte, badCRC bool) []byte {
	t.Helper()
	var src bytes.Buffer
	for i := 0; src.Len() < 1<<20; i++ {
		fmt.Fprintf(&src, "func f%d(x int) int { return x*%d + %d }\n", i, i%97, i%13)
	}
	var comp bytes.Buffer
	fw, _ := flate.NewWriter(&comp, flate.DefaultCompression)
	fw.Write(src.Bytes())
	fw.Close()
	crc := crc32.ChecksumIEEE(src.Bytes())
	if badCRC {
		crc++
	}
	data := damage(comp.Bytes())
	var out bytes.Buffer
	zw := zip.NewWriter(&out)
	w, err := zw.CreateRaw(&zip.FileHeader{
		Name: modPath + "@" + modVersion + "/big.go", Method: zip.Deflate,
		CompressedSize64: uint64(len(data)), UncompressedSize64: uint64(src.Len()), CRC32: crc,
	})
	if err != nil {
		t.Fatal(err)
	}
	w.Write(data)
	zw.Close()
	return out.Bytes()
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

func writeTemp(t *testing.T, data []byte) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "z.zip")
	if err := os.WriteFile(f, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return f
}

func TestContentChecks(t *testing.T) {
	for _, tt := range []struct {
		name string
		kind cache.Kind
		data []byte
		want string // "" = accepted; else a substring of the error
	}{
		{"info ok", cache.KindInfo, []byte(`{"Version":"v1.0.0","Time":"2024-01-02T03:04:05Z"}`), ""},
		{"info html", cache.KindInfo, []byte("<html>login</html>"), ".info is not JSON"},
		{"info other version", cache.KindInfo, []byte(`{"Version":"v1.0.1"}`), `names version "v1.0.1"`},
		{"info not canonical", cache.KindInfo, []byte(`{"Version":"v1.0"}`), "not canonical"},
		{"info empty", cache.KindInfo, nil, ".info is not JSON"},
		{"mod ok", cache.KindMod, []byte("module example.com/m\n\ngo 1.21\n"), ""},
		{"mod html", cache.KindMod, []byte("<!DOCTYPE html>\n<html><body>Sign in</body></html>\n"), "does not parse"},
		// A fork used through replace declares the path it replaces.
		{"mod fork declaring the path it replaces", cache.KindMod, []byte("module example.com/orig\n"), ""},
		{"mod other major version", cache.KindMod, []byte("module example.com/evil/v2\n"), `declares module "example.com/evil/v2", of another major version`},
		{"mod invalid module path", cache.KindMod, []byte("module \"example.com/a b\"\n"), `declares module "example.com/a b"`},
		{"mod no module line", cache.KindMod, []byte("go 1.21\n"), "no module line"},
		{"mod unknown directive", cache.KindMod, []byte("module example.com/m\nfrobnicate x\n"), "does not parse"},
		{"mod too large", cache.KindMod, bytes.Repeat([]byte("a"), MaxMod+1), "larger than"},
		{"zip ok", cache.KindZip, goodZip(t, map[string]string{"go.mod": "module example.com/m\n", "m.go": "package m\n"}), ""},
		{"zip lying sizes", cache.KindZip, lyingZip(t, 1024, 200<<20), "inflates past its declared 1024 bytes"},
		{"zip lying entry among 200 good ones", cache.KindZip, lyingZipAmong(t, 1024, 200<<20, 200), "big.go inflates past its declared 1024 bytes"},
		{"zip entry inflating short, among good ones", cache.KindZip, lyingZipAmong(t, 4<<20, 1<<20, 50), "inflates to 1048576 bytes, fewer than its declared 4194304"},
		// A damaged deflate stream is refused by name, whatever the decoder
		// makes of it, never hashed as if it ended cleanly.
		{"zip deflate stream cut short", cache.KindZip, damagedZip(t, func(c []byte) []byte { return c[:len(c)/2] }, false), "big.go is corrupt"},
		{"zip deflate stream of garbage", cache.KindZip, damagedZip(t, func(c []byte) []byte { return bytes.Repeat([]byte{0xff}, len(c)) }, false), "big.go is corrupt"},
		{"zip deflate stream with a flipped bit", cache.KindZip, damagedZip(t, func(c []byte) []byte { c[len(c)/3] ^= 0x10; return c }, false), "big.go"},
		{"zip wrong CRC-32", cache.KindZip, damagedZip(t, func(c []byte) []byte { return c }, true), "big.go fails its CRC-32 check"},
		{"zip html", cache.KindZip, []byte("<html>login</html>"), "zip of example.com/m@v1.0.0"},
		{"zip other module", cache.KindZip, func() []byte {
			z, _ := testsumdb.MakeZip("example.com/evil", modVersion, map[string][]byte{"e.go": []byte("package e\n")})
			return z
		}(), "zip of example.com/m@v1.0.0"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var err error
			switch tt.kind {
			case cache.KindInfo:
				_, err = ParseInfo(tt.data, modVersion)
			case cache.KindMod:
				_, err = CheckMod(modPath, modVersion, tt.data)
			case cache.KindZip:
				_, err = CheckZipFile(modPath, modVersion, writeTemp(t, tt.data))
			}
			if tt.want == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if err == nil || !errors.Is(err, ErrContent) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want ErrContent containing %q", err, tt.want)
			}
		})
	}
}

// hashZip inflates entries on several CPUs: its hash must be dirhash's
// for every shape of zip.
func TestZipHashMatchesDirhash(t *testing.T) {
	many := map[string]string{"go.mod": "module example.com/m\n"}
	for i := range 300 {
		many[fmt.Sprintf("p%03d/f.go", i)] = fmt.Sprintf("package p%d\n// %s\n", i, strings.Repeat("x", i*37))
	}
	random := make([]byte, 3<<20)
	for i := range random {
		random[i] = byte(i*7919 + i>>8)
	}
	for _, tt := range []struct {
		name  string
		files map[string]string
	}{
		{"three files", map[string]string{"go.mod": "module example.com/m\n", "a/b.go": "package b\n", "LICENSE": "x"}},
		{"many files, more than workers", many},
		{"empty files", map[string]string{"go.mod": "module example.com/m\n", "empty.go": "", "z/empty.txt": ""}},
		{"one large, many small", map[string]string{"go.mod": "module example.com/m\n", "big.bin": string(random), "a.go": "package a\n", "b.go": "package a\n"}},
		{"names that sort by bytes", map[string]string{"go.mod": "module example.com/m\n", "B.go": "package m\n", "a.go": "package m\n", "a-b/x.go": "package x\n", "a/x.go": "package x\n", "_a.go": "package m\n"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			z := goodZip(t, tt.files)
			got, err := CheckZipFile(modPath, modVersion, writeTemp(t, z))
			if err != nil {
				t.Fatal(err)
			}
			want, _ := testsumdb.HashZip(z)
			if got != want {
				t.Fatalf("hash %s, dirhash says %s", got, want)
			}
		})
	}
}

// fakeVerifier answers from a map of "kind path@version" → hash.
type fakeVerifier struct {
	hashes map[string]string
	down   bool
	exempt string
}

func (v *fakeVerifier) Exempt(path string) bool {
	return v.exempt != "" && strings.HasPrefix(path, v.exempt)
}

func (v *fakeVerifier) VerifyHash(_ context.Context, kind, path, version, hash string) (string, error) {
	if v.down {
		return "", fmt.Errorf("lookup: %w", sumdb.ErrUnavailable)
	}
	want, ok := v.hashes[kind+" "+path+"@"+version]
	switch {
	case !ok:
		return "", fmt.Errorf("%s@%s: %w", path, version, sumdb.ErrNotFound)
	case want != hash:
		return "", &sumdb.MismatchError{Path: path, Version: version, Kind: kind, Want: want, Got: hash}
	}
	return "test record of " + path, nil
}

func openStore(t *testing.T) *cache.Store {
	t.Helper()
	s, err := cache.Open(filepath.Join(t.TempDir(), "s.db"), cache.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestStatesAndVerify(t *testing.T) {
	ctx := context.Background()
	st := openStore(t)
	gomod := []byte("module example.com/m\n")
	zip := goodZip(t, map[string]string{"go.mod": string(gomod), "m.go": "package m\n"})
	mh, _ := testsumdb.HashMod(gomod)
	zh, _ := testsumdb.HashZip(zip)
	v := &fakeVerifier{hashes: map[string]string{"mod " + modPath + "@" + modVersion: mh, "zip " + modPath + "@" + modVersion: zh}, exempt: "corp.example"}
	g, _ := New(Config{Store: st, Verifier: v, FailOpen: true, TempDir: t.TempDir()})
	commit := func(k cache.Key, data []byte) (*Ticket, error) {
		var tk *Ticket
		var err error
		if k.Kind == cache.KindZip {
			tk, err = g.CheckZipFile(ctx, k, writeTemp(t, data), Origin{Upstream: "u"})
		} else {
			tk, err = g.CheckSmall(ctx, k, data, Origin{Upstream: "u"})
		}
		if err != nil {
			return nil, err
		}
		_, err = g.Commit(tk)
		return tk, err
	}
	// verified
	for _, kd := range []struct {
		k    cache.Kind
		data []byte
	}{{cache.KindMod, gomod}, {cache.KindZip, zip}} {
		tk, err := commit(cache.Key{Path: modPath, Version: modVersion, Kind: kd.k}, kd.data)
		if err != nil || tk.State() != cache.StateVerified {
			t.Fatalf("%s: %v, state %v", kd.k, err, tk)
		}
	}
	m, _ := st.Stat(cache.Key{Path: modPath, Version: modVersion, Kind: cache.KindZip})
	if m.State != cache.StateVerified || m.Proof != "test record of "+modPath || m.Hash != zh {
		t.Fatalf("stored meta %+v", m)
	}
	// a mismatch is refused and stores nothing
	if _, err := commit(cache.Key{Path: modPath, Version: "v1.0.1", Kind: cache.KindMod}, gomod); !errors.Is(err, sumdb.ErrNotFound) {
		t.Fatalf("no record: %v", err)
	}
	v.hashes["mod "+modPath+"@v1.0.2"] = "h1:wrong"
	if _, err := commit(cache.Key{Path: modPath, Version: "v1.0.2", Kind: cache.KindMod}, gomod); !errors.Is(err, sumdb.ErrMismatch) {
		t.Fatalf("mismatch: %v", err)
	}
	// exempt: content checked, hash recorded
	pmod := []byte("module corp.example/p\n")
	if tk, err := commit(cache.Key{Path: "corp.example/p", Version: modVersion, Kind: cache.KindMod}, pmod); err != nil || tk.State() != cache.StateExempt || tk.Hash() == "" {
		t.Fatalf("exempt: %v", err)
	}
	if _, err := commit(cache.Key{Path: "corp.example/q", Version: modVersion, Kind: cache.KindMod}, []byte("<html>")); !errors.Is(err, ErrContent) {
		t.Fatalf("exempt HTML go.mod: %v", err)
	}
	// Verified and exempt commits leave the unverified marker alone.
	if _, err := st.GetEntry(UnverifiedMarker); !errors.Is(err, cache.ErrNotFound) {
		t.Fatalf("unverified marker after verified and exempt commits: %v", err)
	}
	// unverified (fail-open) while the database is down
	v.down = true
	umod := []byte("module example.com/u\n")
	if tk, err := commit(cache.Key{Path: "example.com/u", Version: modVersion, Kind: cache.KindMod}, umod); err != nil || tk.State() != cache.StateUnverified || tk.Unverified() == nil {
		t.Fatalf("fail-open: %v", err)
	}
	if e, err := st.GetEntry(UnverifiedMarker); err != nil || string(e.Value) == MarkerClean {
		t.Fatalf("unverified marker after a fail-open commit: %q, %v; want it pending", e.Value, err)
	}
	v.down = false

	// A ticket from another gate is refused.
	other, _ := New(Config{Store: st})
	tk, _ := g.CheckSmall(ctx, cache.Key{Path: modPath, Version: "v1.0.3", Kind: cache.KindInfo}, []byte(`{"Version":"v1.0.3"}`), Origin{})
	if _, err := other.Commit(tk); err == nil {
		t.Fatal("commit of a foreign ticket succeeded")
	}

	rep, err := Verify(ctx, st, VerifyOptions{Verifier: v, TempDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Verified != 2 || rep.Exempt != 1 || rep.MissingRecord != 1 || rep.Mismatch != 0 || rep.Failed() {
		t.Fatalf("report %+v", rep)
	}
	// The database now disagrees with the stored zip: a mismatch, quarantined.
	v.hashes["zip "+modPath+"@"+modVersion] = "h1:other"
	var quarantined []cache.Key
	rep, err = Verify(ctx, st, VerifyOptions{Verifier: v, TempDir: t.TempDir(), Quarantine: func(k cache.Key, _ string) error {
		quarantined = append(quarantined, k)
		return st.Quarantine(k, "test")
	}})
	if err != nil || rep.Mismatch != 1 || !rep.Failed() || len(quarantined) != 1 {
		t.Fatalf("report %+v, %v", rep, err)
	}
	var buf bytes.Buffer
	rep.WriteText(&buf)
	for _, want := range []string{"1 verified, 1 exempt, 0 unverified, 1 mismatch, 1 missing record", "mismatch       example.com/m@v1.0.0 zip", "[quarantined]"} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, buf.String())
		}
	}
	// Offline with the database unreachable, the fail-open artifact stays
	// unverified.
	v.down = true
	rep, _ = Verify(ctx, st, VerifyOptions{Verifier: v, TempDir: t.TempDir()})
	if rep.Unverified != 1 {
		t.Errorf("down: %+v", rep)
	}
}

// A bundle item that changes between its check and its commit (a file
// swapped under the importer) is not committed.
func TestCommitRefusesContentChangedSinceCheck(t *testing.T) {
	st := openStore(t)
	g, _ := New(Config{Store: st, TempDir: t.TempDir()})
	k := cache.Key{Path: modPath, Version: modVersion, Kind: cache.KindZip}
	content := goodZip(t, map[string]string{"m.go": "package m\n"})
	open := func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(content)), nil }
	tk, err := g.CheckZip(context.Background(), k, open, Origin{})
	if err != nil {
		t.Fatal(err)
	}
	content = goodZip(t, map[string]string{"m.go": "package m // swapped\n"})
	if _, err := g.Commit(tk); err == nil {
		t.Fatal("commit of content changed since the check succeeded")
	}
	if _, err := st.Stat(k); !errors.Is(err, cache.ErrNotFound) {
		t.Fatalf("changed content stored: %v", err)
	}
}

// A spooled zip whose digest, taken by the caller while writing it, does
// not match the file (changed after it was written, or a wrong digest)
// is checked on the file's bytes, but never committed: a zip other than
// the one downloaded cannot be stored under its digest.
func TestCheckSpooledZipRefusesOtherBytes(t *testing.T) {
	k := cache.Key{Path: modPath, Version: modVersion, Kind: cache.KindZip}
	downloaded := goodZip(t, map[string]string{"m.go": "package m\n"})
	swapped := goodZip(t, map[string]string{"m.go": "package m // swapped\n"})
	for name, c := range map[string]struct {
		size int64
		sha  [32]byte
	}{
		"file changed after the download": {int64(len(downloaded)), sha256.Sum256(downloaded)},
		"wrong size":                      {int64(len(swapped)) + 1, sha256.Sum256(swapped)},
	} {
		t.Run(name, func(t *testing.T) {
			st := openStore(t)
			g, _ := New(Config{Store: st, TempDir: t.TempDir()})
			tk, err := g.CheckSpooledZip(context.Background(), k, writeTemp(t, swapped), c.size, c.sha, Origin{})
			if err != nil {
				t.Fatal(err) // the file's own bytes are a good zip
			}
			if _, err := g.Commit(tk); err == nil {
				t.Fatal("committed bytes other than the digest's")
			}
			if _, err := st.Stat(k); !errors.Is(err, cache.ErrNotFound) {
				t.Fatalf("stored: %v", err)
			}
		})
	}
}

// CheckZip takes the digest while spooling, CheckZipFile by reading the
// file, CheckSpooledZip from its caller: all record the content's size and SHA-256, which Commit checks.
func TestCheckZipDigestMatchesContent(t *testing.T) {
	content := goodZip(t, map[string]string{"m.go": "package m\n"})
	want := sha256.Sum256(content)
	k := cache.Key{Path: modPath, Version: modVersion, Kind: cache.KindZip}
	open := func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(content)), nil }
	for name, check := range map[string]func(*Gate) (*Ticket, error){
		"CheckZip": func(g *Gate) (*Ticket, error) { return g.CheckZip(context.Background(), k, open, Origin{}) },
		"CheckZipFile": func(g *Gate) (*Ticket, error) {
			return g.CheckZipFile(context.Background(), k, writeTemp(t, content), Origin{})
		},
		"CheckSpooledZip": func(g *Gate) (*Ticket, error) {
			return g.CheckSpooledZip(context.Background(), k, writeTemp(t, content), int64(len(content)), want, Origin{})
		},
	} {
		t.Run(name, func(t *testing.T) {
			g, _ := New(Config{Store: openStore(t), TempDir: t.TempDir()})
			tk, err := check(g)
			if err != nil {
				t.Fatal(err)
			}
			m, err := g.Commit(tk)
			if err != nil {
				t.Fatal(err)
			}
			if m.Size != int64(len(content)) || m.SHA256 != want {
				t.Fatalf("stored size %d sha256 %x, want %d %x", m.Size, m.SHA256, len(content), want)
			}
		})
	}
}
