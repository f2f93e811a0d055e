package main

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/modproxy/modproxy/internal/testsumdb"
	"github.com/modproxy/modproxy/internal/testupstream"
)

// The offline guarantee: after "modproxy prewarm TARGET", with or without
// a go.sum, "modproxy serve --offline --upstream off" serves everything that
// offlineCommands need, each run with a fresh module cache and GOPATH (so
// an empty checksum-database cache), GOFLAGS=-mod=mod and the checksum
// database reached through modproxy. Each fixture reproduces one way a
// go.sum-driven prewarm used to fall short.

// offlineCommands is the command list every fixture runs offline, in
// every directory of the fixture's runDirs.
var offlineCommands = [][]string{
	{"mod", "download"},
	{"mod", "download", "all"},
	{"list", "-m", "all"},
	{"list", "-m", "-json", "all"},
	{"mod", "verify"},
	{"build", "./..."},
	{"vet", "./..."},
	{"test", "-count=1", "-run", "^$", "./..."},
	{"list", "-deps", "-test", "./..."},
	{"mod", "tidy", "-diff"},
}

// offlineModules is the fake upstream of every fixture. The toolchain
// module is added at run time (its script names the local go command).
var offlineModules = []testupstream.Module{
	// testdep: dep (go 1.16, so every go.mod below it is read) has a
	// test importing helper, whose own test imports cmp. go mod tidy loads
	// the tests of packages in "all" (dep's), not the tests of their test
	// dependencies (helper's), so the go.sum the go command writes has cmp
	// only as /go.mod; cmp is in the build list all the same, and go mod
	// download all fetches its zip.
	{Path: "example.com/td/dep", Version: "v1.0.0", Files: map[string]string{
		"go.mod":      "module example.com/td/dep\n\ngo 1.16\n\nrequire example.com/td/helper v1.0.0\n",
		"dep.go":      "package dep\n\nfunc V() int { return 1 }\n",
		"dep_test.go": "package dep\n\nimport (\n\t\"testing\"\n\n\t\"example.com/td/helper\"\n)\n\nfunc TestV(t *testing.T) {\n\tif !helper.Same(V(), 1) {\n\t\tt.Fatal(V())\n\t}\n}\n"}},
	{Path: "example.com/td/helper", Version: "v1.0.0", Files: map[string]string{
		"go.mod":         "module example.com/td/helper\n\ngo 1.16\n\nrequire example.com/td/cmp v0.6.0\n",
		"helper.go":      "package helper\n\nfunc Same(a, b int) bool { return a == b }\n",
		"helper_test.go": "package helper\n\nimport (\n\t\"testing\"\n\n\t\"example.com/td/cmp\"\n)\n\nfunc TestSame(t *testing.T) {\n\tif !cmp.Equal(Same(1, 1), true) {\n\t\tt.Fatal()\n\t}\n}\n"}},
	{Path: "example.com/td/cmp", Version: "v0.6.0", Files: map[string]string{
		"go.mod": "module example.com/td/cmp\n\ngo 1.21\n",
		"cmp.go": "package cmp\n\nfunc Equal(a, b any) bool { return a == b }\n"}},
	// dep2 (go 1.21, pruned) has a test importing cmp2.
	{Path: "example.com/td/dep2", Version: "v1.0.0", Files: map[string]string{
		"go.mod":       "module example.com/td/dep2\n\ngo 1.21\n\nrequire example.com/td/cmp2 v1.0.0\n",
		"dep2.go":      "package dep2\n\nfunc V() int { return 2 }\n",
		"dep2_test.go": "package dep2\n\nimport (\n\t\"testing\"\n\n\t\"example.com/td/cmp2\"\n)\n\nfunc TestV(t *testing.T) {\n\tif !cmp2.Equal(V(), 2) {\n\t\tt.Fatal(V())\n\t}\n}\n"}},
	{Path: "example.com/td/cmp2", Version: "v1.0.0", Files: map[string]string{
		"go.mod":  "module example.com/td/cmp2\n\ngo 1.21\n",
		"cmp2.go": "package cmp2\n\nfunc Equal(a, b any) bool { return a == b }\n"}},

	// pruned (main module at go 1.17): p1 imports p2, p2's tests import
	// p3, which requires p4. The pruned graph does not read p3's go.mod;
	// go mod tidy -compat=1.16 (its default at go 1.17) reads it, and p4's.
	{Path: "example.com/pr/p1", Version: "v1.0.0", Files: map[string]string{
		"go.mod": "module example.com/pr/p1\n\ngo 1.17\n\nrequire example.com/pr/p2 v1.0.0\n",
		"p1.go":  "package p1\n\nimport \"example.com/pr/p2\"\n\nfunc V() int { return p2.V() + 1 }\n"}},
	{Path: "example.com/pr/p2", Version: "v1.0.0", Files: map[string]string{
		"go.mod":     "module example.com/pr/p2\n\ngo 1.17\n\nrequire example.com/pr/p3 v1.0.0\n",
		"p2.go":      "package p2\n\nfunc V() int { return 2 }\n",
		"p2_test.go": "package p2\n\nimport (\n\t\"testing\"\n\n\t\"example.com/pr/p3\"\n)\n\nfunc TestV(t *testing.T) { _ = p3.V }\n"}},
	{Path: "example.com/pr/p3", Version: "v1.0.0", Files: map[string]string{
		"go.mod": "module example.com/pr/p3\n\ngo 1.17\n\nrequire example.com/pr/p4 v1.0.0\n",
		"p3.go":  "package p3\n\nconst V = 3\n"}},
	{Path: "example.com/pr/p4", Version: "v1.0.0", Files: map[string]string{
		"go.mod": "module example.com/pr/p4\n\ngo 1.17\n",
		"p4.go":  "package p4\n\nconst V = 4\n"}},

	// unpruned (main module at go 1.16): u1's tests import u4, and "all"
	// includes tests of dependencies before go 1.17; u2 (go 1.17) requires
	// u3, read because everything below an unpruned module is.
	{Path: "example.com/up/u1", Version: "v1.0.0", Files: map[string]string{
		"go.mod":     "module example.com/up/u1\n\ngo 1.16\n\nrequire (\n\texample.com/up/u2 v1.0.0\n\texample.com/up/u4 v1.0.0\n)\n",
		"u1.go":      "package u1\n\nimport \"example.com/up/u2\"\n\nfunc V() int { return u2.V + 1 }\n",
		"u1_test.go": "package u1\n\nimport (\n\t\"testing\"\n\n\t\"example.com/up/u4\"\n)\n\nfunc TestV(t *testing.T) { _ = u4.V }\n"}},
	{Path: "example.com/up/u2", Version: "v1.0.0", Files: map[string]string{
		"go.mod": "module example.com/up/u2\n\ngo 1.17\n\nrequire example.com/up/u3 v1.0.0\n",
		"u2.go":  "package u2\n\nconst V = 2\n"}},
	{Path: "example.com/up/u3", Version: "v1.0.0", Files: map[string]string{
		"go.mod": "module example.com/up/u3\n\ngo 1.17\n",
		"u3.go":  "package u3\n\nconst V = 3\n"}},
	{Path: "example.com/up/u4", Version: "v1.0.0", Files: map[string]string{
		"go.mod": "module example.com/up/u4\n\ngo 1.16\n",
		"u4.go":  "package u4\n\nconst V = 4\n"}},

	// replace and exclude: orig is replaced by a fork (which declares the
	// original path); e1 requires x v1.1.0, which the main module
	// excludes, so x v1.0.0 stays selected.
	{Path: "example.com/rx/orig", Version: "v1.0.0", Files: map[string]string{
		"go.mod":  "module example.com/rx/orig\n\ngo 1.21\n",
		"orig.go": "package orig\n\nconst Who = \"orig\"\n"}},
	{Path: "example.com/rx/fork", Version: "v1.1.0", Files: map[string]string{
		"go.mod":  "module example.com/rx/orig\n\ngo 1.21\n",
		"orig.go": "package orig\n\nconst Who = \"fork\"\n"}},
	{Path: "example.com/rx/x", Version: "v1.0.0", Files: map[string]string{
		"go.mod": "module example.com/rx/x\n\ngo 1.21\n", "x.go": "package x\n\nconst V = 10\n"}},
	{Path: "example.com/rx/x", Version: "v1.1.0", Files: map[string]string{
		"go.mod": "module example.com/rx/x\n\ngo 1.21\n", "x.go": "package x\n\nconst V = 11\n"}},
	{Path: "example.com/rx/e1", Version: "v1.0.0", Files: map[string]string{
		"go.mod": "module example.com/rx/e1\n\ngo 1.21\n\nrequire example.com/rx/x v1.1.0\n",
		"e1.go":  "package e1\n\nconst V = 1\n"}},

	// workspace: app requires the published lib v1.0.0 and dep v1.0.0;
	// in the workspace lib is the local module, which requires dep v1.1.0
	// and tool. go mod tidy in app ignores go.work and needs lib v1.0.0.
	// The published lib also requires old, which no package imports: it
	// is in the workspace's build list, and in no go.sum line.
	{Path: "example.com/ws/lib", Version: "v1.0.0", Files: map[string]string{
		"go.mod": "module example.com/ws/lib\n\ngo 1.21\n\nrequire (\n\texample.com/ws/dep v1.0.0\n\texample.com/ws/old v1.0.0\n)\n",
		"lib.go": "package lib\n\nimport \"example.com/ws/dep\"\n\nconst L = \"published\" + dep.D\n"}},
	{Path: "example.com/ws/dep", Version: "v1.0.0", Files: map[string]string{
		"go.mod": "module example.com/ws/dep\n\ngo 1.21\n", "dep.go": "package dep\n\nconst D = \"1.0\"\n"}},
	{Path: "example.com/ws/dep", Version: "v1.1.0", Files: map[string]string{
		"go.mod": "module example.com/ws/dep\n\ngo 1.21\n", "dep.go": "package dep\n\nconst D = \"1.1\"\n"}},
	{Path: "example.com/ws/old", Version: "v1.0.0", Files: map[string]string{
		"go.mod": "module example.com/ws/old\n\ngo 1.21\n", "old.go": "package old\n\nconst O = \"old\"\n"}},
	{Path: "example.com/ws/tool", Version: "v1.0.0", Files: map[string]string{
		"go.mod": "module example.com/ws/tool\n\ngo 1.21\n", "tool.go": "package tool\n\nconst T = \"tool\"\n"}},

	// module@version target: go install of a command whose graph has a
	// go 1.16 module (dep) below it.
	{Path: "example.com/mv/hello", Version: "v1.0.0", Files: map[string]string{
		"go.mod":  "module example.com/mv/hello\n\ngo 1.21\n\nrequire example.com/td/dep v1.0.0\n",
		"main.go": "package main\n\nimport (\n\t\"fmt\"\n\n\t\"example.com/td/dep\"\n)\n\nfunc main() { fmt.Println(\"hello\", dep.V()) }\n"}},

	// toolchain: the project's toolchain line names go1.99.0.
	{Path: "example.com/tc/t1", Version: "v1.0.0", Files: map[string]string{
		"go.mod": "module example.com/tc/t1\n\ngo 1.21\n", "t1.go": "package t1\n\nconst V = 1\n"}},
}

