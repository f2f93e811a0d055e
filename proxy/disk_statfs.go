//go:build linux || darwin || freebsd

package proxy

import "golang.org/x/sys/unix"

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
