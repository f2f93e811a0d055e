package proxy

import (
	"context"
	"go/version"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/mod/modfile"
	"golang.org/x/mod/module"

	"github.com/modproxy/modproxy/cache"
)

// Prefetch defaults (see Config).
const (
	defaultPrefetchConcurrency = 8
	defaultPrefetchPerRequest  = 32
	defaultPrefetchBytes       = 1 << 20
	defaultPrefetchWindow      = 30 * time.Second
	// maxPrefetchTracked bounds the prefetched artifacts remembered while
	// waiting to learn whether a client asks for them.
	maxPrefetchTracked = 10_000
)

// Prefetch kinds, the kind label of modproxy_prefetch_total.
const (
	// prefetchMod is the .mod (and its checksum-database record) of the
	// version whose .info missed: the go command asks for it next.
	prefetchMod = "mod"
	// prefetchRequire is the .mod of a version required by a go.mod just
	// served: the go command's module graph walk asks for it next.
	prefetchRequire = "require"
	// prefetchInfo is the .info of a version whose .mod was just served
	// (Config.PrefetchInfo): go mod download and go list -m ask for it.
	prefetchInfo = "info"
)

// Prefetch results, the result label of modproxy_prefetch_total.
const (
	prefetchUsed    = "used"    // fetched, then asked for by a client
	prefetchWasted  = "wasted"  // fetched, not asked for within the window
	prefetchError   = "error"   // the fetch failed
	prefetchDropped = "dropped" // not started: over budget, or the window ended
	// prefetchPruned: a requirement of a go.mod whose module graph is
	// pruned, not prefetched while misses are cheap (see speculate).
	prefetchPruned = "pruned"
)

// Pruned go.mod files (see prefetcher.speculate).
const (
	defaultPrefetchPrunedMinMiss = 20 * time.Millisecond
	// missSamples is how many recent .mod misses the median is taken of;
	// minMissSamples how many are needed before it decides.
	missSamples    = 15
	minMissSamples = 5
)

// recordLooker is the part of the checksum-database verifier that fetches
// the record of module@version ahead of its verification
// (sumdb.Verifier.Lookup). The record lands in the verifier's store and its
// client's cache, so that the VerifyHash calls of the .mod and the .zip
// that follow answer from it (and a VerifyHash that starts while the
// lookup is still running joins it).
type recordLooker interface {
	Lookup(ctx context.Context, path, version string) (modHash, zipHash string, err error)
}

// lookupAhead starts the checksum-database lookup of req's module version
// at the same time as the artifact fetch, instead of after it, so that a
// cold miss costs the longer of the two round trips instead of their sum.
// Private and exempt paths are never looked up. The lookup runs on ctx
// (the fetch's context) and is owned by the Fetcher; its outcome is
// ignored: the verification that follows reports any failure.
func (f *Fetcher) lookupAhead(ctx context.Context, req Request, private bool) {
	v, ok := f.cfg.Verifier.(recordLooker)
	if !ok || private || f.cfg.Verifier.Exempt(req.Module) {
		return
	}
	if !f.startWork() {
		return
	}
	go func() {
		defer f.wg.Done()
		v.Lookup(ctx, req.Module, req.Version)
	}()
}

// prefetcher fetches, in the background and within a budget, the .mod
// files (and, with Config.PrefetchInfo, .info files) the go command is
// about to ask for, through the Fetcher's normal
// pipeline (so the upstream list, private routing, verification and the
// sharing of concurrent fetches all apply). It never fetches zips: a zip is
// large, and whether the go command wants it (go mod download, a build) or
// only the go.mod (the module graph walk) cannot be told from the request
// before it.
type prefetcher struct {
	f           *Fetcher
	sem         chan struct{} // bounds prefetches in flight
	perRequest  int
	maxBytes    int64
	window      time.Duration
	now         func() time.Time
	mu          sync.Mutex
	tracked     map[cache.Key]*prefetched
	closed      bool
	allow       atomic.Pointer[func(path, version string) bool]
	triggerHook func() // tests: called when a trigger's work is done

	// minMiss is Config.PrefetchPrunedMinMiss; misses the durations of
	// the last .mod misses, a ring of missSamples, of which missN were
	// recorded.
	minMiss time.Duration
	missMu  sync.Mutex
	misses  [missSamples]time.Duration
	missN   int
}

// prefetched is a prefetch in flight or done, not yet asked for.
type prefetched struct {
	kind    string
	started time.Time
	done    bool // fetched and stored
	claimed bool // a client asked while it was in flight
}

func newPrefetcher(f *Fetcher) *prefetcher {
	c := f.cfg
	return &prefetcher{
		f:          f,
		sem:        make(chan struct{}, c.PrefetchConcurrency),
		perRequest: c.PrefetchPerRequest,
		maxBytes:   c.PrefetchBytes,
		window:     c.PrefetchWindow,
		now:        c.Now,
		tracked:    make(map[cache.Key]*prefetched),
		minMiss:    c.PrefetchPrunedMinMiss,
	}
}

