package bundle

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.etcd.io/bbolt"

	"github.com/modproxy/modproxy/cache"
	"github.com/modproxy/modproxy/cache/gate"
	"github.com/modproxy/modproxy/internal/testupstream"
	"github.com/modproxy/modproxy/sumdb"
)

// forgedZip is a valid module zip of example.com/M<i> with other content.
func forgedZip(t *testing.T, i int) []byte {
	t.Helper()
	z, err := testupstream.MakeZip(fmt.Sprintf("example.com/M%d", i), "v1.0.0", map[string]string{"m.go": "package m\n\nconst N = 666 // forged\n"})
	if err != nil {
		t.Fatal(err)
	}
	return z
}

// liar is an attacker's verifier: it vouches for anything, so the
// attacker's own store claims "verified" with a proof.
type liar struct{}

func (liar) Exempt(string) bool { return false }
func (liar) VerifyHash(context.Context, string, string, string, string) (string, error) {
	return "sum.bundle.test/lookup/forged record 0", nil
}

func openNew(t *testing.T, name string) *cache.Store {
	t.Helper()
	s, err := cache.Open(filepath.Join(t.TempDir(), name), cache.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// refused checks that an import refused the bundle naming item (and
// reason), and left dst without artifacts.
func refused(t *testing.T, dst *cache.Store, rep Report, err error, item, reason string) {
	t.Helper()
	if err != nil {
		t.Fatalf("import: %v", err)
	}
	t.Logf("refused: %q", rep.Failed)
	found := false
	for _, f := range rep.Failed {
		if strings.Contains(f, item) && strings.Contains(f, reason) {
			found = true
		}
	}
	if !found {
		t.Errorf("failures do not name %q with %q: %q", item, reason, rep.Failed)
	}
	if rep.Artifacts != 0 || rep.SumDB != 0 {
		t.Errorf("a refused bundle stored %d artifacts and %d checksum-database entries", rep.Artifacts, rep.SumDB)
	}
	if keys := keysOf(t, dst); len(keys) != 0 {
		t.Errorf("a refused bundle left artifacts: %v", keys)
	}
	if names, _ := dst.KVBuckets(); len(names) != 0 {
		t.Errorf("a refused bundle left checksum-database data: %v", names)
	}
}

func TestImportStoreBundleForgeries(t *testing.T) {
	f := newFixture(t, 3)
	zipKey := cache.Key{Path: "example.com/M0", Version: "v1.0.0", Kind: cache.KindZip}
	for _, tt := range []struct {
		name     string
		verifier gate.Verifier // the attacker's, writing the bundle
		key      cache.Key
		data     []byte
		reason   string
	}{
		// The forged zip's recorded hash matches the forged content.
		{"forged zip, matching hash, state exempt", nil, zipKey, forgedZip(t, 0), "checksum mismatch"},
		// The forged zip even claims to be verified, with a proof.
		{"forged zip, claims verified", liar{}, zipKey, forgedZip(t, 0), "checksum mismatch"},
		// A module the database never recorded: no evidence at all.
		{"no record", nil, cache.Key{Path: "example.com/evil", Version: "v1.0.0", Kind: cache.KindMod}, []byte("module example.com/evil\n"), "carries no checksum-database record"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "bundle.db")
			if _, err := Export(f.store, out, func(k cache.Key) bool { return k != tt.key }, false); err != nil {
				t.Fatal(err)
			}
			b, err := cache.Open(out, cache.Options{})
			if err != nil {
				t.Fatal(err)
			}
			g, _ := gate.New(gate.Config{Store: b, Verifier: tt.verifier, TempDir: t.TempDir()})
			var tk *gate.Ticket
			if tt.key.Kind == cache.KindZip {
				tk, err = g.CheckZipFile(context.Background(), tt.key, writeFileT(t, tt.data), gate.Origin{Upstream: "attacker"})
			} else {
				tk, err = g.CheckSmall(context.Background(), tt.key, tt.data, gate.Origin{})
			}
			if err != nil {
				t.Fatal(err)
			}
			if _, err := g.Commit(tk); err != nil {
				t.Fatal(err)
			}
			b.Close()

			dst := openNew(t, "dst.db")
			rep, err := Import(dst, out, f.opts())
			refused(t, dst, rep, err, tt.key.Path+"@v1.0.0."+string(tt.key.Kind), tt.reason)
		})
	}
}

