package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/modproxy/modproxy/internal/testupstream"
)

const (
	prewarmModules     = 400
	prewarmLatency     = 50 * time.Millisecond
	targetPrewarmRatio = 5.0 // go mod download all time / prewarm time
)

func init() {
	register(scenario{
		Name: "prewarm", Order: 50, Timeout: 240 * time.Second,
		Desc: "modproxy prewarm --db of a 400-module project vs go mod download all, both direct to an upstream with 50 ms per request",
		Run:  runPrewarm,
	})
}

// prewarmProject returns n generated modules that form a graph: module i
// requires module i/2 (so the graph has depth, as real ones do) and every
// module is required by the main module, as a tidy go 1.17+ go.mod lists
// every module that provides a package.
func prewarmProject(n int) []testupstream.Module {
	mods := smallModules("example.com/prewarm", n)
	for i := 1; i < n; i++ {
		mods[i].Files["go.mod"] = fmt.Sprintf("module %s\n\ngo 1.21\n\nrequire %s %s\n", mods[i].Path, mods[i/2].Path, mods[i/2].Version)
	}
	mods[0].Files["go.mod"] = "module " + mods[0].Path + "\n\ngo 1.21\n"
	return mods
}

// runPrewarm times "modproxy prewarm --db" (graph walk from the go.mod,
// in-process fetch pipeline into a fresh store) and "go mod download all"
// with a fresh module cache, both fetching the same project from the same
// fake upstream, side by side in one run. Checksum-database verification
// is off on both sides, as in the cold-e2e scenario, so the figure compares
// the fetch pipelines.
func runPrewarm(ctx context.Context, env *Env) ([]Result, error) {
	mods := prewarmProject(prewarmModules)
	up, err := env.Upstream(mods...)
	if err != nil {
		return nil, err
	}
	up.SetLatency(prewarmLatency)
	defer up.SetLatency(0)

	direct, err := goModDownload(ctx, env, mods, up.URL(), "all")
	if err != nil {
		return nil, fmt.Errorf("go mod download all: %w", err)
	}
	directReqs := up.Count("/")
	up.ResetCounts()
	fmt.Fprintf(os.Stderr, "   go mod download all: %s (%d upstream requests)\n", direct.Round(time.Millisecond), directReqs)

	dir, err := env.TempDir("prewarm")
	if err != nil {
		return nil, err
	}
	if err := writeProject(dir, mods); err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, env.Bin, "prewarm", "--db", filepath.Join(dir, "store.db"),
		"--upstream", up.URL(), "--sumdb", "off", "--private=", "--nosumdb=",
		"--progress", "none", "-j", "32", "go.mod")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOFLAGS=", "GOTOOLCHAIN=local")
	cmd.WaitDelay = 5 * time.Second
	start := time.Now()
	out, err := cmd.CombinedOutput()
	prewarm := time.Since(start)
	if err != nil {
		return nil, fmt.Errorf("modproxy prewarm: %w\n%s", err, out)
	}
	prewarmReqs := up.Count("/")
	fmt.Fprintf(os.Stderr, "   modproxy prewarm: %s (%d upstream requests)\n", prewarm.Round(time.Millisecond), prewarmReqs)

	// A rerun finds everything stored.
	start = time.Now()
	rerun := exec.CommandContext(ctx, cmd.Path, cmd.Args[1:]...)
	rerun.Dir, rerun.Env, rerun.WaitDelay = dir, cmd.Env, cmd.WaitDelay
	if out, err := rerun.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("modproxy prewarm rerun: %w\n%s", err, out)
	}
	again := time.Since(start)

	note := fmt.Sprintf("%d modules, upstream +%s per request, checksum database off", len(mods), prewarmLatency)
	return []Result{
		{Metric: "go mod download all, direct to upstream", Value: direct.Seconds(), Unit: "s", Note: fmt.Sprintf("%s; %d upstream requests", note, directReqs)},
		{Metric: "modproxy prewarm --db -j 32", Value: prewarm.Seconds(), Unit: "s", Note: fmt.Sprintf("%d upstream requests", prewarmReqs)},
		{Metric: "modproxy prewarm rerun (all stored)", Value: again.Seconds(), Unit: "s"},
		{Metric: "go mod download all / prewarm", Value: direct.Seconds() / prewarm.Seconds(), Unit: "x", Target: atLeast(targetPrewarmRatio)},
	}, nil
}
