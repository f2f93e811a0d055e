//go:build unix

package proxy

import (
	"errors"
	"io/fs"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// diskFree returns the bytes available to unprivileged users on the file
// system holding dir.
func diskFree(dir string) (uint64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, err
	}
	// Field types differ between systems (FreeBSD's Bavail is signed and
	// may be negative, into the root reserve).
	if st.Bavail <= 0 {
		return 0, nil
	}
	return uint64(st.Bavail) * uint64(st.Bsize), nil
}

// lockSpool takes the exclusive lock of a spool file without waiting; it
// reports false when another open file description holds it. The lock goes
// with the descriptor: closing f (or the process dying) releases it.
func lockSpool(f *os.File) (bool, error) {
	err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
	if errors.Is(err, unix.EWOULDBLOCK) {
		return false, nil
	}
	return err == nil, err
}

func ownedByUs(fi fs.FileInfo) bool {
	st, ok := fi.Sys().(*syscall.Stat_t)
	return ok && int(st.Uid) == os.Geteuid()
}