// fakeToolchainName is newer than any local Go.
const fakeToolchainName = "go1.99.0"

// offlineFixture is one project and how the test prewarms and checks it.
type offlineFixture struct {
	name  string
	files map[string]string // before the online 'go mod tidy'
	// modDirs are the module directories tidied online (default ".");
	// runDirs where the command list runs offline (default ".").
	modDirs, runDirs []string
	workspace        bool // a go.work at the root: workspace mode
	toolchain        bool // GOTOOLCHAIN=auto, switching to the fake toolchain
	server           bool // prewarm through a running modproxy (--server)
	// target is the prewarm target in project directory dir.
	target func(dir string, withSum bool) string
	// check asserts, on the tidied project, that the fixture reproduces
	// its gap.
	check func(t *testing.T, dir string)
}

func mainGo(imports ...string) string {
	var b strings.Builder
	b.WriteString("package main\n\nimport (\n\t\"fmt\"\n\n")
	for _, im := range imports {
		fmt.Fprintf(&b, "\t%q\n", im)
	}
	b.WriteString(")\n\nfunc main() {\n\tfmt.Println(")
	for i, im := range imports {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(im[strings.LastIndexByte(im, '/')+1:] + ".V")
	}
	b.WriteString(")\n}\n")
	return b.String()
}

