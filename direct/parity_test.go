package direct

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/dirhash"

	"github.com/modproxy/modproxy/internal/testgit"
)

const host = testgit.Host

// fixture is the test git server with the repositories the parity cases
// read.
type fixture struct {
	srv     *testgit.Server
	hashes  map[string]string // names of interesting commits
	cases   []string          // module@query, as the go command takes them
	latest  []string          // modules whose @latest the go command resolves from Repo.Latest
	listing []string          // modules whose version list is compared
}

func newFixture(t *testing.T) *fixture {
	s := testgit.New(t)
	fx := &fixture{srv: s, hashes: map[string]string{}}
	imp := func(prefix, repo, subdir string) {
		s.AddGoImport(testgit.GoImport{Prefix: host + "/" + prefix, VCS: "git", Repo: s.RepoURL("https", repo), SubDir: subdir})
	}

	// basic: v1.0.0, v1.1.0 (retracting v1.0.0), v2 in a major
	// subdirectory, a module in a subdirectory with prefixed tags, a
	// nested module and vendor/ files the zip rules drop, an untagged
	// commit on main and a branch.
	b := s.NewRepo("basic")
	b.Commit("one", map[string]string{
		"go.mod":              "module " + host + "/basic\n\ngo 1.21\n",
		"basic.go":            "package basic\n\nconst V = 1\n",
		"LICENSE":             "BSD\n",
		"vendor/modules.txt":  "# vendored\n",
		"vendor/x.org/y/y.go": "package y\n",
		"nested/go.mod":       "module " + host + "/basic/nested\n",
		"nested/n.go":         "package nested\n",
		"sub/go.mod":          "module " + host + "/basic/sub\n\ngo 1.21\n",
		"sub/sub.go":          "package sub\n",
		"testdata/x.txt":      "data\n",
	})
	b.Tag("v1.0.0", "")
	b.Tag("sub/v1.0.0", "")
	fx.hashes["basic1"] = b.Git("rev-parse", "HEAD")
	b.Commit("two", map[string]string{
		"go.mod":      "module " + host + "/basic\n\ngo 1.21\n\nretract v1.0.0 // broken\n",
		"basic.go":    "package basic\n\nconst V = 2\n",
		"v2/go.mod":   "module " + host + "/basic/v2\n\ngo 1.21\n",
		"v2/basic.go": "package basic\n\nconst V = 20\n",
	})
	b.Tag("v1.1.0", "release v1.1.0")
	b.Tag("v2.0.0", "")
	b.Git("branch", "dev")
	b.Commit("three", map[string]string{"basic.go": "package basic\n\nconst V = 3\n"})
	fx.hashes["basic3"] = b.Git("rev-parse", "HEAD")
	b.Git("checkout", "-q", "dev")
	b.Commit("dev work", map[string]string{"dev.go": "package basic\n\nconst Dev = true\n"})
	b.Git("checkout", "-q", "main")
	b.Push()
	imp("basic", "basic", "")

	// majorbranch: v1 on main, v2 on a major branch.
	m := s.NewRepo("majorbranch")
	m.Commit("v1", map[string]string{"go.mod": "module " + host + "/majorbranch\n\ngo 1.21\n", "m.go": "package m\n"})
	m.Tag("v1.0.0", "")
	m.Git("checkout", "-q", "-b", "v2")
	m.Commit("v2", map[string]string{"go.mod": "module " + host + "/majorbranch/v2\n\ngo 1.21\n", "m.go": "package m\n\nconst Two = 2\n"})
	m.Tag("v2.0.0", "")
	m.Commit("v2 more", map[string]string{"more.go": "package m\n"})
	m.Git("checkout", "-q", "main")
	m.Push()
	imp("majorbranch", "majorbranch", "")

	// incompat: no go.mod; v3.0.0 is +incompatible.
	in := s.NewRepo("incompat")
	in.Commit("one", map[string]string{"a.go": "package incompat\n"})
	in.Tag("v1.0.0", "")
	in.Commit("three", map[string]string{"a.go": "package incompat\n\nconst V = 3\n"})
	in.Tag("v3.0.0", "")
	in.Push()
	imp("incompat", "incompat", "")

	// legacy: a pre-module repository.
	l := s.NewRepo("legacy")
	l.Commit("old", map[string]string{"l.go": "package legacy\n", "Godeps/Godeps.json": "{}\n"})
	l.Tag("v0.1.0", "")
	l.Commit("newer", map[string]string{"l.go": "package legacy\n\nconst X = 1\n"})
	l.Push()
	imp("legacy", "legacy", "")

	// monorepo: a module in a repository subdirectory, found through the
	// 4-field go-import form, with prefixed tags and the root LICENSE.
	mr := s.NewRepo("monorepo")
	mr.Commit("tools", map[string]string{
		"LICENSE":      "MIT\n",
		"README":       "monorepo\n",
		"tools/go.mod": "module " + host + "/tools\n\ngo 1.21\n",
		"tools/t.go":   "package tools\n",
	})
	mr.Tag("tools/v1.0.0", "")
	mr.Commit("tools 2", map[string]string{"tools/t.go": "package tools\n\nconst T = 2\n"})
	mr.Push()
	imp("tools", "monorepo", "tools")

	// notags: @latest is the pseudo-version of HEAD.
	nt := s.NewRepo("notags")
	nt.Commit("only", map[string]string{"go.mod": "module " + host + "/notags\n", "n.go": "package notags\n"})
	nt.Push()
	imp("notags", "notags", "")

	fx.cases = []string{
		host + "/basic@v1.0.0",
		host + "/basic@v1.1.0",
		host + "/basic@main",
		host + "/basic@dev",
		host + "/basic@" + fx.hashes["basic1"][:12],
		host + "/basic@" + fx.hashes["basic3"],
		host + "/basic/v2@v2.0.0",
		host + "/basic/sub@v1.0.0",
		host + "/majorbranch@v1.0.0",
		host + "/majorbranch/v2@v2.0.0",
		host + "/majorbranch/v2@" + m.Git("rev-parse", "v2"),
		host + "/incompat@v1.0.0",
		host + "/incompat@v3.0.0+incompatible",
		host + "/legacy@v0.1.0",
		host + "/legacy@main",
		host + "/tools@v1.0.0",
		host + "/tools@main",
	}
	fx.latest = []string{host + "/notags"}
	fx.listing = []string{host + "/basic", host + "/basic/v2", host + "/basic/sub", host + "/majorbranch", host + "/majorbranch/v2", host + "/incompat", host + "/legacy", host + "/tools", host + "/notags"}
	return fx
}

