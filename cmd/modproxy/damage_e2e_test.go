package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/modproxy/modproxy/internal/testupstream"
)

// damageModules are stored by the damage tests: small ones and zips of
// several 512 KiB chunks.
func damageModules() []testupstream.Module {
	var mods []testupstream.Module
	for i := range 6 {
		files := map[string]string{"a.go": fmt.Sprintf("package a%d\n", i)}
		if i%2 == 0 {
			var big []byte
			for j := 0; len(big) < (i+1)*300<<10; j++ {
				big = fmt.Appendf(big, "// %x\n", sha256.Sum256([]byte{byte(i), byte(j), byte(j >> 8), byte(j >> 16)}))
			}
			files["big.go"] = "package a\n" + string(big)
		}
		mods = append(mods, testupstream.Module{Path: fmt.Sprintf("example.com/damage/m%d", i), Version: "v1.0.0", Files: files})
	}
	return mods
}

// damageArtifacts are the URL paths of every artifact of mods.
func damageArtifacts(mods []testupstream.Module) []string {
	var paths []string
	for _, m := range mods {
		for _, ext := range []string{"info", "mod", "zip"} {
			paths = append(paths, "/"+m.Path+"/@v/"+m.Version+"."+ext)
		}
	}
	return paths
}

// fillStore stores every artifact of up's modules in a new store file.
func fillStore(t *testing.T, up *testupstream.Server, mods []testupstream.Module) (string, map[string][]byte) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "good.db")
	mp := startModproxy(t, "--db", path, "--upstream", up.URL(), "--sumdb", "off")
	want := map[string][]byte{}
	for _, p := range damageArtifacts(mods) {
		resp, body := mp.get(t, p)
		if resp.StatusCode != 200 {
			t.Fatalf("GET %s: %d %s", p, resp.StatusCode, body)
		}
		want[p] = []byte(body)
	}
	mp.stop(t)
	return path, want
}

// startServe runs "modproxy serve" on a store that may be damaged: it
// either exits (returning its output and status) or becomes ready.
func startServe(t *testing.T, db, upstream string) (p *proc, out string, code int) {
	t.Helper()
	addr := freeAddr(t)
	p = &proc{URL: "http://" + addr, logs: &syncBuffer{}, done: make(chan error, 1)}
	p.cmd = exec.Command(modproxyBin(t), "serve", "--listen", addr, "--ebpf=off", "--db", db, "--upstream", upstream, "--sumdb", "off", "--log-level", "warn")
	p.cmd.Stdout, p.cmd.Stderr = p.logs, p.logs
	p.cmd.Env = append(os.Environ(), "GOFLAGS=")
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.done <- p.cmd.Wait() }()
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case err := <-p.done:
			p.done <- err
			code := 0
			if ee, ok := err.(*exec.ExitError); ok {
				code = ee.ExitCode()
			}
			return nil, p.logs.String(), code
		default:
		}
		if resp, err := http.Get(p.URL + "/healthz"); err == nil {
			resp.Body.Close()
			t.Cleanup(func() { p.stop(t) })
			return p, "", 0
		}
		time.Sleep(30 * time.Millisecond)
	}
	p.cmd.Process.Kill()
	t.Fatalf("modproxy neither exited nor answered\n%s", p.logs)
	return nil, "", 0
}

func assertNoCrash(t *testing.T, what, out string) {
	t.Helper()
	for _, bad := range []string{"panic", "goroutine ", "fatal error", "SIGSEGV", "SIGBUS"} {
		if strings.Contains(out, bad) {
			t.Errorf("%s: output contains %q:\n%s", what, bad, out)
			return
		}
	}
}

func assertOneLineError(t *testing.T, what, out string, code int, want string) {
	t.Helper()
	assertNoCrash(t, what, out)
	if code != 1 || strings.Count(strings.TrimSpace(out), "\n") != 0 || !strings.Contains(out, want) {
		t.Errorf("%s: exit %d, output %q; want exit 1 and one line containing %q", what, code, out, want)
	}
}

