package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"

	"github.com/modproxy/modproxy/cache"
	"github.com/modproxy/modproxy/internal/oneline"
	"github.com/modproxy/modproxy/modgraph"
	"github.com/modproxy/modproxy/policy"
	"github.com/modproxy/modproxy/prewarm"
	"github.com/modproxy/modproxy/proxy"
	"github.com/modproxy/modproxy/sumdb"
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
	dryRun    bool
	progress  string
	interval  time.Duration
	timeout   time.Duration
	// policyFile and tokenFile: see prewarm_access.go.
	policyFile, tokenFile string
}

func newPrewarmCmd() *cobra.Command {
	var c prewarmConfig
	cmd := &cobra.Command{
		Use:   "prewarm [flags] TARGET...",
		Short: "Fill a store with every module a project needs, verified",
		Long: `Fill a store with every module artifact that building and verifying the
targets needs, so that "modproxy serve --offline" can serve the build later.

A TARGET is a go.mod, go.sum or go.work file, a directory holding one, or
module@version (module@latest allowed). A go.sum stands for the go.mod beside
it, go.work.sum for the go.work.

What is fetched is decided by walking the module graph as the go command
does (through the pipeline, so the go.mod files it reads are stored too),
with or without a go.sum: a go.sum only lists what some go command verified,
so it is used for its hashes, which check each artifact on arrival. The set
is the .info and .mod of every module version whose go.mod the graph reads,
and the .info, .mod and .zip of every module of the build list ("all"),
after replace and exclude. That is more than a plain "go build" needs, so
that with a fresh module cache, offline, all of these work:
  go mod download [all]       .info, .mod, .zip of the build list
  go list -m [-json] all      .info (time) and .mod (go version) of each
  go mod verify               the build list's go.mod files and zips
  go build, go vet, go test, go list -deps -test ./...
                              zips of the modules providing packages, and
                              of modules whose path prefixes an import
                              (checked for ambiguous imports)
  go mod tidy [-diff]         the packages of "all" and the tests of each,
                              dependencies' tests included (before go 1.17
                              transitively); at go 1.17 also the unpruned
                              go 1.16 graph it checks (-compat)
For a go.work, the workspace graph and each used module's own graph (which
go mod tidy and GOWORK=off read). A go or toolchain line newer than the local
toolchain adds the golang.org/toolchain module for each --platform. The
checksum-database records and tiles that prove all of this are stored too.

Two modes run the same fetch, verify and store pipeline:
  --db FILE     open the store file in this process (no server may hold it),
                fetching from --upstream and verifying with --sumdb;
  --server URL  drive a running modproxy through HTTP, which fills its store.

--dry-run resolves the targets (reading the go.mod files the graph walk
needs) and lists each module version with the files it would fetch, without
fetching any other file; with --db it says which are already stored.

A go.mod of the graph that cannot be read fails that module (what only it
requires is then missing from the set); the rest is prewarmed.

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
	// The zip budget of the in-process pipeline: --jobs bounds the work,
	// and nobody is there to retry a refusal, so jobs beyond the download
	// slots wait for one as long as it takes.
	c.serve.maxZipDownloads = proxy.DefaultMaxZipDownloads
	c.serve.zipQueue = 1 << 20
	c.serve.zipQueueWait = 24 * time.Hour
	c.serve.minFreeSpace = proxy.DefaultMinFreeSpace
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
	f.BoolVar(&c.json, "json", false, "print the summary (or the --dry-run list) as JSON on stdout")
	f.BoolVar(&c.dryRun, "dry-run", false, "list the module versions and files that would be fetched, and fetch nothing else")
	f.StringVar(&c.progress, "progress", "auto", "progress on stderr: auto (a bar on a terminal, else lines), bar, plain or none")
	f.DurationVar(&c.interval, "progress-interval", 5*time.Second, "interval of plain progress lines")
	f.DurationVar(&c.timeout, "timeout", 0, "give up after this long (0: no limit)")
	f.StringVar(&c.policyFile, "policy-file", "", "module policy (as serve's): denied module versions are not fetched")
	f.StringVar(&c.tokenFile, "token-file", "", "--server mode: file holding the token to send (default: $MODPROXY_TOKEN); its scopes must cover the modules (admin covers all)")
	addNetFlags(f, &c.serve.net)
	addDirectFlags(f, &c.serve.direct)
	f.MarkHidden("ebpf")
	return cmd
}

// prewarmSummary is the outcome of a run (printed, or JSON with --json):
// the library's report with the run's mode, target and resolution notes.
type prewarmSummary struct {
	Mode   string `json:"mode"` // "db" or "server"
	Target string `json:"target"`
	prewarm.Report
	Notes []string `json:"notes,omitempty"`
}

// dryRunEntry is one module version of a --dry-run listing.
type dryRunEntry struct {
	Module  string   `json:"module"`
	Version string   `json:"version"`
	Files   []string `json:"files"`            // "info", "mod", "zip"
	Stored  []string `json:"stored,omitempty"` // of those, already in the store (--db only)
	GoSum   bool     `json:"gosum_hash"`       // a go.sum hash will check it
}

// dryRunList is the --dry-run output.
type dryRunList struct {
	Mode    string        `json:"mode"`
	Target  string        `json:"target"`
	Modules []dryRunEntry `json:"modules"`
	Files   int           `json:"files"`
	Stored  *int          `json:"already_stored,omitempty"` // --db only
	// Failures are the go.mod files the graph walk could not read.
	Failures []prewarm.Failure `json:"failures"`
	Notes    []string          `json:"notes,omitempty"`
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
	opts := prewarm.Options{
		Jobs: c.jobs,
		Exempt: func(path string) bool {
			return sumdb.MatchPatterns(set.private, path) || sumdb.MatchPatterns(set.nosumdb, path)
		},
	}
	if !set.sumdbOff {
		opts.SumDB, opts.SumDBKey = set.sumdbName, set.sumdbKey
	}

	var (
		sum   prewarmSummary
		store *cache.Store // --db mode
	)
	if c.server != "" {
		sum.Mode, sum.Target = "server", strings.TrimRight(c.server, "/")
		client := newPrewarmClient(c.jobs)
		defer client.CloseIdleConnections()
		tok, err := prewarmToken(c.tokenFile)
		if err != nil {
			return err
		}
		if err := withToken(client, sum.Target, tok); err != nil {
			return err
		}
		opts.Backend = prewarm.NewHTTPBackend(client, sum.Target, c.serve.spoolDir)
		if opts.SumDB != "" && !c.dryRun {
			if _, err := opts.Backend.SumDB(ctx, opts.SumDB, "supported"); err != nil {
				return fmt.Errorf("server %s does not serve checksum database %s (set --sumdb to the server's database, or off): %w", sum.Target, set.sumdbName, err)
			}
		}
	} else {
		sum.Mode, sum.Target = "db", c.serve.db
		store, err = cache.Open(c.serve.db, cache.Options{})
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
		backend, closeDB, err := newDBBackend(ctx, sc, set, store, logger)
		if err != nil {
			return err
		}
		defer closeDB()
		opts.Backend = backend
	}

	if c.policyFile != "" {
		p, err := policy.ReadFile(c.policyFile)
		if err != nil {
			return err
		}
		opts.Backend = policyBackend{Backend: opts.Backend, p: p}
	}

	opts.Start = time.Now()
	plan, err := modgraph.Resolve(ctx, targets, modgraph.Options{
		Source:      opts.Backend,
		GoVersion:   goVersion,
		Platforms:   c.platforms,
		Concurrency: c.jobs,
		KeepGoing:   true,
	})
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("prewarm interrupted while resolving: %w", err)
		}
		return fmt.Errorf("resolve targets: %w", err)
	}
	sum.Notes = plan.Notes
	opts.GraphFailures = plan.Failures
	if c.dryRun {
		if err := printDryRun(stdout, sum, plan, store, c.json); err != nil {
			return err
		}
		if len(plan.Failures) > 0 {
			return &exitError{code: 1, err: fmt.Errorf("prewarm: %d go.mod files could not be read", len(plan.Failures))}
		}
		return nil
	}

	prog, err := newPrewarmProgress(stderr, c.progress, len(plan.Needs), c.interval)
	if err != nil {
		return err
	}
	opts.Progress = prog.update
	rep, err := prewarm.Run(ctx, plan.Needs, opts)
	prog.finish()
	if rep == nil {
		return err
	}
	sum.Report = *rep
	if sum.SumDB == "" {
		sum.SumDB = "off"
	}
	if perr := printPrewarmSummary(stdout, sum, c.json); perr != nil {
		return perr
	}
	if err != nil {
		return fmt.Errorf("%w (what was stored is complete; run again to continue)", err)
	}
	if sum.Failed > 0 {
		return &exitError{code: 1, err: fmt.Errorf("prewarm: %d of %d module versions failed", sum.Failed, sum.Modules)}
	}
	return nil
}

// newDBBackend wires the in-process pipeline as runServe does: network
// layer, checksum-database verifier and fetcher over store.
func newDBBackend(ctx context.Context, sc serveConfig, set resolvedSettings, store *cache.Store, logger *slog.Logger) (prewarm.Backend, func(), error) {
	if err := sc.net.validate(); err != nil {
		return nil, nil, err
	}
	sc.net.ebpf = "off" // kernel telemetry is for the long-running server
	pl, err := newPipeline(ctx, sc, set, store, prometheus.NewRegistry(), logger)
	if err != nil {
		return nil, nil, err
	}
	return prewarm.NewFetcherBackend(pl.fetcher, store, sc.spoolDir, pl.sumdbHandler()), pl.Close, nil
}

// newPrewarmClient returns the one client every request of a --server run
// shares, so that connections are reused across workers.
func newPrewarmClient(jobs int) *http.Client {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConns = 2 * jobs
	t.MaxIdleConnsPerHost = 2 * jobs
	t.ResponseHeaderTimeout = 5 * time.Minute // the server may be fetching a large zip
	return &http.Client{Transport: t}
}

// printPrewarmSummary prints s as JSON or as lines for people.
func printPrewarmSummary(w io.Writer, s prewarmSummary, asJSON bool) error {
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(s)
	}
	fmt.Fprintf(w, "prewarm (%s %s): %d module versions: %d added, %d already stored, %d failed (files: %d added, %d already stored); %s in %.1fs\n",
		s.Mode, s.Target, s.Modules, s.Added, s.Stored, s.Failed, s.FilesAdded, s.FilesStored, formatBytes(s.Bytes), s.Seconds)
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

// printDryRun lists what a run would fetch: every module version with its
// files, and with store (--db mode) which of them are stored already.
func printDryRun(w io.Writer, s prewarmSummary, plan *modgraph.Plan, store *cache.Store, asJSON bool) error {
	l := dryRunList{Mode: s.Mode, Target: s.Target, Modules: []dryRunEntry{}, Failures: []prewarm.Failure{}, Notes: s.Notes}
	for _, f := range plan.Failures {
		l.Failures = append(l.Failures, prewarm.Failure{Module: f.Path, Version: f.Version, Error: oneline.Of(f.Err)})
	}
	stored := 0
	for _, n := range plan.Needs {
		e := dryRunEntry{Module: n.Path, Version: n.Version, GoSum: n.ModHash != "" || n.ZipHash != ""}
		for _, kind := range prewarm.Kinds(n) {
			e.Files = append(e.Files, string(kind))
			if store == nil {
				continue
			}
			if _, err := store.Stat(cache.Key{Path: n.Path, Version: n.Version, Kind: kind}); err == nil {
				e.Stored = append(e.Stored, string(kind))
			} else if !errors.Is(err, cache.ErrNotFound) {
				return fmt.Errorf("stat %s@%s.%s: %w", n.Path, n.Version, kind, err)
			}
		}
		l.Files += len(e.Files)
		stored += len(e.Stored)
		l.Modules = append(l.Modules, e)
	}
	if store != nil {
		l.Stored = &stored
	}
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(l)
	}
	for _, e := range l.Modules {
		line := e.Module + "@" + e.Version + " " + strings.Join(e.Files, ",")
		if len(e.Stored) > 0 {
			line += " (stored: " + strings.Join(e.Stored, ",") + ")"
		}
		fmt.Fprintln(w, line)
	}
	fmt.Fprintf(w, "dry run (%s %s): %d module versions, %d files", l.Mode, l.Target, len(l.Modules), l.Files)
	if l.Stored != nil {
		fmt.Fprintf(w, ", %d already stored, %d to fetch", *l.Stored, l.Files-*l.Stored)
	}
	fmt.Fprintln(w, "; nothing fetched beyond the go.mod files the graph walk read")
	for _, f := range l.Failures {
		fmt.Fprintf(w, "FAILED %s@%s: go.mod unreadable: %s\n", f.Module, f.Version, f.Error)
	}
	return nil
}
