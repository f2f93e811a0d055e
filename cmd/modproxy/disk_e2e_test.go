package main

import (
	"encoding/binary"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/modproxy/modproxy/internal/testupstream"
)

// randomModule is a module whose zip is about size bytes of incompressible
// content.
func randomModule(path, version string, size int, seed uint64) testupstream.Module {
	r := rand.New(rand.NewPCG(seed, 1))
	b := make([]byte, 0, size+8)
	for len(b) < size {
		b = binary.LittleEndian.AppendUint64(b, r.Uint64())
	}
	b = b[:size]
	return testupstream.Module{Path: path, Version: version, Files: map[string]string{
		"big.go": "package big\n", "data.txt": string(b),
	}}
}

// mountTmpfs mounts a tmpfs of size at a new directory, or skips (fails
// under MODPROXY_REQUIRE_TMPFS=1) where that is not permitted.
func mountTmpfs(t *testing.T, size string) string {
	t.Helper()
	dir := t.TempDir()
	skip := func(why string) {
		if os.Getenv("MODPROXY_REQUIRE_TMPFS") == "1" {
			t.Fatalf("tmpfs required (MODPROXY_REQUIRE_TMPFS=1): %s", why)
		}
		t.Skipf("cannot mount a small tmpfs to fill up (%s); run as root on Linux", why)
	}
	if runtime.GOOS != "linux" {
		skip("not Linux")
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size, "tmpfs", dir).CombinedOutput(); err != nil {
		skip(strings.TrimSpace(string(out)) + ": " + err.Error())
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v %s", dir, err, out)
		}
	})
	return dir
}

func freeBytes(t *testing.T, dir string) int64 {
	t.Helper()
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	return int64(st.Bavail) * st.Bsize
}

// diskUsage is the space a file takes (a bbolt file is sparse past its data).
func diskUsage(t *testing.T, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Blocks * 512
}

// fill writes a filler file until at most leave bytes are free.
func fill(t *testing.T, dir string, leave int64) string {
	t.Helper()
	name := filepath.Join(dir, "filler")
	f, err := os.OpenFile(name, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 64<<10)
	for {
		free := freeBytes(t, dir)
		if free <= leave {
			return name
		}
		n := min(int64(len(buf)), free-leave)
		if _, err := f.Write(buf[:n]); err != nil {
			return name // ENOSPC: as full as it gets
		}
	}
}

type answer struct {
	status  int
	body    string
	cache   string
	warning string
}

func ask(t *testing.T, base, path string) answer {
	t.Helper()
	c := &http.Client{Timeout: 30 * time.Second}
	resp, err := c.Get(base + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: read: %v", path, err)
	}
	return answer{resp.StatusCode, string(b), resp.Header.Get("X-Modproxy-Cache"), resp.Header.Get("Warning")}
}

