package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/modproxy/modproxy/bundle"
	"github.com/modproxy/modproxy/cache"
	"github.com/modproxy/modproxy/sumdb"
)

func init() { extraCommands = append(extraCommands, newImportCmd) }

type importConfig struct {
	db      string
	tempDir string
	json    bool
	sumdb   serveConfig // --sumdb, --private, --nosumdb
}

// importResult is the report of one bundle.
type importResult struct {
	Bundle string `json:"bundle"`
	bundle.Report
}

func newImportCmd() *cobra.Command {
	var c importConfig
	cmd := &cobra.Command{
		Use:   "import --db FILE BUNDLE...",
		Short: "Merge offline bundles into a store, verifying every artifact",
		Long: `Merge bundles into the store: store files written by "modproxy export",
directories written by "modproxy export --format dir", or the go command's
download cache ($GOMODCACHE/cache/download).

A bundle is untrusted input. Its checksum-database records and tiles are
authenticated with the verifier key of --sumdb (tree head signatures,
inclusion proofs, consistency with the tree head the store trusts); then
every artifact the store lacks passes the store's content checks and is
verified offline against those records. Hashes and states recorded in the
bundle are never trusted. Paths matching --private / --nosumdb are checked
for content only.

Imports are all-or-nothing per bundle: if any item fails, every failing item
is named, nothing from that bundle is stored, and the exit status is 1. The
store must not be held by a running server.`,
		Args:    cobra.MinimumNArgs(1),
		PreRunE: func(cmd *cobra.Command, args []string) error { return bindEnv(cmd) },
		RunE: func(cmd *cobra.Command, args []string) error {
			return runImport(cmd.Context(), c, cmd.Flags().Changed, args, cmd.OutOrStdout())
		},
	}
	f := cmd.Flags()
	f.StringVar(&c.db, "db", "./modproxy.db", "store file to import into")
	f.StringVar(&c.tempDir, "spool-dir", "", "directory for zips being checked (default: the system temp dir)")
	f.BoolVar(&c.json, "json", false, "print the reports as JSON")
	f.StringVar(&c.sumdb.sumdb, "sumdb", "", "checksum database whose key authenticates the bundles, GOSUMDB syntax (default: go env GOSUMDB)")
	f.StringVar(&c.sumdb.private, "private", "", "private module path patterns, GOPRIVATE syntax (default: go env GOPRIVATE)")
	f.StringVar(&c.sumdb.nosumdb, "nosumdb", "", "module path patterns not checked against the checksum database (default: go env GONOSUMDB)")
	return cmd
}

func runImport(ctx context.Context, c importConfig, changed func(string) bool, bundles []string, stdout io.Writer) (err error) {
	sc := c.sumdb
	sc.offline, sc.listTTL, sc.negativeTTL = true, time.Minute, time.Minute
	set, err := resolveSettings(ctx, sc, changed)
	if err != nil {
		return err
	}
	dst, err := cache.Open(c.db, cache.Options{})
	if err != nil {
		return fmt.Errorf("open store: %w", err)
	}
	opts := bundle.ImportOptions{TempDir: c.tempDir}
	if !set.sumdbOff {
		// The verifier decides what is exempt, exactly as for serve.
		v, err := sumdb.New(sumdb.Config{Name: set.sumdbName, VerifierKey: set.sumdbKey, URL: set.sumdbURL,
			Offline: true, Private: set.private, NoSumDB: set.nosumdb}, dst)
		if err != nil {
			dst.Close()
			return fmt.Errorf("checksum database: %w", err)
		}
		opts.VerifierKey, opts.Exempt = set.sumdbKey, v.Exempt
	}
	defer func() {
		if cerr := dst.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("close store: %w", cerr)
		}
	}()
	var results []importResult
	failed := 0
	for _, b := range bundles {
		st, err := os.Stat(b)
		if err != nil {
			return fmt.Errorf("import: %w", err)
		}
		var rep bundle.Report
		if st.IsDir() {
			rep, err = bundle.ImportDir(dst, b, opts)
		} else {
			rep, err = bundle.Import(dst, b, opts)
		}
		if err != nil {
			return err
		}
		failed += len(rep.Failed)
		results = append(results, importResult{Bundle: b, Report: rep})
	}
	if c.json {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(results); err != nil {
			return err
		}
	} else {
		for _, r := range results {
			if len(r.Failed) > 0 {
				fmt.Fprintf(stdout, "refused %s: %d items failed; nothing from it was stored\n", r.Bundle, len(r.Failed))
			} else {
				fmt.Fprintf(stdout, "imported %s: %d artifacts (%s; %d verified, %d exempt), %d already present, %d checksum-database entries\n",
					r.Bundle, r.Artifacts, formatBytes(r.Bytes), r.Verified, r.Exempt, r.Existing, r.SumDB)
			}
			for _, f := range r.Failed {
				fmt.Fprintf(stdout, "FAILED %s\n", f)
			}
		}
	}
	if failed > 0 {
		return &exitError{code: 1, err: fmt.Errorf("import: %d items failed verification; their bundles were refused", failed)}
	}
	return nil
}
