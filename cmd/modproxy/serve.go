package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"

	"github.com/modproxy/modproxy/direct"
	"github.com/modproxy/modproxy/proxy"
	"github.com/modproxy/modproxy/sumdb"
)

// serveConfig is everything "modproxy serve" is configured with.
type serveConfig struct {
	listen                string
	db                    string
	upstream              string
	privateUpstream       string
	private               string
	nosumdb               string
	sumdb                 string
	offline               bool
	sumdbFailOpen         bool
	prefetch              bool
	prefetchInfo          bool
	prefetchPrunedMinMiss time.Duration
	listTTL               time.Duration
	negativeTTL           time.Duration
	logFormat             string
	logLevel              string
	spoolDir              string
	maxZipDownloads       int
	zipQueue              int
	zipQueueWait          time.Duration
	spoolQuota            byteSize
	minFreeSpace          byteSize
	shutdownTimeout       time.Duration
	net                   netConfig
	direct                directConfig
	access                accessConfig
	storage               storageConfig
}

func newServeCmd() *cobra.Command {
	var c serveConfig
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Serve the GOPROXY protocol from the store, fetching what it lacks",
		Long: `Serve the go command's module proxy protocol (GOPROXY) from one bbolt
store file, fetching what it lacks from the upstream proxies, verifying it
against the checksum database and keeping it. With --s3-bucket, several
replicas share one S3-compatible bucket and the bbolt file is this
replica's local tier (bounded by --cache-size).

Every flag can also be set with an environment variable MODPROXY_<FLAG>
(upper case, dashes as underscores), e.g. MODPROXY_LIST_TTL=1m.`,
		Args: cobra.NoArgs,
		PreRunE: func(cmd *cobra.Command, args []string) error {
			return bindEnv(cmd)
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			return runServe(cmd.Context(), c, cmd.Flags().Changed)
		},
	}
	f := cmd.Flags()
	f.StringVar(&c.listen, "listen", ":8080", "address to listen on")
	f.StringVar(&c.db, "db", "./modproxy.db", "bbolt store file")
	f.StringVar(&c.upstream, "upstream", "", "upstream proxies in GOPROXY list syntax (default: go env GOPROXY)")
	f.StringVar(&c.privateUpstream, "private-upstream", "", "upstreams for private module paths, GOPROXY syntax")
	f.StringVar(&c.private, "private", "", "private module path patterns, GOPRIVATE syntax (default: go env GOPRIVATE)")
	f.StringVar(&c.nosumdb, "nosumdb", "", "module path patterns not checked against the checksum database (default: go env GONOSUMDB)")
	f.StringVar(&c.sumdb, "sumdb", "", "checksum database in GOSUMDB syntax: name, name+key, name+key url, or off (default: go env GOSUMDB)")
	f.BoolVar(&c.offline, "offline", false, "serve only what is stored; never contact an upstream")
	f.BoolVar(&c.sumdbFailOpen, "sumdb-fail-open", false, "while the checksum database is unreachable, store and serve modules unverified instead of refusing them")
	f.BoolVar(&c.prefetch, "prefetch", true, "after an .info miss fetch that version's .mod, after a .mod is first served fetch the .mod files it requires (never zips)")
	f.DurationVar(&c.prefetchPrunedMinMiss, "prefetch-pruned-min-miss", 20*time.Millisecond, "prefetch the requirements of a go 1.17+ go.mod (which the go command's pruned module graph mostly does not read) only while the median recent .mod miss costs at least this; 0: always")
	f.BoolVar(&c.prefetchInfo, "prefetch-info", true, "also prefetch a version's .info after its .mod is first served (go mod download and go list -m ask for every .info, one at a time; a build never does)")
	f.DurationVar(&c.listTTL, "list-ttl", 5*time.Minute, "freshness of list and @latest answers")
	f.DurationVar(&c.negativeTTL, "negative-ttl", time.Minute, "how long an upstream's not-found answer is remembered")
	f.StringVar(&c.logFormat, "log-format", "text", "log format: text or json")
	f.StringVar(&c.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	f.StringVar(&c.spoolDir, "spool-dir", "", "directory for zips being downloaded (default: the system temp dir)")
	f.IntVar(&c.maxZipDownloads, "max-zip-downloads", proxy.DefaultMaxZipDownloads, "concurrent upstream zip downloads; more wait in the zip queue")
	f.IntVar(&c.zipQueue, "zip-queue", proxy.DefaultZipQueue, "zip downloads that may wait for a download slot; beyond it, 503 with Retry-After")
	f.DurationVar(&c.zipQueueWait, "zip-queue-wait", proxy.DefaultZipQueueWait, "how long a zip download waits for a slot before 503 with Retry-After")
	c.spoolQuota = 4 << 30
	f.Var(&c.spoolQuota, "spool-quota", "bytes all spool files together may hold (e.g. 4GiB; 0: unbounded)")
	c.minFreeSpace = proxy.DefaultMinFreeSpace
	f.Var(&c.minFreeSpace, "min-free-space", "free space kept on the store's and the spool's file systems; below it zips are served unstored and /readyz answers 503")
	f.DurationVar(&c.shutdownTimeout, "shutdown-timeout", 30*time.Second, "how long to drain in-flight requests on SIGINT/SIGTERM")
	addNetFlags(f, &c.net)
	addDirectFlags(f, &c.direct)
	addAccessFlags(f, &c.access)
	addStorageFlags(f, &c.storage)
	return cmd
}

