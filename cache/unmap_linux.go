package cache

import (
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

var pageSize = uintptr(os.Getpagesize())

// dropMapped tells the kernel that the pages of v, a slice of bbolt's
// read-only shared file mapping, are not needed in this process any more.
// The data stays in the page cache and is faulted back in on the next
// access; only the process's resident set shrinks. Streaming a large zip
// would otherwise leave every page of it counted in the proxy's RSS.
func dropMapped(v []byte) {
	if len(v) > 0 {
		dropRange(uintptr(unsafe.Pointer(unsafe.SliceData(v))), uintptr(len(v)))
	}
}

// dropRange is dropMapped for the size bytes of bbolt's mapping at base
// (DB.Info().Data), rounded inwards to whole pages. It must be called
// inside a transaction, which keeps the mapping in place: outside one, the
// range may have been remapped to other memory, which MADV_DONTNEED would
// zero.
func dropRange(base, size uintptr) {
	lo := (base + pageSize - 1) &^ (pageSize - 1)
	hi := (base + size) &^ (pageSize - 1)
	if hi > lo {
		// Advice only: an error changes nothing that matters.
		_, _, _ = unix.Syscall(unix.SYS_MADVISE, lo, hi-lo, unix.MADV_DONTNEED)
	}
}
