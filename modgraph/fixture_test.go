package modgraph

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"

	"golang.org/x/mod/module"
	"golang.org/x/mod/semver"
	"golang.org/x/mod/zip"
)

// universe maps "path@version" to the module's go.mod text. Every module gets
// one Go file so that its zip is not empty: "package p", or the text of key
// "path@version#code".
type universe map[string]string

// memSource is an in-memory Source over a universe.
type memSource struct {
	u     universe
	calls chan string // optional: every GoMod call, for assertions
}

func (s memSource) GoMod(ctx context.Context, path, version string) ([]byte, error) {
	if s.calls != nil {
		s.calls <- path + "@" + version
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if m, ok := s.u[path+"@"+version]; ok {
		return []byte(m), nil
	}
	return nil, fmt.Errorf("%s@%s: %w", path, version, fs.ErrNotExist)
}

func (s memSource) Latest(ctx context.Context, path string) (string, error) {
	best := ""
	for k := range s.u {
		p, v, _ := strings.Cut(k, "@")
		if p == path && semver.Prerelease(v) == "" && (best == "" || semver.Compare(v, best) > 0) {
			best = v
		}
	}
	if best == "" {
		return "", fmt.Errorf("%s@latest: %w", path, fs.ErrNotExist)
	}
	return best, nil
}

// writeProxy lays u out as a GOPROXY=file:// directory.
func writeProxy(t testing.TB, u universe, dir string) {
	t.Helper()
	lists := map[string][]string{}
	for k, gomod := range u {
		if strings.HasSuffix(k, "#code") {
			continue
		}
		path, vers, _ := strings.Cut(k, "@")
		esc, err := module.EscapePath(path)
		if err != nil {
			t.Fatal(err)
		}
		vdir := filepath.Join(dir, esc, "@v")
		if err := os.MkdirAll(vdir, 0o777); err != nil {
			t.Fatal(err)
		}
		lists[vdir] = append(lists[vdir], vers)
		info := fmt.Sprintf(`{"Version":%q,"Time":"2024-01-01T00:00:00Z"}`, vers)
		must(t, os.WriteFile(filepath.Join(vdir, vers+".info"), []byte(info), 0o666))
		must(t, os.WriteFile(filepath.Join(vdir, vers+".mod"), []byte(gomod), 0o666))
		src := t.TempDir()
		must(t, os.WriteFile(filepath.Join(src, "go.mod"), []byte(gomod), 0o666))
		code := "package p\n"
		if c, ok := u[path+"@"+vers+"#code"]; ok {
			code = c
		}
		must(t, os.WriteFile(filepath.Join(src, "p.go"), []byte(code), 0o666))
		zf, err := os.Create(filepath.Join(vdir, vers+".zip"))
		must(t, err)
		must(t, zip.CreateFromDir(zf, module.Version{Path: path, Version: vers}, src))
		must(t, zf.Close())
	}
	for vdir, vs := range lists {
		semver.Sort(vs)
		must(t, os.WriteFile(filepath.Join(vdir, "list"), []byte(strings.Join(vs, "\n")+"\n"), 0o666))
	}
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// fixture is the universe of the comparison with the go command:
//
//   - diamond: a and b both require d (v1.0.0 and v1.1.0); a is pruned, so
//     d v1.0.0's go.mod (which requires deep) is never read;
//   - pruning: a (go 1.17) requires e, whose requirement f is pruned out;
//   - pre-1.17: old (go 1.16) is unpruned, so g, h and c v1.0.0 are read
//     transitively, even though g says go 1.18;
//   - go.mod only: c v1.0.0 (required by old) loses to c v1.1.0, so only its
//     go.mod is needed; its requirement i still enters the build list;
//   - /v2: example.com/mod/v2;
//   - replace: rep v1.0.0 => fork v1.0.1 (rep is not in the proxy at all),
//     local => ./local (a directory with a go.mod requiring k);
//   - exclude: b requires x v1.1.0, excluded by the main module, so x v1.0.0
//     stays selected.
var fixture = universe{
	"example.com/a@v1.0.0":      "module example.com/a\n\ngo 1.17\n\nrequire (\n\texample.com/d v1.0.0\n\texample.com/e v1.0.0\n)\n",
	"example.com/b@v1.0.0":      "module example.com/b\n\ngo 1.20\n\nrequire (\n\texample.com/d v1.1.0\n\texample.com/x v1.1.0\n)\n",
	"example.com/d@v1.0.0":      "module example.com/d\n\ngo 1.17\n\nrequire example.com/deep v1.0.0\n",
	"example.com/d@v1.1.0":      "module example.com/d\n\ngo 1.17\n",
	"example.com/deep@v1.0.0":   "module example.com/deep\n\ngo 1.17\n",
	"example.com/e@v1.0.0":      "module example.com/e\n\ngo 1.17\n\nrequire example.com/f v1.0.0\n",
	"example.com/f@v1.0.0":      "module example.com/f\n\ngo 1.17\n",
	"example.com/old@v1.0.0":    "module example.com/old\n\ngo 1.16\n\nrequire (\n\texample.com/c v1.0.0\n\texample.com/g v1.0.0\n)\n",
	"example.com/g@v1.0.0":      "module example.com/g\n\ngo 1.18\n\nrequire example.com/h v1.0.0\n",
	"example.com/h@v1.0.0":      "module example.com/h\n",
	"example.com/c@v1.0.0":      "module example.com/c\n\ngo 1.17\n\nrequire example.com/i v1.0.0\n",
	"example.com/c@v1.1.0":      "module example.com/c\n\ngo 1.17\n",
	"example.com/i@v1.0.0":      "module example.com/i\n\ngo 1.17\n",
	"example.com/mod/v2@v2.0.0": "module example.com/mod/v2\n\ngo 1.19\n\nrequire example.com/x v1.0.0\n",
	"example.com/fork@v1.0.1":   "module example.com/rep\n\ngo 1.20\n\nrequire example.com/j v1.0.0\n",
	"example.com/j@v1.0.0":      "module example.com/j\n\ngo 1.20\n",
	"example.com/k@v1.0.0":      "module example.com/k\n\ngo 1.20\n",
	"example.com/x@v1.0.0":      "module example.com/x\n\ngo 1.17\n",
	"example.com/x@v1.1.0":      "module example.com/x\n\ngo 1.17\n\nrequire example.com/deep v1.0.0\n",
}

const fixtureMain = `module example.com/main

go 1.21

require (
	example.com/a v1.0.0
	example.com/b v1.0.0
	example.com/c v1.1.0
	example.com/local v1.0.0
	example.com/mod/v2 v2.0.0
	example.com/old v1.0.0
	example.com/rep v1.0.0
	example.com/x v1.0.0
)

require example.com/d v1.1.0 // indirect

replace example.com/rep v1.0.0 => example.com/fork v1.0.1

replace example.com/local => ./local

exclude example.com/x v1.1.0
`

// writeMain writes the fixture main module (and its local replacement).
func writeMain(t testing.TB, dir string) {
	t.Helper()
	must(t, os.MkdirAll(filepath.Join(dir, "local"), 0o777))
	must(t, os.WriteFile(filepath.Join(dir, "go.mod"), []byte(fixtureMain), 0o666))
	must(t, os.WriteFile(filepath.Join(dir, "main.go"), []byte("package main\n\nfunc main() {}\n"), 0o666))
	must(t, os.WriteFile(filepath.Join(dir, "local", "go.mod"), []byte("module example.com/local\n\ngo 1.21\n\nrequire example.com/k v1.0.0\n"), 0o666))
}

// artifactSets returns the module versions whose .mod and .zip files are in
// the download cache of gomodcache.
func artifactSets(t testing.TB, gomodcache string) (mods, zips map[string]bool) {
	t.Helper()
	mods, zips = map[string]bool{}, map[string]bool{}
	root := filepath.Join(gomodcache, "cache", "download")
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		ext := filepath.Ext(p)
		if ext != ".mod" && ext != ".zip" {
			return nil
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		escPath, file, ok := strings.Cut(filepath.ToSlash(rel), "/@v/")
		if !ok {
			return nil
		}
		path, err := module.UnescapePath(escPath)
		if err != nil {
			return err
		}
		vers, err := module.UnescapeVersion(strings.TrimSuffix(file, ext))
		if err != nil {
			return err
		}
		if ext == ".mod" {
			mods[path+"@"+vers] = true
		} else {
			zips[path+"@"+vers] = true
		}
		return nil
	})
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatal(err)
	}
	return mods, zips
}

