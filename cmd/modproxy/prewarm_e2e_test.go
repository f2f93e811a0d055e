package main

import (
	"context"
	"encoding/json"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/modproxy/modproxy/cache"
	"github.com/modproxy/modproxy/cache/gate"
	"github.com/modproxy/modproxy/internal/testsumdb"
	"github.com/modproxy/modproxy/internal/testupstream"
)

// pwModules is the prewarm fixture's universe: example.com/a (go 1.16, so
// its graph is not pruned) requires an older example.com/dep than the app
// selects (a go.mod-only dependency), a
// /v2 module, an uppercase path, and example.com/tool for the workspace's
// second module.
var pwModules = []testupstream.Module{
	{Path: "github.com/Upper/Case", Version: "v0.1.0", Files: map[string]string{
		"go.mod":  "module github.com/Upper/Case\n\ngo 1.21\n",
		"case.go": "package uppercase\n\nfunc Name() string { return \"Upper\" }\n"}},
	{Path: "example.com/lib/v2", Version: "v2.0.0", Files: map[string]string{
		"go.mod": "module example.com/lib/v2\n\ngo 1.21\n",
		"lib.go": "package lib\n\nfunc V() string { return \"v2.0.0\" }\n"}},
	{Path: "example.com/lib/v2", Version: "v2.1.0", Files: map[string]string{
		"go.mod": "module example.com/lib/v2\n\ngo 1.21\n",
		"lib.go": "package lib\n\nfunc V() string { return \"v2.1.0\" }\n"}},
	{Path: "example.com/a", Version: "v1.0.0", Files: map[string]string{
		"go.mod": "module example.com/a\n\ngo 1.16\n\nrequire example.com/dep v1.0.0\n",
		"a.go":   "package a\n\nimport \"example.com/dep\"\n\nfunc A() int { return dep.V }\n"}},
	{Path: "example.com/dep", Version: "v1.0.0", Files: map[string]string{
		"go.mod": "module example.com/dep\n\ngo 1.21\n", "dep.go": "package dep\n\nconst V = 1\n"}},
	{Path: "example.com/dep", Version: "v1.2.0", Files: map[string]string{
		"go.mod": "module example.com/dep\n\ngo 1.21\n", "dep.go": "package dep\n\nconst V = 2\n"}},
	{Path: "example.com/tool", Version: "v1.0.0", Files: map[string]string{
		"go.mod": "module example.com/tool\n\ngo 1.21\n",
		"t/t.go": "package t\n\nconst T = \"tool\"\n"}},
}

var pwFixture = map[string]string{
	"go.mod": `module example.com/app

go 1.21

require (
	example.com/a v1.0.0
	example.com/dep v1.2.0
	example.com/lib/v2 v2.1.0
	github.com/Upper/Case v0.1.0
)
`,
	"main.go": `package main

import (
	"fmt"

	uppercase "github.com/Upper/Case"
	"example.com/a"
	"example.com/lib/v2"
)

func main() { fmt.Println(uppercase.Name(), a.A(), lib.V()) }
`,
	"go.work": "go 1.21\n\nuse (\n\t.\n\t./sub\n)\n",
	"sub/go.mod": `module example.com/app/sub

go 1.21

require example.com/tool v1.0.0
`,
	"sub/sub.go": "package sub\n\nimport \"example.com/tool/t\"\n\nconst S = t.T\n",
}