func fileIn(name string) func(dir string, withSum bool) string {
	return func(dir string, _ bool) string { return filepath.Join(dir, name) }
}

func mustContain(t *testing.T, dir, file string, want ...string) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, file))
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range want {
		neg := strings.HasPrefix(w, "!")
		if strings.Contains(string(data), strings.TrimPrefix(w, "!")) == neg {
			t.Fatalf("fixture does not reproduce its case: %s, want %q:\n%s", file, w, data)
		}
	}
}

var offlineFixtures = []offlineFixture{{
	name: "testdep",
	files: map[string]string{
		"go.mod":       "module example.com/fx/testdep\n\ngo 1.21\n\nrequire (\n\texample.com/td/dep v1.0.0\n\texample.com/td/dep2 v1.0.0\n)\n",
		"main.go":      strings.ReplaceAll(mainGo("example.com/td/dep", "example.com/td/dep2"), ".V", ".V()"),
		"main_test.go": "package main\n\nimport \"testing\"\n\nfunc TestMain(t *testing.T) {}\n",
	},
	target: func(dir string, _ bool) string { return dir },
	check: func(t *testing.T, dir string) {
		mustContain(t, dir, "go.sum", "example.com/td/cmp v0.6.0/go.mod h1:", "!example.com/td/cmp v0.6.0 h1:", "example.com/td/helper v1.0.0 h1:")
	},
}, {
	name: "pruned-go1.17",
	files: map[string]string{
		"go.mod":  "module example.com/fx/pruned\n\ngo 1.17\n\nrequire example.com/pr/p1 v1.0.0\n",
		"main.go": strings.ReplaceAll(mainGo("example.com/pr/p1"), ".V", ".V()"),
	},
	server: true,
	target: fileIn("go.mod"),
	check: func(t *testing.T, dir string) {
		mustContain(t, dir, "go.mod", "example.com/pr/p2 v1.0.0 // indirect")
		// p4 is only in the go 1.16 graph that tidy -compat=1.16 reads.
		mustContain(t, dir, "go.sum", "example.com/pr/p4 v1.0.0/go.mod h1:", "!example.com/pr/p4 v1.0.0 h1:")
	},
}, {
	name: "unpruned-go1.16",
	files: map[string]string{
		"go.mod":  "module example.com/fx/unpruned\n\ngo 1.16\n\nrequire example.com/up/u1 v1.0.0\n",
		"main.go": strings.ReplaceAll(mainGo("example.com/up/u1"), ".V", ".V()"),
	},
	target: func(dir string, withSum bool) string {
		if withSum {
			return filepath.Join(dir, "go.sum")
		}
		return filepath.Join(dir, "go.mod")
	},
	check: func(t *testing.T, dir string) {
		mustContain(t, dir, "go.sum", "example.com/up/u4 v1.0.0 h1:", "example.com/up/u3 v1.0.0/go.mod h1:")
	},
}, {
	name: "replace-exclude",
	files: map[string]string{
		"go.mod": "module example.com/fx/rx\n\ngo 1.21\n\nrequire (\n\texample.com/rx/e1 v1.0.0\n\texample.com/rx/local v0.0.0\n" +
			"\texample.com/rx/orig v1.0.0\n\texample.com/rx/x v1.0.0\n)\n\n" +
			"replace example.com/rx/orig v1.0.0 => example.com/rx/fork v1.1.0\n\nreplace example.com/rx/local => ./local\n\n" +
			"exclude example.com/rx/x v1.1.0\n",
		"main.go": "package main\n\nimport (\n\t\"fmt\"\n\n\t\"example.com/rx/e1\"\n\t\"example.com/rx/local\"\n\t\"example.com/rx/orig\"\n\t\"example.com/rx/x\"\n)\n\n" +
			"func main() { fmt.Println(e1.V, local.V, orig.Who, x.V) }\n",
		"local/go.mod":   "module example.com/rx/local\n\ngo 1.21\n",
		"local/local.go": "package local\n\nconst V = \"local\"\n",
	},
	target: func(dir string, _ bool) string { return dir },
	check: func(t *testing.T, dir string) {
		mustContain(t, dir, "go.mod", "exclude example.com/rx/x v1.1.0", "=> example.com/rx/fork v1.1.0", "=> ./local")
		mustContain(t, dir, "go.sum", "example.com/rx/fork v1.1.0 h1:", "!example.com/rx/orig v1.0.0 h1:", "example.com/rx/x v1.0.0 h1:")
	},
}, {
	name: "workspace",
	files: map[string]string{
		"go.work":     "go 1.21\n\nuse (\n\t./app\n\t./lib\n)\n",
		"app/go.mod":  "module example.com/ws/app\n\ngo 1.21\n\nrequire (\n\texample.com/ws/dep v1.0.0\n\texample.com/ws/lib v1.0.0\n)\n",
		"app/main.go": "package main\n\nimport (\n\t\"fmt\"\n\n\t\"example.com/ws/dep\"\n\t\"example.com/ws/lib\"\n)\n\nfunc main() { fmt.Println(lib.L, dep.D) }\n",
		"lib/go.mod":  "module example.com/ws/lib\n\ngo 1.21\n\nrequire (\n\texample.com/ws/dep v1.1.0\n\texample.com/ws/tool v1.0.0\n)\n",
		"lib/lib.go":  "package lib\n\nimport (\n\t\"example.com/ws/dep\"\n\t\"example.com/ws/tool\"\n)\n\nconst L = \"local\" + dep.D + tool.T\n",
	},
	modDirs:   []string{"app", "lib"},
	runDirs:   []string{"app", "lib"},
	workspace: true,
	server:    true,
	target: func(dir string, withSum bool) string {
		if withSum {
			return filepath.Join(dir, "go.work")
		}
		return dir
	},
	check: func(t *testing.T, dir string) {
		mustContain(t, dir, "app/go.sum", "example.com/ws/lib v1.0.0 h1:", "!example.com/ws/tool", "!example.com/ws/old")
		mustContain(t, dir, "lib/go.sum", "!example.com/ws/old")
	},
}, {
	name: "toolchain",
	files: map[string]string{
		"go.mod":  "module example.com/fx/tc\n\ngo 1.21\n\ntoolchain " + fakeToolchainName + "\n\nrequire example.com/tc/t1 v1.0.0\n",
		"main.go": mainGo("example.com/tc/t1"),
	},
	toolchain: true,
	target:    fileIn("go.mod"),
	check: func(t *testing.T, dir string) {
		mustContain(t, dir, "go.mod", "toolchain "+fakeToolchainName)
	},
}}