// TestStoreFilesThatAreNotStores: an empty file and a foreign file are
// refused by every command with one line and status 1, and left as they
// were.
func TestStoreFilesThatAreNotStores(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	dir := t.TempDir()
	for _, c := range []struct {
		name, content, want string
	}{
		{"empty.db", "", "empty (0 bytes)"},
		{"notes.txt", "these are my notes, not a database\n", "not a bbolt database file"},
	} {
		path := filepath.Join(dir, c.name)
		if err := os.WriteFile(path, []byte(c.content), 0o600); err != nil {
			t.Fatal(err)
		}
		_, out, code := startServe(t, path, "http://127.0.0.1:1")
		assertOneLineError(t, "serve --db "+c.name, out, code, c.want)
		for _, args := range [][]string{
			{"verify", "--db", path},
			{"export", "--db", path, "--out", filepath.Join(dir, "out-"+c.name)},
			{"import", "--db", path, filepath.Join(dir, "no-such-bundle")},
		} {
			out, code := runBin(t, nil, args...)
			assertOneLineError(t, strings.Join(args[:1], " ")+" on "+c.name, out, code, c.want)
		}
		if b, err := os.ReadFile(path); err != nil || string(b) != c.content {
			t.Errorf("%s was changed (%v)", c.name, err)
		}
	}
}

// TestDamagedStorePages damages pages of a real store in 60 ways. serve and
// verify must never crash: they refuse the file with one line and status 1,
// or they run and report the damage they meet. A store that is refused can
// be salvaged, and what is salvaged verifies.
func TestDamagedStorePages(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and runs it 120 times")
	}
	mods := damageModules()
	up, err := testupstream.New(mods...)
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	good, want := fillStore(t, up, mods)
	orig, err := os.ReadFile(good)
	if err != nil {
		t.Fatal(err)
	}
	const ps = 4096
	var tree []int
	for p := 2; p < len(orig)/ps; p++ {
		if f := binary.LittleEndian.Uint16(orig[p*ps+8:]); (f == 1 || f == 2) && binary.LittleEndian.Uint64(orig[p*ps:]) == uint64(p) {
			tree = append(tree, p)
		}
	}
	damages := []func(b []byte, p int, rng *rand.Rand) []byte{
		func(b []byte, p int, rng *rand.Rand) []byte { b[p*ps+rng.IntN(16)] ^= 1 << rng.IntN(8); return b },
		func(b []byte, p int, _ *rand.Rand) []byte { clear(b[p*ps : (p+1)*ps]); return b },
		func(b []byte, p int, rng *rand.Rand) []byte {
			for i := range ps {
				b[p*ps+i] = byte(rng.Uint32())
			}
			return b
		},
		func(b []byte, p int, rng *rand.Rand) []byte { b[p*ps+16+rng.IntN(128)] ^= 1 << rng.IntN(8); return b },
		func(b []byte, p int, rng *rand.Rand) []byte {
			binary.LittleEndian.PutUint64(b[p*ps+24:], uint64(rng.IntN(len(b)/ps+8)))
			return b
		},
		func(b []byte, p int, _ *rand.Rand) []byte {
			binary.LittleEndian.PutUint32(b[p*ps+12:], 1<<20)
			return b
		},
		func(b []byte, p int, rng *rand.Rand) []byte { return b[:p*ps+rng.IntN(ps)] },
	}
	rng := rand.New(rand.NewPCG(10, 60))
	dir := t.TempDir()
	outcomes := map[string]int{}
	salvaged := false
	for i := range 60 {
		page := tree[rng.IntN(len(tree))]
		if i%15 == 14 {
			page = i % 2 // a meta page
		}
		path := filepath.Join(dir, fmt.Sprintf("damaged-%02d.db", i))
		if err := os.WriteFile(path, damages[i%len(damages)](bytes.Clone(orig), page, rng), 0o600); err != nil {
			t.Fatal(err)
		}
		name := fmt.Sprintf("corruption %d (kind %d, page %d)", i, i%len(damages), page)

		out, code := runBin(t, nil, "verify", "--db", path)
		assertNoCrash(t, name+": verify", out)
		if code != 0 && code != 1 {
			t.Errorf("%s: verify exit %d:\n%s", name, code, out)
		}
		mp, out, code := startServe(t, path, up.URL())
		if mp == nil {
			assertOneLineError(t, name+": serve", out, code, "open store")
			outcomes["refused"]++
			if !salvaged {
				salvaged = checkSalvage(t, path, dir, i)
			}
			continue
		}
		outcomes["served"]++
		for _, p := range damageArtifacts(mods) {
			resp, err := http.Get(mp.URL + p)
			if err != nil {
				continue
			}
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err == nil && resp.StatusCode == 200 && !bytes.Equal(body, want[p]) {
				t.Errorf("%s: %s served wrong bytes with a clean end", name, p)
			}
		}
		http.Get(mp.URL + "/metrics")
		mp.stop(t)
		assertNoCrash(t, name+": serve", mp.logs.String())
	}
	t.Logf("60 page corruptions: %v", outcomes)
	if !salvaged {
		// The random corruptions hit whichever pages this run's layout
		// put where; when every refused one took the root page with it,
		// nothing was left to salvage. Damage only what Open checks (the
		// freelist pages both meta pages name), which Open refuses and
		// which leaves the whole tree for salvage.
		b := bytes.Clone(orig)
		for m := range 2 {
			fl := binary.LittleEndian.Uint64(b[m*ps+16+32:])
			if fl < 2 || int(fl+1)*ps > len(b) {
				t.Fatalf("meta page %d names freelist page %d", m, fl)
			}
			clear(b[int(fl)*ps : int(fl+1)*ps])
		}
		path := filepath.Join(dir, "damaged-freelist.db")
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		mp, out, code := startServe(t, path, up.URL())
		if mp != nil {
			mp.stop(t)
			t.Fatal("serve opened a store whose freelist pages are zeroed")
		}
		assertOneLineError(t, "freelist zeroed: serve", out, code, "open store")
		if !checkSalvage(t, path, dir, 99) {
			t.Error("a store refused for its freelist alone was not salvaged")
		}
	}
}

