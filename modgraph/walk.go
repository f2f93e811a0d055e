package modgraph

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"sync"

	"golang.org/x/mod/modfile"
	"golang.org/x/mod/module"
	"golang.org/x/mod/semver"
)

// pruning is the go command's modPruning (cmd/go/internal/modload).
type pruning int

const (
	pruned    pruning = iota // go 1.17+: a module's go.mod lists what its packages need
	unpruned                 // before go 1.17: the whole transitive graph counts
	workspace                // go.work: main modules' requirements are all loaded
)

// pruningForGoVersion is modload.pruningForGoVersion: graph pruning starts at
// go 1.17 (gover.ExplicitIndirectVersion). A go.mod without a go line
// counts as unpruned.
func pruningForGoVersion(goVersion string) pruning {
	if goVersion == "" || compareGo(goVersion, "1.17") < 0 {
		return unpruned
	}
	return pruned
}

// summary is what the walk keeps of one go.mod file (modload.modFileSummary).
type summary struct {
	goVersion string
	toolchain string
	pruning   pruning
	require   []module.Version // after the main modules' excludes
}

// replacement is where a module version's content comes from.
type replacement struct {
	mod module.Version // the module to fetch; Version "" for a directory
	dir string         // absolute directory of a filesystem replacement
}

// graphConfig is what the main module(s) impose on the whole walk, plus the
// cache of go.mod files shared by successive walks of one Resolve call.
type graphConfig struct {
	src    Source
	sem    chan struct{}
	ignore func(path string) bool
	host   string // Go version of the host toolchain, "" if unknown

	// mains holds the main modules' own summaries (version ""): one in
	// module mode, one per use directive in workspace mode.
	mains map[string]*summary
	// replace is keyed by module.Version; a key with Version "" replaces
	// every version of the path (as in a go.mod replace without version).
	replace map[module.Version]replacement
	exclude map[module.Version]bool

	// workReplaced holds the paths replaced by go.work: the used modules'
	// replacements of those paths are ignored (modload.MainModules setup).
	workReplaced map[string]bool

	mu      sync.Mutex
	cache   map[module.Version]*loadEntry
	modRead map[module.Version]bool // module versions whose go.mod came from Source
	notes   []string
	// failed, when non-nil, makes a go.mod that cannot be read a leaf of
	// the walk, recorded here, instead of the walk's error
	// (Options.KeepGoing).
	failed map[module.Version]error
}

type loadEntry struct {
	done chan struct{}
	sum  *summary
	err  error
}

func newGraphConfig(src Source, concurrency int, ignore func(string) bool, host string) *graphConfig {
	if concurrency <= 0 {
		concurrency = 16
	}
	return &graphConfig{
		src:     src,
		host:    host,
		sem:     make(chan struct{}, concurrency),
		ignore:  ignore,
		mains:   map[string]*summary{},
		replace: map[module.Version]replacement{},
		exclude: map[module.Version]bool{},
		cache:   map[module.Version]*loadEntry{},
		modRead: map[module.Version]bool{},
	}
}

// addReplaces records the replace directives of a go.mod or go.work file.
// Directory replacements are resolved relative to dir. Call it for go.work
// first (with fromWork set): go.work's replacements win, and a path replaced
// there is not replaced by any go.mod. Between two go.mod files of a
// workspace the first replacement wins (the go command reports a conflict).
func (c *graphConfig) addReplaces(reps []*modfile.Replace, dir string, fromWork bool) {
	for _, r := range reps {
		if fromWork {
			if c.workReplaced == nil {
				c.workReplaced = map[string]bool{}
			}
			c.workReplaced[r.Old.Path] = true
		} else if c.workReplaced[r.Old.Path] {
			continue
		}
		if _, dup := c.replace[r.Old]; dup {
			continue
		}
		rep := replacement{mod: r.New}
		if r.New.Version == "" {
			d := r.New.Path
			if !filepath.IsAbs(d) {
				d = filepath.Join(dir, d)
			}
			rep = replacement{mod: module.Version{Path: r.New.Path}, dir: d}
		}
		c.replace[r.Old] = rep
	}
}

