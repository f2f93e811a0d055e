//go:build linux && (386 || amd64 || arm || arm64 || loong64 || mips64le || mipsle || ppc64le || riscv64)

package bpf

import (
	"testing"

	"golang.org/x/sys/unix"
)

// MonotonicNow must read the kernel's CLOCK_MONOTONIC (bpf_ktime_get_ns),
// since kernel and userspace timestamps are subtracted from each other.
func TestMonotonicNowIsClockMonotonic(t *testing.T) {
	for range 100 {
		var ts unix.Timespec
		before := MonotonicNow()
		if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
			t.Fatal(err)
		}
		after := MonotonicNow()
		k := uint64(ts.Nano())
		// Allow the start-up calibration's skew (two adjacent clock reads).
		const slack = 50_000 // 50 µs
		if k+slack < before || k > after+slack {
			t.Fatalf("CLOCK_MONOTONIC %d outside MonotonicNow [%d, %d] ± %d ns", k, before, after, slack)
		}
	}
}