// checkSalvage salvages a refused store and verifies the result. It
// reports whether the salvage recovered anything.
func checkSalvage(t *testing.T, path, dir string, i int) bool {
	t.Helper()
	out := filepath.Join(dir, fmt.Sprintf("salvaged-%02d.db", i))
	text, code := runBin(t, nil, "verify", "--db", path, "--salvage", out)
	assertNoCrash(t, "salvage", text)
	if code != 0 && code != 1 {
		t.Errorf("salvage exit %d:\n%s", code, text)
		return false
	}
	if !strings.HasPrefix(text, "salvaged ") || strings.HasPrefix(text, "salvaged 0 artifacts") {
		t.Logf("salvage of %s: %s", path, text)
		return false
	}
	if text, code := runBin(t, nil, "verify", "--db", out); code != 0 {
		t.Errorf("verify of the salvaged store: exit %d\n%s", code, text)
	}
	if text, code := runBin(t, nil, "verify", "--db", path, "--salvage", out); code != 1 || !strings.Contains(text, "exists") {
		t.Errorf("salvage into an existing file: exit %d %q", code, text)
	}
	return true
}

// TestBitFlippedZipIsRefetched flips a bit in the first chunk of every
// stored zip of a real store. The running server finds the damage before a
// byte is sent, quarantines the copy, counts it and serves a fresh copy
// from upstream; the go command never sees the damaged bytes.
func TestBitFlippedZipIsRefetched(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	mods := damageModules()
	up, err := testupstream.New(mods...)
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	path, want := fillStore(t, up, mods)
	corruptZipChunk(t, path)
	mp := startModproxy(t, "--db", path, "--upstream", up.URL(), "--sumdb", "off")
	zips := 0
	for _, p := range damageArtifacts(mods) {
		if !strings.HasSuffix(p, ".zip") {
			continue
		}
		zips++
		before := up.Count(p)
		resp, body := mp.get(t, p)
		if resp.StatusCode != 200 || body != string(want[p]) {
			t.Errorf("%s: %d, %d bytes; want the good zip", p, resp.StatusCode, len(body))
		}
		if up.Count(p) != before+1 {
			t.Errorf("%s was not refetched from upstream", p)
		}
		// A request during the refetched copy's commit joins its fetch
		// ("miss"); once committed, it is a hit, and never fetched again.
		for deadline := time.Now().Add(time.Minute); ; time.Sleep(5 * time.Millisecond) { // hang guard only
			resp, body := mp.get(t, p)
			if resp.StatusCode != 200 || body != string(want[p]) {
				t.Errorf("%s after the refetch: %d, %d bytes", p, resp.StatusCode, len(body))
				break
			}
			if resp.Header.Get("X-Modproxy-Cache") == "hit" {
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("%s after the refetch: cache %q, never a hit", p, resp.Header.Get("X-Modproxy-Cache"))
				break
			}
		}
		if up.Count(p) != before+1 {
			t.Errorf("%s fetched %d times after the refetch", p, up.Count(p)-before-1)
		}
	}
	_, metrics := mp.get(t, "/metrics")
	if !strings.Contains(metrics, fmt.Sprintf("modproxy_store_corruptions_total %d", zips)) {
		t.Errorf("modproxy_store_corruptions_total is not %d:\n%s", zips, grepLines(metrics, "corruptions"))
	}
	if !strings.Contains(mp.logs.String(), "stored zip is damaged") {
		t.Error("the damage was not logged")
	}
}
