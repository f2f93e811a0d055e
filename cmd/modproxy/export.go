package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"
	"golang.org/x/mod/module"
	"golang.org/x/mod/semver"

	"github.com/modproxy/modproxy/bundle"
	"github.com/modproxy/modproxy/cache"
	"github.com/modproxy/modproxy/modgraph"
)

func init() { extraCommands = append(extraCommands, newExportCmd) }

type exportConfig struct {
	db        string
	out       string
	format    string
	platforms []string
	goVersion string
	json      bool
	// includeUnverified exports artifacts stored unverified (fail-open).
	includeUnverified bool
}

func newExportCmd() *cobra.Command {
	var c exportConfig
	cmd := &cobra.Command{
		Use:   "export --db FILE --out BUNDLE [TARGET...]",
		Short: "Write what targets need (or the whole store) as an offline bundle",
		Long: `Write the artifacts that the targets need (everything when no target is
given), with all of the store's checksum-database data, to BUNDLE:

  --format store  a new store file, for "modproxy import" or for
                  "modproxy serve --offline --db BUNDLE";
  --format dir    a directory the go command reads as GOPROXY=file:///BUNDLE
                  (<escaped path>/@v/list, .info, .mod, .zip, and
                  sumdb/<name>/ for GOSUMDB verification).

Artifacts stored unverified (--sumdb-fail-open) are left out unless
--include-unverified is given; a store bundle records each artifact's
state, and the importing side verifies every artifact again in any case.

Targets are as for prewarm and are resolved from the store alone; the export
fails, naming them, if the store lacks artifacts they need. The store must
not be held by a running server.`,
		PreRunE: func(cmd *cobra.Command, args []string) error { return bindEnv(cmd) },
		RunE: func(cmd *cobra.Command, args []string) error {
			return runExport(cmd.Context(), c, args, cmd.OutOrStdout())
		},
	}
	f := cmd.Flags()
	f.StringVar(&c.db, "db", "./modproxy.db", "store file to export from")
	f.StringVar(&c.out, "out", "", "bundle to write: a new store file, or a directory with --format dir")
	f.StringVar(&c.format, "format", "store", "bundle format: store or dir")
	f.StringArrayVar(&c.platforms, "platform", nil, "GOOS/GOARCH of the Go toolchains to include when targets need one, repeatable")
	f.StringVar(&c.goVersion, "go-version", "", "Go version of the toolchain that will build (default: go env GOVERSION)")
	f.BoolVar(&c.json, "json", false, "print the report as JSON")
	f.BoolVar(&c.includeUnverified, "include-unverified", false, "also export artifacts stored unverified (fail-open)")
	return cmd
}

func runExport(ctx context.Context, c exportConfig, targets []string, stdout io.Writer) error {
	if c.out == "" {
		return usagef("missing --out BUNDLE")
	}
	if c.format != "store" && c.format != "dir" {
		return usagef("invalid --format %q: want store or dir", c.format)
	}
	src, err := cache.Open(c.db, cache.Options{ReadOnly: true})
	if err != nil {
		return fmt.Errorf("open store: %w", err)
	}
	defer src.Close()

	var keep func(cache.Key) bool
	if len(targets) > 0 {
		if keep, err = exportSelection(ctx, src, targets, c.platforms, c.goVersion); err != nil {
			return err
		}
	}
	var rep bundle.Report
	if c.format == "dir" {
		rep, err = bundle.ExportDir(src, c.out, keep, c.includeUnverified)
	} else {
		rep, err = bundle.Export(src, c.out, keep, c.includeUnverified)
	}
	if err != nil {
		return err
	}
	if c.json {
		return json.NewEncoder(stdout).Encode(rep)
	}
	fmt.Fprintf(stdout, "exported %d artifacts (%s) and %d checksum-database entries to %s\n",
		rep.Artifacts, formatBytes(rep.Bytes), rep.SumDB, c.out)
	if rep.Unverified > 0 {
		what := "left out"
		if c.includeUnverified {
			what = "included, marked unverified"
		}
		fmt.Fprintf(stdout, "%d artifacts stored unverified (fail-open) were %s\n", rep.Unverified, what)
	}
	return nil
}

// exportSelection resolves targets against the store and returns the
// artifacts to keep; it fails naming every needed artifact the store lacks.
func exportSelection(ctx context.Context, src *cache.Store, targets, platforms []string, goVersion string) (func(cache.Key) bool, error) {
	if goVersion == "" {
		if env, err := goEnv(ctx, "GOVERSION"); err == nil && strings.HasPrefix(env["GOVERSION"], "go1.") {
			goVersion = strings.TrimPrefix(env["GOVERSION"], "go")
		}
	}
	plan, err := modgraph.Resolve(ctx, targets, modgraph.Options{
		Source:    storeSource{src},
		GoVersion: goVersion,
		Platforms: platforms,
	})
	if err != nil {
		return nil, fmt.Errorf("resolve targets from the store: %w", err)
	}
	want := map[cache.Key]bool{}
	var missing []string
	for _, n := range plan.Needs {
		kinds := []cache.Kind{cache.KindInfo, cache.KindMod}
		if n.Zip {
			kinds = append(kinds, cache.KindZip)
		}
		for _, kind := range kinds {
			k := cache.Key{Path: n.Path, Version: n.Version, Kind: kind}
			if _, err := src.Stat(k); errors.Is(err, cache.ErrNotFound) {
				missing = append(missing, n.Path+"@"+n.Version+"."+string(kind))
				continue
			} else if err != nil {
				return nil, err
			}
			want[k] = true
		}
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("the store lacks %d artifacts the targets need (prewarm them first): %s", len(missing), strings.Join(missing, ", "))
	}
	return func(k cache.Key) bool { return want[k] }, nil
}

// storeSource is a modgraph.Source answering from a store alone.
type storeSource struct{ s *cache.Store }

func (s storeSource) GoMod(ctx context.Context, path, version string) ([]byte, error) {
	data, _, err := s.s.Get(cache.Key{Path: path, Version: version, Kind: cache.KindMod})
	if err != nil {
		return nil, fmt.Errorf("%s@%s: %w", path, version, err)
	}
	return data, nil
}

func (s storeSource) Latest(ctx context.Context, path string) (string, error) {
	vs, err := s.s.Versions(path)
	if err != nil {
		return "", err
	}
	for i := len(vs) - 1; i >= 0; i-- {
		if semver.Prerelease(vs[i]) == "" && !module.IsPseudoVersion(vs[i]) {
			return vs[i], nil
		}
	}
	if len(vs) > 0 {
		return vs[len(vs)-1], nil
	}
	return "", fmt.Errorf("%s@latest: no version in the store: %w", path, cache.ErrNotFound)
}
