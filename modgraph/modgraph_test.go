package modgraph

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// gomod renders a go.mod: gomod("example.com/a", "1.17", "example.com/b v1.0.0").
// An empty go version omits the go line.
func gomod(path, gover string, reqs ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "module %s\n", path)
	if gover != "" {
		fmt.Fprintf(&b, "\ngo %s\n", gover)
	}
	for _, r := range reqs {
		fmt.Fprintf(&b, "\nrequire %s\n", r)
	}
	return b.String()
}

// fmtNeeds renders needs compactly: "path@version zip", "path@version mod",
// with " zh=…"/" mh=…" when hashes are known.
func fmtNeeds(needs []Need) []string {
	var out []string
	for _, n := range needs {
		s := n.String()
		if n.ZipHash != "" {
			s += " zh=" + n.ZipHash
		}
		if n.ModHash != "" {
			s += " mh=" + n.ModHash
		}
		out = append(out, s)
	}
	return out
}

func writeFiles(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for name, text := range files {
		p := filepath.Join(dir, filepath.FromSlash(name))
		must(t, os.MkdirAll(filepath.Dir(p), 0o777))
		must(t, os.WriteFile(p, []byte(text), 0o666))
	}
}

// small is the universe of the table tests.
var small = universe{
	"example.com/a@v1.0.0":              gomod("example.com/a", "1.17", "example.com/b v1.0.0"),
	"example.com/a@v1.1.0":              gomod("example.com/a", "1.17", "example.com/z v1.0.0"),
	"example.com/old@v1.0.0":            gomod("example.com/old", "1.16", "example.com/b v1.0.0"),
	"example.com/nogo@v1.0.0":           gomod("example.com/nogo", "", "example.com/b v1.0.0"),
	"example.com/b@v1.0.0":              gomod("example.com/b", "1.17", "example.com/c v1.0.0"),
	"example.com/c@v1.0.0":              gomod("example.com/c", "1.17"),
	"example.com/z@v1.0.0":              gomod("example.com/z", "1.17"),
	"example.com/up@v1.0.0":             gomod("example.com/up", "1.17", "example.com/a v1.1.0"),
	"example.com/x@v1.0.0":              gomod("example.com/x", "1.17"),
	"example.com/x@v1.1.0":              gomod("example.com/x", "1.17", "example.com/z v1.0.0"),
	"example.com/x@v1.2.0":              gomod("example.com/x", "1.17"),
	"example.com/wantsx@v1.0.0":         gomod("example.com/wantsx", "1.17", "example.com/x v1.1.0"),
	"example.com/r@v1.0.0":              gomod("example.com/r", "1.17", "example.com/c v1.0.0"),
	"example.com/r@v2.0.0+incompatible": gomod("example.com/r", "", "example.com/z v1.0.0"),
	"example.com/fork@v1.5.0":           gomod("example.com/r", "1.17", "example.com/z v1.0.0"),
	"example.com/m/v2@v2.1.0":           gomod("example.com/m/v2", "1.20", "example.com/c v1.0.0"),
	"example.com/depex@v1.0.0":          gomod("example.com/depex", "1.16", "example.com/x v1.1.0") + "\nexclude example.com/x v1.1.0\nreplace example.com/c => example.com/fork v1.5.0\n",
	"example.com/cyc1@v1.0.0":           gomod("example.com/cyc1", "1.16", "example.com/cyc2 v1.0.0"),
	"example.com/cyc2@v1.0.0":           gomod("example.com/cyc2", "1.16", "example.com/cyc1 v1.0.0"),
	"example.com/liar@v1.0.0":           gomod("example.com/other", "1.17"),
	"example.com/needsnew@v1.0.0":       gomod("example.com/needsnew", "1.30"),
	"example.com/tool@v1.0.0":           gomod("example.com/tool", "1.21", "example.com/a v1.0.0", "example.com/old v1.0.0") + "\nreplace example.com/a => example.com/fork v1.5.0\n",
	"example.com/tool@v1.1.0-pre":       gomod("example.com/tool", "1.21"),
	// A published version of a workspace module: the go command reads its
	// go.mod when another workspace module requires it.
	"example.com/two@v1.0.0": gomod("example.com/two", "1.21", "example.com/c v1.0.0"),
}