// resolveReplacement returns where m's content comes from: m itself, or its
// replacement (version-specific replacements win over path-wide ones).
func (c *graphConfig) resolveReplacement(m module.Version) replacement {
	if _, main := c.mains[m.Path]; main && m.Version == "" {
		return replacement{mod: m}
	}
	if r, ok := c.replace[m]; ok {
		return r
	}
	if r, ok := c.replace[module.Version{Path: m.Path}]; ok {
		return r
	}
	return replacement{mod: m}
}

// summarize builds a summary from a parsed go.mod, dropping requirements on
// excluded versions (goModSummary does this for every module but the main
// module in module mode, whose excluded roots are dropped by rootsFromModFile).
func (c *graphConfig) summarize(f *modfile.File) *summary {
	s := &summary{pruning: unpruned}
	if f.Go != nil {
		s.goVersion = f.Go.Version
		s.pruning = pruningForGoVersion(f.Go.Version)
	}
	if f.Toolchain != nil {
		s.toolchain = f.Toolchain.Name
	}
	for _, r := range f.Require {
		if c.exclude[r.Mod] {
			continue
		}
		s.require = append(s.require, r.Mod)
	}
	return s
}

// load returns the summary of m's go.mod, fetching it at most once.
func (c *graphConfig) load(ctx context.Context, m module.Version) (*summary, error) {
	c.mu.Lock()
	if e, ok := c.cache[m]; ok {
		c.mu.Unlock()
		select {
		case <-e.done:
			return e.sum, e.err
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	e := &loadEntry{done: make(chan struct{})}
	c.cache[m] = e
	c.mu.Unlock()
	e.sum, e.err = c.loadUncached(ctx, m)
	close(e.done)
	return e.sum, e.err
}

func (c *graphConfig) loadUncached(ctx context.Context, m module.Version) (*summary, error) {
	if m.Version == "" {
		if s, ok := c.mains[m.Path]; ok {
			return s, nil
		}
	}
	if c.ignore != nil && c.ignore(m.Path) {
		return &summary{pruning: pruned}, nil
	}
	rep := c.resolveReplacement(m)
	var (
		name string
		data []byte
		err  error
	)
	if rep.dir != "" {
		name = filepath.Join(rep.dir, "go.mod")
		if data, err = os.ReadFile(name); err != nil {
			return nil, fmt.Errorf("module %s@%s replaced by directory %s: %w", m.Path, m.Version, rep.mod.Path, err)
		}
	} else {
		actual := rep.mod
		name = actual.Path + "@" + actual.Version + "/go.mod"
		select {
		case c.sem <- struct{}{}:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		data, err = c.src.GoMod(ctx, actual.Path, actual.Version)
		<-c.sem
		if err != nil {
			if actual != m {
				return nil, fmt.Errorf("go.mod of %s@%s (replacement for %s@%s): %w", actual.Path, actual.Version, m.Path, m.Version, err)
			}
			return nil, fmt.Errorf("go.mod of %s@%s: %w", m.Path, m.Version, err)
		}
		c.mu.Lock()
		c.modRead[actual] = true
		c.mu.Unlock()
	}
	f, err := modfile.ParseLax(name, data, nil)
	if err != nil {
		return nil, fmt.Errorf("parsing go.mod of %s@%s: %w", m.Path, m.Version, err)
	}
	if rep.dir == "" {
		// Same check as modload.goModSummary: a go.mod must declare the path
		// it was required as, or the path of its replacement.
		if f.Module == nil {
			return nil, fmt.Errorf("parsing %s: missing module line", name)
		}
		if mp := f.Module.Mod.Path; mp != m.Path && mp != rep.mod.Path {
			return nil, fmt.Errorf("parsing %s: module declares its path as %s but was required as %s", name, mp, m.Path)
		}
	}
	s := c.summarize(f)
	if c.host != "" && s.goVersion != "" && compareGo(s.goVersion, c.host) > 0 {
		c.note("module %s@%s requires go >= %s, newer than go%s: the go command would need a newer toolchain", m.Path, m.Version, s.goVersion, c.host)
	}
	return s, nil
}

func (c *graphConfig) note(format string, args ...any) {
	c.mu.Lock()
	c.notes = append(c.notes, fmt.Sprintf(format, args...))
	c.mu.Unlock()
}

// keepGoing records that m's go.mod could not be read and reports whether
// the walk goes on without m's requirements.
func (c *graphConfig) keepGoing(m module.Version, err error) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.failed == nil {
		return false
	}
	if _, ok := c.failed[m]; !ok {
		c.failed[m] = err
	}
	return true
}

// graph is one module graph: modload.readModGraph's result.
type graph struct {
	mainPaths []string
	roots     []module.Version
	mu        sync.Mutex
	reqs      map[module.Version][]module.Version // loaded nodes and their requirements
}

// selected returns the version MVS selects for every module path in the
// graph (main modules select version "").
func (g *graph) selected() map[string]string {
	sel := map[string]string{}
	add := func(m module.Version) {
		if m.Version == "none" {
			return
		}
		if v, ok := sel[m.Path]; !ok || v != "" && (m.Version == "" || semver.Compare(m.Version, v) > 0) {
			sel[m.Path] = m.Version
		}
	}
	for _, p := range g.mainPaths {
		sel[p] = ""
	}
	for _, r := range g.roots {
		add(r)
	}
	for m, rs := range g.reqs {
		add(m)
		for _, r := range rs {
			add(r)
		}
	}
	return sel
}

// readModGraph ports modload.readModGraph: starting from roots, load go.mod
// files concurrently, following requirements as the pruning rules allow:
//
//   - a root is always loaded;
//   - the requirements of a loaded module are added to the graph (they count
//     in MVS), but they are loaded themselves only if the module is unpruned
//     (go < 1.17), or if the walk is already unpruned or in workspace mode;
//   - below an unpruned module everything is loaded, whatever its go version.
func (c *graphConfig) readModGraph(ctx context.Context, mode pruning, mainPaths []string, roots []module.Version) (*graph, error) {
	g := &graph{mainPaths: mainPaths, roots: roots, reqs: map[module.Version][]module.Version{}}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	type dedupKey struct {
		m module.Version
		p pruning
	}
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		loading = map[dedupKey]bool{}
		errs    []error
	)
	var enqueue func(m module.Version, p pruning)
	enqueue = func(m module.Version, p pruning) {
		if m.Version == "none" {
			return
		}
		mu.Lock()
		if loading[dedupKey{m, p}] {
			mu.Unlock()
			return
		}
		loading[dedupKey{m, p}] = true
		mu.Unlock()
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := c.load(ctx, m)
			if err != nil && ctx.Err() == nil && c.keepGoing(m, err) {
				s, err = &summary{pruning: pruned}, nil
			}
			if err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
				cancel()
				return
			}
			g.mu.Lock()
			g.reqs[m] = s.require
			g.mu.Unlock()
			next := s.pruning
			if p == unpruned {
				next = unpruned
			}
			for _, r := range s.require {
				if p != pruned || s.pruning == unpruned {
					enqueue(r, next)
				}
			}
		}()
	}
	for _, r := range roots {
		enqueue(r, mode)
	}
	wg.Wait()

	if mode == workspace && len(errs) == 0 {
		// Load the selected versions of the main modules' dependencies when
		// they differ from the required ones: the main modules' requirements
		// do not describe what the workspace builds (readModGraph, workspace).
		hasDepsInAll := map[string]bool{}
		seen := map[module.Version]bool{}
		for _, m := range roots {
			hasDepsInAll[m.Path] = true
		}
		for {
			sel := g.selected()
			need := map[module.Version]bool{}
			for p := range hasDepsInAll {
				m := module.Version{Path: p, Version: sel[p]}
				if !seen[m] {
					need[m] = true
					continue
				}
				g.mu.Lock()
				reqs := g.reqs[m]
				g.mu.Unlock()
				for _, r := range reqs {
					s := module.Version{Path: r.Path, Version: sel[r.Path]}
					if s.Version != r.Version && (s.Version == "" || semver.Compare(s.Version, r.Version) > 0) && !seen[s] {
						need[s] = true
					}
				}
			}
			if len(need) == 0 {
				break
			}
			for m := range need {
				enqueue(m, workspace)
				seen[m] = true
				hasDepsInAll[m.Path] = true
			}
			wg.Wait()
			if len(errs) > 0 {
				break
			}
		}
	}
	if len(errs) > 0 {
		return nil, firstError(errs)
	}
	return g, nil
}