// observeMiss records what a client's .mod miss cost it.
func (p *prefetcher) observeMiss(d time.Duration) {
	p.missMu.Lock()
	defer p.missMu.Unlock()
	p.misses[p.missN%missSamples] = d
	p.missN++
}

// speculate reports whether the requirements of a pruned go.mod (go 1.17
// or later) are worth prefetching. The go command's pruned module graph
// reads the go.mod of such a module's requirements only when the main
// module lists them too, which the proxy cannot see: for a real project
// (caddy's, 320 go.mod files) two thirds of these prefetches were never
// asked for, doubled the upstream requests and cost a sixth of the
// proxy's CPU. They pay when a miss is expensive, so they are made while
// the median of the recent .mod misses is at least minMiss (and until
// there are enough misses to tell); the requirements of an unpruned
// go.mod, which the go command does read, are always prefetched.
func (p *prefetcher) speculate() bool {
	if p.minMiss < 0 {
		return true
	}
	p.missMu.Lock()
	n := min(p.missN, missSamples)
	if n < minMissSamples {
		p.missMu.Unlock()
		return true
	}
	recent := slices.Clone(p.misses[:n])
	p.missMu.Unlock()
	slices.Sort(recent)
	return recent[n/2] >= p.minMiss
}

func (p *prefetcher) count(kind, result string, n int) {
	if n > 0 {
		p.f.m.prefetch.WithLabelValues(kind, result).Add(float64(n))
	}
}

// claim notes that a client asked for key; it reports whether key was
// prefetched (and not yet claimed).
func (p *prefetcher) claim(key cache.Key) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	e := p.tracked[key]
	if e == nil || e.claimed {
		return false
	}
	if e.done {
		delete(p.tracked, key)
		p.count(e.kind, prefetchUsed, 1)
	} else {
		e.claimed = true // counted as used when it completes
	}
	return true
}

// register starts tracking a prefetch of key; false means skip it: it is
// stored, known missing, already tracked, or too much is tracked. full
// means the request's budget is spent: a key that would have been
// prefetched is then dropped, not tracked.
func (p *prefetcher) register(kind string, key cache.Key, req Request, full bool) (ok, dropped bool) {
	if allow := p.allow.Load(); allow != nil && !(*allow)(req.Module, req.Version) {
		return false, true
	}
	if _, err := p.f.store.Stat(key); err == nil {
		return false, false
	}
	// Being fetched for a client, or answered and being committed.
	if p.f.fetching(smallKey(req)) {
		return false, false
	}
	if p.f.neg.get(req.negKey()) != nil {
		return false, false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false, true
	}
	if _, ok := p.tracked[key]; ok {
		return false, false
	}
	if full || len(p.tracked) >= maxPrefetchTracked {
		return false, true
	}
	p.tracked[key] = &prefetched{kind: kind, started: p.now()}
	return true, false
}

// finish records the end of a prefetch.
func (p *prefetcher) finish(key cache.Key, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	e := p.tracked[key]
	if e == nil {
		return
	}
	switch {
	case err != nil:
		delete(p.tracked, key)
		if e.claimed {
			// The client that asked joined this fetch and got its error.
			p.count(e.kind, prefetchUsed, 1)
		} else {
			p.count(e.kind, prefetchError, 1)
		}
	case e.claimed:
		delete(p.tracked, key)
		p.count(e.kind, prefetchUsed, 1)
	default:
		e.done = true
	}
}

// sweep counts prefetches nobody asked for within the window as wasted;
// all of them when final.
func (p *prefetcher) sweep(final bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	for k, e := range p.tracked {
		if e.done && (final || now.Sub(e.started) >= p.window) {
			delete(p.tracked, k)
			p.count(e.kind, prefetchWasted, 1)
		}
	}
	if final {
		p.closed = true
	}
}

// start prefetches reqs (.mod or .info files) in the background: at most
// perRequest of them, at most maxBytes in total, at most cap(sem) at once
// across the Fetcher, and none that has not started when the window ends
// or the Fetcher closes. The fetches go through Fetcher.small, the same
// shared fetch a client's request joins.
func (p *prefetcher) start(kind string, reqs []Request) {
	if len(reqs) == 0 {
		return
	}
	p.sweep(false)
	// Registered now, before the response that triggered them is sent, so
	// that the go command's next requests find them claimable. The budget
	// counts prefetches started, not requirements listed: a large go.mod's
	// first requirements are mostly stored already, and capping the list
	// before skipping them left the unstored ones past the 32nd
	// unfetched, and counted the stored ones as dropped.
	var todo []Request
	for _, req := range reqs {
		ok, dropped := p.register(kind, req.key(), req, len(todo) == p.perRequest)
		if ok {
			todo = append(todo, req)
		} else if dropped {
			p.count(kind, prefetchDropped, 1)
		}
	}
	if len(todo) == 0 {
		return
	}
	f := p.f
	if !f.startWork() {
		p.drop(kind, todo)
		return
	}
	go func() {
		defer f.wg.Done()
		if p.triggerHook != nil {
			defer p.triggerHook()
		}
		ctx, cancel := context.WithTimeout(f.ctx, p.window)
		defer cancel()
		var fetched atomic.Int64
		var wg sync.WaitGroup
		defer wg.Wait()
		for i, req := range todo {
			select {
			case p.sem <- struct{}{}:
			case <-ctx.Done():
				p.drop(kind, todo[i:])
				return
			}
			// Checked once a slot is free, so that the bytes of the
			// fetches that freed it are counted: the total stays within
			// maxBytes plus what is in flight.
			if fetched.Load() >= p.maxBytes {
				<-p.sem
				p.drop(kind, todo[i:])
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { <-p.sem }()
				a, err := f.fetchSmallShared(ctx, req, true)
				if err == nil {
					fetched.Add(int64(len(a.Data)))
				}
				p.finish(req.key(), err)
			}()
		}
	}()
}