// offlineResults collects pass/fail per fixture, go.sum variant and command.
type offlineResults struct {
	mu  sync.Mutex
	res map[string]string // "fixture|variant|dir: command" -> "pass" or "FAIL"
}

func (r *offlineResults) set(key, v string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.res[key] = v
}

// table renders the results of offlineFixtures.
func (r *offlineResults) table() string { return r.tableOf(offlineFixtures) }

// tableOf renders the results as a Markdown table per fixture.
func (r *offlineResults) tableOf(fixtures []offlineFixture) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var b strings.Builder
	for _, fx := range fixtures {
		columns := []string{"with go.sum", "without go.sum", noSumProject}
		heads := []string{"prewarm with go.sum", "prewarm without go.sum", "prewarm and project without go.sum"}
		if !slices.ContainsFunc(slices.Collect(maps.Keys(r.res)), func(k string) bool { return strings.HasPrefix(k, fx.name+"|"+noSumProject+"|") }) {
			columns, heads = columns[:2], heads[:2]
		}
		fmt.Fprintf(&b, "\n%s\n\n| command | %s |\n|%s\n", fx.name, strings.Join(heads, " | "), strings.Repeat(" --- |", len(heads)+1))
		dirs := fx.runDirs
		if dirs == nil {
			dirs = []string{"."}
		}
		for _, d := range dirs {
			for _, c := range offlineCommands {
				name := commandName(d, c)
				row := []string{name}
				for _, col := range columns {
					row = append(row, orDash(r.res[fx.name+"|"+col+"|"+name]))
				}
				fmt.Fprintf(&b, "| %s |\n", strings.Join(row, " | "))
			}
		}
	}
	return b.String()
}

// noSumProject names the results of the commands run in a copy of the
// project without its go.sum files, after a prewarm without them: every
// hash then comes from the checksum database through modproxy.
const noSumProject = "project without go.sum"