func TestWalk(t *testing.T) {
	tests := []struct {
		name    string
		files   map[string]string // the main module; "go.mod" at least
		opts    Options
		want    []string // fmtNeeds of the plan
		wantErr string
		noFetch []string // module versions whose go.mod must not be fetched
	}{{
		name:  "pruned dependency: its requirements count, their go.mod files are not read",
		files: map[string]string{"go.mod": gomod("example.com/main", "1.21", "example.com/a v1.0.0")},
		// a is read; b enters the build list from a's go.mod; c (b's requirement) is pruned out.
		want:    []string{"example.com/a@v1.0.0 zip", "example.com/b@v1.0.0 zip"},
		noFetch: []string{"example.com/b@v1.0.0"},
	}, {
		name:  "pre-1.17 dependency: the whole graph below it is read",
		files: map[string]string{"go.mod": gomod("example.com/main", "1.21", "example.com/old v1.0.0")},
		want:  []string{"example.com/b@v1.0.0 zip", "example.com/c@v1.0.0 zip", "example.com/old@v1.0.0 zip"},
	}, {
		name:  "dependency without go line is unpruned",
		files: map[string]string{"go.mod": gomod("example.com/main", "1.21", "example.com/nogo v1.0.0")},
		want:  []string{"example.com/b@v1.0.0 zip", "example.com/c@v1.0.0 zip", "example.com/nogo@v1.0.0 zip"},
	}, {
		name:  "pre-1.17 main module reads everything",
		files: map[string]string{"go.mod": gomod("example.com/main", "1.16", "example.com/a v1.0.0")},
		want:  []string{"example.com/a@v1.0.0 zip", "example.com/b@v1.0.0 zip", "example.com/c@v1.0.0 zip"},
	}, {
		name: "root raised to its selected version is read again; the lower go.mod stays needed",
		files: map[string]string{"go.mod": gomod("example.com/main", "1.21",
			"example.com/a v1.0.0", "example.com/up v1.0.0")},
		// up requires a v1.1.0 > a v1.0.0: the go command raises the root and
		// reads a v1.1.0, whose requirement z enters the build list; a v1.0.0's
		// requirement b drops out.
		want: []string{"example.com/a@v1.0.0 mod", "example.com/a@v1.1.0 zip", "example.com/up@v1.0.0 zip", "example.com/z@v1.0.0 zip"},
	}, {
		name: "version replacement: the replaced version is not fetched",
		files: map[string]string{"go.mod": gomod("example.com/main", "1.21", "example.com/r v1.0.0") +
			"replace example.com/r v1.0.0 => example.com/fork v1.5.0\n"},
		want:    []string{"example.com/fork@v1.5.0 zip", "example.com/z@v1.0.0 zip"},
		noFetch: []string{"example.com/r@v1.0.0"},
	}, {
		name: "path-wide replacement by another version of the same module",
		files: map[string]string{"go.mod": gomod("example.com/main", "1.21", "example.com/r v1.0.0") +
			"replace example.com/r => example.com/r v2.0.0+incompatible\n"},
		want: []string{"example.com/r@v2.0.0+incompatible zip", "example.com/z@v1.0.0 zip"},
	}, {
		name: "directory replacement is read from disk relative to the go.mod",
		files: map[string]string{
			"go.mod":       gomod("example.com/main", "1.21", "example.com/loc v1.0.0") + "replace example.com/loc => ./loc\n",
			"loc/go.mod":   gomod("example.com/loc", "1.21", "example.com/a v1.0.0"),
			"loc/other.go": "package loc\n",
		},
		// loc is a pruned root: a enters the build list, b does not.
		want:    []string{"example.com/a@v1.0.0 zip"},
		noFetch: []string{"example.com/loc@v1.0.0", "example.com/b@v1.0.0"},
	}, {
		name: "directory replacement without go.mod",
		files: map[string]string{
			"go.mod": gomod("example.com/main", "1.21", "example.com/loc v1.0.0") + "replace example.com/loc => ./nowhere\n",
		},
		wantErr: "example.com/loc@v1.0.0 replaced by directory ./nowhere",
	}, {
		name: "exclude drops requirements on the excluded version everywhere",
		files: map[string]string{"go.mod": gomod("example.com/main", "1.16",
			"example.com/wantsx v1.0.0", "example.com/x v1.0.0") + "exclude example.com/x v1.1.0\n"},
		want:    []string{"example.com/wantsx@v1.0.0 zip", "example.com/x@v1.0.0 zip"},
		noFetch: []string{"example.com/x@v1.1.0", "example.com/z@v1.0.0"},
	}, {
		name: "excluded root is dropped",
		files: map[string]string{"go.mod": gomod("example.com/main", "1.21",
			"example.com/x v1.1.0", "example.com/c v1.0.0") + "exclude example.com/x v1.1.0\n"},
		want: []string{"example.com/c@v1.0.0 zip"},
	}, {
		name:  "exclude and replace of dependencies are ignored",
		files: map[string]string{"go.mod": gomod("example.com/main", "1.21", "example.com/depex v1.0.0", "example.com/c v1.0.0")},
		// depex (go 1.16) is unpruned: x v1.1.0 and its requirement z are read.
		want: []string{"example.com/c@v1.0.0 zip", "example.com/depex@v1.0.0 zip", "example.com/x@v1.1.0 zip", "example.com/z@v1.0.0 zip"},
	}, {
		name:  "major version suffix",
		files: map[string]string{"go.mod": gomod("example.com/main", "1.21", "example.com/m/v2 v2.1.0")},
		want:  []string{"example.com/c@v1.0.0 zip", "example.com/m/v2@v2.1.0 zip"},
	}, {
		name:  "requirement cycle below unpruned modules terminates",
		files: map[string]string{"go.mod": gomod("example.com/main", "1.16", "example.com/cyc1 v1.0.0")},
		want:  []string{"example.com/cyc1@v1.0.0 zip", "example.com/cyc2@v1.0.0 zip"},
	}, {
		name:  "Options.Exclude ignores a module",
		files: map[string]string{"go.mod": gomod("example.com/main", "1.21", "example.com/old v1.0.0")},
		opts:  Options{Exclude: func(p string) bool { return p == "example.com/b" }},
		// b is neither fetched nor walked, so c never appears.
		want:    []string{"example.com/old@v1.0.0 zip"},
		noFetch: []string{"example.com/b@v1.0.0"},
	}, {
		name:    "missing go.mod names the module",
		files:   map[string]string{"go.mod": gomod("example.com/main", "1.21", "example.com/nope v1.0.0")},
		wantErr: "go.mod of example.com/nope@v1.0.0",
	}, {
		name:    "go.mod declaring another path",
		files:   map[string]string{"go.mod": gomod("example.com/main", "1.21", "example.com/liar v1.0.0")},
		wantErr: "module declares its path as example.com/other but was required as example.com/liar",
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			writeFiles(t, dir, tt.files)
			calls := make(chan string, 1000)
			opts := tt.opts
			opts.Source = memSource{u: small, calls: calls}
			opts.GoVersion = "1.26.8"
			plan, err := Resolve(context.Background(), []string{dir}, opts)
			close(calls)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := fmtNeeds(plan.Needs); !slices.Equal(got, tt.want) {
				t.Errorf("needs:\n got %q\nwant %q", got, tt.want)
			}
			fetched := map[string]bool{}
			for c := range calls {
				if fetched[c] {
					t.Errorf("go.mod of %s fetched twice", c)
				}
				fetched[c] = true
			}
			for _, m := range tt.noFetch {
				if fetched[m] {
					t.Errorf("go.mod of %s fetched, want not", m)
				}
			}
		})
	}
}