// resolvedSettings are the defaults taken from "go env" for flags left unset.
type resolvedSettings struct {
	upstreams, privateUpstreams []proxy.Upstream
	private, nosumdb            string
	sumdbName, sumdbKey         string
	sumdbURL                    string
	sumdbOff                    bool
	sumdbExplicitURL            bool
}

// resolveSettings validates the flags and fills unset ones from "go env".
func resolveSettings(ctx context.Context, c serveConfig, changed func(string) bool) (resolvedSettings, error) {
	var s resolvedSettings
	if c.listTTL <= 0 {
		return s, usagef("invalid --list-ttl %s: must be positive", c.listTTL)
	}
	if c.negativeTTL <= 0 {
		return s, usagef("invalid --negative-ttl %s: must be positive", c.negativeTTL)
	}
	need := []string{}
	if !changed("upstream") && !c.offline {
		need = append(need, "GOPROXY")
	}
	// An empty --sumdb is no choice at all: the default applies, as for an
	// empty GOSUMDB in the go command. Only "off" disables verification.
	sumdbSet := changed("sumdb") && strings.TrimSpace(c.sumdb) != ""
	if !sumdbSet {
		need = append(need, "GOSUMDB")
	}
	if !changed("private") {
		need = append(need, "GOPRIVATE")
	}
	if !changed("nosumdb") {
		need = append(need, "GONOSUMDB")
	}
	env := map[string]string{}
	if len(need) > 0 {
		var err error
		env, err = goEnv(ctx, need...)
		if err != nil {
			return s, fmt.Errorf("read defaults (set --upstream, --sumdb, --private and --nosumdb to do without the go command): %w", err)
		}
	}
	pick := func(flag, val, envName string) string {
		if changed(flag) {
			return val
		}
		return env[envName]
	}
	up := pick("upstream", c.upstream, "GOPROXY")
	if !c.offline {
		ups, err := proxy.ParseUpstreams(up)
		if err != nil {
			return s, usagef("invalid --upstream %q: %v", up, err)
		}
		s.upstreams = ups
	}
	if c.privateUpstream != "" {
		ups, err := proxy.ParseUpstreams(c.privateUpstream)
		if err != nil {
			return s, usagef("invalid --private-upstream %q: %v", c.privateUpstream, err)
		}
		s.privateUpstreams = ups
	}
	if c.direct.goauth != "" {
		if err := direct.CheckGOAUTH(c.direct.goauth); err != nil {
			return s, usagef("invalid --goauth %q: %v", c.direct.goauth, err)
		}
	}
	if c.direct.govcs != "" {
		if _, err := direct.ParseGOVCS(c.direct.govcs); err != nil {
			return s, usagef("invalid --govcs %q: %v", c.direct.govcs, err)
		}
	}
	s.private = pick("private", c.private, "GOPRIVATE")
	s.nosumdb = pick("nosumdb", c.nosumdb, "GONOSUMDB")
	if s.nosumdb == "" {
		s.nosumdb = s.private // as the go command: GONOSUMDB defaults to GOPRIVATE
	}
	db := env["GOSUMDB"]
	if sumdbSet {
		db = c.sumdb
	}
	name, key, u, off, err := sumdb.ParseGOSUMDB(db)
	if err != nil {
		return s, usagef("invalid --sumdb %q: %v", db, err)
	}
	s.sumdbName, s.sumdbKey, s.sumdbURL, s.sumdbOff = name, key, u, off
	// As with the go command, an explicit URL in GOSUMDB bypasses the
	// proxies' /sumdb/ passthrough.
	s.sumdbExplicitURL = len(strings.Fields(db)) > 1
	return s, nil
}

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return 0, usagef("invalid --log-level %q: want debug, info, warn or error", s)
	}
	return l, nil
}