// TestFullDiskEndToEnd runs the built binary with its store and spool on a
// 64 MB tmpfs: a 40 MB zip that cannot be stored is served unstored without
// growing the store file; a full disk makes /readyz 503 with the reason and
// clients get 200-unstored or 507, never 500; freeing space brings /readyz
// and storing back without a restart.
func TestFullDiskEndToEnd(t *testing.T) {
	fs := mountTmpfs(t, "64m")
	small := testupstream.Module{Path: "example.com/small", Version: "v1.0.0", Files: map[string]string{"s.go": "package small\n"}}
	other := randomModule("example.com/other", "v1.0.0", 1<<20, 2)
	big := randomModule("example.com/big", "v1.0.0", 40<<20, 1)
	// A go.mod of 2 MB: on a full disk, storing it needs pages bbolt does
	// not have free.
	fatMod := "module example.com/fat\n" + strings.Repeat("// padding padding padding padding padding padding padding\n", 2<<20/60)
	fat := testupstream.Module{Path: "example.com/fat", Version: "v1.0.0", Files: map[string]string{"go.mod": fatMod, "f.go": "package fat\n"}}
	up, err := testupstream.New(small, other, big, fat)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(up.Close)
	db := filepath.Join(fs, "modproxy.db")
	spool := filepath.Join(fs, "spool")
	os.Mkdir(spool, 0o700)
	p := startModproxy(t, "--db", db, "--spool-dir", spool, "--upstream", up.URL(), "--sumdb", "off", "--min-free-space", "4MiB")
	defer p.stop(t)

	for _, path := range []string{"/example.com/small/@v/v1.0.0.info", "/example.com/small/@v/v1.0.0.zip"} {
		if a := ask(t, p.URL, path); a.status != 200 || a.warning != "" {
			t.Fatalf("%s with room: %d %q warning %q", path, a.status, a.body, a.warning)
		}
	}
	before := diskUsage(t, db)

	// 40 MB zip: spooled (40 MB of 64), then too large to stage.
	// It streams past the hold-back, so its headers (and the Warning a
	// waiting client would get) are out before the store is tried; the
	// pass-through shows in the counter.
	a := ask(t, p.URL, "/example.com/big/@v/v1.0.0.zip")
	if a.status != 200 || a.body != string(up.Zip(big.Path, big.Version)) {
		t.Fatalf("40 MB zip on a small disk: %d (%d bytes), want 200 and the whole zip", a.status, len(a.body))
	}
	if m := ask(t, p.URL, "/metrics"); !strings.Contains(m.body, `modproxy_served_unstored_total{kind="zip"} 1`) {
		t.Errorf("the unstored zip was not counted:\n%s", grepLines(m.body, "modproxy_served_unstored_total"))
	}
	if grown := diskUsage(t, db) - before; grown > 4<<20 {
		t.Errorf("the unstorable 40 MB zip grew the store file by %d bytes", grown)
	}
	if a := ask(t, p.URL, "/example.com/big/@v/v1.0.0.zip"); a.status != 200 || a.cache == "hit" {
		t.Errorf("unstored zip asked again: %d cache %q (it must not be a hit)", a.status, a.cache)
	}

	// Fill the file system up.
	filler := fill(t, fs, 0)
	r := ask(t, p.URL, "/readyz")
	t.Logf("full disk: /readyz -> %d %q", r.status, r.body)
	if r.status != http.StatusServiceUnavailable || !strings.Contains(r.body, "disk full") {
		t.Errorf("/readyz on a full disk: %d %q, want 503 disk full", r.status, r.body)
	}
	for _, path := range []string{"/example.com/other/@v/v1.0.0.info", "/example.com/other/@v/v1.0.0.mod", "/example.com/other/@v/v1.0.0.zip", "/example.com/other/@v/list"} {
		a := ask(t, p.URL, path)
		t.Logf("full disk: %s -> %d warning %q body %.80q", path, a.status, a.warning, a.body)
		switch {
		case a.status == 200 && a.warning != "": // passed through unstored
		case a.status == 200: // stored into pages bbolt had free
		case a.status == http.StatusInsufficientStorage && strings.Contains(a.body, "insufficient storage"):
		default:
			t.Errorf("%s on a full disk: %d %q, want 200 (stored or with a Warning) or 507", path, a.status, a.body)
		}
	}

	a = ask(t, p.URL, "/example.com/fat/@v/v1.0.0.mod")
	if a.status != 200 || a.body != fatMod || !strings.Contains(a.warning, "not stored") {
		t.Errorf("2 MB .mod on a full disk: %d (%d bytes) warning %q, want 200 unstored with a Warning", a.status, len(a.body), a.warning)
	}

	// Free the space: ready again, and misses are stored, without a restart.
	os.Remove(filler)
	deadline := time.Now().Add(10 * time.Second)
	for ask(t, p.URL, "/readyz").status != 200 {
		if time.Now().After(deadline) {
			t.Fatalf("/readyz did not recover after space was freed: %q", ask(t, p.URL, "/readyz").body)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if a := ask(t, p.URL, "/example.com/other/@v/v1.0.0.zip"); a.status != 200 || a.warning != "" {
		t.Errorf("zip after space was freed: %d warning %q", a.status, a.warning)
	}
	// The zip streamed while it was fetched; its last byte went out once
	// it was verified, with the commit to the store under way.
	a = ask(t, p.URL, "/example.com/other/@v/v1.0.0.zip")
	for deadline := time.Now().Add(10 * time.Second); a.cache != "hit" && time.Now().Before(deadline); a = ask(t, p.URL, "/example.com/other/@v/v1.0.0.zip") {
		time.Sleep(20 * time.Millisecond)
	}
	if a.cache != "hit" {
		t.Errorf("zip after space was freed was not stored (cache %q)", a.cache)
	}
	if strings.Contains(p.logs.String(), "internal error") || strings.Contains(p.logs.String(), "status=500") {
		t.Errorf("a client got a 500:\n%s", grepLines(p.logs.String(), "status=500"))
	}
	entries, _ := os.ReadDir(spool)
	if len(entries) != 0 {
		t.Errorf("spool files left: %d", len(entries))
	}
}

// TestKilledMidDownloadLeavesNoSpool: kill -9 of the binary in the middle
// of a zip download leaves its spool file; the next start removes it.
func TestKilledMidDownloadLeavesNoSpool(t *testing.T) {
	mod := randomModule("example.com/slow", "v1.0.0", 4<<20, 3)
	up, err := testupstream.New(mod)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(up.Close)
	up.SetFaults(testupstream.Fault{Match: func(p string) bool { return strings.HasSuffix(p, ".zip") }, SlowBody: 50 * time.Millisecond})
	dir := t.TempDir()
	spool := filepath.Join(dir, "spool")
	os.Mkdir(spool, 0o700)
	args := []string{"--db", filepath.Join(dir, "modproxy.db"), "--spool-dir", spool, "--upstream", up.URL(), "--sumdb", "off"}
	p := startModproxy(t, args...)
	go func() {
		c := &http.Client{Timeout: 30 * time.Second}
		if resp, err := c.Get(p.URL + "/example.com/slow/@v/v1.0.0.zip"); err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	}()
	var left []string
	deadline := time.Now().Add(15 * time.Second)
	for {
		left, _ = filepath.Glob(filepath.Join(spool, "modproxy-zip-*"))
		if len(left) > 0 {
			if fi, err := os.Stat(left[0]); err == nil && fi.Size() > 256<<10 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no spool file grew during the download\n%s", p.logs)
		}
		time.Sleep(20 * time.Millisecond)
	}
	p.cmd.Process.Kill() // SIGKILL: no cleanup of any kind
	err = <-p.done
	p.done <- err
	if left, _ = filepath.Glob(filepath.Join(spool, "modproxy-zip-*")); len(left) == 0 {
		t.Fatal("kill -9 left no spool file; the test proves nothing")
	}
	up.SetFaults()
	p2 := startModproxy(t, args...)
	defer p2.stop(t)
	if left, _ = filepath.Glob(filepath.Join(spool, "modproxy-zip-*")); len(left) != 0 {
		t.Errorf("spool files left after a restart: %v", left)
	}
	if !strings.Contains(p2.logs.String(), "removed spool files left by a crashed process") {
		t.Errorf("restart did not log the cleanup:\n%s", p2.logs)
	}
	if a := ask(t, p2.URL, "/example.com/slow/@v/v1.0.0.zip"); a.status != 200 || a.body != string(up.Zip(mod.Path, mod.Version)) {
		t.Errorf("zip after the restart: %d, %d bytes", a.status, len(a.body))
	}
}