// commandName names command args run in directory dir of a fixture.
func commandName(dir string, args []string) string {
	name := "go " + strings.Join(args, " ")
	if dir != "." {
		name = dir + ": " + name
	}
	return name
}

func orDash(s string) string {
	if s == "" {
		return "not run"
	}
	return s
}

// goSem bounds the go commands the test runs at once on a shared machine.
var goSem = make(chan struct{}, max(2, runtime.NumCPU()))

// offlineGo runs the go command in dir with a fresh module cache and GOPATH.
type offlineGo struct {
	proxyURL  string
	db        *testsumdb.DB // nil: GOSUMDB=sumdb set directly
	gosumdb   string
	gocache   string
	workspace bool
	toolchain bool
}

func (g offlineGo) env(home string) []string {
	flags := "-mod=mod -modcacherw"
	work := "GOWORK=off"
	if g.workspace {
		// -mod=mod is refused in workspace mode; go mod tidy ignores go.work.
		flags, work = "-modcacherw", "GOWORK="
	}
	tc := "GOTOOLCHAIN=local"
	if g.toolchain {
		tc = "GOTOOLCHAIN=auto"
	}
	return []string{
		"PATH=" + os.Getenv("PATH"),
		"HOME=" + home,
		"GOPATH=" + filepath.Join(home, "gopath"),
		"GOMODCACHE=" + filepath.Join(home, "modcache"),
		"GOCACHE=" + g.gocache,
		"GOENV=off", tc, work, "GOFLAGS=" + flags, "CGO_ENABLED=0",
		"GOPROXY=" + g.proxyURL, "GOSUMDB=" + g.gosumdb,
		"GONOSUMDB=", "GOPRIVATE=", "GONOPROXY=", "GOINSECURE=", "GONOSUMCHECK=", "GOVCS=",
	}
}