// runServe runs the server until ctx is cancelled, then drains it.
func runServe(ctx context.Context, c serveConfig, changed func(string) bool) error {
	level, err := parseLevel(c.logLevel)
	if err != nil {
		return err
	}
	logger, err := newLogger(c.logFormat, level)
	if err != nil {
		return err
	}
	set, err := resolveSettings(ctx, c, changed)
	if err != nil {
		return err
	}
	if err := c.net.validate(); err != nil {
		return err
	}
	if err := c.validateZipBudget(); err != nil {
		return err
	}
	// On the command line 0 means none; in proxy.Config, the default.
	if c.zipQueue == 0 {
		c.zipQueue = -1
	}
	if c.minFreeSpace == 0 {
		c.minFreeSpace = -1
	}
	if err := c.access.validate(changed); err != nil {
		return err
	}
	if err := c.storage.validate(changed); err != nil {
		return err
	}
	if len(set.privateUpstreams) > 0 && set.private == "" {
		logger.Warn("--private-upstream is set but no private patterns are (--private or GOPRIVATE): it will never be used")
	}

	ln, err := net.Listen("tcp", c.listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", c.listen, err)
	}
	defer ln.Close()

	// Serve at once, before the store is open: /healthz answers 200 and
	// /readyz 503 while the store (and bucket) open, so that an
	// orchestrator neither kills a replica that is starting nor routes
	// requests to it.
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	sw := &startSwitch{}
	var fetcher atomic.Pointer[proxy.Fetcher]
	isPrivate := func(path string) bool {
		if f := fetcher.Load(); f != nil {
			return f.IsPrivate(path)
		}
		return true // nothing is served before the fetcher exists
	}
	acc, err := newAccessLayer(ctx, c.access, sw, isPrivate, reg, logger)
	if err != nil {
		return err
	}
	defer acc.Close()
	srv := &http.Server{
		Handler:           acc.handler,
		TLSConfig:         acc.tlsConfig(),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
	errc := make(chan error, 1)
	go func() { errc <- acc.serve(srv, ln) }()
	// On an error below, stop serving before what it serves closes.
	defer srv.Close()
	logger.Info("modproxy starting: opening the store", "listen", acc.scheme()+"://"+ln.Addr().String(), "db", c.db)
	start := time.Now()

	st, err := openStorage(ctx, c.db, c.storage, c.spoolDir, logger)
	if err != nil {
		return fmt.Errorf("open store: %w", err)
	}
	defer func() {
		if err := st.Close(); err != nil {
			logger.Error("close store", "err", err)
		}
	}()
	reg.MustRegister(newStoreCollector(st))
	reg.MustRegister(sumdbEnabledGauge(set))

	pl, err := newPipeline(ctx, c, set, st.serve, reg, logger)
	if err != nil {
		return err
	}
	defer pl.Close()

	extra := map[string]http.Handler{
		"GET /metrics": promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorLog: slog.NewLogLogger(logger.Handler(), slog.LevelError)}),
	}
	for p, h := range pl.network.DebugHandlers() {
		extra[p] = h
	}
	if acc.policy != nil {
		// A version the policy denies is never prefetched either.
		pl.fetcher.SetPrefetchFilter(func(path, version string) bool {
			return acc.policy.Load().Check(path, version).Allowed
		})
	}
	fetcher.Store(pl.fetcher)
	sw.ready(proxy.NewServer(pl.fetcher, proxy.ServerOptions{SumDB: pl.sumdbHandler(), Extra: extra}))
	logger.Info("modproxy serving",
		"listen", acc.scheme()+"://"+ln.Addr().String(), "admin_listen", c.access.adminListen, "db", c.db, "upstream", proxy.FormatUpstreams(set.upstreams),
		"offline", c.offline, "sumdb", sumdbDesc(set), "version", versionString(), "startup", time.Since(start).Round(time.Millisecond))

	select {
	case err := <-errc:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	logger.Info("shutting down: draining in-flight requests", "timeout", c.shutdownTimeout)
	sctx, cancel := context.WithTimeout(context.Background(), c.shutdownTimeout)
	defer cancel()
	defer acc.shutdown(sctx)
	if err := srv.Shutdown(sctx); err != nil {
		// Close what is left before the store closes under it.
		logger.Warn("shutdown did not drain every request; closing the rest", "err", err)
		srv.Close()
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve: %w", err)
	}
	logger.Info("stopped")
	return nil
}