const (
	hA  = "h1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
	hAm = "h1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAmod="
	hB  = "h1:BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB="
	hBm = "h1:BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBmod="
	hC  = "h1:CCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCC="
)

func TestTargets(t *testing.T) {
	tests := []struct {
		name    string
		files   map[string]string
		targets []string // relative to the test directory unless they contain '@'
		source  Source   // default: memSource over small
		want    []string
		wantErr string
		// wantNote, when set, must be part of a note.
		wantNote string
	}{{
		name: "go.sum alone",
		files: map[string]string{"deps.sum": "example.com/a v1.0.0 " + hA + "\n" +
			"example.com/a v1.0.0/go.mod " + hAm + "\n\n" +
			"example.com/b v1.0.0/go.mod " + hBm + "\n" +
			"example.com/b v1.0.0/go.mod h2:ignored\n"},
		targets: []string{"deps.sum"},
		want:    []string{"example.com/a@v1.0.0 zip zh=" + hA + " mh=" + hAm, "example.com/b@v1.0.0 mod mh=" + hBm},
	}, {
		name: "directory with go.mod and go.sum: the graph decides, go.sum only adds hashes",
		files: map[string]string{
			"go.mod": gomod("example.com/main", "1.21", "example.com/a v1.0.0", "example.com/x v1.1.0",
				"example.com/r v1.0.0") +
				"replace example.com/r => example.com/fork v1.5.0\nexclude example.com/x v1.1.0\n",
			// b appears only as /go.mod, as the go command writes it when
			// no package of b is imported: its zip is still in the build
			// list. stale@v0.1.0 is outside the graph: not fetched.
			"go.sum": "example.com/a v1.0.0 " + hA + "\nexample.com/a v1.0.0/go.mod " + hAm + "\nexample.com/b v1.0.0/go.mod " + hBm +
				"\nexample.com/stale v0.1.0 " + hC + "\n",
		},
		targets: []string{"."},
		want: []string{
			"example.com/a@v1.0.0 zip zh=" + hA + " mh=" + hAm,
			"example.com/b@v1.0.0 zip mh=" + hBm,
			"example.com/fork@v1.5.0 zip",
			"example.com/z@v1.0.0 zip",
		},
		wantNote: "1 module versions in go.sum are outside the module graph",
	}, {
		name: "go.sum file target stands for the go.mod beside it",
		files: map[string]string{
			"m/go.mod": gomod("example.com/main", "1.21", "example.com/a v1.0.0"),
			"m/go.sum": "example.com/a v1.0.0 " + hA + "\n",
		},
		targets: []string{"m/go.sum"},
		want:    []string{"example.com/a@v1.0.0 zip zh=" + hA, "example.com/b@v1.0.0 zip"},
	}, {
		name: "same set without the go.sum",
		files: map[string]string{
			"m/go.mod": gomod("example.com/main", "1.21", "example.com/a v1.0.0"),
		},
		targets: []string{"m/go.mod"},
		want:    []string{"example.com/a@v1.0.0 zip", "example.com/b@v1.0.0 zip"},
	}, {
		name: "go 1.17 main module: the unpruned graph go mod tidy -compat=1.16 reads",
		files: map[string]string{
			"go.mod": gomod("example.com/main", "1.17", "example.com/up v1.0.0"),
		},
		targets: []string{"go.mod"},
		// Pruned, up's requirement a v1.1.0 is not read; go 1.16 reads it
		// and its requirement z.
		want:     []string{"example.com/a@v1.1.0 zip", "example.com/up@v1.0.0 zip", "example.com/z@v1.0.0 zip"},
		wantNote: "unpruned graph that go mod tidy",
	}, {
		name: "go 1.17 main module whose go 1.16 graph cannot be read: noted, the build's graph still resolves",
		files: map[string]string{
			"go.mod": gomod("example.com/main", "1.17", "example.com/up v1.0.0"),
		},
		targets: []string{"go.mod"},
		source: memSource{u: universe{"example.com/up@v1.0.0": small["example.com/up@v1.0.0"],
			"example.com/a@v1.1.0": small["example.com/a@v1.1.0"]}}, // z@v1.0.0's go.mod is missing
		want:     []string{"example.com/a@v1.1.0 zip", "example.com/up@v1.0.0 zip"},
		wantNote: "go mod tidy will need the network",
	}, {
		name: "go 1.18 main module: pruned only",
		files: map[string]string{
			"go.mod": gomod("example.com/main", "1.18", "example.com/up v1.0.0"),
		},
		targets: []string{"go.mod"},
		want:    []string{"example.com/a@v1.1.0 zip", "example.com/up@v1.0.0 zip"},
	}, {
		name: "directory with go.work: workspace graph plus each module's own graph, go.sum files add hashes",
		files: map[string]string{
			"go.work":     "go 1.21\n\nuse (\n\t./one\n\t./two\n)\n",
			"go.work.sum": "example.com/c v1.0.0 " + hC + "\n",
			"go.mod":      gomod("example.com/ignored", "1.21", "example.com/ignored v1.0.0"),
			"one/go.mod":  gomod("example.com/one", "1.21", "example.com/a v1.0.0", "example.com/two v1.0.0"),
			"one/go.sum":  "example.com/a v1.0.0 " + hA + "\n",
			"two/go.mod":  gomod("example.com/two", "1.21", "example.com/b v1.0.0"),
		},
		targets: []string{"."},
		// In module mode one needs the published two v1.0.0's zip, which
		// the workspace replaces by ./two.
		want: []string{"example.com/a@v1.0.0 zip zh=" + hA, "example.com/b@v1.0.0 zip", "example.com/c@v1.0.0 zip zh=" + hC,
			"example.com/two@v1.0.0 zip"},
	}, {
		name: "go.work.sum target stands for the go.work",
		files: map[string]string{
			"go.work":     "go 1.21\n\nuse ./two\n",
			"go.work.sum": "example.com/c v1.0.0 " + hC + "\n",
			"two/go.mod":  gomod("example.com/two", "1.21", "example.com/b v1.0.0"),
		},
		targets: []string{"go.work.sum"},
		want:    []string{"example.com/b@v1.0.0 zip", "example.com/c@v1.0.0 zip zh=" + hC},
	}, {
		name: "workspace module whose own graph cannot be read: noted, the workspace still resolves",
		files: map[string]string{
			"go.work":    "go 1.21\n\nuse ./one\n\nreplace example.com/nope v1.0.0 => example.com/c v1.0.0\n",
			"one/go.mod": gomod("example.com/one", "1.21", "example.com/nope v1.0.0"),
		},
		targets:  []string{"go.work"},
		want:     []string{"example.com/c@v1.0.0 zip"},
		wantNote: "its graph cannot be read",
	}, {
		name:    "module@version: the go install graph without the module's replacements",
		targets: []string{"example.com/tool@v1.0.0"},
		want: []string{"example.com/a@v1.0.0 zip", "example.com/b@v1.0.0 zip", "example.com/c@v1.0.0 zip",
			"example.com/old@v1.0.0 zip", "example.com/tool@v1.0.0 zip"},
	}, {
		name:    "module@latest",
		targets: []string{"example.com/x@latest"},
		want:    []string{"example.com/x@v1.2.0 zip"},
	}, {
		name: "several targets merge, zip wins",
		files: map[string]string{
			"a.sum": "example.com/c v1.0.0/go.mod " + hBm + "\n",
			"b.sum": "example.com/c v1.0.0 " + hC + "\n",
		},
		targets: []string{"a.sum", "b.sum", "example.com/c@v1.0.0"},
		want:    []string{"example.com/c@v1.0.0 zip zh=" + hC + " mh=" + hBm},
	}, {
		name:    "malformed go.sum line",
		files:   map[string]string{"go.sum": "example.com/a v1.0.0 " + hA + "\nexample.com/a v1.0.0\n"},
		targets: []string{"go.sum"},
		wantErr: "go.sum:2: malformed go.sum line",
	}, {
		name:    "go.sum with invalid version",
		files:   map[string]string{"go.sum": "\nexample.com/a 1.0 " + hA + "\n"},
		targets: []string{"go.sum"},
		wantErr: `go.sum:2: example.com/a: invalid version "1.0"`,
	}, {
		name: "malformed go.sum beside a go.mod fails, naming it, as the go command does",
		files: map[string]string{
			"go.mod": gomod("example.com/main", "1.21", "example.com/a v1.0.0"),
			"go.sum": "example.com/a v1.0.0 " + hA + "\n<html>not a go.sum</html>\n",
		},
		targets: []string{"."},
		wantErr: `go.sum:2: malformed module path "<html>not"`,
	}, {
		name: "workspace go.sum files that disagree: both named",
		files: map[string]string{
			"go.work":     "go 1.21\n\nuse ./one\n",
			"go.work.sum": "example.com/a v1.0.0 " + hB + "\n",
			"one/go.mod":  gomod("example.com/one", "1.21", "example.com/a v1.0.0"),
			"one/go.sum":  "example.com/a v1.0.0 " + hA + "\n",
		},
		targets: []string{"go.work"},
		wantErr: "go.work.sum and " + hA + " in ",
	}, {
		name: "a go.sum cannot add a module the graph does not need",
		files: map[string]string{
			"go.mod": gomod("example.com/main", "1.21", "example.com/c v1.0.0"),
			"go.sum": "example.com/c v1.0.0 " + hC + "\nevil.example/x v9.9.9 " + hA + "\nevil.example/x v9.9.9/go.mod " + hAm + "\n",
		},
		targets:  []string{"."},
		want:     []string{"example.com/c@v1.0.0 zip zh=" + hC},
		wantNote: "1 module versions in go.sum are outside the module graph",
	}, {
		name:    "conflicting hashes",
		files:   map[string]string{"a.sum": "example.com/a v1.0.0 " + hA + "\n", "b.sum": "example.com/a v1.0.0 " + hB + "\n"},
		targets: []string{"a.sum", "b.sum"},
		wantErr: "conflicting zip hashes for example.com/a@v1.0.0",
	}, {
		name:    "bad go.mod names file and line",
		files:   map[string]string{"go.mod": "module example.com/main\n\ngo 1.21\nrequire example.com/a\n"},
		targets: []string{"."},
		wantErr: "go.mod:4",
	}, {
		name:    "go.mod without module line",
		files:   map[string]string{"go.mod": "go 1.21\n"},
		targets: []string{"go.mod"},
		wantErr: "go.mod: no module directive",
	}, {
		name:    "go.work use without go.mod names go.work line",
		files:   map[string]string{"go.work": "go 1.21\n\nuse ./missing\n"},
		targets: []string{"."},
		wantErr: "go.work:3: use ./missing",
	}, {
		name:    "missing file",
		targets: []string{"nothere/go.mod"},
		wantErr: "target nothere/go.mod",
	}, {
		name:    "empty directory",
		files:   map[string]string{"d/README": "x"},
		targets: []string{"d"},
		wantErr: "directory holds no go.work, go.mod or go.sum",
	}, {
		name:    "unknown file kind",
		files:   map[string]string{"notes.txt": "x"},
		targets: []string{"notes.txt"},
		wantErr: "not a go.mod, go.sum or go.work file",
	}, {
		name:    "non-canonical version",
		targets: []string{"example.com/a@v1"},
		wantErr: `version "v1" is neither a canonical semantic version nor "latest"`,
	}, {
		name:    "branch query",
		targets: []string{"example.com/a@master"},
		wantErr: "target example.com/a@master",
	}, {
		name:    "bad module path",
		targets: []string{"Example..com/a@v1.0.0"},
		wantErr: "target Example..com/a@v1.0.0",
	}, {
		name:    "major version mismatch",
		targets: []string{"example.com/m@v2.1.0"},
		wantErr: "target example.com/m@v2.1.0",
	}, {
		name:    "unknown module",
		targets: []string{"example.com/nope@v1.0.0"},
		wantErr: "go.mod of example.com/nope@v1.0.0",
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			writeFiles(t, dir, tt.files)
			t.Chdir(dir)
			src := tt.source
			if src == nil {
				src = memSource{u: small}
			}
			plan, err := Resolve(context.Background(), tt.targets, Options{Source: src, GoVersion: "1.26.8"})
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := fmtNeeds(plan.Needs); !slices.Equal(got, tt.want) {
				t.Errorf("needs:\n got %q\nwant %q", got, tt.want)
			}
			if len(plan.Notes) == 0 {
				t.Errorf("no notes")
			}
			if tt.wantNote != "" && !slices.ContainsFunc(plan.Notes, func(n string) bool { return strings.Contains(n, tt.wantNote) }) {
				t.Errorf("notes %q lack %q", plan.Notes, tt.wantNote)
			}
		})
	}
}