// goEnv is a go command environment with a fresh module cache that
// fetches straight from the test git server.
func (fx *fixture) goEnv(t *testing.T) []string {
	home := t.TempDir()
	env := []string{
		"PATH=" + os.Getenv("PATH"), "HOME=" + home,
		"GOPATH=" + filepath.Join(home, "gopath"), "GOMODCACHE=" + filepath.Join(home, "modcache"),
		"GOCACHE=" + filepath.Join(home, "cache"), "GOENV=off", "GOTOOLCHAIN=local", "GOWORK=off",
		"GOFLAGS=-modcacherw", "GOPROXY=direct", "GOSUMDB=off", "GONOSUMDB=", "GOPRIVATE=", "GONOPROXY=",
		"GOINSECURE=", "GOVCS=", "GIT_CONFIG_GLOBAL=/dev/null", "GIT_CONFIG_NOSYSTEM=1",
	}
	return append(env, fx.srv.Env()...)
}

// goDownload is one object of "go mod download -json".
type goDownload struct {
	Path, Version, Error string
	Info, GoMod, Zip     string
	Sum, GoModSum        string
	Origin               *Origin
}

func runGo(t *testing.T, env []string, args ...string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Env = env
	cmd.Dir = t.TempDir()
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil && len(out) == 0 {
		t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return out
}

func goDownloads(t *testing.T, env []string, targets ...string) map[string]goDownload {
	out := runGo(t, env, append([]string{"mod", "download", "-json"}, targets...)...)
	res := map[string]goDownload{}
	dec := json.NewDecoder(bytes.NewReader(out))
	for i := 0; dec.More(); i++ {
		var d goDownload
		if err := dec.Decode(&d); err != nil {
			t.Fatalf("decode go mod download output: %v\n%s", err, out)
		}
		res[targets[i]] = d
	}
	return res
}

func newTestFetcher(t *testing.T, fx *fixture, mod func(*Config)) *Fetcher {
	t.Helper()
	for _, kv := range fx.srv.Env() {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v) // for git processes
	}
	t.Setenv("GIT_CONFIG_GLOBAL", "/dev/null")
	cfg := Config{Dir: t.TempDir(), Client: fx.srv.Client(), RefsTTL: -1, TempDir: t.TempDir(), Netrc: filepath.Join(t.TempDir(), "none")}
	if mod != nil {
		mod(&cfg)
	}
	f, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func readAll(t *testing.T, f *Fetcher, path, kind, version string) ([]byte, error) {
	t.Helper()
	rc, _, err := f.Open(context.Background(), path, kind, version)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	return io.ReadAll(rc)
}

// ours resolves target as modproxy's direct upstream answers it.
func ours(t *testing.T, f *Fetcher, target string) goDownload {
	path, query, _ := strings.Cut(target, "@")
	d := goDownload{Path: path}
	infoData, err := readAll(t, f, path, KindInfo, query)
	if err != nil {
		d.Error = err.Error()
		return d
	}
	var info RevInfo
	if err := json.Unmarshal(infoData, &info); err != nil {
		t.Fatalf("%s: .info %s: %v", target, infoData, err)
	}
	d.Version, d.Origin = info.Version, info.Origin
	gomod, err := readAll(t, f, path, KindMod, info.Version)
	if err != nil {
		d.Error = err.Error()
		return d
	}
	d.GoModSum, err = dirhash.Hash1([]string{"go.mod"}, func(string) (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(gomod)), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	zipData, err := readAll(t, f, path, KindZip, info.Version)
	if err != nil {
		d.Error = err.Error()
		return d
	}
	zf := filepath.Join(t.TempDir(), "m.zip")
	if err := os.WriteFile(zf, zipData, 0o600); err != nil {
		t.Fatal(err)
	}
	if d.Sum, err = dirhash.HashZip(zf, dirhash.Hash1); err != nil {
		t.Fatalf("%s: zip: %v", target, err)
	}
	return d
}

// TestParityWithGoCommand compares, for every case, the version, Origin
// and h1: hashes of go.mod and zip that the direct fetcher produces with
// what the real go command produces with GOPROXY=direct against the same
// repositories.
func TestParityWithGoCommand(t *testing.T) {
	fx := newFixture(t)
	env := fx.goEnv(t)
	var shared []string
	want := map[string]goDownload{}
	for _, c := range fx.cases {
		if _, q, _ := strings.Cut(c, "@"); len(q) >= 12 && allHex(q) {
			// The go command's Origin.Ref for a commit query depends on
			// whether its cache already holds the commit: compare with a
			// fresh cache, as a proxy's first fetch is.
			maps.Copy(want, goDownloads(t, fx.goEnv(t), c))
			continue
		}
		shared = append(shared, c)
	}
	maps.Copy(want, goDownloads(t, env, shared...))
	f := newTestFetcher(t, fx, nil)
	for _, target := range fx.cases {
		t.Run(strings.TrimPrefix(target, host+"/"), func(t *testing.T) {
			w := want[target]
			if w.Error != "" {
				t.Fatalf("go command failed on %s: %s", target, w.Error)
			}
			got := ours(t, f, target)
			if got.Error != "" {
				t.Fatalf("direct: %s", got.Error)
			}
			if got.Version != w.Version || got.Sum != w.Sum || got.GoModSum != w.GoModSum {
				t.Errorf("got %s %s %s\nwant %s %s %s", got.Version, got.Sum, got.GoModSum, w.Version, w.Sum, w.GoModSum)
			}
			if g, w := jsonString(got.Origin), jsonString(w.Origin); g != w {
				t.Errorf("Origin:\n got %s\nwant %s", g, w)
			}
		})
	}
	t.Run("errors", func(t *testing.T) {
		// What the go command cannot resolve, direct answers "not found"
		// (the go command's notExist errors), never a version.
		bad := []string{host + "/basic@v9.9.9", host + "/basic/v3@v3.0.0", host + "/basic@nosuchbranch",
			host + "/legacy/v2@v2.0.0", host + "/tools@v1.0.0+incompatible", host + "/basic@v2.0.0"}
		got := goDownloads(t, env, bad...)
		for _, target := range bad {
			if got[target].Error == "" {
				t.Errorf("go command resolved %s to %s", target, got[target].Version)
			}
			path, q, _ := strings.Cut(target, "@")
			if err := openErr(t, f, path, KindInfo, q); !IsNotExist(err) {
				t.Errorf("%s: %v, want not found", target, err)
			}
		}
	})
	t.Run("latest", func(t *testing.T) {
		for _, p := range fx.latest {
			w := goDownloads(t, env, p+"@latest")[p+"@latest"]
			data, err := readAll(t, f, p, KindLatest, "")
			if err != nil {
				t.Fatal(err)
			}
			var info RevInfo
			json.Unmarshal(data, &info)
			if info.Version != w.Version {
				t.Errorf("%s@latest: got %s, want %s", p, info.Version, w.Version)
			}
		}
	})
	t.Run("list", func(t *testing.T) {
		for _, p := range fx.listing {
			var w struct{ Versions []string }
			json.Unmarshal(runGo(t, env, "list", "-m", "-versions", "-retracted", "-json", p), &w)
			data, err := readAll(t, f, p, KindList, "")
			if err != nil {
				t.Fatal(err)
			}
			if got, want := strings.Fields(string(data)), w.Versions; strings.Join(got, " ") != strings.Join(want, " ") {
				t.Errorf("%s list: got %q, want %q", p, got, want)
			}
		}
	})
}

func jsonString(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}
