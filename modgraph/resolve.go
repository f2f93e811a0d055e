package modgraph

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"

	"golang.org/x/mod/modfile"
	"golang.org/x/mod/module"
	"golang.org/x/mod/semver"
)

// Need is what to fetch for one module version.
type Need struct {
	Path, Version string
	// Zip reports that the module's zip is needed (it is in a build list).
	// Otherwise only .info and .mod are needed.
	Zip bool
	// ModHash and ZipHash are the expected "h1:" hashes of the go.mod file and
	// of the zip when known (from a go.sum), "" otherwise. A go.sum never adds
	// a need: it only carries hashes for needs the graph produced.
	ModHash, ZipHash string
}

func (n Need) String() string {
	s := n.Path + "@" + n.Version
	if n.Zip {
		s += " zip"
	} else {
		s += " mod"
	}
	return s
}

// Source is the resolver's only window on the network.
type Source interface {
	// GoMod returns the go.mod file of module path at version (the .mod
	// endpoint of the GOPROXY protocol).
	GoMod(ctx context.Context, path, version string) ([]byte, error)
	// Latest resolves the "latest" query for path (the @latest endpoint,
	// or the highest release in @v/list).
	Latest(ctx context.Context, path string) (version string, err error)
}

// Options configure Resolve.
type Options struct {
	// Source fetches go.mod files and resolves "latest". Every target but
	// a go.sum without a go.mod beside it needs it: the module graph is
	// walked whether or not a go.sum is present.
	Source Source
	// GoVersion is the Go version of the toolchain that will run the build,
	// such as "1.26.8". Default: runtime.Version() without its "go" prefix.
	GoVersion string
	// Platforms lists the GOOS/GOARCH pairs ("linux/amd64") for which
	// golang.org/toolchain zips are needed. Default: the host platform.
	Platforms []string
	// Concurrency bounds parallel go.mod fetches in the graph walk (default 16).
	Concurrency int
	// Exclude, when set, reports module paths to ignore: they are neither
	// fetched nor walked, and no Need names them.
	Exclude func(path string) bool
	// KeepGoing makes a go.mod that cannot be fetched or parsed a
	// [Failure] of the plan instead of the error of Resolve: the walk goes
	// on without that module's requirements, so what only it requires is
	// missing from the plan, and the rest is whole.
	KeepGoing bool
}

// Failure is a module version whose go.mod could not be read
// (Options.KeepGoing).
type Failure struct {
	Path, Version string
	Err           error
}

// Plan is the result of Resolve.
type Plan struct {
	// Needs is sorted by path then semantic version, with one entry per
	// module version: a zip need absorbs a go.mod-only need of the same
	// version, and known hashes are merged.
	Needs []Need
	// Notes says, for people, how each target was resolved and what was
	// approximated or skipped.
	Notes []string
	// Failures lists, sorted, the go.mod files that could not be read
	// (only with Options.KeepGoing). The plan lacks what lies below them.
	Failures []Failure
}

// Resolve computes the module artifacts needed to build and verify targets.
// A target is a go.mod, go.sum or go.work file (by base name; go.work.sum and
// other *.sum files count as go.sum), a directory holding one (go.work wins over
// go.mod, which wins over a lone go.sum), or module@version / module@latest.
func Resolve(ctx context.Context, targets []string, opts Options) (*Plan, error) {
	if len(targets) == 0 {
		return nil, errors.New("modgraph: no targets")
	}
	r, err := newResolver(opts)
	if err != nil {
		return nil, err
	}
	for _, t := range targets {
		if err := r.target(ctx, t); err != nil {
			return nil, err
		}
	}
	return r.plan()
}

type resolver struct {
	opts  Options
	host  string
	needs map[module.Version]*Need
	notes []string

	// sums holds the hashes of every go.sum read, keyed by module version;
	// plan attaches them to the needs the graphs produced.
	sums map[module.Version]*sumHashes
	// failed collects the go.mod files that walks could not read
	// (Options.KeepGoing).
	failed map[module.Version]error
}

