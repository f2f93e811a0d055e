package bpf

// Regenerate the BPF object and its Go bindings with `go generate ./bpf/`
// (needs clang and llvm-strip; bpf2go derives the llvm-strip version suffix
// from BPF2GO_CC, e.g. clang-14 → llvm-strip-14). The output is committed so
// that `go build` needs no C toolchain. It is byte-for-byte reproducible for
// a given clang version, independent of the checkout path; the committed
// files were made with Debian 12's clang 14.0.6, so CI must use the same
// (BPF2GO_CC=clang-14) when it regenerates and checks for a diff.
//
//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -tags linux -target bpfel -type event -type conn_state -type registration modproxy modproxy.bpf.c -- -O2 -g -Wall -Werror -mcpu=v3 -Iinclude