// failSource fails every call: a lone go.sum must not need it.
type failSource struct{}

func (failSource) GoMod(ctx context.Context, path, version string) ([]byte, error) {
	return nil, errors.New("network used")
}
func (failSource) Latest(ctx context.Context, path string) (string, error) {
	return "", errors.New("network used")
}

func TestSelectToolchain(t *testing.T) {
	tests := []struct {
		host, goLine, toolchain string
		want                    string
		wantErr                 bool
	}{
		{"1.26.8", "1.21", "", "", false},
		{"1.26.8", "1.26.8", "", "", false},
		{"1.26.8", "1.26.9", "", "go1.26.9", false},
		{"1.26.8", "1.27", "", "go1.27.0", false},         // language version: first release
		{"1.26.8", "1.27rc2", "", "go1.27rc2", false},     // pre-release as written
		{"1.20.3", "1.20", "", "", false},                 // 1.20 < 1.20.3
		{"1.19", "1.20", "", "go1.20", false},             // before 1.21 no .0 suffix
		{"1.26.8", "1.21", "go1.27.1", "go1.27.1", false}, // toolchain line newer
		{"1.26.8", "1.21", "go1.26.8", "", false},         // equal: host suffices
		{"1.26.8", "1.28", "go1.27.1", "go1.28.0", false}, // go line beats older toolchain line
		{"1.26.8", "1.21", "go1.27.1-corp", "go1.27.1-corp", false},
		{"1.26.8", "1.21", "corp-go1.27.1", "corp-go1.27.1", false},
		{"1.26.8", "1.21", "default", "", false},
		{"1.26.8", "1.21", "gox", "", true},
		{"", "1.99", "", "", false}, // development host
	}
	for _, tt := range tests {
		got, err := selectToolchain("go.mod", tt.host, tt.goLine, tt.toolchain)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("selectToolchain(%q, go %q, toolchain %q) = %q, %v; want %q (error %v)", tt.host, tt.goLine, tt.toolchain, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestToolchainNeeds(t *testing.T) {
	tests := []struct {
		name      string
		files     map[string]string
		target    string
		platforms []string
		want      []string
		wantErr   string
	}{{
		name:      "toolchain line in go.mod, several platforms",
		files:     map[string]string{"go.mod": "module example.com/main\n\ngo 1.26.0\n\ntoolchain go1.27.2\n", "go.sum": ""},
		target:    ".",
		platforms: []string{"linux/amd64", "darwin/arm64"},
		want: []string{"golang.org/toolchain@v0.0.1-go1.27.2.darwin-arm64 zip",
			"golang.org/toolchain@v0.0.1-go1.27.2.linux-amd64 zip"},
	}, {
		name:      "go line in go.work",
		files:     map[string]string{"go.work": "go 1.28\n\nuse ./m\n", "m/go.mod": "module example.com/m\n\ngo 1.21\n", "m/go.sum": ""},
		target:    ".",
		platforms: []string{"windows/amd64"},
		want:      []string{"golang.org/toolchain@v0.0.1-go1.28.0.windows-amd64 zip"},
	}, {
		name:      "module@version whose go line is too new",
		target:    "example.com/needsnew@v1.0.0",
		platforms: []string{"linux/arm64"},
		want:      []string{"example.com/needsnew@v1.0.0 zip", "golang.org/toolchain@v0.0.1-go1.30.0.linux-arm64 zip"},
	}, {
		name:      "old enough",
		files:     map[string]string{"go.mod": "module example.com/main\n\ngo 1.26.8\n\ntoolchain go1.26.1\n", "go.sum": ""},
		target:    ".",
		platforms: []string{"linux/amd64"},
	}, {
		name:      "invalid toolchain line",
		files:     map[string]string{"go.mod": "module example.com/main\n\ngo 1.21\n\ntoolchain gofoo\n", "go.sum": ""},
		target:    ".",
		platforms: []string{"linux/amd64"},
		wantErr:   "invalid toolchain",
	}, {
		name:      "invalid platform",
		files:     map[string]string{"go.sum": ""},
		target:    ".",
		platforms: []string{"linux-amd64"},
		wantErr:   `invalid platform "linux-amd64"`,
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			writeFiles(t, dir, tt.files)
			t.Chdir(dir)
			plan, err := Resolve(context.Background(), []string{tt.target}, Options{Source: memSource{u: small}, GoVersion: "go1.26.8", Platforms: tt.platforms})
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := fmtNeeds(plan.Needs); !slices.Equal(got, tt.want) {
				t.Errorf("needs:\n got %q\nwant %q", got, tt.want)
			}
		})
	}
}

// slowSource delays every go.mod and records the peak concurrency. With
// wave > 0 the first fetches wait until wave are in flight at once (then
// none waits again), so that reaching it depends on how many fetches the
// walk runs concurrently, not on how the scheduler overlaps them.
type slowSource struct {
	memSource
	cur, peak atomic.Int32

	wave     int32
	full     chan struct{}
	fullOnce sync.Once
	starved  atomic.Bool // the hang guard opened the gate, not the wave
}

func (s *slowSource) GoMod(ctx context.Context, path, version string) ([]byte, error) {
	n := s.cur.Add(1)
	defer s.cur.Add(-1)
	for {
		p := s.peak.Load()
		if n <= p || s.peak.CompareAndSwap(p, n) {
			break
		}
	}
	if s.wave > 0 {
		if n >= s.wave {
			s.fullOnce.Do(func() { close(s.full) })
		}
		select {
		case <-s.full:
		case <-time.After(2 * time.Minute): // hang guard
			s.starved.Store(true)
			s.fullOnce.Do(func() { close(s.full) })
		}
	}
	time.Sleep(5 * time.Millisecond)
	return s.memSource.GoMod(ctx, path, version)
}

func TestConcurrencyBound(t *testing.T) {
	u := universe{}
	var reqs []string
	for i := range 40 {
		p := fmt.Sprintf("example.com/w%d", i)
		u[p+"@v1.0.0"] = gomod(p, "1.16", "example.com/leaf v1.0.0")
		reqs = append(reqs, p+" v1.0.0")
	}
	u["example.com/leaf@v1.0.0"] = gomod("example.com/leaf", "1.16")
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"go.mod": gomod("example.com/main", "1.21", reqs...)})
	for _, c := range []int{1, 4} {
		src := &slowSource{memSource: memSource{u: u}}
		if c > 1 {
			src.wave, src.full = 2, make(chan struct{})
		}
		plan, err := Resolve(context.Background(), []string{dir}, Options{Source: src, GoVersion: "1.26.8", Concurrency: c})
		if err != nil {
			t.Fatal(err)
		}
		if len(plan.Needs) != 41 {
			t.Errorf("concurrency %d: %d needs, want 41", c, len(plan.Needs))
		}
		if p := src.peak.Load(); p > int32(c) || c > 1 && (p < 2 || src.starved.Load()) {
			t.Errorf("concurrency %d: peak %d fetches in flight (never 2 at once: %v)", c, p, src.starved.Load())
		}
	}
}