func writeFileT(t *testing.T, data []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestImportDirForgeries(t *testing.T) {
	f := newFixture(t, 3)
	rec := filepath.Join("sumdb", "sum.bundle.test", "lookup", "example.com", "!m1@v1.0.0")
	zipFile := filepath.Join("example.com", "!m1", "@v", "v1.0.0.zip")
	for _, tt := range []struct {
		name   string
		tamper func(t *testing.T, dir string)
		item   string
		reason string
	}{
		{"forged zip with matching .ziphash", func(t *testing.T, dir string) {
			forged := forgedZip(t, 1)
			os.WriteFile(filepath.Join(dir, zipFile), forged, 0o644)
			h, err := gate.CheckZipFile("example.com/M1", "v1.0.0", filepath.Join(dir, zipFile))
			if err != nil {
				t.Fatal(err)
			}
			os.WriteFile(filepath.Join(dir, strings.TrimSuffix(zipFile, ".zip")+".ziphash"), []byte(h+"\n"), 0o644)
		}, "example.com/M1@v1.0.0.zip", "checksum mismatch"},
		{"missing record", func(t *testing.T, dir string) {
			os.Remove(filepath.Join(dir, rec))
		}, "example.com/M1@v1.0.0.mod", "carries no checksum-database record"},
		{"bogus record", func(t *testing.T, dir string) {
			editRecord(t, filepath.Join(dir, rec), func(text, sig string) (string, string) {
				i := strings.Index(text, "h1:")
				return text[:i+3] + "AAAA" + text[i+7:], sig
			})
		}, "!m1@v1.0.0", "does not match tree"},
		{"bad tree head signature", func(t *testing.T, dir string) {
			editRecord(t, filepath.Join(dir, rec), func(text, sig string) (string, string) {
				i := strings.LastIndex(sig, " ") + 5
				b := []byte(sig)
				b[i] ^= 1
				return text, string(b)
			})
		}, "!m1@v1.0.0", "tree head"},
		{"html go.mod", func(t *testing.T, dir string) {
			os.WriteFile(filepath.Join(dir, "example.com", "!m2", "@v", "v1.0.0.mod"), []byte("<!DOCTYPE html>\n<html>Sign in</html>\n"), 0o644)
		}, "example.com/M2@v1.0.0.mod", "does not parse"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "goproxy")
			if _, err := ExportDir(f.store, dir, nil, false); err != nil {
				t.Fatal(err)
			}
			tt.tamper(t, dir)
			dst := openNew(t, "dst.db")
			rep, err := ImportDir(dst, dir, f.opts())
			refused(t, dst, rep, err, tt.item, tt.reason)
			// The artifacts relying on a refused record are named too.
			if strings.Contains(tt.name, "record") || strings.Contains(tt.name, "signature") {
				named := false
				for _, fl := range rep.Failed {
					named = named || strings.HasPrefix(fl, "example.com/M1@v1.0.0.zip:")
				}
				if !named {
					t.Errorf("the zip relying on the refused record is not named: %q", rep.Failed)
				}
			}
		})
	}
}

// editRecord rewrites a lookup record file: text is the record (up to the
// blank line of the tree note), sig the note's signature lines.
func editRecord(t *testing.T, file string, edit func(text, sig string) (string, string)) {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	s := string(data)
	i := strings.LastIndex(s, "\n\n")
	text, sig := edit(s[:i+2], s[i+2:])
	os.WriteFile(file, []byte(text+sig), 0o644)
}