// sumHashes are the go.sum hashes of one module version, with the file
// that gave each (for error messages).
type sumHashes struct {
	mod, zip         string
	modFile, zipFile string
}

func newResolver(opts Options) (*resolver, error) {
	host := strings.TrimPrefix(opts.GoVersion, "go")
	if opts.GoVersion == "" {
		host = strings.TrimPrefix(runtime.Version(), "go")
		if !goVersionValid(host) {
			host = "" // development build: never needs a newer toolchain
		}
	} else if !goVersionValid(host) {
		return nil, fmt.Errorf("modgraph: invalid GoVersion %q", opts.GoVersion)
	}
	if len(opts.Platforms) == 0 {
		opts.Platforms = []string{runtime.GOOS + "/" + runtime.GOARCH}
	}
	for _, p := range opts.Platforms {
		goos, goarch, ok := strings.Cut(p, "/")
		if !ok || goos == "" || goarch == "" || strings.ContainsAny(goarch, "/.-") || strings.ContainsAny(goos, ".-") {
			return nil, fmt.Errorf("modgraph: invalid platform %q (want GOOS/GOARCH)", p)
		}
	}
	return &resolver{opts: opts, host: host, needs: map[module.Version]*Need{}, sums: map[module.Version]*sumHashes{}, failed: map[module.Version]error{}}, nil
}

func (r *resolver) notef(format string, args ...any) {
	r.notes = append(r.notes, fmt.Sprintf(format, args...))
}

// add merges needs into the plan. It fails when two sources disagree on a hash.
func (r *resolver) add(needs ...Need) error {
	for _, n := range needs {
		if r.opts.Exclude != nil && r.opts.Exclude(n.Path) {
			continue
		}
		k := module.Version{Path: n.Path, Version: n.Version}
		old, ok := r.needs[k]
		if !ok {
			nn := n
			r.needs[k] = &nn
			continue
		}
		old.Zip = old.Zip || n.Zip
		for _, h := range []struct {
			what     string
			dst, src *string
		}{{"zip", &old.ZipHash, &n.ZipHash}, {"go.mod", &old.ModHash, &n.ModHash}} {
			switch {
			case *h.src == "" || *h.src == *h.dst:
			case *h.dst == "":
				*h.dst = *h.src
			default:
				return fmt.Errorf("modgraph: conflicting %s hashes for %s@%s: %s and %s", h.what, n.Path, n.Version, *h.dst, *h.src)
			}
		}
	}
	return nil
}

// addSums records the hashes of a go.sum file. It fails when two go.sum
// files disagree on a hash.
func (r *resolver) addSums(file string, needs []Need) error {
	for _, n := range needs {
		k := module.Version{Path: n.Path, Version: n.Version}
		h := r.sums[k]
		if h == nil {
			h = &sumHashes{}
			r.sums[k] = h
		}
		for _, x := range []struct {
			what, src  string
			dst, dfile *string
		}{{"zip", n.ZipHash, &h.zip, &h.zipFile}, {"go.mod", n.ModHash, &h.mod, &h.modFile}} {
			switch {
			case x.src == "" || x.src == *x.dst:
			case *x.dst == "":
				*x.dst, *x.dfile = x.src, file
			default:
				return fmt.Errorf("modgraph: conflicting %s hashes for %s@%s: %s in %s and %s in %s", x.what, n.Path, n.Version, *x.dst, *x.dfile, x.src, file)
			}
		}
	}
	return nil
}