// TestCancel checks that a canceled context stops the walk with its error.
func TestCancel(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"go.mod": gomod("example.com/main", "1.16", "example.com/old v1.0.0")})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := Resolve(ctx, []string{dir}, Options{Source: memSource{u: small}, GoVersion: "1.26.8"})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
}

// TestErrorStopsWalk checks that one failing go.mod stops the walk and is
// the error reported, not the cancellations it causes.
func TestErrorStopsWalk(t *testing.T) {
	u := universe{}
	var reqs []string
	for i := range 30 {
		p := fmt.Sprintf("example.com/w%d", i)
		u[p+"@v1.0.0"] = gomod(p, "1.16")
		reqs = append(reqs, p+" v1.0.0")
	}
	delete(u, "example.com/w7@v1.0.0")
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"go.mod": gomod("example.com/main", "1.21", reqs...)})
	_, err := Resolve(context.Background(), []string{dir}, Options{Source: &slowSource{memSource: memSource{u: u}}, GoVersion: "1.26.8", Concurrency: 2})
	if err == nil || !strings.Contains(err.Error(), "go.mod of example.com/w7@v1.0.0") || !strings.Contains(err.Error(), "go.mod:") {
		t.Fatalf("err = %v, want naming example.com/w7 and the go.mod", err)
	}
}

