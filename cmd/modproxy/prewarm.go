package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"
	"golang.org/x/mod/module"

	"github.com/modproxy/modproxy/bundle"
	"github.com/modproxy/modproxy/cache"
	"github.com/modproxy/modproxy/modgraph"
	"github.com/modproxy/modproxy/proxy"
)

func init() { extraCommands = append(extraCommands, newPrewarmCmd) }

// prewarmConfig is everything "modproxy prewarm" is configured with. The
// upstream, checksum-database and network settings are serve's.
type prewarmConfig struct {
	serve     serveConfig
	server    string
	jobs      int
	platforms []string
	goVersion string
	json      bool
	progress  string
	interval  time.Duration
	timeout   time.Duration
}

func newPrewarmCmd() *cobra.Command {
	var c prewarmConfig
	cmd := &cobra.Command{
		Use:   "prewarm [flags] TARGET...",
		Short: "Fill a store with every module a project needs, verified",
		Long: `Fill a store with every module artifact that building and verifying the
targets needs, so that "modproxy serve --offline" can serve the build later.

A TARGET is a go.mod, go.sum or go.work file, a directory holding one, or
module@version (module@latest allowed). With a go.sum, exactly its lines are
fetched ("h1:" lines: .info, .mod and .zip; "/go.mod h1:" lines: .info and
.mod) and each artifact is checked against its go.sum hash on arrival;
without one, the module graph is walked as the go command walks it. A go or
toolchain line newer than the local toolchain adds the golang.org/toolchain
module for each --platform.

Two modes run the same fetch, verify and store pipeline:
  --db FILE     open the store file in this process (no server may hold it),
                fetching from --upstream and verifying with --sumdb;
  --server URL  drive a running modproxy through HTTP, which fills its store.
Both also store the checksum-database records and tiles that the go command
needs to verify these modules offline.

Every flag can also be set with an environment variable MODPROXY_<FLAG>.
The exit status is 1 if any module failed.`,
		Args: cobra.MinimumNArgs(1),
		PreRunE: func(cmd *cobra.Command, args []string) error {
			return bindEnv(cmd)
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			return runPrewarm(cmd.Context(), c, cmd.Flags().Changed, args, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	f := cmd.Flags()
	f.StringVar(&c.serve.db, "db", "", "store file to fill in this process (no server may hold it)")
	f.StringVar(&c.server, "server", "", "base URL of a running modproxy to fill through HTTP")
	f.StringVar(&c.serve.upstream, "upstream", "", "upstream proxies in GOPROXY list syntax, --db mode (default: go env GOPROXY)")
	f.StringVar(&c.serve.privateUpstream, "private-upstream", "", "upstreams for private module paths, GOPROXY syntax, --db mode")
	f.StringVar(&c.serve.private, "private", "", "private module path patterns, GOPRIVATE syntax (default: go env GOPRIVATE)")
	f.StringVar(&c.serve.nosumdb, "nosumdb", "", "module path patterns not checked against the checksum database (default: go env GONOSUMDB)")
	f.StringVar(&c.serve.sumdb, "sumdb", "", "checksum database in GOSUMDB syntax: name, name+key, name+key url, or off (default: go env GOSUMDB)")
	f.StringVar(&c.serve.spoolDir, "spool-dir", "", "directory for zips being downloaded and hashed (default: the system temp dir)")
	f.StringVar(&c.serve.logLevel, "log-level", "error", "log level of the in-process pipeline: debug, info, warn or error")
	f.IntVarP(&c.jobs, "jobs", "j", 16, "module versions fetched in parallel")
	f.StringArrayVar(&c.platforms, "platform", nil, "GOOS/GOARCH for which to fetch a needed Go toolchain, repeatable (default: this platform)")
	f.StringVar(&c.goVersion, "go-version", "", "Go version of the toolchain that will build (default: go env GOVERSION)")
	f.BoolVar(&c.json, "json", false, "print the summary as JSON on stdout")
	f.StringVar(&c.progress, "progress", "auto", "progress on stderr: auto (a bar on a terminal, else lines), bar, plain or none")
	f.DurationVar(&c.interval, "progress-interval", 5*time.Second, "interval of plain progress lines")
	f.DurationVar(&c.timeout, "timeout", 0, "give up after this long (0: no limit)")
	addNetFlags(f, &c.serve.net)
	f.MarkHidden("ebpf")
	return cmd
}

// prewarmFailure is a module version that could not be prewarmed.
type prewarmFailure struct {
	Module  string `json:"module"`
	Version string `json:"version"`
	Error   string `json:"error"`
}

// prewarmSummary is the outcome of a run (printed, or JSON with --json).
type prewarmSummary struct {
	Mode     string           `json:"mode"` // "db" or "server"
	Target   string           `json:"target"`
	Modules  int              `json:"modules"`
	Fetched  int              `json:"fetched"`        // module versions with at least one artifact fetched
	Cached   int              `json:"already_cached"` // module versions entirely in the store already
	Failed   int              `json:"failed"`
	Bytes    int64            `json:"bytes"`
	Seconds  float64          `json:"seconds"`
	SumDB    string           `json:"sumdb,omitempty"`
	Records  int              `json:"sumdb_records"` // checksum-database records verified and stored
	Failures []prewarmFailure `json:"failures"`
	Notes    []string         `json:"notes,omitempty"`
}

func runPrewarm(ctx context.Context, c prewarmConfig, changed func(string) bool, targets []string, stdout, stderr io.Writer) (err error) {
	if (c.serve.db == "") == (c.server == "") {
		return usagef("give exactly one of --db FILE and --server URL")
	}
	if c.jobs < 1 {
		return usagef("invalid --jobs %d: must be at least 1", c.jobs)
	}
	if c.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.timeout)
		defer cancel()
	}
	level, err := parseLevel(c.serve.logLevel)
	if err != nil {
		return err
	}
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	sc := c.serve
	sc.listTTL, sc.negativeTTL = 5*time.Minute, time.Minute
	sc.offline = c.server != "" // the server has its own upstreams
	set, err := resolveSettings(ctx, sc, changed)
	if err != nil {
		return err
	}
	goVersion := c.goVersion
	if goVersion == "" {
		if env, err := goEnv(ctx, "GOVERSION"); err == nil {
			goVersion = strings.TrimPrefix(env["GOVERSION"], "go")
		}
		// A development toolchain has no comparable version: use ours.
		if goVersion != "" && !strings.HasPrefix(goVersion, "1.") {
			goVersion = ""
		}
	}

	exempt := func(path string) bool {
		return module.MatchPrefixPatterns(set.private, path) || module.MatchPrefixPatterns(set.nosumdb, path)
	}
	sumdbPfx := ""
	if !set.sumdbOff {
		sumdbPfx = "/sumdb/" + set.sumdbName + "/"
	}
	tempDir := c.serve.spoolDir

	var backend prewarmBackend
	sum := prewarmSummary{SumDB: sumdbDesc(set)}
	if c.server != "" {
		sum.Mode, sum.Target = "server", strings.TrimRight(c.server, "/")
		sb := &serverBackend{base: sum.Target, client: newPrewarmClient(c.jobs), sumdbPfx: sumdbPfx, tempDir: tempDir}
		defer sb.client.CloseIdleConnections()
		if sumdbPfx != "" {
			if _, err := sb.getSmall(ctx, sumdbPfx+"supported"); err != nil {
				return fmt.Errorf("server %s does not serve checksum database %s (set --sumdb to the server's database, or off): %w", sum.Target, set.sumdbName, err)
			}
		}
		backend = sb
	} else {
		sum.Mode, sum.Target = "db", c.serve.db
		store, err := cache.Open(c.serve.db, cache.Options{})
		if err != nil {
			return fmt.Errorf("open store (to fill the store of a running server, use --server): %w", err)
		}
		// Closed on every return, including SIGINT (ctx cancelled): the
		// store publishes each artifact atomically, so what is stored is
		// whole.
		defer func() {
			if cerr := store.Close(); cerr != nil && err == nil {
				err = fmt.Errorf("close store: %w", cerr)
			}
		}()
		db, closeDB, err := newDBBackend(ctx, sc, set, store, logger)
		if err != nil {
			return err
		}
		defer closeDB()
		db.sumdbPfx, db.tempDir = sumdbPfx, tempDir
		backend = db
	}

	start := time.Now()
	plan, err := modgraph.Resolve(ctx, targets, modgraph.Options{
		Source:      backend,
		GoVersion:   goVersion,
		Platforms:   c.platforms,
		Concurrency: c.jobs,
	})
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("prewarm interrupted while resolving: %w", err)
		}
		return fmt.Errorf("resolve targets: %w", err)
	}
	sum.Notes = plan.Notes
	sum.Modules = len(plan.Needs)

	var mirror *bundle.Mirror
	if sumdbPfx != "" {
		mirror, err = bundle.NewMirror(func(rel string) ([]byte, error) { return backend.sumdbGet(ctx, rel) }, set.sumdbKey)
		if err != nil {
			return err
		}
	}
	prog, err := newPrewarmProgress(stderr, c.progress, len(plan.Needs), c.interval)
	if err != nil {
		return err
	}
	p := &prewarmer{backend: backend, mirror: mirror, exempt: exempt, prog: prog}
	results := p.run(ctx, plan.Needs, c.jobs)
	if mirror != nil && ctx.Err() == nil {
		if err := mirror.Finish(); err != nil {
			sum.Failures = append(sum.Failures, prewarmFailure{Module: "(checksum database " + set.sumdbName + ")", Error: err.Error()})
		}
	}
	prog.finish()

	for _, r := range results {
		switch {
		case r.err != nil:
			sum.Failures = append(sum.Failures, prewarmFailure{Module: r.need.Path, Version: r.need.Version, Error: oneLineErr(r.err)})
		case r.fetched:
			sum.Fetched++
		default:
			sum.Cached++
		}
		sum.Bytes += r.bytes
		if r.record {
			sum.Records++
		}
	}
	sum.Failed = len(sum.Failures)
	sum.Seconds = time.Since(start).Seconds()
	if err := printPrewarmSummary(stdout, sum, c.json); err != nil {
		return err
	}
	if ctx.Err() != nil {
		return fmt.Errorf("prewarm interrupted: %w (what was stored is complete; run again to continue)", context.Cause(ctx))
	}
	if sum.Failed > 0 {
		return &exitError{code: 1, err: fmt.Errorf("prewarm: %d of %d module versions failed", sum.Failed, sum.Modules)}
	}
	return nil
}