// drop forgets registered prefetches that will not run.
func (p *prefetcher) drop(kind string, reqs []Request) {
	p.mu.Lock()
	for _, r := range reqs {
		delete(p.tracked, r.key())
	}
	p.mu.Unlock()
	p.count(kind, prefetchDropped, len(reqs))
}

// SetPrefetchFilter makes prefetch skip (and count as dropped) the module
// versions allow refuses: the access layer's module policy, so that a
// version no client may fetch is never fetched ahead either. Safe to call
// while serving.
func (f *Fetcher) SetPrefetchFilter(allow func(path, version string) bool) {
	if f.pf == nil {
		return
	}
	if allow == nil {
		f.pf.allow.Store(nil)
		return
	}
	f.pf.allow.Store(&allow)
}

// ClientSmall is Small for a go command's request: after it, the Fetcher
// prefetches what the go command will ask for next. After an .info miss,
// that version's .mod (whose fetch starts its checksum-database lookup);
// after a .mod is served for the first time (fetched now, or prefetched and
// now asked for), the .mod of every version it requires, one level deep.
func (f *Fetcher) ClientSmall(ctx context.Context, req Request) (*Artifact, error) {
	start := time.Now()
	a, claimed, err := f.smallClaim(ctx, req)
	if err != nil || f.pf == nil {
		return a, err
	}
	switch {
	case req.Kind == KindInfo && a.Cache == "miss":
		f.pf.start(prefetchMod, []Request{{Module: req.Module, Version: req.Version, Kind: KindMod}})
	case req.Kind == KindMod && (a.Cache == "miss" || claimed):
		if f.cfg.PrefetchInfo {
			f.pf.start(prefetchInfo, []Request{{Module: req.Module, Version: req.Version, Kind: KindInfo}})
		}
		if a.Cache == "miss" && !claimed {
			f.pf.observeMiss(time.Since(start))
		}
		reqs, pruned := requiredMods(a.Data)
		if pruned && !f.pf.speculate() {
			n := 0
			for _, r := range reqs {
				if _, err := f.store.Stat(r.key()); err != nil {
					n++ // stored ones would not have been prefetched either
				}
			}
			f.pf.count(prefetchRequire, prefetchPruned, n)
			break
		}
		f.pf.start(prefetchRequire, reqs)
	}
	return a, nil
}

// requiredMods returns the .mod requests of the versions a go.mod
// requires, skipping anything that is not a canonical module version, and
// whether the go.mod's module graph is pruned (go 1.17 or later).
func requiredMods(gomod []byte) (_ []Request, pruned bool) {
	mf, err := modfile.ParseLax("go.mod", gomod, nil)
	if err != nil {
		return nil, false
	}
	pruned = mf.Go != nil && prunes(mf.Go.Version)
	var out []Request
	seen := make(map[module.Version]bool)
	for _, r := range mf.Require {
		m := r.Mod
		// ParseLax completes a version such as "v1.2"; the go command
		// would resolve it with a query first, so it is not prefetched.
		if rawVersion(gomod, r.Syntax) != m.Version {
			continue
		}
		if seen[m] || module.Check(m.Path, m.Version) != nil || module.CanonicalVersion(m.Version) != m.Version {
			continue
		}
		seen[m] = true
		out = append(out, Request{Module: m.Path, Version: m.Version, Kind: KindMod})
	}
	return out, pruned
}

// rawVersion returns the version as written on a require line (ParseLax
// rewrites the parsed tokens).
func rawVersion(gomod []byte, line *modfile.Line) string {
	if line == nil || line.Start.Byte < 0 || line.End.Byte > len(gomod) || line.Start.Byte >= line.End.Byte {
		return ""
	}
	f := strings.Fields(string(gomod[line.Start.Byte:line.End.Byte]))
	if len(f) == 0 {
		return ""
	}
	return strings.Trim(f[len(f)-1], "\"`")
}

// key is the store key of an .info, .mod or .zip request.
func (r Request) key() cache.Key {
	return cache.Key{Path: r.Module, Version: r.Version, Kind: cache.Kind(r.Kind)}
}

// prunes reports whether a go.mod declaring go version v (1.21, 1.21.0,
// 1.21rc1, 1.9) has a pruned module graph: go 1.17 and later. An invalid
// version compares below every valid one.
func prunes(v string) bool {
	return version.Compare("go"+v, "go1.17") >= 0
}