// TestKeepGoing checks that with Options.KeepGoing one unreadable go.mod
// (missing, or a liar naming another module) is a failure of the plan and
// the rest of the graph is whole: what only the failed module requires is
// missing, everything else is there.
func TestKeepGoing(t *testing.T) {
	u := universe{
		"example.com/good@v1.0.0":  gomod("example.com/good", "1.16", "example.com/leaf v1.0.0"),
		"example.com/leaf@v1.0.0":  gomod("example.com/leaf", "1.16"),
		"example.com/liar@v1.0.0":  gomod("example.com/other", "1.16", "example.com/below v1.0.0"),
		"example.com/below@v1.0.0": gomod("example.com/below", "1.16"),
	}
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"go.mod": gomod("example.com/main", "1.16",
		"example.com/good v1.0.0", "example.com/gone v1.0.0", "example.com/liar v1.0.0")})
	plan, err := Resolve(context.Background(), []string{dir}, Options{Source: memSource{u: u}, GoVersion: "1.26.8", KeepGoing: true})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"example.com/gone@v1.0.0 zip", "example.com/good@v1.0.0 zip", "example.com/leaf@v1.0.0 zip", "example.com/liar@v1.0.0 zip"}
	if got := fmtNeeds(plan.Needs); !slices.Equal(got, want) {
		t.Errorf("needs:\n got %q\nwant %q", got, want)
	}
	if len(plan.Failures) != 2 || plan.Failures[0].Path != "example.com/gone" || plan.Failures[1].Path != "example.com/liar" ||
		!strings.Contains(plan.Failures[0].Err.Error(), "go.mod of example.com/gone@v1.0.0") ||
		!strings.Contains(plan.Failures[1].Err.Error(), "declares its path as example.com/other") {
		t.Errorf("failures: %+v", plan.Failures)
	}
	// Without KeepGoing the same project fails, naming a module.
	if _, err := Resolve(context.Background(), []string{dir}, Options{Source: memSource{u: u}, GoVersion: "1.26.8"}); err == nil {
		t.Error("strict resolve succeeded")
	}
}

// TestTooNewDependencyNote checks that a dependency needing a newer Go is
// reported in the notes (the go command would switch toolchains or fail).
func TestTooNewDependencyNote(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"go.mod": gomod("example.com/main", "1.21", "example.com/needsnew v1.0.0")})
	plan, err := Resolve(context.Background(), []string{dir}, Options{Source: memSource{u: small}, GoVersion: "1.26.8"})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(plan.Notes, func(n string) bool {
		return strings.Contains(n, "example.com/needsnew@v1.0.0 requires go >= 1.30")
	}) {
		t.Errorf("notes %q lack the too-new dependency", plan.Notes)
	}
}