// firstError picks a deterministic error among those of a concurrent walk,
// preferring a real failure to the cancellations it caused.
func firstError(errs []error) error {
	var real []error
	for _, e := range errs {
		if !errors.Is(e, context.Canceled) {
			real = append(real, e)
		}
	}
	if len(real) == 0 {
		real = errs
	}
	sort.Slice(real, func(i, j int) bool { return real[i].Error() < real[j].Error() })
	return real[0]
}

// walkResult is the outcome of a graph walk.
type walkResult struct {
	buildList []module.Version // selected versions, main modules excluded
	needs     []Need
}

// walkModule computes the module graph of a single main module (module mode)
// or of a synthetic main module with the given roots (go install path@version:
// mainPath is "" and mode pruned), then brings the roots up to their selected
// versions and walks again until they agree, as modload.expandGraph does.
func (c *graphConfig) walkModule(ctx context.Context, mode pruning, mainPath string, roots []module.Version) (*walkResult, error) {
	roots = dedupRoots(roots)
	var mains []string
	if mainPath != "" {
		mains = []string{mainPath}
	}
	for iter := 0; ; iter++ {
		g, err := c.readModGraph(ctx, mode, mains, roots)
		if err != nil {
			return nil, err
		}
		sel := g.selected()
		changed := false
		for i, r := range roots {
			if s := sel[r.Path]; s != r.Version && s != "" {
				roots[i].Version = s
				changed = true
			}
		}
		if !changed || iter > 100 {
			return c.result(g, sel), nil
		}
	}
}

