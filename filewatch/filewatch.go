// Package filewatch notices when small configuration files change.
//
// It polls: every interval it hashes the files' contents and calls back
// when the hash moved. Polling contents rather than watching inotify
// events or modification times also sees a Kubernetes Secret update (a
// symlink swapped under the mounted directory) and an edit within the
// file system's timestamp granularity; for the few small files it is
// meant for (auth file, policy, TLS pair) it costs next to nothing.
package filewatch

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"io"
	"os"
	"time"
)

// maxRead bounds how much of each file is hashed; the size is hashed too,
// so that a larger file that grows or shrinks past the bound is a change.
const maxRead = 4 << 20

// Fingerprint hashes the contents of paths; a missing or unreadable file
// hashes as such, so that its return is a change too.
func Fingerprint(paths []string) [sha256.Size]byte {
	h := sha256.New()
	for _, p := range paths {
		h.Write([]byte(p))
		f, err := os.Open(p)
		if err != nil {
			h.Write([]byte{0})
			continue
		}
		h.Write([]byte{1})
		if fi, err := f.Stat(); err == nil {
			h.Write(binary.BigEndian.AppendUint64(nil, uint64(fi.Size())))
		}
		io.Copy(h, io.LimitReader(f, maxRead))
		f.Close()
	}
	return [sha256.Size]byte(h.Sum(nil))
}

// Watch calls changed whenever the contents of paths differ from the last
// poll, until ctx is done. It returns when ctx is done.
func Watch(ctx context.Context, interval time.Duration, paths []string, changed func()) {
	last := Fingerprint(paths)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if fp := Fingerprint(paths); fp != last {
			last = fp
			changed()
		}
	}
}
