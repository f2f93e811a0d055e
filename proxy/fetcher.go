package proxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/mod/module"
	"golang.org/x/mod/semver"

	"github.com/modproxy/modproxy/cache"
	"github.com/modproxy/modproxy/cache/gate"
	"github.com/modproxy/modproxy/netprobe"
	"github.com/modproxy/modproxy/sumdb"
)

// Limits on metadata answers from upstreams; anything larger is garbage.
const (
	maxInfoSize = gate.MaxInfo
	maxListSize = 16 << 20
	maxModSize  = gate.MaxMod
)

// Config configures a Fetcher and the Server built on it.
type Config struct {
	Store Store
	// Client sends every upstream request. Its transport should bound
	// connect, first-byte and idle-body time, not the whole request (large
	// zips must not time out while still flowing).
	Client *http.Client
	// Upstreams is the public upstream list (GOPROXY syntax, parsed).
	Upstreams []Upstream
	// PrivateUpstreams serve module paths matching Private; those paths
	// are never sent to a public upstream.
	PrivateUpstreams []Upstream
	// Private is a comma-separated list of module path glob patterns
	// (GOPRIVATE syntax).
	Private string
	// Direct serves the "direct" entries of the upstream lists (fetching
	// from version control); nil answers them "not found".
	Direct Direct
	// Verifier checks .mod and .zip files against the checksum database;
	// nil stores everything as exempt (GOSUMDB=off).
	Verifier Verifier
	// VerifyFailOpen stores (and serves) artifacts unverified while the
	// checksum database cannot be reached, instead of refusing them. With a
	// Verifier, such artifacts are verified in the background once the
	// database answers again (see reverifier).
	VerifyFailOpen bool
	// ReverifyRetry is how long the background verification of unverified
	// artifacts waits after a fail-open store, and between attempts while
	// the database stays unreachable; default 30s.
	ReverifyRetry time.Duration
	// Health orders upstreams and trips circuit breakers; nil means plain
	// list order.
	Health Health
	// Offline serves only what is stored.
	Offline bool
	// ListTTL is how long list and @latest answers stay fresh.
	ListTTL time.Duration
	// NegativeTTL is how long an upstream's not-found answer is remembered.
	NegativeTTL time.Duration
	// SpoolDir holds zips while they download; default os.TempDir().
	SpoolDir string
	// MetadataTimeout bounds one metadata fetch across all upstreams.
	MetadataTimeout time.Duration
	// StaleBudget is how long a list or @latest request with a stored
	// (expired) answer waits for the upstreams before it is answered
	// stale; default 2s.
	StaleBudget time.Duration
	// HoldBack is how much of a zip is buffered, and for how long, before
	// it is streamed to waiting clients. A zip that completes within the
	// hold-back is verified before its first byte is sent, so a bad copy
	// can still be answered with a clean error and replaced by the next
	// upstream's; past it, a bad copy aborts the clients' connections.
	HoldBackBytes int64
	HoldBackTime  time.Duration
	// NoPrefetch turns off the prefetch of .mod files the go command is
	// about to ask for (see ClientSmall).
	NoPrefetch bool
	// PrefetchConcurrency bounds prefetches in flight across the Fetcher
	// (default 8); PrefetchPerRequest the .mod files one served go.mod may
	// prefetch (default 32); PrefetchBytes the bytes those may total
	// (default 1 MiB). PrefetchWindow is how long a prefetch may wait to
	// start, and how long a prefetched file waits for a client before it
	// counts as wasted (default 30s).
	PrefetchConcurrency int
	PrefetchPerRequest  int
	PrefetchBytes       int64
	PrefetchWindow      time.Duration
	// PrefetchInfo also prefetches the .info of a version whose .mod is
	// served for the first time: go mod download and go list -m ask for
	// every module's .info, one at a time, after the .mod files; builds
	// and go mod tidy do not.
	PrefetchInfo bool
	// PrefetchPrunedMinMiss is the median cost of the recent .mod misses
	// from which the requirements of a pruned go.mod (go 1.17 or later)
	// are prefetched too (default 20ms; negative: always). See
	// prefetcher.speculate.
	PrefetchPrunedMinMiss time.Duration
	Logger                *slog.Logger
	Metrics               *Metrics
	// Now is the clock; default time.Now.
	Now func() time.Time

	// MaxZipDownloads bounds concurrent upstream zip downloads; more wait
	// in a queue of ZipQueue for at most ZipQueueWait, then get 503 with
	// Retry-After. Defaults DefaultMaxZipDownloads, DefaultZipQueue,
	// DefaultZipQueueWait.
	MaxZipDownloads int
	ZipQueue        int
	ZipQueueWait    time.Duration
	// SpoolQuota bounds the bytes of all spool files together (0:
	// unbounded). A download that would exceed it gets 503 with
	// Retry-After, or 507 when it is larger than the whole quota.
	SpoolQuota int64
	// MinFreeSpace is kept free on the store's and the spool's file
	// systems: a zip that would eat into it is not staged (it is passed
	// through unstored), and /readyz reports the disk as full until it is
	// free again. Default DefaultMinFreeSpace; negative means 0.
	MinFreeSpace int64
	// DiskFree returns the free bytes of the file system holding a
	// directory (default statfs; a test seam).
	DiskFree func(dir string) (uint64, error)

	// beforeCommit, a test seam, runs before the store commit of a
	// verified .info, .mod or zip, after its clients were answered.
	beforeCommit func(Request)
	// afterRelease, a test seam, runs when a verified zip has been
	// released to its clients, before its commit or, with no room, before
	// its download ends unstored.
	afterRelease func(Request)
}

