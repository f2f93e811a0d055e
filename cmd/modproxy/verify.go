package main

import (
	"encoding/json"
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/modproxy/modproxy/cache"
	"github.com/modproxy/modproxy/sumdb"
)

func init() { extraCommands = append(extraCommands, newVerifyCmd) }

func newVerifyCmd() *cobra.Command {
	var (
		db         string
		asJSON     bool
		quarantine bool
		salvageTo  string
	)
	cmd := &cobra.Command{
		Use:   "verify",
		Short: "Re-hash every stored artifact against its recorded checksum-database hash",
		Long: `Re-hash every stored .mod and .zip against the checksum-database hash
recorded when it was verified, print a summary and exit 1 on any mismatch.
With --quarantine, bad artifacts are moved aside so they are no longer
served. The store must not be open in a running server.

With --salvage NEW.db, a store that cannot be opened (damaged pages) is
read page by page instead, and every artifact whose chunks pass their
checksums and whose content matches its recorded SHA-256 is copied into the
new store NEW.db, with the list/@latest entries and checksum-database data
that can be read. The exit status is 1 if anything was lost.`,
		Args:    cobra.NoArgs,
		PreRunE: func(cmd *cobra.Command, args []string) error { return bindEnv(cmd) },
		RunE: func(cmd *cobra.Command, args []string) error {
			if salvageTo != "" {
				return runSalvage(cmd.OutOrStdout(), db, salvageTo, asJSON)
			}
			store, err := cache.Open(db, cache.Options{})
			if err != nil {
				return fmt.Errorf("open store: %w", err)
			}
			defer store.Close()
			opts := sumdb.VerifyOptions{}
			if quarantine {
				opts.Quarantine = store.Quarantine
			}
			rep, err := sumdb.VerifyStore(cmd.Context(), sumdb.CacheArtifacts(store), opts)
			if err != nil {
				return fmt.Errorf("verify %s: %w", db, err)
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
	cmd.Flags().StringVar(&db, "db", "./modproxy.db", "bbolt store file")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the report as JSON")
	cmd.Flags().BoolVar(&quarantine, "quarantine", false, "move artifacts that fail verification aside")
	cmd.Flags().StringVar(&salvageTo, "salvage", "", "copy every intact artifact of a damaged --db into this new store file (it must not exist)")
	return cmd
}