func (r *resolver) plan() (*Plan, error) {
	// Attach the go.sum hashes to the needs; lines for versions outside
	// every graph are reported, not fetched.
	var unused []string
	for k, h := range r.sums {
		n, ok := r.needs[k]
		if !ok {
			if r.opts.Exclude == nil || !r.opts.Exclude(k.Path) {
				unused = append(unused, k.Path+"@"+k.Version)
			}
			continue
		}
		if h.mod != "" {
			if err := r.add(Need{Path: k.Path, Version: k.Version, ModHash: h.mod}); err != nil {
				return nil, err
			}
		}
		if h.zip != "" && n.Zip {
			if err := r.add(Need{Path: k.Path, Version: k.Version, Zip: true, ZipHash: h.zip}); err != nil {
				return nil, err
			}
		}
	}
	if len(unused) > 0 {
		sort.Strings(unused)
		ex := unused[:min(len(unused), 3)]
		r.notef("%d module versions in go.sum are outside the module graph (left over from an earlier graph, or another platform's toolchain): not fetched, e.g. %s", len(unused), strings.Join(ex, ", "))
	}
	p := &Plan{Notes: r.notes}
	for _, n := range r.needs {
		p.Needs = append(p.Needs, *n)
	}
	for m, err := range r.failed {
		p.Failures = append(p.Failures, Failure{Path: m.Path, Version: m.Version, Err: err})
	}
	sort.Slice(p.Failures, func(i, j int) bool {
		a, b := p.Failures[i], p.Failures[j]
		if a.Path != b.Path {
			return a.Path < b.Path
		}
		return semver.Compare(a.Version, b.Version) < 0
	})
	if len(p.Failures) > 0 {
		p.Notes = append(p.Notes, fmt.Sprintf("%d go.mod files could not be read: the plan lacks what only they require", len(p.Failures)))
	}
	sort.Slice(p.Needs, func(i, j int) bool {
		a, b := p.Needs[i], p.Needs[j]
		if a.Path != b.Path {
			return a.Path < b.Path
		}
		if c := semver.Compare(a.Version, b.Version); c != 0 {
			return c < 0
		}
		return a.Version < b.Version
	})
	return p, nil
}

