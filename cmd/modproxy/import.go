package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

	"github.com/modproxy/modproxy/bundle"
	"github.com/modproxy/modproxy/cache"
)

func init() { extraCommands = append(extraCommands, newImportCmd) }

type importConfig struct {
	db      string
	tempDir string
	json    bool
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

Every artifact the store lacks is verified before it is stored: zips with
modzip.CheckZip and their "h1:" hash, go.mod files with their hash, against
the hash recorded in the bundle (or, in a directory, its checksum-database
records and .ziphash files). Artifacts that fail are reported and skipped,
and the exit status is then 1. The store must not be held by a running
server.`,
		Args:    cobra.MinimumNArgs(1),
		PreRunE: func(cmd *cobra.Command, args []string) error { return bindEnv(cmd) },
		RunE: func(cmd *cobra.Command, args []string) error {
			return runImport(c, args, cmd.OutOrStdout())
		},
	}
	f := cmd.Flags()
	f.StringVar(&c.db, "db", "./modproxy.db", "store file to import into")
	f.StringVar(&c.tempDir, "spool-dir", "", "directory for zips being checked (default: the system temp dir)")
	f.BoolVar(&c.json, "json", false, "print the reports as JSON")
	return cmd
}

func runImport(c importConfig, bundles []string, stdout io.Writer) (err error) {
	dst, err := cache.Open(c.db, cache.Options{})
	if err != nil {
		return fmt.Errorf("open store: %w", err)
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
			rep, err = bundle.ImportDir(dst, b, c.tempDir)
		} else {
			rep, err = bundle.Import(dst, b, c.tempDir)
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
			fmt.Fprintf(stdout, "imported %s: %d artifacts (%s), %d already present, %d checksum-database entries, %d failed\n",
				r.Bundle, r.Artifacts, formatBytes(r.Bytes), r.Existing, r.SumDB, len(r.Failed))
			for _, f := range r.Failed {
				fmt.Fprintf(stdout, "FAILED %s\n", f)
			}
		}
	}
	if failed > 0 {
		return &exitError{code: 1, err: fmt.Errorf("import: %d artifacts failed verification and were skipped", failed)}
	}
	return nil
}