// newVerifier returns the checksum-database verifier the settings ask for,
// or nil when verification is off. As the go command does, it reaches the
// database through the public upstreams' /sumdb/ passthrough unless GOSUMDB
// named an explicit URL.
func newVerifier(set resolvedSettings, n *network, offline bool, store sumdb.Store, reg prometheus.Registerer, logger *slog.Logger) (*sumdb.Verifier, error) {
	if set.sumdbOff {
		return nil, nil
	}
	var sumUpstreams []string
	if !set.sumdbExplicitURL {
		for _, u := range set.upstreams {
			sumUpstreams = append(sumUpstreams, u.Name())
		}
	}
	v, err := sumdb.New(sumdb.Config{
		Name:        set.sumdbName,
		VerifierKey: set.sumdbKey,
		URL:         set.sumdbURL,
		Upstreams:   sumUpstreams,
		Client:      n.Client(),
		Health:      n.Health(),
		Offline:     offline,
		Private:     set.private,
		NoSumDB:     set.nosumdb,
		Logger:      logger,
		Registerer:  reg,
	}, store)
	if err != nil {
		return nil, fmt.Errorf("checksum database: %w", err)
	}
	return v, nil
}

// sumdbEnabledGauge exports whether verification is on, so that a proxy
// running with --sumdb off is visible on a dashboard, not only in its log.
func sumdbEnabledGauge(s resolvedSettings) prometheus.Gauge {
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "modproxy_sumdb_enabled",
		Help: "1 when modules are verified against a checksum database, 0 when --sumdb off disabled verification.",
	})
	if !s.sumdbOff {
		g.Set(1)
	}
	return g
}

func sumdbDesc(s resolvedSettings) string {
	if s.sumdbOff {
		return "off"
	}
	return s.sumdbName
}

// startSwitch answers for a server that is still starting, then hands
// every request to the real handler once it is ready.
type startSwitch struct{ h atomic.Pointer[http.Handler] }

func (s *startSwitch) ready(h http.Handler) { s.h.Store(&h) }

func (s *startSwitch) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if h := s.h.Load(); h != nil {
		(*h).ServeHTTP(w, r)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	switch r.URL.Path {
	case "/healthz":
		fmt.Fprintln(w, "ok")
	case "/readyz":
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintln(w, "starting: opening the store")
	default:
		w.Header().Set("Retry-After", "5")
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintln(w, "modproxy is starting (opening the store); retry shortly")
	}
}

// validateZipBudget checks serve's zip download budget flags.
func (c serveConfig) validateZipBudget() error {
	switch {
	case c.maxZipDownloads <= 0:
		return usagef("invalid --max-zip-downloads %d: must be positive", c.maxZipDownloads)
	case c.zipQueue < 0:
		return usagef("invalid --zip-queue %d: must not be negative", c.zipQueue)
	case c.zipQueueWait <= 0:
		return usagef("invalid --zip-queue-wait %s: must be positive", c.zipQueueWait)
	}
	return nil
}