// forkAndAdd forks f's database and adds a module to the forked history,
// served by the returned upstream (closed at the end of the test).
func forkAndAdd(t *testing.T, f *fixture) (testupstream.Module, *testupstream.Server) {
	t.Helper()
	f.db.ForkHistory()
	m := testupstream.Module{Path: "example.com/after", Version: "v1.0.0", Files: map[string]string{"a.go": "package a\n"}}
	up, err := testupstream.New(m)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(up.Close)
	f.db.AddModule(m.Path, m.Version, up.GoMod(m.Path, m.Version), up.Zip(m.Path, m.Version))
	return m, up
}

func TestImportRefusesForkedTreeHead(t *testing.T) {
	f := newLiveFixture(t, 2)
	out := filepath.Join(t.TempDir(), "bundle.db")
	if _, err := Export(f.store, out, nil, false); err != nil {
		t.Fatal(err)
	}
	// The database forks; the importing store has since trusted the
	// forked history.
	m, up := forkAndAdd(t, f)
	dst := openNew(t, "dst.db")
	v, err := sumdb.New(sumdb.Config{VerifierKey: f.db.VerifierKey(), URL: f.db.URL()}, dst)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.VerifyMod(context.Background(), m.Path, m.Version, up.GoMod(m.Path, m.Version)); err != nil {
		t.Fatal(err)
	}
	before := kvCount(t, dst)
	rep, err := Import(dst, out, f.opts())
	if err != nil {
		t.Fatal(err)
	}
	if rep.Artifacts != 0 || len(keysOf(t, dst)) != 0 || kvCount(t, dst) != before {
		t.Errorf("a forked bundle stored something: %+v", rep)
	}
	sec := false
	for _, fl := range rep.Failed {
		sec = sec || strings.Contains(fl, "SECURITY") && strings.Contains(fl, "inconsistent")
	}
	if !sec || !strings.Contains(strings.Join(rep.Failed, "\n"), "example.com/M0@v1.0.0.zip") {
		t.Errorf("failures = %q, want a security error and the artifacts named", rep.Failed)
	}
}

func kvCount(t *testing.T, s *cache.Store) int {
	t.Helper()
	n := 0
	names, _ := s.KVBuckets()
	for _, b := range names {
		s.WalkKV(b, func(string, []byte) error { n++; return nil })
	}
	return n
}

func TestExportLeavesOutUnverified(t *testing.T) {
	f := newFixture(t, 1)
	// One more module stored fail-open while the database was down.
	g, _ := gate.New(gate.Config{Store: f.store, Verifier: downDB{}, FailOpen: true, TempDir: t.TempDir()})
	admit(t, g, cache.Key{Path: "example.com/u", Version: "v1.0.0", Kind: cache.KindInfo}, []byte(`{"Version":"v1.0.0"}`), cache.StateExempt)
	admit(t, g, cache.Key{Path: "example.com/u", Version: "v1.0.0", Kind: cache.KindMod}, []byte("module example.com/u\n"), cache.StateUnverified)

	out := filepath.Join(t.TempDir(), "b.db")
	rep, err := Export(f.store, out, nil, false)
	if err != nil || rep.Artifacts != 3 || rep.Unverified != 1 {
		t.Fatalf("export: %+v, %v", rep, err)
	}
	dir := filepath.Join(t.TempDir(), "dir")
	if rep, err := ExportDir(f.store, dir, nil, false); err != nil || rep.Artifacts != 3 {
		t.Fatalf("export dir: %+v, %v", rep, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "example.com", "u")); !os.IsNotExist(err) {
		t.Errorf("the unverified module was exported to the directory: %v", err)
	}
	// Included on request, with its state; the importing side verifies
	// it again and, finding no record, refuses the bundle.
	out2 := filepath.Join(t.TempDir(), "b2.db")
	if rep, err := Export(f.store, out2, nil, true); err != nil || rep.Artifacts != 5 {
		t.Fatalf("export --include-unverified: %+v, %v", rep, err)
	}
	b, _ := cache.Open(out2, cache.Options{ReadOnly: true})
	m, err := b.Stat(cache.Key{Path: "example.com/u", Version: "v1.0.0", Kind: cache.KindMod})
	b.Close()
	if err != nil || m.State != cache.StateUnverified {
		t.Fatalf("bundle state of the unverified module: %+v, %v", m, err)
	}
	dst := openNew(t, "dst.db")
	rep, err = Import(dst, out2, f.opts())
	refused(t, dst, rep, err, "example.com/u@v1.0.0.mod", "carries no checksum-database record")
	// The clean bundle imports, verified, and the store verifies offline.
	rep, err = Import(dst, out, f.opts())
	if err != nil || len(rep.Failed) != 0 || rep.Verified != 2 {
		t.Fatalf("clean import: %+v, %v", rep, err)
	}
	v, err := sumdb.New(sumdb.Config{VerifierKey: f.db.VerifierKey(), Offline: true}, dst)
	if err != nil {
		t.Fatal(err)
	}
	vr, err := gate.Verify(context.Background(), dst, gate.VerifyOptions{Verifier: v, TempDir: t.TempDir()})
	if err != nil || vr.Verified != 2 || vr.Failed() || vr.MissingRecord != 0 {
		t.Fatalf("offline verify of the imported store: %+v, %v", vr, err)
	}
}

