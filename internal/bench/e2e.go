package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/modproxy/modproxy/internal/testupstream"
)

const targetColdRatio = 1.1 // cold go mod download through modproxy vs direct

func init() {
	register(scenario{
		Name: "cold-e2e", Order: 40, Timeout: 120 * time.Second,
		Desc: "cold go mod download of a 150-module project: through a fresh modproxy vs direct, WAN latency upstream",
		Run:  runColdE2E,
	})
}

// writeProject writes a main module requiring every module in mods.
func writeProject(dir string, mods []testupstream.Module) error {
	var b strings.Builder
	b.WriteString("module example.com/benchmain\n\ngo 1.21\n\nrequire (\n")
	for _, m := range mods {
		fmt.Fprintf(&b, "\t%s %s\n", m.Path, m.Version)
	}
	b.WriteString(")\n")
	if err := os.WriteFile(filepath.Join(dir, "go.mod"), []byte(b.String()), 0o644); err != nil {
		return fmt.Errorf("write project: %w", err)
	}
	return nil
}

// goModDownload runs "go mod download [args]" in a fresh copy of the
// project with a fresh module cache, through goproxy, and returns how long
// it took.
func goModDownload(ctx context.Context, env *Env, mods []testupstream.Module, goproxy string, args ...string) (time.Duration, error) {
	dir, err := env.TempDir("e2e")
	if err != nil {
		return 0, err
	}
	proj, modcache := filepath.Join(dir, "project"), filepath.Join(dir, "modcache")
	if err := os.Mkdir(proj, 0o755); err != nil {
		return 0, fmt.Errorf("project dir: %w", err)
	}
	if err := writeProject(proj, mods); err != nil {
		return 0, err
	}
	cmd := exec.CommandContext(ctx, env.GoBin, append([]string{"mod", "download"}, args...)...)
	cmd.Dir = proj
	cmd.Env = append(os.Environ(),
		"GOPROXY="+goproxy,
		"GOMODCACHE="+modcache,
		"GOFLAGS=-mod=mod -modcacherw",
		"GOSUMDB=off", "GONOSUMDB=", "GONOSUMCHECK=", "GOPRIVATE=", "GONOPROXY=",
		"GOTOOLCHAIN=local", "GOENV=off", "GOWORK=off",
	)
	cmd.WaitDelay = 5 * time.Second
	start := time.Now()
	out, err := cmd.CombinedOutput()
	took := time.Since(start)
	if err != nil {
		return took, fmt.Errorf("go mod download via %s: %w\n%s", goproxy, err, out)
	}
	// Every module must be in the cache.
	for _, m := range mods {
		z := filepath.Join(modcache, "cache", "download", m.Path, "@v", m.Version+".zip")
		if _, err := os.Stat(z); err != nil {
			return took, fmt.Errorf("after go mod download via %s: %w", goproxy, err)
		}
	}
	return took, nil
}

func runColdE2E(ctx context.Context, env *Env) ([]Result, error) {
	mods := smallModules("example.com/bench", env.Opts.e2eMods)
	up, err := env.Upstream(mods...)
	if err != nil {
		return nil, err
	}
	up.SetLatency(env.Opts.wanLatency)
	defer up.SetLatency(0)

	direct, err := goModDownload(ctx, env, mods, up.URL())
	if err != nil {
		return nil, fmt.Errorf("direct: %w", err)
	}
	directReqs := up.Count("/")
	up.ResetCounts()
	fmt.Fprintf(os.Stderr, "   direct:         %s (%d upstream requests)\n", direct.Round(time.Millisecond), directReqs)

	srv, err := env.StartServer(ctx, up.URL())
	if err != nil {
		return nil, err
	}
	via, err := goModDownload(ctx, env, mods, srv.URL)
	if err != nil {
		return nil, fmt.Errorf("through modproxy: %w", err)
	}
	viaReqs := up.Count("/")
	fmt.Fprintf(os.Stderr, "   through modproxy: %s (%d upstream requests)\n", via.Round(time.Millisecond), viaReqs)
	ratio := via.Seconds() / direct.Seconds()
	note := fmt.Sprintf("%d modules, upstream +%s per request", len(mods), env.Opts.wanLatency)
	return []Result{
		{Metric: "go mod download, direct to upstream", Value: direct.Seconds(), Unit: "s", Note: fmt.Sprintf("%s; %d upstream requests", note, directReqs)},
		{Metric: "go mod download, through fresh modproxy", Value: via.Seconds(), Unit: "s", Note: fmt.Sprintf("%d upstream requests", viaReqs)},
		{Metric: "through modproxy / direct", Value: ratio, Unit: "x", Target: atMost(targetColdRatio)},
	}, nil
}