func (c *Config) setDefaults() {
	if c.Client == nil {
		c.Client = http.DefaultClient
	}
	if c.ListTTL <= 0 {
		c.ListTTL = 5 * time.Minute
	}
	if c.NegativeTTL <= 0 {
		c.NegativeTTL = time.Minute
	}
	if c.MetadataTimeout <= 0 {
		c.MetadataTimeout = 2 * time.Minute
	}
	if c.StaleBudget <= 0 {
		c.StaleBudget = 2 * time.Second
	}
	if c.HoldBackBytes <= 0 {
		c.HoldBackBytes = 8 << 20
	}
	if c.HoldBackTime <= 0 {
		c.HoldBackTime = 300 * time.Millisecond
	}
	if c.MaxZipDownloads <= 0 {
		c.MaxZipDownloads = DefaultMaxZipDownloads
	}
	if c.ZipQueue < 0 {
		c.ZipQueue = 0
	} else if c.ZipQueue == 0 {
		c.ZipQueue = DefaultZipQueue
	}
	if c.ZipQueueWait <= 0 {
		c.ZipQueueWait = DefaultZipQueueWait
	}
	if c.SpoolQuota < 0 {
		c.SpoolQuota = 0
	}
	if c.SpoolDir == "" {
		c.SpoolDir = os.TempDir()
	}
	if c.MinFreeSpace == 0 {
		c.MinFreeSpace = DefaultMinFreeSpace
	} else if c.MinFreeSpace < 0 {
		c.MinFreeSpace = 0
	}
	if c.DiskFree == nil {
		c.DiskFree = diskFree
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Metrics == nil {
		c.Metrics = NewMetrics(nil)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.ReverifyRetry <= 0 {
		c.ReverifyRetry = 30 * time.Second
	}
	if c.PrefetchConcurrency <= 0 {
		c.PrefetchConcurrency = defaultPrefetchConcurrency
	}
	if c.PrefetchPerRequest <= 0 {
		c.PrefetchPerRequest = defaultPrefetchPerRequest
	}
	if c.PrefetchBytes <= 0 {
		c.PrefetchBytes = defaultPrefetchBytes
	}
	if c.PrefetchWindow <= 0 {
		c.PrefetchWindow = defaultPrefetchWindow
	}
	if c.PrefetchPrunedMinMiss == 0 {
		c.PrefetchPrunedMinMiss = defaultPrefetchPrunedMinMiss
	}
}

// Fetcher gets artifacts from the store or, on a miss, from the upstreams,
// verifying and storing them. Concurrent identical misses share one fetch.
// Fetches run on the Fetcher's own context, not the requesting client's, so
// that a client going away does not waste a download others wait for.
type Fetcher struct {
	cfg    Config
	store  Store // artifacts enter only through gate
	gate   *gate.Gate
	health Health
	log    *slog.Logger
	m      *Metrics

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	// workMu orders the start of background work (startWork) before
	// Close's wait: a WaitGroup must not be added to while it is waited
	// on at zero.
	workMu sync.Mutex
	closed bool

	metaMu      sync.Mutex
	metaFlights map[string]*sharedFetch
	neg         *negativeCache
	condemned   condemnedCopies

	zipMu      sync.Mutex
	zipFlights map[cache.Key]*zipFlight
	// zipCommits bounds the zip commits that hold a staging buffer
	// (4 MB) at once: they are answered already, and the store writes one
	// transaction at a time, so more would only wait with full buffers.
	zipCommits chan struct{}
	slots      *downloadSlots
	quota      *spoolQuota
	disk       *diskState

	reverify *reverifier // nil without a Verifier
	pf       *prefetcher // nil with NoPrefetch or Offline
}

// NewFetcher returns a Fetcher; Close stops its background fetches.
func NewFetcher(cfg Config) (*Fetcher, error) {
	cfg.setDefaults()
	if cfg.Store == nil {
		return nil, errors.New("proxy: no store")
	}
	if !cfg.Offline && len(cfg.Upstreams) == 0 && len(cfg.PrivateUpstreams) == 0 {
		return nil, errors.New("proxy: no upstream (use offline mode to serve only the store)")
	}
	if err := prepareSpool(cfg.SpoolDir); err != nil {
		return nil, fmt.Errorf("proxy: %w", err)
	}
	g, err := gate.New(gate.Config{Store: cfg.Store, Verifier: cfg.Verifier, FailOpen: cfg.VerifyFailOpen, TempDir: cfg.SpoolDir})
	if err != nil {
		return nil, fmt.Errorf("proxy: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cleanSpool(cfg.SpoolDir, cfg.Logger)
	f := &Fetcher{
		cfg:         cfg,
		store:       cfg.Store,
		gate:        g,
		health:      cfg.Health,
		log:         cfg.Logger,
		m:           cfg.Metrics,
		ctx:         ctx,
		cancel:      cancel,
		neg:         newNegativeCache(cfg.NegativeTTL, 100_000, cfg.Now),
		condemned:   condemnedCopies{now: cfg.Now},
		zipFlights:  make(map[cache.Key]*zipFlight),
		zipCommits:  make(chan struct{}, maxZipCommits),
		metaFlights: make(map[string]*sharedFetch),
		slots:       newDownloadSlots(cfg.MaxZipDownloads, cfg.ZipQueue, cfg.ZipQueueWait, cfg.Metrics),
		quota:       &spoolQuota{limit: cfg.SpoolQuota, m: cfg.Metrics},
		disk:        newDiskState(cfg.DiskFree, uint64(cfg.MinFreeSpace), localDirs(cfg.Store, cfg.SpoolDir)...),
	}
	if !cfg.NoPrefetch && !cfg.Offline {
		f.pf = newPrefetcher(f)
	}
	if cfg.Verifier != nil {
		f.reverify = newReverifier(f, cfg.ReverifyRetry)
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			f.reverify.run(ctx)
		}()
	}
	return f, nil
}

// Close cancels in-flight fetches and prefetches and waits for them to
// stop.
func (f *Fetcher) Close() {
	f.workMu.Lock()
	f.closed = true
	f.workMu.Unlock()
	f.cancel()
	f.wg.Wait()
	if f.pf != nil {
		f.pf.sweep(true)
	}
}

// errFetcherClosed is the error of work asked of a closed Fetcher.
var errFetcherClosed = errors.New("fetcher is shutting down")

// startWork counts one piece of background work into f.wg, unless the
// Fetcher is closing; the caller calls f.wg.Done when it ends.
func (f *Fetcher) startWork() bool {
	f.workMu.Lock()
	defer f.workMu.Unlock()
	if f.closed {
		return false
	}
	f.wg.Add(1)
	return true
}

// trialTimeout bounds a background half-open trial (the transport's
// first-byte timeout applies too).
const trialTimeout = 30 * time.Second

// trial runs the half-open trial of an upstream's open circuit in the
// background, so that no client request waits on it: one small request,
// the list of module mod, whose outcome is reported to the health tracker
// (by the transport, or by the Direct wrapper for a direct entry): any
// answer, even not found, closes the circuit; a failure re-opens it. It is
// owned by the Fetcher: Close cancels and waits for it.
func (f *Fetcher) trial(u Upstream, mod string) {
	if u.Off || (u.Direct && f.cfg.Direct == nil) {
		return // nothing to ask
	}
	if !f.startWork() {
		return // closing
	}
	go func() {
		defer f.wg.Done()
		ctx, cancel := context.WithTimeout(netprobe.BackgroundTrial(f.ctx), trialTimeout)
		defer cancel()
		p := Request{Module: mod, Kind: KindList}.URLPath()
		resp, err := f.get(ctx, u, p)
		var se *StatusError
		switch {
		case errors.As(err, &se):
			f.log.Info("half-open trial answered", "upstream", u.Name(), "status", se.Status)
		case err != nil:
			f.log.Info("half-open trial failed", "upstream", u.Name(), "err", err)
		default:
			io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
			resp.Body.Close()
			f.log.Info("half-open trial answered", "upstream", u.Name(), "status", resp.StatusCode)
		}
	}()
}

// upstreamsFor returns the upstreams that may serve module path, and
// whether it is private.
func (f *Fetcher) upstreamsFor(path string) ([]Upstream, bool) {
	if sumdb.MatchPatterns(f.cfg.Private, path) {
		return f.cfg.PrivateUpstreams, true
	}
	return f.cfg.Upstreams, false
}

// IsPrivate reports whether module path is private (the --private
// patterns), as the fetch pipeline decides it: access control asks this
// so that it and the pipeline never disagree about a path.
func (f *Fetcher) IsPrivate(path string) bool {
	_, private := f.upstreamsFor(path)
	return private
}

// get sends one GET to upstream u and returns the response when it is 200.
func (f *Fetcher) get(ctx context.Context, u Upstream, p string) (*http.Response, error) {
	if u.Direct {
		return f.getDirect(ctx, p)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.URL+"/"+p, nil)
	if err != nil {
		return nil, &UpstreamError{Upstream: u.Name(), Err: err}
	}
	req.Header.Set("User-Agent", "modproxy")
	resp, err := f.cfg.Client.Do(req)
	if err != nil {
		return nil, &UpstreamError{Upstream: u.Name(), Err: err}
	}
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		resp.Body.Close()
		msg, _, _ := strings.Cut(strings.TrimSpace(string(body)), "\n")
		return nil, &StatusError{Upstream: u.Name(), Status: resp.StatusCode, Msg: msg}
	}
	return resp, nil
}

// getSmall fetches a small file from u, refusing bodies over limit.
func (f *Fetcher) getSmall(ctx context.Context, u Upstream, p string, limit int64) ([]byte, error) {
	resp, err := f.get(ctx, u, p)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return nil, &UpstreamError{Upstream: u.Name(), Err: fmt.Errorf("read %s: %w", p, err)}
	}
	if int64(len(data)) > limit {
		return nil, &UpstreamError{Upstream: u.Name(), Err: fmt.Errorf("%w: %s larger than %d bytes", errBadContent, p, limit)}
	}
	if resp.ContentLength >= 0 && int64(len(data)) != resp.ContentLength {
		return nil, &UpstreamError{Upstream: u.Name(), Err: fmt.Errorf("read %s: truncated: %d of %d bytes", p, len(data), resp.ContentLength)}
	}
	return data, nil
}

// Artifact is a small artifact ready to serve.
type Artifact struct {
	Data     []byte
	Meta     cache.Meta
	Cache    string // hit, miss, stale, bypass
	Route    route
	Modified time.Time
	// Unstored: passed through because the store's disk had no room.
	Unstored bool
}

// result of a shared metadata fetch.
type metaResult struct {
	data     []byte
	meta     cache.Meta
	route    route
	unstored bool
}

// sharedFetch is a metadata fetch shared by the concurrent requests for
// one key. Its answer may be published before the fetch ends (a verified
// .mod is answered before its store commit); until the fetch ends, new
// requests for the key join it and get that answer instead of starting
// another fetch of what is being stored.
type sharedFetch struct {
	once     sync.Once
	done     chan struct{} // closed when res and err are set
	res      metaResult
	err      error
	ended    chan struct{} // closed when final and finalErr are set
	final    metaResult
	finalErr error
}

func (s *sharedFetch) publish(res metaResult, err error) {
	s.once.Do(func() {
		s.res, s.err = res, err
		close(s.done)
	})
}

// fetchShared runs fetch once for all concurrent callers with the same key,
// on the Fetcher's context, and returns when its answer is published (or,
// with toEnd, when fetch returns) or ctx is done. fetch may publish its
// answer before it returns, to answer its callers before work they need
// not wait for; what it returns is otherwise the answer. joined reports
// whether the caller joined a fetch already in flight.
func (f *Fetcher) fetchShared(ctx context.Context, key string, kind Kind, toEnd bool, fetch func(ctx context.Context, publish func(metaResult)) (metaResult, error)) (_ metaResult, joined bool, _ error) {
	f.metaMu.Lock()
	sf, joined := f.metaFlights[key]
	if joined {
		f.m.fetchShared.WithLabelValues(string(kind)).Inc()
	} else {
		if !f.startWork() {
			f.metaMu.Unlock()
			return metaResult{}, false, fmt.Errorf("fetch %s: %w", key, errFetcherClosed)
		}
		sf = &sharedFetch{done: make(chan struct{}), ended: make(chan struct{})}
		f.metaFlights[key] = sf
		go func() {
			defer f.wg.Done()
			fctx, cancel := context.WithTimeout(f.ctx, f.cfg.MetadataTimeout)
			defer cancel()
			res, err := fetch(fctx, func(r metaResult) { sf.publish(r, nil) })
			// Forgotten before its answer is given: a request that comes
			// after the answer (a list past its TTL) fetches again, and
			// does not join a fetch that has ended.
			f.metaMu.Lock()
			delete(f.metaFlights, key)
			f.metaMu.Unlock()
			sf.publish(res, err)
			sf.final, sf.finalErr = res, err
			close(sf.ended)
		}()
	}
	f.metaMu.Unlock()
	if toEnd {
		select {
		case <-sf.ended:
			return sf.final, joined, sf.finalErr
		case <-ctx.Done():
			return metaResult{}, joined, ctx.Err()
		}
	}
	select {
	case <-sf.done:
		return sf.res, joined, sf.err
	case <-ctx.Done():
		return metaResult{}, joined, ctx.Err()
	}
}

// smallKey is the fetchShared key of an .info or .mod request.
func smallKey(req Request) string { return "small:" + req.URLPath() }

// fetching reports whether a metadata fetch for key is in flight.
func (f *Fetcher) fetching(key string) bool {
	f.metaMu.Lock()
	defer f.metaMu.Unlock()
	_, ok := f.metaFlights[key]
	return ok
}

// Small returns the .info or .mod file named by req (canonical version).
func (f *Fetcher) Small(ctx context.Context, req Request) (*Artifact, error) {
	a, _, err := f.smallClaim(ctx, req)
	return a, err
}

// smallClaim is Small that also reports whether the artifact had been
// prefetched and this is the first request for it.
func (f *Fetcher) smallClaim(ctx context.Context, req Request) (*Artifact, bool, error) {
	claimed := false
	if f.pf != nil && (req.Kind == KindMod || req.Kind == KindInfo && f.cfg.PrefetchInfo) {
		claimed = f.pf.claim(req.key())
	}
	a, err := f.small(ctx, req)
	return a, claimed, err
}

// small is Small without the prefetch accounting.
func (f *Fetcher) small(ctx context.Context, req Request) (*Artifact, error) {
	return f.fetchSmallShared(ctx, req, false)
}

// fetchSmallShared is small; prefetch is set for the prefetcher's own
// fetches, whose failures other than not-found are not remembered in the
// negative cache: a prefetch during an upstream's blip must not make the
// go command's own request, moments later, fail from the cache.
func (f *Fetcher) fetchSmallShared(ctx context.Context, req Request, prefetch bool) (*Artifact, error) {
	key := cache.Key{Path: req.Module, Version: req.Version, Kind: cache.Kind(req.Kind)}
	data, meta, err := f.store.Get(key)
	if err == nil {
		return &Artifact{Data: data, Meta: meta, Cache: "hit", Modified: meta.Created}, nil
	}
	if !errors.Is(err, cache.ErrNotFound) {
		return nil, fmt.Errorf("read %s from store: %w", req, err)
	}
	if f.cfg.Offline {
		return nil, notFoundf("%s is not in the store (offline mode)", req)
	}
	if herr := f.neg.get(req.negKey()); herr != nil {
		return nil, herr
	}
	ups, private := f.upstreamsFor(req.Module)
	res, _, err := f.fetchShared(ctx, smallKey(req), req.Kind, req.Stored, func(ctx context.Context, publish func(metaResult)) (metaResult, error) {
		if req.Kind == KindMod {
			f.lookupAhead(ctx, req, private)
		}
		got, rt, errs := tryUpstreams(ctx, f, ups, !private, req, func(ctx context.Context, u Upstream) (*gate.Ticket, error) {
			return f.fetchSmall(ctx, u, req)
		})
		if rt.upstream == "" {
			f.m.fetches.WithLabelValues(string(req.Kind), "error").Inc()
			herr := fetchFailure(req, ups, errs)
			if !prefetch || herr.isNotFound() {
				f.neg.put(req.negKey(), herr)
			}
			return metaResult{}, herr
		}
		f.m.fetches.WithLabelValues(string(req.Kind), "ok").Inc()
		answer := metaResult{data: got.Data(), meta: got.Meta(), route: rt}
		unstored := answer
		unstored.unstored = true
		// On a full disk it is answered unstored, and says so.
		if dir := storeDir(f.store); dir != "" {
			if err := f.disk.room(dir, int64(len(got.Data()))); err != nil {
				f.noRoom(req, err)
				return unstored, nil
			}
		}
		// Checked and verified: its requests need not wait for the store
		// commit (a shared transaction, see cache's batch). Requests that
		// arrive during the commit join this fetch.
		f.m.commitsPending.Inc()
		defer f.m.commitsPending.Dec()
		publish(answer)
		if h := f.cfg.beforeCommit; h != nil {
			h(req)
		}
		stored, err := f.gate.Commit(got)
		if err != nil {
			// Answered unstored; a later request fetches it again.
			f.noRoom(req, err)
			return unstored, nil
		}
		answer.meta = stored
		return answer, nil
	})
	if err != nil {
		return nil, err
	}
	if req.Stored && res.unstored {
		return nil, insufficientStorage("%s.%s was verified but not stored: the store's disk is full", req, req.Kind)
	}
	return &Artifact{Data: res.data, Meta: res.meta, Cache: "miss", Route: res.route, Modified: res.meta.Created, Unstored: res.unstored}, nil
}

// fetchSmall fetches one .info or .mod file from u and passes it through
// the gate's checks (a .mod is verified against the checksum database
// here, inside the upstream attempt, so that a mismatch falls through to
// the next upstream).
func (f *Fetcher) fetchSmall(ctx context.Context, u Upstream, req Request) (*gate.Ticket, error) {
	limit := int64(maxInfoSize)
	if req.Kind == KindMod {
		limit = maxModSize
	}
	data, err := f.getSmall(ctx, u, req.URLPath(), limit)
	if err != nil {
		return nil, err
	}
	key := cache.Key{Path: req.Module, Version: req.Version, Kind: cache.Kind(req.Kind)}
	t, err := f.gate.CheckSmall(ctx, key, data, gate.Origin{Upstream: u.Name(), Created: f.cfg.Now()})
	if err != nil {
		return nil, &UpstreamError{Upstream: u.Name(), Err: err}
	}
	f.noteUnverified(req, t)
	return t, nil
}

// noteUnverified logs and counts an artifact the gate lets in unverified
// (Config.VerifyFailOpen while the checksum database is unavailable).
func (f *Fetcher) noteUnverified(req Request, t *gate.Ticket) {
	if t.State() != cache.StateUnverified {
		return
	}
	kind := t.Key().Kind
	f.log.Warn("checksum database unavailable: storing unverified (fail-open)", "module", req.Module, "version", req.Version, "kind", kind, "err", t.Unverified())
	f.m.storedUnverified.WithLabelValues(string(kind)).Inc()
	if f.reverify != nil {
		f.reverify.notify()
	}
}

// checkInfo validates an .info answer; want is "" for queries.
func checkInfo(data []byte, want string) error {
	_, err := gate.ParseInfo(data, want)
	return err
}

// Query resolves a non-canonical version query (.info) through the
// upstreams. Answers are not stored under the query's name.
func (f *Fetcher) Query(ctx context.Context, req Request) (*Artifact, error) {
	if f.cfg.Offline {
		return nil, notFoundf("%s: version queries need an upstream (offline mode)", req)
	}
	ups, private := f.upstreamsFor(req.Module)
	if len(ups) == 0 {
		return nil, noPrivateUpstream(req)
	}
	res, _, err := f.fetchShared(ctx, "query:"+req.URLPath(), req.Kind, false, func(ctx context.Context, _ func(metaResult)) (metaResult, error) {
		data, rt, errs := tryUpstreams(ctx, f, ups, !private, req, func(ctx context.Context, u Upstream) ([]byte, error) {
			data, err := f.getSmall(ctx, u, req.URLPath(), maxInfoSize)
			if err != nil {
				return nil, err
			}
			if err := checkInfo(data, ""); err != nil {
				return nil, &UpstreamError{Upstream: u.Name(), Err: err}
			}
			return data, nil
		})
		if rt.upstream == "" {
			return metaResult{}, upstreamFailure(req, errs)
		}
		return metaResult{data: data, route: rt}, nil
	})
	if err != nil {
		return nil, err
	}
	return &Artifact{Data: res.data, Cache: "bypass", Route: res.route, Modified: f.cfg.Now()}, nil
}

// Mutable returns a list or @latest answer: fresh from the store within
// ListTTL, else from the upstreams, else stale from the store (Cache
// "stale") when every upstream fails, or at once when a stored answer
// exists and the upstreams have not answered within StaleBudget: the
// refresh then goes on in the background (one per key, on the Fetcher's
// context, bounded by MetadataTimeout) and the next request sees its result.
func (f *Fetcher) Mutable(ctx context.Context, req Request) (*Artifact, error) {
	key := string(req.Kind) + "/" + req.Module
	entry, err := f.store.GetEntry(key)
	haveStored := err == nil
	if err != nil && !errors.Is(err, cache.ErrNotFound) {
		return nil, fmt.Errorf("read %s from store: %w", req, err)
	}
	now := f.cfg.Now()
	if haveStored && now.Sub(entry.Fetched) < f.cfg.ListTTL {
		return &Artifact{Data: entry.Value, Cache: "hit", Modified: entry.Fetched}, nil
	}
	if f.cfg.Offline {
		if haveStored {
			return &Artifact{Data: entry.Value, Cache: "stale", Modified: entry.Fetched}, nil
		}
		return f.synthesize(req, "offline mode")
	}
	stale := func(why error) (*Artifact, error) {
		if haveStored {
			f.log.Warn("serving stale metadata", "request", req.String(), "fetched", entry.Fetched, "err", why)
			return &Artifact{Data: entry.Value, Cache: "stale", Modified: entry.Fetched}, nil
		}
		if a, serr := f.synthesize(req, "upstreams failed"); serr == nil {
			f.log.Warn("serving metadata synthesized from the store", "request", req.String(), "err", why)
			return a, nil
		}
		return nil, why
	}
	if herr := f.neg.get(key); herr != nil {
		if herr.isNotFound() {
			return nil, herr
		}
		return stale(herr) // an upstream error, within its backoff
	}
	ups, private := f.upstreamsFor(req.Module)
	wait := ctx
	if haveStored {
		var cancel context.CancelFunc
		wait, cancel = context.WithTimeout(ctx, f.cfg.StaleBudget)
		defer cancel()
	}
	res, _, err := f.fetchShared(wait, "mutable:"+key, req.Kind, false, func(ctx context.Context, _ func(metaResult)) (metaResult, error) {
		data, rt, errs := tryUpstreams(ctx, f, ups, !private, req, func(ctx context.Context, u Upstream) ([]byte, error) {
			data, err := f.getSmall(ctx, u, req.URLPath(), maxListSize)
			if err != nil {
				return nil, err
			}
			if req.Kind == KindLatest {
				if err := checkInfo(data, ""); err != nil {
					return nil, &UpstreamError{Upstream: u.Name(), Err: err}
				}
			} else if data, err = cleanList(data); err != nil {
				return nil, &UpstreamError{Upstream: u.Name(), Err: err}
			}
			return data, nil
		})
		if rt.upstream == "" {
			herr := fetchFailure(req, ups, errs)
			f.neg.put(key, herr) // errors only for a short backoff
			return metaResult{}, herr
		}
		unstored := false
		if err := f.store.PutEntry(key, data); err != nil {
			if !isNoSpace(err) {
				return metaResult{}, fmt.Errorf("store %s: %w", req, err)
			}
			f.noRoom(req, err)
			unstored = true
		}
		return metaResult{data: data, route: rt, unstored: unstored}, nil
	})
	if err == nil {
		return &Artifact{Data: res.data, Cache: "miss", Route: res.route, Modified: now, Unstored: res.unstored}, nil
	}
	if ctx.Err() != nil {
		return nil, ctx.Err() // the client left
	}
	if errors.Is(err, context.DeadlineExceeded) && wait.Err() != nil {
		return stale(fmt.Errorf("upstreams did not answer within %v; refreshing in the background", f.cfg.StaleBudget))
	}
	var herr *HTTPError
	if errors.As(err, &herr) && herr.isNotFound() {
		return nil, err
	}
	return stale(err)
}

// synthesize answers list or @latest from the versions in the store, for
// offline mode and for when every upstream fails before a list was ever
// stored.
func (f *Fetcher) synthesize(req Request, why string) (*Artifact, error) {
	versions, err := f.store.Versions(req.Module)
	if err != nil {
		return nil, fmt.Errorf("read versions of %s: %w", req.Module, err)
	}
	if len(versions) == 0 {
		return nil, notFoundf("%s is not in the store (%s)", req, why)
	}
	if req.Kind == KindList {
		var b strings.Builder
		for _, v := range versions {
			if module.IsPseudoVersion(v) {
				continue // the protocol's list omits pseudo-versions
			}
			b.WriteString(v)
			b.WriteByte('\n')
		}
		return &Artifact{Data: []byte(b.String()), Cache: "stale", Modified: f.cfg.Now()}, nil
	}
	best := versions[len(versions)-1]
	for i := len(versions) - 1; i >= 0; i-- {
		if semver.Prerelease(versions[i]) == "" {
			best = versions[i]
			break
		}
	}
	data, _, err := f.store.Get(cache.Key{Path: req.Module, Version: best, Kind: cache.KindInfo})
	if err != nil {
		return nil, fmt.Errorf("read %s@%s.info: %w", req.Module, best, err)
	}
	return &Artifact{Data: data, Cache: "stale", Modified: f.cfg.Now()}, nil
}

// cleanList validates a list answer: one version per line, optionally
// followed by a timestamp. Blank lines are dropped, and so are lines that
// are not versions, as the go command ignores them; an answer with lines
// but no version at all is garbage (an HTML error page, say) and refused.
func cleanList(data []byte) ([]byte, error) {
	var b bytes.Buffer
	lines, bad := 0, ""
	for line := range strings.SplitSeq(string(data), "\n") {
		v := strings.TrimSpace(line)
		if v == "" {
			continue
		}
		lines++
		v, _, _ = strings.Cut(v, " ")
		if !semver.IsValid(v) {
			if bad == "" {
				bad = v
			}
			continue
		}
		b.WriteString(v)
		b.WriteByte('\n')
	}
	if lines > 0 && b.Len() == 0 {
		return nil, fmt.Errorf("%w: list has no valid version (first line %q)", errBadContent, bad)
	}
	return b.Bytes(), nil
}