type downDB struct{}

func (downDB) Exempt(string) bool { return false }
func (downDB) VerifyHash(context.Context, string, string, string, string) (string, error) {
	return "", fmt.Errorf("lookup: %w", sumdb.ErrUnavailable)
}

// rewriteRecord rewrites the artifact record of k in the store file at
// path as an attacker with a hex editor would: the recorded "h1:" hash and
// state are replaced, everything else kept. A format-2 record's CRC-32C
// (of key and record) is recomputed: it detects damage, not forgery.
func rewriteRecord(t *testing.T, path string, k cache.Key, hash, state string) {
	t.Helper()
	db, err := bbolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	key := []byte(k.Path + "\x00" + k.Version + "\x00" + string(k.Kind))
	err = db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket([]byte("artifacts"))
		v := b.Get(key)
		if v == nil {
			return fmt.Errorf("no record of %s", k)
		}
		d := v[1:]
		if v[0] == 2 {
			d = v[1 : len(v)-4]
		}
		uv := func() []byte {
			_, n := binary.Uvarint(d)
			out := d[:n]
			d = d[n:]
			return out
		}
		str := func() string {
			n, m := binary.Uvarint(d)
			s := string(d[m : m+int(n)])
			d = d[m+int(n):]
			return s
		}
		var out []byte
		out = append(out, v[0])
		out = append(out, uv()...) // size
		_, n := binary.Varint(d)
		out = append(out, d[:n]...) // created
		d = d[n:]
		out = append(out, d[:32]...) // sha256
		d = d[32:]
		out = append(out, uv()...) // blob
		out = append(out, uv()...) // chunk size
		out = append(out, uv()...) // chunks
		str()                      // the hash, replaced
		upstream := str()
		for _, s := range []string{hash, upstream, state, "forged proof"} {
			out = binary.AppendUvarint(out, uint64(len(s)))
			out = append(out, s...)
		}
		if v[0] == 2 {
			castagnoli := crc32.MakeTable(crc32.Castagnoli)
			out = binary.BigEndian.AppendUint32(out, crc32.Update(crc32.Checksum(key, castagnoli), castagnoli, out))
		}
		return b.Put(key, out)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// The recorded hash and state of a store bundle are never read: an empty
// hash claiming "verified" is verified again, and a forged zip with it
// refused; the genuine zip with an empty hash imports.
func TestImportIgnoresRecordedHashAndState(t *testing.T) {
	f := newFixture(t, 2)
	zipKey := cache.Key{Path: "example.com/M0", Version: "v1.0.0", Kind: cache.KindZip}

	genuine := filepath.Join(t.TempDir(), "genuine.db")
	if _, err := Export(f.store, genuine, nil, false); err != nil {
		t.Fatal(err)
	}
	rewriteRecord(t, genuine, zipKey, "", string(cache.StateVerified))
	dst := openNew(t, "dst.db")
	if rep, err := Import(dst, genuine, f.opts()); err != nil || len(rep.Failed) != 0 || rep.Verified != 4 {
		t.Fatalf("genuine bundle with an empty recorded hash: %+v, %v", rep, err)
	}
	if m, err := dst.Stat(zipKey); err != nil || m.Hash == "" || m.State != cache.StateVerified || !strings.Contains(m.Proof, "authenticated from a bundle") {
		t.Fatalf("imported zip: %+v, %v", m, err)
	}

	forged := filepath.Join(t.TempDir(), "forged.db")
	if _, err := Export(f.store, forged, func(k cache.Key) bool { return k != zipKey }, false); err != nil {
		t.Fatal(err)
	}
	b, err := cache.Open(forged, cache.Options{})
	if err != nil {
		t.Fatal(err)
	}
	g, _ := gate.New(gate.Config{Store: b, TempDir: t.TempDir()})
	tk, err := g.CheckZipFile(context.Background(), zipKey, writeFileT(t, forgedZip(t, 0)), gate.Origin{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := g.Commit(tk); err != nil {
		t.Fatal(err)
	}
	b.Close()
	rewriteRecord(t, forged, zipKey, "", string(cache.StateVerified))
	dst2 := openNew(t, "dst2.db")
	rep, err := Import(dst2, forged, f.opts())
	refused(t, dst2, rep, err, "example.com/M0@v1.0.0.zip", "checksum mismatch")
}

// A directory bundle whose records come from two histories of the same
// database (both signed with its key) is refused as a fork.
func TestImportDirRefusesForkInsideBundle(t *testing.T) {
	f := newLiveFixture(t, 2)
	dir := filepath.Join(t.TempDir(), "goproxy")
	if _, err := ExportDir(f.store, dir, nil, false); err != nil {
		t.Fatal(err)
	}
	m, up := forkAndAdd(t, f)
	// Add the forked record and its tiles to the directory, as a mirror
	// that followed the fork would.
	base := filepath.Join(dir, "sumdb", f.db.Name())
	mirror, err := NewMirror(func(rel string) ([]byte, error) {
		if data, err := dirSumDBGet(base, rel); err == nil {
			return data, nil
		}
		resp, err := http.Get(f.db.URL() + "/" + rel)
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		data, err := io.ReadAll(resp.Body)
		if err != nil || resp.StatusCode != 200 {
			return nil, fmt.Errorf("GET %s: %d %v", rel, resp.StatusCode, err)
		}
		return data, writeFile(filepath.Join(base, filepath.FromSlash(rel)), bytes.NewReader(data))
	}, f.db.VerifierKey())
	if err != nil {
		t.Fatal(err)
	}
	for _, mod := range []string{"example.com/M0", m.Path} {
		if _, err := mirror.Lookup(mod, "v1.0.0"); err != nil {
			t.Fatal(err)
		}
	}
	if err := mirror.Finish(); err == nil || !strings.Contains(err.Error(), "inconsistent") {
		t.Fatalf("building the forked bundle: Finish = %v, want the fork seen", err)
	}
	for _, kind := range []string{"info", "mod", "zip"} {
		var data []byte
		switch kind {
		case "info":
			data = []byte(`{"Version":"v1.0.0"}`)
		case "mod":
			data = up.GoMod(m.Path, m.Version)
		case "zip":
			data = up.Zip(m.Path, m.Version)
		}
		if err := writeFile(filepath.Join(dir, "example.com", "after", "@v", "v1.0.0."+kind), bytes.NewReader(data)); err != nil {
			t.Fatal(err)
		}
	}
	dst := openNew(t, "dst.db")
	rep, err := ImportDir(dst, dir, f.opts())
	refused(t, dst, rep, err, "checksum database sum.bundle.test: SECURITY", "inconsistent")
}
