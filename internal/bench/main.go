// Command bench is modproxy's load generator and scenario runner (make bench).
//
// It builds the modproxy binary, starts it as a subprocess on 127.0.0.1 with
// a fresh store for every scenario, serves modules from an in-process fake
// upstream (internal/testupstream, also on 127.0.0.1) and measures the
// server from outside: throughput and latency at the client, CPU time and
// resident memory of the modproxy process from /proc.
//
// Scenarios live in a registry (see scenario.go): a file of this package
// adds its own from an init function with register, and main runs them in
// Order. Results are printed as one table, each figure next to its target,
// and optionally written as JSON (--json FILE).
//
// Every step is bounded in time and the whole run stops by itself; temp
// dirs and subprocesses are removed on exit and on Ctrl-C.
//
// Usage:
//
//	go run ./internal/bench [--duration 5s] [--json out.json] [--only warm-meta,cold-e2e]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

// options are the command-line settings shared by every scenario.
type options struct {
	duration            time.Duration // measured window of one load step
	warmup              time.Duration // unmeasured load before the first step
	jsonOut             string
	bin                 string // prebuilt modproxy; empty builds one
	only, skip          string
	keep                bool
	timeout             time.Duration
	bigZipMB            int
	e2eMods             int
	wanLatency          time.Duration
	sumdbLatencies      string
	sumdbNoPrefetch     bool
	sumdbNoPrefetchInfo bool
	serverLog           string
	zipSizes            string
}

func main() {
	maybeServeStatic()
	var o options
	flag.DurationVar(&o.duration, "duration", 5*time.Second, "measured duration of one load step")
	flag.DurationVar(&o.warmup, "warmup", time.Second, "unmeasured load before the measured steps of a scenario")
	flag.StringVar(&o.jsonOut, "json", "", "also write the results as JSON to this file")
	flag.StringVar(&o.bin, "bin", "", "use this modproxy binary instead of building ./cmd/modproxy")
	flag.StringVar(&o.only, "only", "", "comma-separated scenario names to run (default: all)")
	flag.StringVar(&o.skip, "skip", "", "comma-separated scenario names to skip")
	flag.BoolVar(&o.keep, "keep", false, "keep the temp dir (stores, server logs) for inspection")
	flag.DurationVar(&o.timeout, "timeout", 12*time.Minute, "hard limit for the whole run")
	flag.IntVar(&o.bigZipMB, "big-zip-mb", 100, "size of the zip in the RSS scenario, MB")
	flag.IntVar(&o.e2eMods, "e2e-modules", 150, "modules required by the cold end-to-end project")
	flag.DurationVar(&o.wanLatency, "wan-latency", 30*time.Millisecond, "upstream latency per request in the cold end-to-end scenario")
	flag.StringVar(&o.sumdbLatencies, "sumdb-latencies", "30ms,100ms", "upstream and checksum-database latencies per request in the cold-sumdb scenario, comma-separated")
	flag.BoolVar(&o.sumdbNoPrefetch, "sumdb-no-prefetch", false, "cold-sumdb: also run a fresh modproxy with --prefetch=false, to show what prefetch buys")
	flag.BoolVar(&o.sumdbNoPrefetchInfo, "sumdb-no-prefetch-info", false, "cold-sumdb: also run a fresh modproxy with --prefetch-info=false")
	flag.StringVar(&o.serverLog, "server-log-level", "info", "modproxy --log-level (info logs every request, as in production)")
	flag.StringVar(&o.zipSizes, "zip-sizes", "1,8,40,100", "zip sizes of the zip-sizes scenario, MB")
	list := flag.Bool("list", false, "list the scenarios and exit")
	flag.Parse()
	if *list {
		for _, s := range sortedScenarios() {
			fmt.Printf("%-12s %s\n", s.Name, s.Desc)
		}
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	if err := run(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		stop()
		os.Exit(1)
	}
}

func run(ctx context.Context, o options) error {
	env, err := newEnv(ctx, o)
	if err != nil {
		return err
	}
	defer env.Close()

	var rep report
	rep.Started = time.Now()
	rep.Host = hostInfo()
	only, skip := nameSet(o.only), nameSet(o.skip)
	for _, s := range sortedScenarios() {
		if (len(only) > 0 && !only[s.Name]) || skip[s.Name] {
			continue
		}
		if ctx.Err() != nil {
			break
		}
		fmt.Fprintf(os.Stderr, "== %s: %s\n", s.Name, s.Desc)
		start := time.Now()
		sctx, cancel := context.WithTimeout(ctx, s.timeout())
		res, err := s.Run(sctx, env)
		cancel()
		env.stopServers() // whatever the scenario left running
		for i := range res {
			res[i].Scenario = s.Name
		}
		rep.Results = append(rep.Results, res...)
		if err != nil {
			if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
				err = fmt.Errorf("timed out after %s: %w", s.timeout(), err)
			}
			rep.Errors = append(rep.Errors, fmt.Sprintf("%s: %v", s.Name, err))
			fmt.Fprintf(os.Stderr, "   %s failed: %v\n", s.Name, err)
		}
		fmt.Fprintf(os.Stderr, "   %s done in %s\n", s.Name, time.Since(start).Round(100*time.Millisecond))
	}
	rep.Elapsed = time.Since(rep.Started)
	rep.print(os.Stdout)
	if o.jsonOut != "" {
		if err := rep.writeJSON(o.jsonOut); err != nil {
			return err
		}
	}
	if ctx.Err() != nil {
		return fmt.Errorf("interrupted: %w", ctx.Err())
	}
	if len(rep.Errors) > 0 {
		return fmt.Errorf("%d scenario(s) failed", len(rep.Errors))
	}
	return nil
}

func nameSet(list string) map[string]bool {
	m := map[string]bool{}
	for n := range strings.SplitSeq(list, ",") {
		if n = strings.TrimSpace(n); n != "" {
			m[n] = true
		}
	}
	return m
}