// newDBBackend wires the in-process pipeline as runServe does: network
// layer, checksum-database verifier and fetcher over store.
func newDBBackend(ctx context.Context, sc serveConfig, set resolvedSettings, store *cache.Store, logger *slog.Logger) (*dbBackend, func(), error) {
	if err := sc.net.validate(); err != nil {
		return nil, nil, err
	}
	sc.net.ebpf = "off" // kernel telemetry is for the long-running server
	reg := prometheus.NewRegistry()
	allURLs := append(proxy.URLs(set.upstreams), proxy.URLs(set.privateUpstreams)...)
	network, err := newNetwork(ctx, sc.net, allURLs, reg, logger)
	if err != nil {
		return nil, nil, err
	}
	b := &dbBackend{store: store}
	var verifier proxy.Verifier
	v, err := newVerifier(set, network.Client(), false, store, reg, logger)
	if err != nil {
		network.Close()
		return nil, nil, err
	}
	if v != nil {
		verifier, b.sumdb = v, v.Handler()
	}
	f, err := proxy.NewFetcher(proxy.Config{
		Store:            store,
		Client:           network.Client(),
		Upstreams:        set.upstreams,
		PrivateUpstreams: set.privateUpstreams,
		Private:          set.private,
		Verifier:         verifier,
		Health:           network.Health(),
		ListTTL:          sc.listTTL,
		NegativeTTL:      sc.negativeTTL,
		SpoolDir:         sc.spoolDir,
		Logger:           logger,
		Metrics:          proxy.NewMetrics(reg),
	})
	if err != nil {
		network.Close()
		return nil, nil, err
	}
	b.fetcher = f
	return b, func() { f.Close(); network.Close() }, nil
}

