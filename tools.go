//go:build tools

// Package tools pins the code generators the build runs with go run, so
// that go.mod records their versions: bpf2go compiles bpf/ (make bpf).
package tools

import (
	_ "github.com/cilium/ebpf/cmd/bpf2go"
)