// walkWorkspace computes the module graph of a workspace whose main modules
// are already recorded in c.mains.
func (c *graphConfig) walkWorkspace(ctx context.Context) (*walkResult, error) {
	var mains []string
	var roots []module.Version
	for p := range c.mains {
		mains = append(mains, p)
		roots = append(roots, module.Version{Path: p})
	}
	slices.Sort(mains)
	sort.Slice(roots, func(i, j int) bool { return roots[i].Path < roots[j].Path })
	g, err := c.readModGraph(ctx, workspace, mains, roots)
	if err != nil {
		return nil, err
	}
	return c.result(g, g.selected()), nil
}

// result turns a graph into needs: the go.mod of every module version whose
// go.mod was read, and the zip of every module in the build list, both
// after replacement (a directory replacement needs nothing).
func (c *graphConfig) result(g *graph, sel map[string]string) *walkResult {
	res := &walkResult{}
	c.mu.Lock()
	for m := range c.modRead {
		res.needs = append(res.needs, Need{Path: m.Path, Version: m.Version})
	}
	c.mu.Unlock()
	for p, v := range sel {
		if v == "" || p == "go" || p == "toolchain" {
			continue
		}
		if c.ignore != nil && c.ignore(p) {
			continue
		}
		m := module.Version{Path: p, Version: v}
		res.buildList = append(res.buildList, m)
		if rep := c.resolveReplacement(m); rep.dir == "" {
			res.needs = append(res.needs, Need{Path: rep.mod.Path, Version: rep.mod.Version, Zip: true})
		}
	}
	sortVersions(res.buildList)
	return res
}

func dedupRoots(roots []module.Version) []module.Version {
	best := map[string]string{}
	var order []string
	for _, r := range roots {
		if r.Version == "none" {
			continue
		}
		v, ok := best[r.Path]
		if !ok {
			order = append(order, r.Path)
		}
		if !ok || semver.Compare(r.Version, v) > 0 {
			best[r.Path] = r.Version
		}
	}
	out := make([]module.Version, 0, len(order))
	for _, p := range order {
		out = append(out, module.Version{Path: p, Version: best[p]})
	}
	return out
}

func sortVersions(ms []module.Version) {
	sort.Slice(ms, func(i, j int) bool {
		if ms[i].Path != ms[j].Path {
			return ms[i].Path < ms[j].Path
		}
		return semver.Compare(ms[i].Version, ms[j].Version) < 0
	})
}