// prewarmer runs the per-module work on a pool of workers.
type prewarmer struct {
	backend prewarmBackend
	mirror  *bundle.Mirror // nil when checksum verification is off
	exempt  func(path string) bool
	prog    *prewarmProgress
}

// needResult is the outcome for one module version.
type needResult struct {
	need    modgraph.Need
	fetched bool // at least one artifact was not stored before
	bytes   int64
	record  bool // its checksum-database record was verified and stored
	err     error
}

func (p *prewarmer) run(ctx context.Context, needs []modgraph.Need, jobs int) []needResult {
	results := make([]needResult, len(needs))
	work := make(chan int)
	var wg sync.WaitGroup
	for range min(jobs, max(len(needs), 1)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				results[i] = p.one(ctx, needs[i])
				p.prog.moduleDone()
			}
		}()
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
	kinds := []cache.Kind{cache.KindInfo, cache.KindMod}
	if n.Zip {
		kinds = append(kinds, cache.KindZip)
	}
	checkDB := p.mirror != nil && !p.exempt(n.Path)
	hashes := map[cache.Kind]string{}
	for _, kind := range kinds {
		k := cache.Key{Path: n.Path, Version: n.Version, Kind: kind}
		r, err := p.backend.fetch(ctx, k, n.ZipHash != "" || checkDB)
		if err != nil {
			res.err = fmt.Errorf("%s: %w", kind, err)
			return res
		}
		res.bytes += r.size
		p.prog.addBytes(r.size)
		res.fetched = res.fetched || !r.cached
		hashes[kind] = r.hash
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

func oneLineErr(err error) string { return strings.Join(strings.Fields(err.Error()), " ") }

func printPrewarmSummary(w io.Writer, s prewarmSummary, asJSON bool) error {
	if s.Failures == nil {
		s.Failures = []prewarmFailure{}
	}
	sort.Slice(s.Failures, func(i, j int) bool {
		if s.Failures[i].Module != s.Failures[j].Module {
			return s.Failures[i].Module < s.Failures[j].Module
		}
		return s.Failures[i].Version < s.Failures[j].Version
	})
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(s)
	}
	fmt.Fprintf(w, "prewarm (%s %s): %d module versions: %d fetched, %d already cached, %d failed; %s in %.1fs\n",
		s.Mode, s.Target, s.Modules, s.Fetched, s.Cached, s.Failed, formatBytes(s.Bytes), s.Seconds)
	if s.SumDB != "off" {
		fmt.Fprintf(w, "checksum database %s: %d records verified and stored with their tiles\n", s.SumDB, s.Records)
	}
	for _, f := range s.Failures {
		mod := f.Module
		if f.Version != "" {
			mod += "@" + f.Version
		}
		fmt.Fprintf(w, "FAILED %s: %s\n", mod, f.Error)
	}
	return nil
}
