package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"

	"github.com/modproxy/modproxy/cache"
	"github.com/modproxy/modproxy/cache/gate"
	"github.com/modproxy/modproxy/proxy"
)

func init() { extraCommands = append(extraCommands, newVerifyCmd) }

func newVerifyCmd() *cobra.Command {
	var (
		c          serveConfig
		asJSON     bool
		quarantine bool
		salvageTo  string
	)
	cmd := &cobra.Command{
		Use:   "verify",
		Short: "Check every stored artifact again, against the checksum database",
		Long: `Check every stored artifact again: its content (a go.mod parses and names
its module, a zip's entries inflate to their declared sizes, an .info names
its version), the "h1:" hash recorded when it was stored, and for every
.mod and .zip that is not exempt the checksum database: online, or with
--offline from the authenticated records in the store.

Prints counts by outcome (verified, exempt, unverified, mismatch, missing
record) and exits 1 on any mismatch or error. With --quarantine, mismatching
artifacts are moved aside so they are no longer served. The store must not
be open in a running server.

With --salvage NEW.db, a store that cannot be opened (damaged pages) is
read page by page instead, and every artifact whose chunks pass their
checksums and whose content matches its recorded SHA-256 is copied into the
new store NEW.db, with the list/@latest entries and checksum-database data
that can be read. The exit status is 1 if anything was lost.`,
		Args:    cobra.NoArgs,
		PreRunE: func(cmd *cobra.Command, args []string) error { return bindEnv(cmd) },
		RunE: func(cmd *cobra.Command, args []string) error {
			if salvageTo != "" {
				return runSalvage(cmd.OutOrStdout(), c.db, salvageTo, asJSON)
			}
			ctx := cmd.Context()
			c.listTTL, c.negativeTTL = time.Minute, time.Minute
			set, err := resolveSettings(ctx, c, cmd.Flags().Changed)
			if err != nil {
				return err
			}
			logger, err := newLogger("text", slog.LevelWarn)
			if err != nil {
				return err
			}
			store, err := cache.Open(c.db, cache.Options{})
			if err != nil {
				return fmt.Errorf("open store: %w", err)
			}
			defer store.Close()
			reg := prometheus.NewRegistry()
			n, err := newNetwork(ctx, c.net, proxy.URLs(set.upstreams), reg, logger)
			if err != nil {
				return err
			}
			defer n.Close()
			v, err := newVerifier(set, n, c.offline, store, reg, logger)
			if err != nil {
				return err
			}
			opts := gate.VerifyOptions{TempDir: c.spoolDir}
			if v != nil {
				opts.Verifier = v
			}
			if quarantine {
				opts.Quarantine = store.Quarantine
			}
			rep, err := gate.Verify(ctx, store, opts)
			if err != nil {
				return fmt.Errorf("verify %s: %w", c.db, err)
			}
			out := cmd.OutOrStdout()
			if asJSON {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				if err := enc.Encode(rep); err != nil {
					return err
				}
			} else if err := rep.WriteText(out); err != nil {
				return err
			}
			if rep.Failed() {
				return &exitError{code: 1, err: errors.New("verification found problems")}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&c.db, "db", "./modproxy.db", "bbolt store file")
	f.StringVar(&c.upstream, "upstream", "", "upstreams whose /sumdb/ passthrough reaches the checksum database, GOPROXY syntax (default: go env GOPROXY)")
	f.StringVar(&c.private, "private", "", "private module path patterns, GOPRIVATE syntax (default: go env GOPRIVATE)")
	f.StringVar(&c.nosumdb, "nosumdb", "", "module path patterns not checked against the checksum database (default: go env GONOSUMDB)")
	f.StringVar(&c.sumdb, "sumdb", "", "checksum database in GOSUMDB syntax (default: go env GOSUMDB)")
	f.BoolVar(&c.offline, "offline", false, "check against the authenticated checksum-database records in the store only")
	f.StringVar(&c.spoolDir, "spool-dir", "", "directory for zips being checked (default: the system temp dir)")
	f.BoolVar(&asJSON, "json", false, "print the report as JSON")
	f.BoolVar(&quarantine, "quarantine", false, "move artifacts that fail verification aside")
	f.StringVar(&salvageTo, "salvage", "", "copy every intact artifact of a damaged --db into this new store file (it must not exist)")
	addNetFlags(f, &c.net)
	return cmd
}
