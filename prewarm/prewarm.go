// Package prewarm fills a module store ahead of a build: given the needs
// that modgraph computed, it makes every .info, .mod and .zip present
// through a Backend (the proxy's fetch, verify and store pipeline in this
// process, or a running modproxy over HTTP), checks each artifact against
// the go.sum hashes carried by its need, and stores the checksum-database
// records and tiles that the go command asks for when it verifies them
// offline.
package prewarm

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/modproxy/modproxy/bundle"
	"github.com/modproxy/modproxy/cache"
	"github.com/modproxy/modproxy/internal/oneline"
	"github.com/modproxy/modproxy/modgraph"
)

// Options configure Run.
type Options struct {
	// Backend runs the fetch–verify–store pipeline (required).
	Backend Backend
	// Jobs bounds the module versions processed in parallel (default 16).
	Jobs int
	// SumDB names the checksum database whose records, with the tiles that
	// prove them, are read through Backend.SumDB (so that the backend
	// stores them for offline verification) and checked against the
	// fetched hashes. "" skips this step (GOSUMDB=off).
	SumDB string
	// SumDBKey is that database's verifier key ("<name>+<hash>+<key>");
	// "" reads its tree heads without authenticating them.
	SumDBKey string
	// Exempt reports module paths the checksum database does not cover
	// (GOPRIVATE and GONOSUMDB patterns); nil exempts none.
	Exempt func(path string) bool
	// Progress, when set, is called after each artifact and each module
	// version, never concurrently, with the progress so far.
	Progress func(Progress)
	// GraphFailures are the go.mod files that the resolution could not
	// read (modgraph.Plan.Failures): each is listed among the report's
	// failures, once per module version, as the rest is prewarmed.
	GraphFailures []modgraph.Failure
	// Start is when the run began, for Report.Seconds (default: when
	// Run is called). A caller that resolved the needs first can count
	// that time in.
	Start time.Time
}

// Progress is how far a run is.
type Progress struct {
	Modules int   // module versions to prewarm
	Done    int   // module versions finished, successfully or not
	Bytes   int64 // content bytes received, or found stored, so far
}

// Failure is a module version that could not be prewarmed.
type Failure struct {
	Module  string `json:"module"`
	Version string `json:"version"`
	Error   string `json:"error"` // on one line
}

// Report is the outcome of a run.
type Report struct {
	Modules int `json:"modules"`
	Added   int `json:"added"`          // module versions with at least one artifact added to the store
	Stored  int `json:"already_stored"` // module versions entirely stored already
	Failed  int `json:"failed"`
	// FilesAdded and FilesStored count the .info, .mod and .zip files
	// added, and found already stored, over all module versions.
	FilesAdded  int     `json:"files_added"`
	FilesStored int     `json:"files_already_stored"`
	Bytes       int64   `json:"bytes"` // content bytes fetched or found stored
	Seconds     float64 `json:"seconds"`
	SumDB       string  `json:"sumdb,omitempty"` // Options.SumDB
	Records     int     `json:"sumdb_records"`   // checksum-database records verified and stored
	// Failures are sorted by module path and version. A failure of the
	// final consistency check of the checksum-database trees is listed as
	// module "(checksum database <name>)" with no version.
	Failures []Failure `json:"failures"`
}

// Run makes every artifact of needs present in the backend's store:
// .info and .mod, and .zip where Need.Zip is set. Artifacts already stored
// are not fetched again. Each .mod and .zip is checked on arrival against
// the go.sum hashes in its Need, and, unless exempt, against the record of
// the checksum database named by opts.SumDB, which is stored too. A module
// version that fails is listed in the report's Failures with the reason;
// the others are unaffected.
//
// Run returns the report also when ctx is cancelled, with an error
// wrapping the cause: the versions not reached are listed as failed, and
// what was stored is whole (the store publishes each artifact atomically).
// Other errors (invalid options) come with a nil report.
func Run(ctx context.Context, needs []modgraph.Need, opts Options) (*Report, error) {
	if opts.Backend == nil {
		return nil, errors.New("prewarm: no backend")
	}
	if opts.Jobs <= 0 {
		opts.Jobs = 16
	}
	if opts.Start.IsZero() {
		opts.Start = time.Now()
	}
	p := &prewarmer{opts: opts, prog: Progress{Modules: len(needs)}}
	if opts.SumDB != "" {
		m, err := bundle.NewMirror(func(rel string) ([]byte, error) { return opts.Backend.SumDB(ctx, opts.SumDB, rel) }, opts.SumDBKey)
		if err != nil {
			return nil, fmt.Errorf("prewarm: %w", err)
		}
		p.mirror = m
	}

	results := p.run(ctx, needs)
	rep := &Report{Modules: len(needs), SumDB: opts.SumDB, Failures: []Failure{}}
	if p.mirror != nil && ctx.Err() == nil {
		if err := p.mirror.Finish(); err != nil {
			rep.Failures = append(rep.Failures, Failure{Module: "(checksum database " + opts.SumDB + ")", Error: oneLineErr(err)})
		}
	}
	graphFailed := map[string]bool{}
	for _, f := range opts.GraphFailures {
		graphFailed[f.Path+"@"+f.Version] = true
		rep.Failures = append(rep.Failures, Failure{Module: f.Path, Version: f.Version, Error: "go.mod unreadable, so the modules only it requires are missing: " + oneLineErr(f.Err)})
	}
	inNeeds := map[string]bool{}
	for _, r := range results {
		k := r.need.Path + "@" + r.need.Version
		inNeeds[k] = true
		switch {
		case graphFailed[k]:
			// Reported once, with its graph failure, whether or not its
			// files could be fetched.
		case r.err != nil:
			rep.Failures = append(rep.Failures, Failure{Module: r.need.Path, Version: r.need.Version, Error: oneLineErr(r.err)})
		case r.added > 0:
			rep.Added++
		default:
			rep.Stored++
		}
		rep.FilesAdded += r.added
		rep.FilesStored += r.stored
		rep.Bytes += r.bytes
		if r.record {
			rep.Records++
		}
	}
	for k := range graphFailed {
		if !inNeeds[k] {
			rep.Modules++
		}
	}
	slices.SortFunc(rep.Failures, cmpFailure)
	rep.Failed = len(rep.Failures)
	rep.Seconds = time.Since(opts.Start).Seconds()
	if ctx.Err() != nil {
		return rep, fmt.Errorf("prewarm interrupted: %w", context.Cause(ctx))
	}
	return rep, nil
}

