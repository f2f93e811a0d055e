package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/modproxy/modproxy/auth"
)

func init() { extraCommands = append(extraCommands, newAuthCmd) }

func newAuthCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "auth",
		Short: "Manage the client identities of an auth file (serve --auth-file)",
		Long: `Manage the identities of an auth file, which "modproxy serve --auth-file"
reads and reloads when it changes.

Scopes: "public" reads every module path outside --private; a module path
pattern (GOPRIVATE syntax, e.g. git.corp.example/*) reads the paths it
matches; "admin" reads every module path (as prewarm --server needs) and
the admin endpoints (/metrics, /debug/, /healthz, /readyz).

Anonymous access is set by hand in the file: "anonymous: [public]".`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return usagef("missing subcommand: add, remove or list")
		},
	}
	cmd.AddCommand(newAuthAddCmd(), newAuthRemoveCmd(), newAuthListCmd())
	return cmd
}

// readAuthFile reads file; a missing file is an empty one when create is set.
func readAuthFile(file string, create bool) (*auth.File, error) {
	if file == "" {
		return nil, usagef("--file is required")
	}
	f, err := auth.ReadFile(file)
	if err != nil && create && errors.Is(err, fs.ErrNotExist) {
		return &auth.File{}, nil
	}
	return f, err
}

func newAuthAddCmd() *cobra.Command {
	var file, name, subject string
	var scopes []string
	var cost int
	cmd := &cobra.Command{
		Use:   "add --file F --name NAME --scope SCOPE... [--subject DN]",
		Short: "Add an identity: a new token (printed once, stored as a hash) or a TLS client subject",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			f, err := readAuthFile(file, true)
			if err != nil {
				return err
			}
			for _, s := range scopes {
				if err := auth.ParseScope(s); err != nil {
					return usagef("invalid --scope: %v", err)
				}
			}
			if subject != "" {
				if err := f.AddSubject(name, subject, scopes); err != nil {
					return usagef("%v", err)
				}
				if err := f.WriteFile(file); err != nil {
					return err
				}
				fmt.Fprintf(cmd.ErrOrStderr(), "added identity %q for client certificates with subject %q\n", name, subject)
				return nil
			}
			token, err := f.AddToken(name, scopes, cost)
			if err != nil {
				return usagef("%v", err)
			}
			if err := f.WriteFile(file); err != nil {
				return err
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "added identity %q; its token follows, shown this once (only its hash is stored).\n"+
				"netrc: machine <proxy host> login %s password <token>\n", name, name)
			fmt.Fprintln(cmd.OutOrStdout(), token)
			return nil
		},
	}
	cmd.Flags().StringVar(&file, "file", "", "auth file (created when missing)")
	cmd.Flags().StringVar(&name, "name", "", "identity name (the Basic/netrc login; shown in logs)")
	cmd.Flags().StringArrayVar(&scopes, "scope", nil, "scope, repeatable: public, admin, or a module path pattern")
	cmd.Flags().StringVar(&subject, "subject", "", "identify by TLS client certificate subject (e.g. CN=bot,O=Corp) instead of a token")
	cmd.Flags().IntVar(&cost, "bcrypt-cost", auth.DefaultCost, "bcrypt cost of the token hash")
	cmd.Flags().MarkHidden("bcrypt-cost")
	return cmd
}

func newAuthRemoveCmd() *cobra.Command {
	var file, name string
	cmd := &cobra.Command{
		Use:   "remove --file F --name NAME",
		Short: "Remove an identity (a running server drops it at its next reload)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			f, err := readAuthFile(file, false)
			if err != nil {
				return err
			}
			if err := f.Remove(name); err != nil {
				return usagef("%v", err)
			}
			if err := f.WriteFile(file); err != nil {
				return err
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "removed identity %q\n", name)
			return nil
		},
	}
	cmd.Flags().StringVar(&file, "file", "", "auth file")
	cmd.Flags().StringVar(&name, "name", "", "identity name")
	return cmd
}

type authListEntry struct {
	Name    string   `json:"name"`
	Kind    string   `json:"kind"` // "token" or "mtls"
	TokenID string   `json:"token_id,omitempty"`
	Subject string   `json:"subject,omitempty"`
	Scopes  []string `json:"scopes"`
}

func newAuthListCmd() *cobra.Command {
	var file string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "list --file F",
		Short: "List the identities and their scopes (never a token or hash)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			f, err := readAuthFile(file, false)
			if err != nil {
				return err
			}
			return printAuthList(cmd.OutOrStdout(), f, asJSON)
		},
	}
	cmd.Flags().StringVar(&file, "file", "", "auth file")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func printAuthList(w io.Writer, f *auth.File, asJSON bool) error {
	list := []authListEntry{}
	for _, e := range f.Identities {
		le := authListEntry{Name: e.Name, Kind: "token", TokenID: e.TokenID, Subject: e.Subject, Scopes: e.Scopes}
		if e.Subject != "" {
			le.Kind = "mtls"
		}
		list = append(list, le)
	}
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(struct {
			Anonymous  []string        `json:"anonymous"`
			Identities []authListEntry `json:"identities"`
		}{append([]string{}, f.Anonymous...), list})
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tKIND\tID/SUBJECT\tSCOPES")
	if len(f.Anonymous) > 0 {
		fmt.Fprintf(tw, "(anonymous)\t-\t-\t%s\n", strings.Join(f.Anonymous, " "))
	}
	for _, e := range list {
		ref := e.TokenID
		if e.Kind == "mtls" {
			ref = e.Subject
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", e.Name, e.Kind, ref, strings.Join(e.Scopes, " "))
	}
	return tw.Flush()
}