// needSets splits a plan into go.mod-only and zip module versions.
func needSets(p *Plan) (mods, zips map[string]bool) {
	mods, zips = map[string]bool{}, map[string]bool{}
	for _, n := range p.Needs {
		if n.Zip {
			zips[n.Path+"@"+n.Version] = true
		} else {
			mods[n.Path+"@"+n.Version] = true
		}
	}
	return mods, zips
}

func keys(m map[string]bool) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

func diff(a, b map[string]bool) (onlyA, onlyB []string) {
	for k := range a {
		if !b[k] {
			onlyA = append(onlyA, k)
		}
	}
	for k := range b {
		if !a[k] {
			onlyB = append(onlyB, k)
		}
	}
	sort.Strings(onlyA)
	sort.Strings(onlyB)
	return onlyA, onlyB
}

// testEnv is the environment of every go command the tests run: no network,
// no checksum database, no toolchain switch, a fresh module cache.
func testEnv(t testing.TB, proxyDir string) (env []string, gomodcache string) {
	gopath := t.TempDir()
	gomodcache = filepath.Join(gopath, "pkg", "mod")
	proxyURL := "file://" + filepath.ToSlash(proxyDir)
	if !strings.HasPrefix(filepath.ToSlash(proxyDir), "/") {
		proxyURL = "file:///" + filepath.ToSlash(proxyDir)
	}
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "GO") || k == "CGO_ENABLED" {
			continue
		}
		env = append(env, kv)
	}
	gocache := os.Getenv("GOCACHE")
	if gocache == "" {
		gocache = filepath.Join(gopath, "cache")
	}
	env = append(env,
		"GOENV=off",
		"GOPROXY="+proxyURL,
		"GOSUMDB=off",
		"GONOSUMDB=", "GOPRIVATE=", "GONOPROXY=",
		"GOTOOLCHAIN=local",
		"GOFLAGS=-mod=mod",
		"GOWORK=off",
		"GOPATH="+gopath,
		"GOMODCACHE="+gomodcache,
		"GOCACHE="+gocache,
		"CGO_ENABLED=0",
	)
	return env, gomodcache
}