// pwWriteFixture writes the fixture project into a new directory, with
// extra files (such as a go.sum) added.
func pwWriteFixture(t *testing.T, extra map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	files := maps.Clone(pwFixture)
	maps.Copy(files, extra)
	for name, content := range files {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// pwRun runs the modproxy binary and returns its stdout; stderr goes to
// the test log on failure.
func pwRun(t *testing.T, wantFail bool, args ...string) string {
	t.Helper()
	bin := modproxyBin(t) // built before the deadline starts: a cold build takes a while
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(os.Environ(), "GOFLAGS=")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if (err != nil) != wantFail {
		t.Fatalf("modproxy %s: err %v\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), err, out, stderr.String())
	}
	return string(out)
}

// pwSummary runs prewarm with --json and decodes its summary.
func pwSummary(t *testing.T, args ...string) prewarmSummary {
	t.Helper()
	out := pwRun(t, false, append([]string{"prewarm", "--json", "--progress", "none"}, args...)...)
	var s prewarmSummary
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		t.Fatalf("prewarm --json output: %v\n%s", err, out)
	}
	return s
}

// pwStoreKeys lists a store's artifacts as "path@version.kind".
func pwStoreKeys(t *testing.T, path string) []string {
	t.Helper()
	s, err := cache.Open(path, cache.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var keys []string
	if err := s.Walk(func(k cache.Key, _ cache.Meta) error {
		keys = append(keys, k.Path+"@"+k.Version+"."+string(k.Kind))
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return keys
}

// pwBuildOffline downloads, builds and verifies a fresh copy of the fixture
// with a fresh module cache through proxyURL, verifying with db.
func pwBuildOffline(t *testing.T, proxyURL string, db *testsumdb.DB) {
	t.Helper()
	project := pwWriteFixture(t, nil)
	g := newGoEnv(t, proxyURL, db)
	g.run(project, "mod", "download")
	g.run(project, "build", "-o", "app", ".")
	out, err := exec.Command(filepath.Join(project, "app")).Output()
	if err != nil || strings.TrimSpace(string(out)) != "Upper 2 v2.1.0" {
		t.Fatalf("app printed %q, %v", out, err)
	}
	g.run(project, "build", "./...")
	g.run(project, "mod", "verify")
	sum, err := os.ReadFile(filepath.Join(project, "go.sum"))
	if err != nil || !strings.Contains(string(sum), "example.com/dep v1.0.0/go.mod h1:") {
		t.Errorf("go.sum written offline lacks the go.mod-only dependency (%v):\n%s", err, sum)
	}
	// The workspace's second module.
	g.run(filepath.Join(project, "sub"), "build", "./...")
	g.run(filepath.Join(project, "sub"), "mod", "verify")
}

func TestPrewarmOfflineEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test builds the binary and runs the go command")
	}
	up, err := testupstream.New(pwModules...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(up.Close)
	db := testsumdb.New(t, "sum.prewarm.test")
	for _, m := range up.Modules() {
		db.AddModule(m.Path, m.Version, up.GoMod(m.Path, m.Version), up.Zip(m.Path, m.Version))
	}
	sumdbFlag := db.VerifierKey() + " " + db.URL()
	common := []string{"--sumdb", sumdbFlag, "--private=", "--nosumdb="}
	tmp := t.TempDir()

	// The go.sum the go command writes, against the live universe.
	withSum := pwWriteFixture(t, nil)
	online := newGoEnv(t, up.URL(), nil)
	online.env = append(online.env, "GOSUMDB="+sumdbFlag)
	online.run(withSum, "mod", "tidy")
	online.run(filepath.Join(withSum, "sub"), "mod", "tidy")
	gosum, err := os.ReadFile(filepath.Join(withSum, "go.sum"))
	if err != nil {
		t.Fatal(err)
	}

	// db mode, graph walk (no go.sum), from the go.mod.
	storeA := filepath.Join(tmp, "a.db")
	noSum := pwWriteFixture(t, nil)
	s := pwSummary(t, append([]string{"--db", storeA, "--upstream", up.URL(), filepath.Join(noSum, "go.mod")}, common...)...)
	if s.Failed != 0 || s.Modules != 5 || s.Added != 5 || s.Records != 5 {
		// Upper/Case, lib/v2, a, dep v1.2.0 with zips; dep v1.0.0 go.mod only.
		t.Fatalf("graph-walk prewarm: %+v", s)
	}
	keysWalk := pwStoreKeys(t, storeA)

	// server mode, exact resolution from the go.sum, into another store.
	storeB := filepath.Join(tmp, "b.db")
	srv := startModproxy(t, append([]string{"--db", storeB, "--upstream", up.URL()}, common...)...)
	s = pwSummary(t, append([]string{"--server", srv.URL, filepath.Join(withSum, "go.mod")}, common...)...)
	if s.Failed != 0 || s.Modules != 5 || s.Records != 5 {
		t.Fatalf("go.sum prewarm through the server: %+v", s)
	}
	srv.stop(t)
	if keysSum := pwStoreKeys(t, storeB); !slices.Equal(keysSum, keysWalk) {
		t.Errorf("go.sum and graph walk prewarm different sets:\ngo.sum: %v\nwalk:   %v", keysSum, keysWalk)
	}

	// A tampered go.sum line fails with the reason and exit status 1.
	bad := pwWriteFixture(t, map[string]string{"go.sum": strings.Replace(string(gosum),
		"example.com/dep v1.2.0 h1:", "example.com/dep v1.2.0 h1:AAAA", 1)})
	out := pwRun(t, true, append([]string{"prewarm", "--json", "--progress", "none", "--db", filepath.Join(tmp, "bad.db"),
		"--upstream", up.URL(), filepath.Join(bad, "go.mod")}, common...)...)
	if !strings.Contains(out, "go.sum mismatch") || !strings.Contains(out, "example.com/dep") {
		t.Errorf("tampered go.sum: %s", out)
	}

	// The workspace: a rerun finds the app's modules cached and adds tool.
	s = pwSummary(t, append([]string{"--db", storeA, "--upstream", up.URL(), "-j", "4", filepath.Join(noSum, "go.work")}, common...)...)
	if s.Failed != 0 || s.Stored != 5 || s.Added != 1 {
		t.Fatalf("workspace rerun: %+v", s)
	}

	// verify asks the live checksum database about every artifact.
	var vrOnline gate.VerifyReport
	out = pwRun(t, false, append([]string{"verify", "--json", "--db", storeA, "--upstream", up.URL()}, common...)...)
	if err := json.Unmarshal([]byte(out), &vrOnline); err != nil || vrOnline.Checked == 0 || vrOnline.Verified != vrOnline.Checked || vrOnline.Failed() {
		t.Errorf("verify against the live database: %v\n%s", err, out)
	}

	// Everything upstream is gone from here on.
	up.Close()
	db.Close()

	t.Run("serve-offline", func(t *testing.T) {
		mp := startModproxy(t, "--db", storeA, "--offline", "--sumdb", db.VerifierKey(), "--private=", "--nosumdb=")
		pwBuildOffline(t, mp.URL, db)
		if logs := mp.logs.String(); !strings.Contains(logs, "/sumdb/"+db.Name()+"/lookup/example.com/dep@v1.0.0") ||
			!strings.Contains(logs, "/sumdb/"+db.Name()+"/tile/") {
			t.Errorf("the go command did not verify through the offline checksum-database endpoints:\n%s", logs)
		}
		resp, body := mp.get(t, "/example.com/missing/@v/v1.0.0.info")
		if resp.StatusCode != 404 && resp.StatusCode != 410 {
			t.Errorf("missing module offline: %d %s", resp.StatusCode, body)
		}
		resp, body = mp.get(t, "/sumdb/"+db.Name()+"/lookup/example.com/missing@v1.0.0")
		if resp.StatusCode != 404 && resp.StatusCode != 410 {
			t.Errorf("missing checksum record offline: %d %s", resp.StatusCode, body)
		}
	})

	// import authenticates bundles with the test database's key alone.
	trust := []string{"--sumdb", db.VerifierKey(), "--private=", "--nosumdb="}

	t.Run("export-import", func(t *testing.T) {
		bundleFile := filepath.Join(t.TempDir(), "bundle.db")
		pwRun(t, false, "export", "--db", storeA, "--out", bundleFile, noSum)
		if got := pwStoreKeys(t, bundleFile); len(got) != len(pwStoreKeys(t, storeA)) {
			t.Errorf("bundle of the workspace holds %d artifacts, the store %d", len(got), len(pwStoreKeys(t, storeA)))
		}
		// Served as it is, a bundle is refused with the way in.
		cmd := exec.Command(modproxyBin(t), "serve", "--listen", "127.0.0.1:0", "--offline", "--db", bundleFile, "--ebpf=off")
		if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "is a bundle written by modproxy export") ||
			!strings.Contains(string(out), "modproxy import --db STORE") {
			t.Errorf("serve --db BUNDLE: %v\n%s", err, out)
		}
		storeC := filepath.Join(t.TempDir(), "c.db")
		pwRun(t, false, append([]string{"import", "--db", storeC, bundleFile}, trust...)...)
		// verify --offline proves every artifact from the store's
		// authenticated records alone.
		var vr gate.VerifyReport
		out := pwRun(t, false, append([]string{"verify", "--json", "--offline", "--db", storeC}, trust...)...)
		if err := json.Unmarshal([]byte(out), &vr); err != nil || vr.Checked == 0 || vr.Verified != vr.Checked {
			t.Errorf("verify --offline of the imported store: %v\n%s", err, out)
		}
		mp := startModproxy(t, "--db", storeC, "--offline", "--sumdb", db.VerifierKey(), "--private=", "--nosumdb=")
		pwBuildOffline(t, mp.URL, db)
		// A go command's download cache imports too, its records
		// authenticated like a bundle's.
		g := newGoEnv(t, mp.URL, db)
		g.run(pwWriteFixture(t, nil), "mod", "download")
		var modcache string
		for _, e := range g.env {
			if v, ok := strings.CutPrefix(e, "GOMODCACHE="); ok {
				modcache = v
			}
		}
		storeE := filepath.Join(t.TempDir(), "e.db")
		out = pwRun(t, false, append([]string{"import", "--db", storeE, filepath.Join(modcache, "cache", "download")}, trust...)...)
		if !strings.Contains(out, "imported") || strings.Contains(out, " 0 verified") {
			t.Errorf("import of a go command's download cache: %s", out)
		}
		t.Logf("import of $GOMODCACHE/cache/download: %s", out)
		mp.stop(t)

		// A poisoned bundle: one zip replaced by a forged one, with the
		// .ziphash the go command would write for it.
		dir := filepath.Join(t.TempDir(), "poisoned")
		pwRun(t, false, "export", "--db", storeA, "--out", dir, "--format", "dir")
		zipFile := filepath.Join(dir, "example.com", "dep", "@v", "v1.2.0.zip")
		forged, err := testupstream.MakeZip("example.com/dep", "v1.2.0", map[string]string{"dep.go": "package dep\n\nfunc Evil() {}\n"})
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(zipFile, forged, 0o644)
		fh, _ := testsumdb.HashZip(forged)
		os.WriteFile(strings.TrimSuffix(zipFile, ".zip")+".ziphash", []byte(fh), 0o644)
		// Into a fresh store it is refused whole; into storeC, which holds
		// the genuine zip already, nothing is written (artifacts are
		// immutable, and the forged copy is never read as truth).
		for _, target := range []string{filepath.Join(t.TempDir(), "fresh.db"), storeC} {
			var before []string
			if _, err := os.Stat(target); err == nil {
				before = pwStoreKeys(t, target)
			}
			fresh := before == nil
			out := pwRun(t, fresh, append([]string{"import", "--db", target, dir}, trust...)...)
			if fresh && (!strings.Contains(out, "refused") || !strings.Contains(out, "example.com/dep@v1.2.0.zip") || !strings.Contains(out, "checksum mismatch")) ||
				!fresh && !strings.Contains(out, ": 0 artifacts") {
				t.Errorf("poisoned import into %s: %s", target, out)
			}
			t.Logf("poisoned import into %s: %s", target, out)
			if after := pwStoreKeys(t, target); !slices.Equal(after, before) {
				t.Errorf("poisoned import changed %s:\nbefore %v\nafter  %v", target, before, after)
			}
		}
		// Nothing new entered: the store still verifies as before.
		out = pwRun(t, false, append([]string{"verify", "--json", "--offline", "--db", storeC}, trust...)...)
		var vr2 gate.VerifyReport
		counts := func(r gate.VerifyReport) [6]int {
			return [6]int{r.Checked, r.Verified, r.Exempt, r.Unverified, r.Mismatch, r.MissingRecord}
		}
		if err := json.Unmarshal([]byte(out), &vr2); err != nil || counts(vr2) != counts(vr) {
			t.Errorf("verify after the poisoned import: %+v, before %+v", vr2, vr)
		}
		mp = startModproxy(t, "--db", storeC, "--offline", "--sumdb", db.VerifierKey(), "--private=", "--nosumdb=")
		pwBuildOffline(t, mp.URL, db)
	})

	t.Run("export-dir", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "goproxy")
		pwRun(t, false, "export", "--db", storeA, "--out", dir, "--format", "dir")
		pwBuildOffline(t, "file://"+filepath.ToSlash(dir), db)

		// The directory imports back into a fresh store, verified.
		storeD := filepath.Join(t.TempDir(), "d.db")
		out := pwRun(t, false, append([]string{"import", "--json", "--db", storeD, dir}, trust...)...)
		if !strings.Contains(out, `"failed": null`) && !strings.Contains(out, `"failed": []`) {
			t.Errorf("import of the exported directory: %s", out)
		}
		if got, want := pwStoreKeys(t, storeD), pwStoreKeys(t, storeA); !slices.Equal(got, want) {
			t.Errorf("directory round trip: got %v, want %v", got, want)
		}
	})
}
