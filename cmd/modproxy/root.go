package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"runtime/debug"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = ""

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "modproxy",
		Short:         "A caching Go module proxy with network-path telemetry",
		SilenceUsage:  true,
		SilenceErrors: true,
		// A bare "modproxy" is a usage error, not a silent success.
		Args: usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, args []string) error {
			return usagef("missing command; try 'modproxy serve' or 'modproxy --help'")
		},
	}
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		return &usageError{err}
	})
	root.AddCommand(newServeCmd(), newVersionCmd())
	for _, c := range extraCommands {
		root.AddCommand(c())
	}
	for _, c := range root.Commands() {
		if c.Args != nil {
			c.Args = usageArgs(c.Args)
		}
	}
	return root
}

// usageArgs makes an argument validator's errors usage errors (exit 2).
func usageArgs(fn cobra.PositionalArgs) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if err := fn(cmd, args); err != nil {
			return &usageError{err}
		}
		return nil
	}
}

// extraCommands are added by the files that implement them.
var extraCommands []func() *cobra.Command

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the modproxy version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			fmt.Fprintln(cmd.OutOrStdout(), "modproxy", versionString())
			return nil
		},
	}
}

func versionString() string {
	if version != "" {
		return version
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "(unknown)"
	}
	v := bi.Main.Version
	for _, s := range bi.Settings {
		if s.Key == "vcs.revision" && len(s.Value) >= 12 {
			v += " " + s.Value[:12]
		}
	}
	return v + " " + bi.GoVersion
}

// bindEnv lets every flag of cmd be set from MODPROXY_<FLAG> (upper case,
// dashes as underscores). A flag given on the command line wins. An empty
// value counts as unset, as the go command treats its own variables: a
// config template that renders MODPROXY_SUMDB= must not turn verification
// off, nor MODPROXY_PRIVATE= make private paths public.
func bindEnv(cmd *cobra.Command) error {
	var err error
	cmd.Flags().VisitAll(func(f *pflag.Flag) {
		if err != nil || f.Changed {
			return
		}
		name := envName(f.Name)
		v := os.Getenv(name)
		if strings.TrimSpace(v) == "" {
			return
		}
		if serr := cmd.Flags().Set(f.Name, v); serr != nil {
			err = usagef("invalid %s=%q: %v", name, v, serr)
		}
	})
	return err
}

// envName is the environment variable that sets flag: MODPROXY_<FLAG>.
func envName(flag string) string {
	return "MODPROXY_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// goEnv reads settings from "go env", which applies the user's go env -w
// file and the toolchain's defaults, bounded in time.
func goEnv(ctx context.Context, names ...string) (map[string]string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", append([]string{"env", "-json"}, names...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("go env %s: %w: %s", strings.Join(names, " "), err, strings.TrimSpace(stderr.String()))
	}
	vals := map[string]string{}
	if err := json.Unmarshal(out, &vals); err != nil {
		return nil, fmt.Errorf("go env: %w", err)
	}
	return vals, nil
}

func newLogger(format string, level slog.Level) (*slog.Logger, error) {
	opts := &slog.HandlerOptions{Level: level}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(os.Stderr, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(os.Stderr, opts)), nil
	}
	return nil, usagef("invalid --log-format %q: want text or json", format)
}