// listModule is the part of 'go list -m -json' output the tests read.
type listModule struct {
	Path, Version string
	Main          bool
	Replace       *listModule
}

func decodeList(t testing.TB, out []byte) []listModule {
	t.Helper()
	var ms []listModule
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for dec.More() {
		var m listModule
		if err := dec.Decode(&m); err != nil {
			t.Fatalf("decoding go list output: %v\n%s", err, out)
		}
		ms = append(ms, m)
	}
	return ms
}

// fileSource is a Source over a GOPROXY=file:// directory that counts calls.
type fileSource struct {
	dir string
	mu  sync.Mutex
	n   map[string]int
}

func (s *fileSource) GoMod(ctx context.Context, path, version string) ([]byte, error) {
	s.mu.Lock()
	if s.n == nil {
		s.n = map[string]int{}
	}
	s.n[path+"@"+version]++
	s.mu.Unlock()
	esc, err := module.EscapePath(path)
	if err != nil {
		return nil, err
	}
	ev, err := module.EscapeVersion(version)
	if err != nil {
		return nil, err
	}
	return os.ReadFile(filepath.Join(s.dir, esc, "@v", ev+".mod"))
}

func (s *fileSource) Latest(ctx context.Context, path string) (string, error) {
	esc, err := module.EscapePath(path)
	if err != nil {
		return "", err
	}
	data, err := os.ReadFile(filepath.Join(s.dir, esc, "@v", "list"))
	if err != nil {
		return "", err
	}
	vs := strings.Fields(string(data))
	semver.Sort(vs)
	if len(vs) == 0 {
		return "", fmt.Errorf("%s: no versions", path)
	}
	return vs[len(vs)-1], nil
}

func (s *fileSource) counts() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]int{}
	for k, v := range s.n {
		out[k] = v
	}
	return out
}
