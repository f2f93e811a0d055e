//go:build !linux

package cache

// dropMapped is a no-op where madvise is not used.
func dropMapped([]byte) {}

// dropRange is a no-op where madvise is not used.
func dropRange(base, size uintptr) {}
