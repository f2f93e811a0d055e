//go:build !linux || !(386 || amd64 || arm || arm64 || loong64 || mips64le || mipsle || ppc64le || riscv64)

package bpf

import (
	"errors"
	"fmt"
	"runtime"
	"syscall"
	"time"
)

var errUnsupported = fmt.Errorf("%w (little-endian); this is %s/%s", ErrNotSupported, runtime.GOOS, runtime.GOARCH)

// ProgramID is the kernel ID of a BPF program (ebpf.ProgramID on Linux).
type ProgramID uint32

// Probes is unavailable on this platform; see Load.
type Probes struct{}

// Available reports that eBPF needs Linux.
func Available() error { return errUnsupported }

// OwnCgroup reports that eBPF needs Linux.
func OwnCgroup() (string, error) { return "", errUnsupported }

// Load reports that eBPF needs Linux.
func Load(Options) (*Probes, error) { return nil, errUnsupported }

// SocketCookie reports that eBPF needs Linux.
func SocketCookie(uintptr) (uint64, error) { return 0, errUnsupported }

// MonotonicNow returns the runtime's monotonic clock reading; there are no
// kernel events to compare it with on this platform.
func MonotonicNow() uint64 { return uint64(time.Since(start)) }

var start = time.Now()

// KernelTimeToTime converts a MonotonicNow reading to wall-clock time.
func KernelTimeToTime(kt uint64) time.Time { return start.Add(time.Duration(kt)) }

func (*Probes) RegisterSocket(uintptr, uint32, Purpose) (uint64, error) { return 0, errUnsupported }

func (*Probes) Control(uint32, Purpose) func(network, address string, c syscall.RawConn) error {
	return func(string, string, syscall.RawConn) error { return nil }
}

// ErrNotMeasured is returned by LastIngress for a socket the programs do
// not measure.
var ErrNotMeasured = errors.New("bpf: socket not measured")

func (*Probes) LastIngress(uintptr) (uint64, error) { return 0, errUnsupported }

func (*Probes) Flush() error                   { return errUnsupported }
func (*Probes) Stats() Stats                   { return Stats{} }
func (*Probes) CgroupPath() string             { return "" }
func (*Probes) ProgramIDs() []ProgramID        { return nil }
func (*Probes) Attached() ([]ProgramID, error) { return nil, errUnsupported }
func (*Probes) Close() error                   { return nil }
