package main

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"os/exec"
	"slices"
	"time"

	"github.com/spf13/pflag"

	"github.com/modproxy/modproxy/direct"
	"github.com/modproxy/modproxy/netprobe"
	"github.com/modproxy/modproxy/proxy"
)

// directConfig holds the flags of the "direct" upstream (fetching from
// version control).
type directConfig struct {
	vcsDir   string
	netrc    string
	goauth   string
	insecure string
	govcs    string
	maxGit   int
}

func addDirectFlags(f *pflag.FlagSet, c *directConfig) {
	f.StringVar(&c.vcsDir, "vcs-dir", "", "repository mirrors of the direct upstream (default: beside the store, <db>.vcs)")
	f.StringVar(&c.netrc, "netrc", "", "netrc file with credentials for direct fetches (default: $NETRC or ~/.netrc)")
	f.StringVar(&c.goauth, "goauth", "", "credentials for direct fetches in GOAUTH syntax: netrc, git DIR, command ... (default: go env GOAUTH)")
	f.StringVar(&c.insecure, "insecure", "", "module path patterns (GOINSECURE syntax) that direct fetches may reach over plain HTTP (default: go env GOINSECURE)")
	f.StringVar(&c.govcs, "govcs", "", "version control systems allowed per path pattern, GOVCS syntax (default: go env GOVCS); only git is spoken")
	f.IntVar(&c.maxGit, "max-git", 0, "concurrent git processes of the direct upstream (default: 2 per CPU, at least 4)")
}

// usesDirect reports whether any upstream list has a "direct" entry.
func usesDirect(lists ...[]proxy.Upstream) bool {
	for _, ups := range lists {
		if slices.ContainsFunc(ups, func(u proxy.Upstream) bool { return u.Direct }) {
			return true
		}
	}
	return false
}

// newDirect builds the direct upstream, its settings defaulting to the go
// command's environment.
func newDirect(ctx context.Context, c serveConfig, set resolvedSettings, probe *netprobe.Probe, logger *slog.Logger) (*observedDirect, error) {
	d := c.direct
	if _, err := exec.LookPath("git"); err != nil {
		// The go command's default GOPROXY ends in "direct": without git,
		// modproxy still serves what its proxies have.
		logger.Warn("git not found: the direct upstream answers not found", "err", err)
		return nil, nil
	}
	env, err := goEnv(ctx, "GOINSECURE", "GOVCS", "GOAUTH")
	if err != nil {
		if d.insecure == "" && d.govcs == "" && d.goauth == "" {
			logger.Warn("direct: cannot read go env; using the go command's defaults", "err", err)
		}
		env = map[string]string{}
	}
	pick := func(v, name string) string {
		if v != "" {
			return v
		}
		return env[name]
	}
	if ins := pick(d.insecure, "GOINSECURE"); ins != "" {
		logger.Warn("direct: plain HTTP and unverified certificates allowed for discovery of these paths (--insecure)", "patterns", ins)
	}
	dir := d.vcsDir
	if dir == "" {
		dir = direct.RepoDir(c.db)
	}
	f, err := direct.New(direct.Config{
		Dir: dir,
		// Discovery honours HTTP(S)_PROXY and the system roots, as the
		// go command's does; it is timed per phase below.
		Client:      &http.Client{Transport: &http.Transport{Proxy: http.ProxyFromEnvironment, TLSHandshakeTimeout: 10 * time.Second, ResponseHeaderTimeout: 30 * time.Second}},
		Insecure:    pick(d.insecure, "GOINSECURE"),
		GOVCS:       pick(d.govcs, "GOVCS"),
		Private:     set.private,
		GOAUTH:      pick(d.goauth, "GOAUTH"),
		Netrc:       d.netrc,
		MaxGitProcs: d.maxGit,
		TempDir:     c.spoolDir,
		Logger:      logger,
		Observe: func(kind, phase string, dur time.Duration) {
			probe.ObservePhase("direct", kind, phase, netprobe.SourceUserspace, dur)
		},
	})
	if err != nil {
		return nil, err // flags were checked at start; this is the environment
	}
	return &observedDirect{f: f, probe: probe}, nil
}

// observedDirect reports each direct request to netprobe, so that the
// direct upstream has request counts, a health score and a circuit like
// any other. The circuit is shared by every repository, so only failures
// to reach a server (and timeouts) count against it.
type observedDirect struct {
	f     *direct.Fetcher
	probe *netprobe.Probe
}

// Close releases the repository directory.
func (o *observedDirect) Close() error { return o.f.Close() }

func (o *observedDirect) Open(ctx context.Context, path, kind, version string) (io.ReadCloser, int64, error) {
	start := time.Now()
	rc, n, err := o.f.Open(ctx, path, kind, version)
	outcome := netprobe.OutcomeOK
	switch {
	case err == nil:
	case direct.IsNotExist(err):
		outcome = netprobe.OutcomeNotFound
	case errors.Is(err, context.Canceled):
		outcome = netprobe.OutcomeCanceled
	case errors.Is(err, context.DeadlineExceeded):
		outcome = netprobe.OutcomeTimeout
	case errors.As(err, new(*direct.AuthError)):
		outcome = netprobe.OutcomeForbidden
	case direct.IsUnreachable(err):
		outcome = netprobe.OutcomeConnectError
	default:
		// One repository's own failure (a broken ref, a server error
		// for that path) is counted but does not open the circuit that
		// every repository shares.
		outcome = netprobe.OutcomeClientError
	}
	o.probe.RecordRequest("direct", kind, outcome, time.Since(start), err)
	return rc, n, err
}
