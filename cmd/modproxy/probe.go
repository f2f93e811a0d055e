package main

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"

	"github.com/modproxy/modproxy/netprobe"
	"github.com/modproxy/modproxy/proxy"
)

func init() { extraCommands = append(extraCommands, newProbeCmd) }

func newProbeCmd() *cobra.Command {
	var (
		upstream string
		rounds   int
		asJSON   bool
		timeout  time.Duration
		nc       netConfig
	)
	cmd := &cobra.Command{
		Use:   "probe [flags] [module@version...]",
		Short: "Time requests through each upstream and show where the time goes",
		Long: `Time a few requests (list, info, mod, zip) through each upstream with
modproxy's own resolver and transport, then print a per-phase waterfall
(dns, connect, tls, ttfb, transfer) per upstream and a compact terminal
heatmap of latency over the run. Answers "why is go mod download slow here?".`,
		PreRunE: func(cmd *cobra.Command, args []string) error { return bindEnv(cmd) },
		RunE: func(cmd *cobra.Command, args []string) error {
			if rounds <= 0 {
				return usagef("invalid --rounds %d: must be positive", rounds)
			}
			if err := nc.validate(); err != nil {
				return err
			}
			if !cmd.Flags().Changed("upstream") {
				env, err := goEnv(cmd.Context(), "GOPROXY")
				if err != nil {
					return fmt.Errorf("read default upstream (set --upstream): %w", err)
				}
				upstream = env["GOPROXY"]
			}
			ups, err := proxy.ParseUpstreams(upstream)
			if err != nil {
				return usagef("invalid --upstream %q: %v", upstream, err)
			}
			urls := proxy.URLs(ups)
			if len(urls) == 0 {
				return usagef("--upstream %q has no HTTP upstream to probe", upstream)
			}
			logger := slog.New(slog.DiscardHandler)
			n, err := newNetwork(cmd.Context(), nc, urls, prometheus.NewRegistry(), logger)
			if err != nil {
				return err
			}
			defer n.Close()
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			rep, err := netprobe.RunProbe(ctx, n.probe, netprobe.ProbeOptions{Upstreams: urls, Modules: args, Rounds: rounds})
			if err != nil {
				return fmt.Errorf("probe: %w", err)
			}
			if asJSON {
				return rep.WriteJSON(cmd.OutOrStdout())
			}
			return rep.WriteText(cmd.OutOrStdout())
		},
	}
	f := cmd.Flags()
	f.StringVar(&upstream, "upstream", "", "upstreams to probe, GOPROXY syntax (default: go env GOPROXY)")
	f.IntVar(&rounds, "rounds", 3, "requests of each kind per upstream")
	f.BoolVar(&asJSON, "json", false, "print the report as JSON")
	f.DurationVar(&timeout, "timeout", 2*time.Minute, "bound on the whole probe")
	addNetFlags(f, &nc)
	return cmd
}