func (g offlineGo) run(ctx context.Context, home, dir string, args ...string) (string, error) {
	// Telemetry off: otherwise the go command leaves a child process
	// writing counters under HOME after it exits, racing the test's
	// removal of its temporary directories.
	tdir := filepath.Join(home, ".config", "go", "telemetry")
	if err := os.MkdirAll(tdir, 0o755); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(tdir, "mode"), []byte("off"), 0o644); err != nil {
		return "", err
	}
	goSem <- struct{}{}
	defer func() { <-goSem }()
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir, cmd.Env = dir, g.env(home)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// copyTree copies the project in src to a new directory, leaving out the
// go.sum and go.work.sum files unless withSum.
func copyTree(t *testing.T, src string, withSum bool) string {
	t.Helper()
	dst := t.TempDir()
	err := filepath.WalkDir(src, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		if !withSum && (d.Name() == "go.sum" || d.Name() == "go.work.sum") {
			return nil
		}
		rel, _ := filepath.Rel(src, p)
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		out := filepath.Join(dst, rel)
		if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
			return err
		}
		return os.WriteFile(out, data, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
	return dst
}

func writeTree(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
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

func TestPrewarmOfflineGoCommands(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test builds the binary and runs the go command")
	}
	realGo, err := exec.LookPath("go")
	if err == nil {
		realGo, err = filepath.Abs(realGo)
	}
	if err != nil {
		t.Fatal(err)
	}
	mods := slices.Clone(offlineModules)
	mods = append(mods, testupstream.FakeToolchain(fakeToolchainName, runtime.GOOS, runtime.GOARCH, realGo))
	up, err := testupstream.New(mods...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(up.Close)
	db := testsumdb.New(t, "sum.offline.test")
	for _, m := range up.Modules() {
		db.AddModule(m.Path, m.Version, up.GoMod(m.Path, m.Version), up.Zip(m.Path, m.Version))
	}
	modproxyBin(t)
	gocache := goCache(t)
	common := []string{"--sumdb", db.GOSUMDB(), "--private=", "--nosumdb="}
	results := &offlineResults{res: map[string]string{}}

	t.Run("fixtures", func(t *testing.T) {
		for _, fx := range offlineFixtures {
			t.Run(fx.name, func(t *testing.T) {
				t.Parallel()
				runOfflineFixture(t, fx, up, db, gocache, common, results)
			})
		}
	})
	t.Run("module@version", func(t *testing.T) {
		// go install module@version, offline, after prewarm module@version.
		store := filepath.Join(t.TempDir(), "store.db")
		pwRun(t, false, append([]string{"prewarm", "--progress", "none", "--db", store, "--upstream", up.URL(), "example.com/mv/hello@v1.0.0"}, common...)...)
		mp := startModproxy(t, "--db", store, "--offline", "--upstream", "off", "--sumdb", db.VerifierKey(), "--private=", "--nosumdb=")
		g := offlineGo{proxyURL: mp.URL, gosumdb: db.VerifierKey(), gocache: gocache}
		home := t.TempDir()
		out, err := g.run(context.Background(), home, t.TempDir(), "install", "example.com/mv/hello@v1.0.0")
		if err != nil {
			t.Fatalf("offline go install example.com/mv/hello@v1.0.0: %v\n%s\n%s", err, out, mp.logs)
		}
		got, err := exec.Command(filepath.Join(home, "gopath", "bin", "hello")).Output()
		if err != nil || strings.TrimSpace(string(got)) != "hello 1" {
			t.Fatalf("installed command printed %q, %v", got, err)
		}
	})
	t.Logf("offline go commands after prewarm (fresh module cache and GOPATH each):%s", results.table())
	if out := os.Getenv("MODPROXY_E2E_TABLE"); out != "" {
		if err := os.WriteFile(out, []byte(results.table()), 0o644); err != nil {
			t.Error(err)
		}
	}
}

func runOfflineFixture(t *testing.T, fx offlineFixture, up *testupstream.Server, db *testsumdb.DB, gocache string, common []string, results *offlineResults) {
	ctx := context.Background()
	online := offlineGo{proxyURL: up.URL(), gosumdb: db.GOSUMDB(), gocache: gocache}
	// The project as checked in: tidied online, go.sum written by the go
	// command.
	project := writeTree(t, fx.files)
	home := t.TempDir()
	modDirs := fx.modDirs
	if modDirs == nil {
		modDirs = []string{"."}
	}
	for _, d := range modDirs {
		if out, err := online.run(ctx, home, filepath.Join(project, d), "mod", "tidy"); err != nil {
			t.Fatalf("online go mod tidy in %s: %v\n%s", d, err, out)
		}
	}
	fx.check(t, project)

	var (
		mu   sync.Mutex
		sets = map[bool][]string{}
	)
	t.Run("variants", func(t *testing.T) {
		for _, withSum := range []bool{true, false} {
			variant := "without go.sum"
			if withSum {
				variant = "with go.sum"
			}
			t.Run(strings.ReplaceAll(variant, " ", "-"), func(t *testing.T) {
				t.Parallel()
				keys := runOfflineVariant(t, fx, withSum, variant, project, up, db, gocache, common, results)
				mu.Lock()
				sets[withSum] = keys
				mu.Unlock()
			})
		}
	})
	if !t.Failed() && !slices.Equal(sets[true], sets[false]) {
		t.Errorf("prewarm with and without go.sum stored different sets:\nwith:    %v\nwithout: %v", sets[true], sets[false])
	}
}

// runOfflineVariant prewarms a fresh store from the project (with or without
// its go.sum files), serves it offline and runs the command list; it returns
// the store's artifacts.
func runOfflineVariant(t *testing.T, fx offlineFixture, withSum bool, variant, project string, up *testupstream.Server, db *testsumdb.DB, gocache string, common []string, results *offlineResults) []string {
	src := copyTree(t, project, withSum)
	store := filepath.Join(t.TempDir(), "store.db")
	target := fx.target(src, withSum)
	args := []string{"prewarm", "--json", "--progress", "none"}
	if fx.server {
		srv := startModproxy(t, append([]string{"--db", store, "--upstream", up.URL()}, common...)...)
		pwRun(t, false, append(append(args, "--server", srv.URL, target), common...)...)
		srv.stop(t)
	} else {
		if fx.name == "testdep" && withSum {
			t.Run("dry-run", func(t *testing.T) {
				checkDryRun(t, filepath.Join(t.TempDir(), "dry.db"), up, common, target)
			})
		}
		pwRun(t, false, append(append(args, "--db", store, "--upstream", up.URL(), target), common...)...)
	}
	keys := pwStoreKeys(t, store)
	slices.Sort(keys)

	mp := startModproxy(t, "--db", store, "--offline", "--upstream", "off", "--sumdb", db.VerifierKey(), "--private=", "--nosumdb=")
	g := offlineGo{proxyURL: mp.URL, gosumdb: db.VerifierKey(), gocache: gocache, workspace: fx.workspace, toolchain: fx.toolchain}
	runDirs := fx.runDirs
	if runDirs == nil {
		runDirs = []string{"."}
	}
	// The commands run in the project as checked in, with its go.sum: the
	// variant is what prewarm was given. After a prewarm without go.sum
	// they also run in a copy without go.sum files.
	projectSums := []bool{true}
	if !withSum {
		projectSums = append(projectSums, false)
	}
	t.Run("commands", func(t *testing.T) {
		for _, projectSum := range projectSums {
			column := variant
			if !projectSum {
				column = noSumProject
			}
			for _, d := range runDirs {
				for _, c := range offlineCommands {
					name := commandName(d, c)
					sub := name
					if !projectSum {
						sub = "no_go.sum/" + name
					}
					t.Run(sub, func(t *testing.T) {
						t.Parallel()
						key := fx.name + "|" + column + "|" + name
						results.set(key, "FAIL")
						if err := runOffline(t, g, fx, project, projectSum, d, c); err != nil {
							t.Fatalf("offline %s (%s): %v", name, column, err)
						}
						results.set(key, "pass")
					})
				}
			}
		}
	})
	if t.Failed() {
		t.Logf("offline modproxy log:\n%s", mp.logs)
	}
	return keys
}

// runOffline runs one command with a fresh module cache and GOPATH in a
// fresh copy of the project (without its go.sum files unless projectSum).
// Without go.sum, "go mod tidy -diff" is preceded by "go mod tidy", which
// must write the go.sum the project has.
func runOffline(t *testing.T, g offlineGo, fx offlineFixture, project string, projectSum bool, dir string, args []string) error {
	proj := copyTree(t, project, projectSum)
	home := t.TempDir()
	ctx := context.Background()
	if !projectSum && slices.Equal(args, []string{"mod", "tidy", "-diff"}) {
		if out, err := g.run(ctx, home, filepath.Join(proj, dir), "mod", "tidy"); err != nil {
			return fmt.Errorf("go mod tidy: %v\n%s", err, out)
		}
		got, _ := os.ReadFile(filepath.Join(proj, dir, "go.sum"))
		want, _ := os.ReadFile(filepath.Join(project, dir, "go.sum"))
		if string(got) != string(want) {
			return fmt.Errorf("offline go mod tidy wrote a different go.sum:\n%s\nwant:\n%s", got, want)
		}
	}
	out, err := g.run(ctx, home, filepath.Join(proj, dir), args...)
	if err != nil {
		return fmt.Errorf("%v\n%s", err, out)
	}
	// In the workspace both used modules are main modules (no version).
	if fx.workspace && slices.Equal(args, []string{"list", "-m", "all"}) &&
		!(slices.Contains(strings.Fields(out), "example.com/ws/app") && slices.Contains(strings.Split(out, "\n"), "example.com/ws/lib")) {
		return fmt.Errorf("not in workspace mode:\n%s", out)
	}
	if fx.toolchain {
		tc := filepath.Join(home, "modcache", "golang.org", "toolchain@v0.0.1-"+fakeToolchainName+"."+runtime.GOOS+"-"+runtime.GOARCH, "bin", "go")
		if _, err := os.Stat(tc); err != nil {
			return fmt.Errorf("the go command did not switch to the prewarmed toolchain: %v", err)
		}
	}
	return nil
}

// checkDryRun checks that --dry-run lists the test-only dependency's zip,
// marks go.sum hashes, and stores no zip.
func checkDryRun(t *testing.T, store string, up *testupstream.Server, common []string, target string) {
	t.Helper()
	out := pwRun(t, false, append([]string{"prewarm", "--dry-run", "--json", "--db", store, "--upstream", up.URL(), target}, common...)...)
	var l dryRunList
	if err := json.Unmarshal([]byte(out), &l); err != nil {
		t.Fatalf("dry-run output: %v\n%s", err, out)
	}
	got := map[string]dryRunEntry{}
	for _, e := range l.Modules {
		got[e.Module+"@"+e.Version] = e
	}
	if e := got["example.com/td/cmp@v0.6.0"]; !slices.Equal(e.Files, []string{"info", "mod", "zip"}) || !e.GoSum {
		t.Errorf("dry run: test-only dependency listed as %+v, want info, mod, zip with a go.sum hash", e)
	}
	// Five modules in the build list, three files each; only go.mod files
	// that the graph walk read are stored.
	if len(l.Modules) != 5 || l.Files != 15 || l.Stored == nil || *l.Stored == 0 || *l.Stored >= l.Files {
		t.Errorf("dry run: %d modules, %d files, %v stored; want 5, 15, some go.mod files", len(l.Modules), l.Files, l.Stored)
	}
	for _, k := range pwStoreKeys(t, store) {
		if strings.HasSuffix(k, ".zip") || strings.HasSuffix(k, ".info") {
			t.Errorf("dry run stored %s", k)
		}
	}
	// Human-readable form.
	text := pwRun(t, false, append([]string{"prewarm", "--dry-run", "--db", store, "--upstream", up.URL(), target}, common...)...)
	if !strings.Contains(text, "example.com/td/cmp@v0.6.0 info,mod,zip") || !strings.Contains(text, "to fetch") {
		t.Errorf("dry run listing:\n%s", text)
	}
}

// TestPrewarmKilledMidwayResumes kills "prewarm --db" with SIGKILL while it
// fetches from a slow upstream: the store opens afterwards, holds only
// whole verified artifacts (modproxy verify), and a rerun completes the
// set without fetching again what was stored, after which the project
// builds offline.
func TestPrewarmKilledMidwayResumes(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test builds the binary and runs the go command")
	}
	var mods []testupstream.Module
	var req strings.Builder
	for i := range 30 {
		p := fmt.Sprintf("example.com/kill/m%02d", i)
		mods = append(mods, testupstream.Module{Path: p, Version: "v1.0.0", Files: map[string]string{
			"go.mod": "module " + p + "\n\ngo 1.21\n", "m.go": fmt.Sprintf("package m%02d\n\nconst V = %d\n", i, i)}})
		fmt.Fprintf(&req, "\t%s v1.0.0\n", p)
	}
	up, err := testupstream.New(mods...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(up.Close)
	db := testsumdb.New(t, "sum.kill.test")
	for _, m := range up.Modules() {
		db.AddModule(m.Path, m.Version, up.GoMod(m.Path, m.Version), up.Zip(m.Path, m.Version))
	}
	project := writeTree(t, map[string]string{"go.mod": "module example.com/kill/app\n\ngo 1.21\n\nrequire (\n" + req.String() + ")\n"})
	store := filepath.Join(t.TempDir(), "store.db")
	args := []string{"prewarm", "--progress", "plain", "--progress-interval", "50ms", "-j", "2", "--db", store, "--upstream", up.URL(),
		"--sumdb", db.GOSUMDB(), "--private=", "--nosumdb=", project}

	// The kill lands midway whatever the machine's load: the first six zips
	// are served, every later one is held until the killed client goes away,
	// so the prewarm can get past 4 of 30 modules and never to the end.
	var zipsServed atomic.Int32
	up.SetFaults(testupstream.Fault{Match: func(p string) bool {
		return strings.HasSuffix(p, ".zip") && zipsServed.Add(1) > 6
	}, Delay: time.Hour})
	cmd := exec.Command(modproxyBin(t), args...)
	cmd.Env = append(os.Environ(), "GOFLAGS=")
	stderr := &syncBuffer{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(2 * time.Minute) // a hang guard
	for !regexp.MustCompile(`prewarm: ([4-9]|[1-9][0-9])/`).MatchString(stderr.String()) {
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("no progress before the kill:\n%s", stderr)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	before := pwStoreKeys(t, store)
	zips := 0
	for _, k := range before {
		if strings.HasSuffix(k, ".zip") {
			zips++
		}
	}
	if zips == 0 || zips == len(mods) {
		t.Fatalf("the kill did not land midway: %d of %d zips stored", zips, len(mods))
	}
	// verify exits 1 on any damaged or unverifiable artifact.
	pwRun(t, false, "verify", "--db", store)

	up.SetFaults()
	up.ResetCounts()
	pwRun(t, false, args...)
	if n := up.Count(".zip"); n != len(mods)-zips {
		t.Errorf("rerun fetched %d zips, want the %d missing ones", n, len(mods)-zips)
	}
	up.Close()
	mp := startModproxy(t, "--db", store, "--offline", "--upstream", "off", "--sumdb", db.VerifierKey(), "--private=", "--nosumdb=")
	g := offlineGo{proxyURL: mp.URL, gosumdb: db.VerifierKey(), gocache: goCache(t)}
	if out, err := g.run(context.Background(), t.TempDir(), copyTree(t, project, true), "mod", "download", "all"); err != nil {
		t.Fatalf("offline go mod download all after the resumed prewarm: %v\n%s", err, out)
	}
}

// TestPrewarmOneUnreadableGoMod: one go.mod of the graph is refused by the
// upstream. Prewarm reports that module, with the reason, exits 1, and
// prewarms everything else (one bad thing affects only that thing); the
// dry run says the same.
func TestPrewarmOneUnreadableGoMod(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test builds the binary")
	}
	mods := []testupstream.Module{
		{Path: "example.com/one/a", Version: "v1.0.0", Files: map[string]string{"go.mod": "module example.com/one/a\n\ngo 1.16\n\nrequire example.com/one/c v1.0.0\n", "a.go": "package a\n"}},
		{Path: "example.com/one/bad", Version: "v1.0.0", Files: map[string]string{"go.mod": "module example.com/one/bad\n\ngo 1.16\n\nrequire example.com/one/d v1.0.0\n", "b.go": "package bad\n"}},
		{Path: "example.com/one/c", Version: "v1.0.0", Files: map[string]string{"go.mod": "module example.com/one/c\n\ngo 1.16\n", "c.go": "package c\n"}},
		{Path: "example.com/one/d", Version: "v1.0.0", Files: map[string]string{"go.mod": "module example.com/one/d\n\ngo 1.16\n", "d.go": "package d\n"}},
	}
	up, err := testupstream.New(mods...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(up.Close)
	up.SetFaults(testupstream.Fault{Match: func(p string) bool { return p == "/example.com/one/bad/@v/v1.0.0.mod" }, Status: 403})
	project := writeTree(t, map[string]string{"go.mod": "module example.com/one/app\n\ngo 1.16\n\nrequire (\n\texample.com/one/a v1.0.0\n\texample.com/one/bad v1.0.0\n)\n"})
	store := filepath.Join(t.TempDir(), "store.db")
	common := []string{"--json", "--progress", "none", "--db", store, "--upstream", up.URL(), "--sumdb", "off", "--private=", "--nosumdb=", project}

	out := pwRun(t, true, append([]string{"prewarm", "--dry-run"}, common...)...)
	var l dryRunList
	if err := json.Unmarshal([]byte(out), &l); err != nil {
		t.Fatalf("dry run: %v\n%s", err, out)
	}
	if len(l.Failures) != 1 || l.Failures[0].Module != "example.com/one/bad" || len(l.Modules) != 3 {
		t.Errorf("dry run: %d modules, failures %+v", len(l.Modules), l.Failures)
	}

	out = pwRun(t, true, append([]string{"prewarm"}, common...)...)
	var s prewarmSummary
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		t.Fatalf("prewarm: %v\n%s", err, out)
	}
	if s.Failed != 1 || s.Added != 2 || len(s.Failures) != 1 || s.Failures[0].Module != "example.com/one/bad" ||
		!strings.Contains(s.Failures[0].Error, "go.mod unreadable") || !strings.Contains(s.Failures[0].Error, "403") {
		t.Errorf("summary: %+v", s)
	}
	keys := pwStoreKeys(t, store)
	for _, want := range []string{"example.com/one/a@v1.0.0.zip", "example.com/one/c@v1.0.0.zip"} {
		if !slices.Contains(keys, want) {
			t.Errorf("store lacks %s: %v", want, keys)
		}
	}
	if slices.Contains(keys, "example.com/one/d@v1.0.0.mod") {
		t.Errorf("a module only the unreadable one requires was fetched: %v", keys)
	}
}
