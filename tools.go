//go:build tools

// Package tools pins modules that packages under construction will import,
// so that go mod tidy keeps them. Removed once every one is imported.
package tools

import (
	_ "github.com/chromedp/chromedp"
	_ "github.com/cilium/ebpf"
	_ "github.com/cilium/ebpf/cmd/bpf2go"
	_ "github.com/miekg/dns"
	_ "github.com/prometheus/client_golang/prometheus"
	_ "github.com/prometheus/client_golang/prometheus/promhttp"
	_ "github.com/rogpeppe/go-internal/testscript"
	_ "github.com/schollz/progressbar/v3"
	_ "github.com/spf13/cobra"
	_ "go.etcd.io/bbolt"
	_ "go.uber.org/goleak"
	_ "golang.org/x/mod/module"
	_ "golang.org/x/mod/sumdb"
	_ "golang.org/x/mod/zip"
	_ "golang.org/x/sync/singleflight"
	_ "golang.org/x/term"
)