// Kinds lists the files that need n calls for: .info and .mod, and .zip
// when its zip is needed. The .info of a module whose go.mod only is needed
// costs one small request and lets 'go list -m' of it work offline.
func Kinds(n modgraph.Need) []cache.Kind {
	if n.Zip {
		return []cache.Kind{cache.KindInfo, cache.KindMod, cache.KindZip}
	}
	return []cache.Kind{cache.KindInfo, cache.KindMod}
}

// cmpFailure orders failures by module path, then version.
func cmpFailure(a, b Failure) int {
	if c := strings.Compare(a.Module, b.Module); c != 0 {
		return c
	}
	return strings.Compare(a.Version, b.Version)
}

var oneLineErr = oneline.Of

// prewarmer runs the per-module work on a pool of workers.
type prewarmer struct {
	opts   Options
	mirror *bundle.Mirror // nil when checksum verification is off

	mu   sync.Mutex // serializes opts.Progress calls
	prog Progress
}

// needResult is the outcome for one module version.
type needResult struct {
	need          modgraph.Need
	added, stored int // artifacts added to the store, and found stored
	bytes         int64
	record        bool // its checksum-database record was verified and stored
	err           error
}

// progress adds to the progress counts and reports them.
func (p *prewarmer) progress(done int, bytes int64) {
	if p.opts.Progress == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.prog.Done += done
	p.prog.Bytes += bytes
	p.opts.Progress(p.prog)
}

// run processes needs on opts.Jobs workers. Needs not handed to a worker
// before ctx is done fail with its cause.
func (p *prewarmer) run(ctx context.Context, needs []modgraph.Need) []needResult {
	results := make([]needResult, len(needs))
	work := make(chan int)
	var wg sync.WaitGroup
	for range min(p.opts.Jobs, max(len(needs), 1)) {
		wg.Go(func() {
			for i := range work {
				results[i] = p.one(ctx, needs[i])
				p.progress(1, 0)
			}
		})
	}
	for i := range needs {
		if ctx.Err() != nil {
			results[i] = needResult{need: needs[i], err: context.Cause(ctx)}
			continue
		}
		select {
		case work <- i:
		case <-ctx.Done():
			results[i] = needResult{need: needs[i], err: context.Cause(ctx)}
		}
	}
	close(work)
	wg.Wait()
	return results
}

// one makes the artifacts of n present, checks them against the go.sum
// hashes in n, and verifies and stores its checksum-database record.
func (p *prewarmer) one(ctx context.Context, n modgraph.Need) needResult {
	res := needResult{need: n}
	kinds := Kinds(n)
	checkDB := p.mirror != nil && (p.opts.Exempt == nil || !p.opts.Exempt(n.Path))
	hashes := map[cache.Kind]string{}
	for _, kind := range kinds {
		k := cache.Key{Path: n.Path, Version: n.Version, Kind: kind}
		a, err := p.opts.Backend.Fetch(ctx, k, n.ZipHash != "" || checkDB)
		if err != nil {
			res.err = fmt.Errorf("%s: %w", kind, err)
			return res
		}
		res.bytes += a.Size
		p.progress(0, a.Size)
		if a.Cached {
			res.stored++
		} else {
			res.added++
		}
		hashes[kind] = a.Hash
	}
	if want := n.ModHash; want != "" && hashes[cache.KindMod] != want {
		res.err = fmt.Errorf("go.sum mismatch: go.sum has %s for %s@%s/go.mod, the fetched go.mod hashes to %s", want, n.Path, n.Version, hashes[cache.KindMod])
		return res
	}
	if want := n.ZipHash; n.Zip && want != "" && hashes[cache.KindZip] != want {
		res.err = fmt.Errorf("go.sum mismatch: go.sum has %s for %s@%s, the fetched zip hashes to %s", want, n.Path, n.Version, hashes[cache.KindZip])
		return res
	}
	if !checkDB {
		return res
	}
	lines, err := p.mirror.Lookup(n.Path, n.Version)
	if err != nil {
		res.err = err
		return res
	}
	for _, line := range lines {
		f := strings.Fields(line)
		if len(f) != 3 {
			continue
		}
		kind, got := cache.KindZip, hashes[cache.KindZip]
		if strings.HasSuffix(f[1], "/go.mod") {
			kind, got = cache.KindMod, hashes[cache.KindMod]
		}
		if got != "" && got != f[2] {
			res.err = fmt.Errorf("checksum database mismatch for %s@%s %s: the database has %s, the stored content hashes to %s", n.Path, n.Version, kind, f[2], got)
			return res
		}
	}
	res.record = true
	return res
}
