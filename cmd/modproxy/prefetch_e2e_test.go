package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/modproxy/modproxy/internal/testupstream"
)

// The go command's module graph walk, through a fresh modproxy verifying
// against the test checksum database: the go.mod files it asks for after
// the first one were prefetched (modproxy_prefetch_total used), and no zip
// is fetched from the upstream before the go command asks for it.
func TestPrefetchGoCommandEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test builds the binary and runs the go command")
	}
	mods := []testupstream.Module{
		{Path: "example.com/pa", Version: "v1.0.0", Files: map[string]string{
			"go.mod": "module example.com/pa\n\ngo 1.16\n\nrequire (\n\texample.com/pb v1.0.0\n\texample.com/pc v1.0.0\n)\n",
			"a.go":   "package pa\n",
		}},
		{Path: "example.com/pb", Version: "v1.0.0", Files: map[string]string{"b.go": "package pb\n"}},
		{Path: "example.com/pc", Version: "v1.0.0", Files: map[string]string{"c.go": "package pc\n"}},
	}
	up, db := startUniverse(t, mods)
	mp := startModproxy(t, "--db", filepath.Join(t.TempDir(), "modproxy.db"), "--upstream", up.URL(),
		"--sumdb", db.VerifierKey()+" "+db.URL(), "--private", "", "--nosumdb", "")
	project := t.TempDir()
	// go 1.16: an unpruned graph, so the go command reads pa's go.mod and
	// then those of what it requires.
	gomod := "module example.com/app\n\ngo 1.16\n\nrequire example.com/pa v1.0.0\n"
	if err := os.WriteFile(filepath.Join(project, "go.mod"), []byte(gomod), 0o644); err != nil {
		t.Fatal(err)
	}
	g := newGoEnv(t, mp.URL, db)
	g.run(project, "mod", "graph")
	if n := up.Count(".zip"); n != 0 {
		t.Errorf("go mod graph needs no zip, but the upstream served %d", n)
	}
	for _, m := range mods {
		if n := up.Count("/" + m.Path + "/@v/v1.0.0.mod"); n != 1 {
			t.Errorf("upstream served %s's go.mod %d times, want 1", m.Path, n)
		}
	}
	// The prefetch that a go command's request joined counts as used when
	// it completes, which may be just after the go command is done.
	re := regexp.MustCompile(`(?m)^modproxy_prefetch_total\{kind="require",result="used"\} (\d+)`)
	var n int
	var metrics string
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		_, metrics = mp.get(t, "/metrics")
		used := re.FindStringSubmatch(metrics)
		if used == nil {
			t.Fatalf("no modproxy_prefetch_total{kind=require,result=used} in /metrics:\n%s", grepLines(metrics, "prefetch"))
		}
		n, _ = strconv.Atoi(used[1])
		if n >= 2 || time.Now().After(deadline) {
			break
		}
	}
	if n != 2 {
		t.Errorf("prefetch used = %d, want 2 (pb and pc, asked by the go command after pa)\n%s", n, grepLines(metrics, "prefetch"))
	}
	g.run(project, "mod", "download")
	g.run(project, "mod", "verify")
}