// target dispatches one command-line target.
func (r *resolver) target(ctx context.Context, t string) error {
	fi, statErr := os.Stat(t)
	if statErr != nil {
		if strings.Contains(t, "@") && !strings.ContainsAny(t, `\`) {
			return r.moduleQuery(ctx, t)
		}
		return fmt.Errorf("target %s: %w", t, statErr)
	}
	abs, err := filepath.Abs(t)
	if err != nil {
		return fmt.Errorf("target %s: %w", t, err)
	}
	if fi.IsDir() {
		for _, name := range []string{"go.work", "go.mod", "go.sum"} {
			f := filepath.Join(abs, name)
			if _, err := os.Stat(f); err == nil {
				return r.file(ctx, f)
			} else if !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("target %s: %w", t, err)
			}
		}
		return fmt.Errorf("target %s: directory holds no go.work, go.mod or go.sum", t)
	}
	return r.file(ctx, abs)
}

func (r *resolver) file(ctx context.Context, file string) error {
	base := filepath.Base(file)
	switch {
	case base == "go.work" || strings.HasSuffix(base, ".work"):
		return r.goWork(ctx, file)
	case base == "go.mod" || strings.HasSuffix(base, ".mod"):
		return r.goMod(ctx, file)
	case strings.HasSuffix(base, ".sum"):
		// A go.sum stands for the go.mod beside it, and go.work.sum for the
		// go.work: the graph decides what is needed, the sums add hashes.
		dir := filepath.Dir(file)
		for _, beside := range [][2]string{{"go.work.sum", "go.work"}, {"go.sum", "go.mod"}} {
			if base != beside[0] {
				continue
			}
			if _, err := os.Stat(filepath.Join(dir, beside[1])); err == nil {
				return r.file(ctx, filepath.Join(dir, beside[1]))
			}
		}
		data, err := os.ReadFile(file)
		if err != nil {
			return err
		}
		needs, err := parseGoSum(file, data)
		if err != nil {
			return err
		}
		// No go.mod to walk from: the lines themselves are all there is.
		r.notef("%s: go.sum without a go.mod or go.work beside it: its %d lines, exactly (no module graph to walk)", file, len(needs))
		return r.add(needs...)
	}
	return fmt.Errorf("target %s: not a go.mod, go.sum or go.work file", file)
}

// readSum reads the needs of an optional go.sum file; ok is false when the
// file does not exist.
func readSum(file string) (needs []Need, ok bool, err error) {
	data, err := os.ReadFile(file)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, false, nil
	} else if err != nil {
		return nil, false, err
	}
	needs, err = parseGoSum(file, data)
	return needs, err == nil, err
}

func parseModFile(file string) (*modfile.File, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	f, err := modfile.Parse(file, data, nil)
	if err != nil {
		return nil, err // modfile errors name the file and line
	}
	if f.Module == nil {
		return nil, fmt.Errorf("%s: no module directive", file)
	}
	return f, nil
}

// goMod resolves a main module by a graph walk through Source; the go.sum
// beside it, if any, only adds hashes.
func (r *resolver) goMod(ctx context.Context, file string) error {
	f, err := parseModFile(file)
	if err != nil {
		return err
	}
	if err := r.toolchain(file, f.Go, f.Toolchain); err != nil {
		return err
	}
	how, err := r.mainSums(file)
	if err != nil {
		return err
	}
	return r.walkMain(ctx, file, f, how, true)
}

// mainSums records the hashes of the go.sum beside the go.mod file, if
// any, and says for the notes where hashes came from.
func (r *resolver) mainSums(file string) (string, error) {
	sumFile := filepath.Join(filepath.Dir(file), "go.sum")
	sums, haveSum, err := readSum(sumFile)
	if err != nil || !haveSum {
		return "no go.sum", err
	}
	if err := r.addSums(sumFile, sums); err != nil {
		return "", err
	}
	return fmt.Sprintf("hashes from %s (%d lines)", sumFile, len(sums)), nil
}

// walkMain walks the module graph of the main module f (read from file) as
// the go command does in module mode and adds its needs; how says where
// the hashes come from. keepGoing applies Options.KeepGoing to the walk
// (not to a used module's own graph, whose failures are notes).
func (r *resolver) walkMain(ctx context.Context, file string, f *modfile.File, how string, keepGoing bool) error {
	dir := filepath.Dir(file)
	if r.opts.Source == nil {
		return fmt.Errorf("%s: no Source to walk the module graph", file)
	}
	c := r.newConfig()
	c.mains[f.Module.Mod.Path] = c.summarize(f)
	c.addReplaces(f.Replace, dir, false)
	for _, e := range f.Exclude {
		c.exclude[e.Mod] = true
	}
	var roots []module.Version
	for _, req := range f.Require {
		if !c.exclude[req.Mod] {
			roots = append(roots, req.Mod)
		}
	}
	goVersion := goLine(f.Go)
	mode := pruningForGoVersion(goVersion)
	r.keepGoing(c, keepGoing)
	res, err := c.walkModule(ctx, mode, f.Module.Mod.Path, slices.Clone(roots))
	r.collectFailures(c)
	if err != nil {
		return fmt.Errorf("%s: %w", file, err)
	}
	r.notef("%s: graph walk (%s), %s: %d modules in the build list, %d go.mod files read", file, modeName(mode), how, len(res.buildList), len(c.modRead))
	if err := r.add(res.needs...); err != nil {
		return err
	}
	// 'go mod tidy' keeps the main module tidy for the previous Go version
	// too (modload.LoadPackages, TidyCompatibleVersion: gover.Prev of the go
	// line, below gover.GoStrictVersion 1.21). Only for go 1.17.x does that
	// version read the graph differently (unpruned, go 1.16), and tidy then
	// loads the unpruned graph as well.
	if mode == pruned && compareGo(goVersion, "1.18") < 0 {
		// Only go mod tidy reads it: a go.mod missing from it costs that
		// command, not the build, so it is a note rather than a failure.
		cres, err := c.walkModule(ctx, unpruned, f.Module.Mod.Path, slices.Clone(roots))
		switch {
		case err != nil && ctx.Err() != nil:
			return err
		case err != nil:
			r.notef("%s: the go 1.16 graph that go mod tidy -compat=1.16 reads cannot be read, so go mod tidy will need the network: %v", file, err)
		default:
			r.notef("%s: go 1.17: also the unpruned graph that go mod tidy -compat=1.16 reads: %d modules in its build list, %d go.mod files read in all", file, len(cres.buildList), len(c.modRead))
			if err := r.add(cres.needs...); err != nil {
				return err
			}
		}
	}
	r.notes = append(r.notes, c.notes...)
	return nil
}

// goWork resolves a workspace: the workspace graph walk (what the go
// command reads in workspace mode), plus every used module's own graph in
// module mode, which commands that ignore go.work ('go mod tidy', or any
// command with GOWORK=off) read. go.work.sum and the modules' go.sum files
// add hashes.
func (r *resolver) goWork(ctx context.Context, file string) error {
	data, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	wf, err := modfile.ParseWork(file, data, nil)
	if err != nil {
		return err
	}
	if err := r.toolchain(file, wf.Go, wf.Toolchain); err != nil {
		return err
	}
	dir := filepath.Dir(file)
	c := r.newConfig()
	c.addReplaces(wf.Replace, dir, true)
	if s, ok, err := readSum(filepath.Join(dir, "go.work.sum")); err != nil {
		return err
	} else if ok {
		if err := r.addSums(filepath.Join(dir, "go.work.sum"), s); err != nil {
			return err
		}
	}
	var (
		files []*modfile.File
		names []string
	)
	for _, u := range wf.Use {
		mdir := u.Path
		if !filepath.IsAbs(mdir) {
			mdir = filepath.Join(dir, mdir)
		}
		name := filepath.Join(mdir, "go.mod")
		f, err := parseModFile(name)
		if err != nil {
			return fmt.Errorf("%s:%d: use %s: %w", file, u.Syntax.Start.Line, u.Path, err)
		}
		if _, dup := c.mains[f.Module.Mod.Path]; dup {
			return fmt.Errorf("%s:%d: module %s appears multiple times in workspace", file, u.Syntax.Start.Line, f.Module.Mod.Path)
		}
		files, names = append(files, f), append(names, name)
		c.mains[f.Module.Mod.Path] = nil // placeholder until excludes are known
		c.addReplaces(f.Replace, mdir, false)
		for _, e := range f.Exclude {
			c.exclude[e.Mod] = true
		}
	}
	hows := make([]string, len(files))
	for i, f := range files {
		c.mains[f.Module.Mod.Path] = c.summarize(f)
		if hows[i], err = r.mainSums(names[i]); err != nil {
			return err
		}
	}
	if r.opts.Source == nil {
		return fmt.Errorf("%s: no Source to walk the module graph", file)
	}
	r.keepGoing(c, true)
	res, err := c.walkWorkspace(ctx)
	r.collectFailures(c)
	if err != nil {
		return fmt.Errorf("%s: %w", file, err)
	}
	r.notef("%s: workspace graph walk of %d modules: %d modules in the build list, %d go.mod files read", file, len(files), len(res.buildList), len(c.modRead))
	r.notes = append(r.notes, c.notes...)
	if err := r.add(res.needs...); err != nil {
		return err
	}
	for i, f := range files {
		if err := r.toolchain(names[i], f.Go, f.Toolchain); err != nil {
			return err
		}
		// A used module whose own graph cannot be read (it requires a
		// version of another used module that was never published) fails
		// in module mode online too: say so, and keep the workspace.
		if err := r.walkMain(ctx, names[i], f, hows[i], false); err != nil {
			if ctx.Err() != nil {
				return err
			}
			r.notef("%s: in module mode (GOWORK=off, go mod tidy) its graph cannot be read, so those commands will need the network: %v", names[i], err)
		}
	}
	return nil
}

// moduleQuery resolves module@version or module@latest as
// 'go install module@version' would: the module is the only root of a
// pruned graph under a synthetic main module without replace or exclude.
func (r *resolver) moduleQuery(ctx context.Context, t string) error {
	path, vers, _ := strings.Cut(t, "@")
	if err := module.CheckPath(path); err != nil {
		return fmt.Errorf("target %s: %w", t, err)
	}
	if r.opts.Source == nil {
		return fmt.Errorf("target %s: no Source to fetch modules", t)
	}
	switch {
	case vers == "latest":
		v, err := r.opts.Source.Latest(ctx, path)
		if err != nil {
			return fmt.Errorf("target %s: resolving latest: %w", t, err)
		}
		if !semver.IsValid(v) {
			return fmt.Errorf("target %s: latest resolved to invalid version %q", t, v)
		}
		vers = v
	case !semver.IsValid(vers) || semver.Canonical(vers) != vers && !strings.HasSuffix(vers, "+incompatible"):
		return fmt.Errorf("target %s: version %q is neither a canonical semantic version nor \"latest\"", t, vers)
	}
	if err := module.Check(path, vers); err != nil {
		return fmt.Errorf("target %s: %w", t, err)
	}
	m := module.Version{Path: path, Version: vers}
	c := r.newConfig()
	data, err := r.opts.Source.GoMod(ctx, path, vers)
	if err != nil {
		return fmt.Errorf("target %s: go.mod of %s@%s: %w", t, path, vers, err)
	}
	mf, err := modfile.ParseLax(path+"@"+vers+"/go.mod", data, nil)
	if err != nil {
		return fmt.Errorf("target %s: %w", t, err)
	}
	if len(mf.Replace) > 0 || len(mf.Exclude) > 0 {
		r.notef("%s: go.mod has replace or exclude directives, which go install rejects; resolving without them", t)
	}
	// go install switches to a newer toolchain when the module needs one
	// (toolchain.maybeSwitchForGoInstallVersion). The go command then picks the
	// newest release of that language version from the "go" version list;
	// we name the minimum release instead.
	if mf.Go != nil {
		if err := r.toolchain(t, mf.Go, nil); err != nil {
			return err
		}
	}
	// go install promotes every module providing an imported package to a
	// root of the graph (updatePrunedRoots), reading its go.mod. Without
	// the packages we cannot tell which modules do, so every requirement of
	// the module is taken as a root: a superset of what go install reads.
	roots := []module.Version{m}
	for _, req := range mf.Require {
		if req.Mod.Path != path {
			roots = append(roots, req.Mod)
		}
	}
	r.keepGoing(c, true)
	res, err := c.walkModule(ctx, pruned, "", roots)
	r.collectFailures(c)
	if err != nil {
		return fmt.Errorf("target %s: %w", t, err)
	}
	r.notef("%s: %s@%s, graph walk as go install: %d modules in the build list, %d go.mod files read", t, path, vers, len(res.buildList), len(c.modRead))
	r.notes = append(r.notes, c.notes...)
	return r.add(append(res.needs, Need{Path: path, Version: vers, Zip: true})...)
}

// keepGoing arms c for a walk that records unreadable go.mod files instead
// of failing, when on and Options.KeepGoing is set.
func (r *resolver) keepGoing(c *graphConfig, on bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.failed = nil
	if on && r.opts.KeepGoing {
		c.failed = map[module.Version]error{}
	}
}

// collectFailures moves what the last walk on c could not read into the
// plan's failures and disarms c.
func (r *resolver) collectFailures(c *graphConfig) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for m, err := range c.failed {
		if _, ok := r.failed[m]; !ok {
			r.failed[m] = err
		}
	}
	c.failed = nil
}

func (r *resolver) newConfig() *graphConfig {
	return newGraphConfig(r.opts.Source, r.opts.Concurrency, r.opts.Exclude, r.host)
}

// toolchain adds the golang.org/toolchain zips that GOTOOLCHAIN=auto would
// download for a go.mod or go.work file with the given go and toolchain lines.
func (r *resolver) toolchain(file string, g *modfile.Go, tc *modfile.Toolchain) error {
	var tcName string
	if tc != nil {
		tcName = tc.Name
	}
	name, err := selectToolchain(file, r.host, goLine(g), tcName)
	if err != nil || name == "" {
		return err
	}
	r.notef("%s: needs toolchain %s (host go%s) for %s", file, name, r.host, strings.Join(r.opts.Platforms, ", "))
	return r.add(toolchainNeeds(name, r.opts.Platforms)...)
}

func goLine(g *modfile.Go) string {
	if g == nil {
		return ""
	}
	return g.Version
}

func modeName(p pruning) string {
	switch p {
	case pruned:
		return "pruned, go 1.17+"
	case unpruned:
		return "unpruned, before go 1.17"
	}
	return "workspace"
}
