package proxy

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
)

// DefaultMinFreeSpace is the free space kept on the store's and the spool's
// file systems (Config.MinFreeSpace).
const DefaultMinFreeSpace = 64 << 20

// spoolPrefix names spool files. The process writing one holds an
// exclusive flock on it for as long as the file is in use, so that a
// starting process can tell the leftovers of a crash (no lock) from the
// live files of another process sharing the directory, whatever their pids
// (a container's modproxy is pid 1 after every restart).
const spoolPrefix = "modproxy-zip-"

// prepareSpool creates the spool directory if it is missing and checks
// that a spool file can be created in it. Without it a mistyped or not yet
// created --spool-dir started a proxy that answered /readyz but failed
// every zip miss with 502.
func prepareSpool(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("spool directory: %w", err)
	}
	f, err := os.CreateTemp(dir, spoolPrefix+"probe-")
	if err != nil {
		return fmt.Errorf("spool directory %s is not writable: %w", dir, err)
	}
	name := f.Name()
	return errors.Join(f.Close(), os.Remove(name))
}

// cleanSpool removes the spool files in dir that no process holds: a crash
// or kill -9 leaves them, up to 500 MB each.
func cleanSpool(dir string, log *slog.Logger) {
	if dir == "" {
		dir = os.TempDir()
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		log.Warn("cannot list the spool directory to remove leftovers", "dir", dir, "err", err)
		return
	}
	n, bytes := 0, int64(0)
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), spoolPrefix) || !e.Type().IsRegular() {
			continue
		}
		name := filepath.Join(dir, e.Name())
		size, removed, err := removeUnlocked(name)
		if err != nil {
			log.Warn("cannot remove a leftover spool file", "file", name, "err", err)
			continue
		}
		if removed {
			n++
			bytes += size
		}
	}
	if n > 0 {
		log.Info("removed spool files left by a crashed process", "dir", dir, "files", n, "bytes", bytes)
	}
}

// removeUnlocked removes the file at name unless a process holds its lock
// or another user owns it (a shared temp dir).
func removeUnlocked(name string) (size int64, removed bool, err error) {
	f, err := os.Open(name)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return 0, false, nil
		}
		return 0, false, err
	}
	defer f.Close()
	held, err := lockSpool(f)
	if err != nil || !held {
		return 0, false, err // in use (or locks unsupported: keep it)
	}
	st, err := f.Stat()
	if err != nil {
		return 0, false, err
	}
	if !st.Mode().IsRegular() || !ownedByUs(st) {
		return 0, false, nil // swapped for something else, or another user's
	}
	if err := os.Remove(name); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return 0, false, err
	}
	return st.Size(), true, nil
}

// isNoSpace reports whether err is the file system running out of space.
func isNoSpace(err error) bool {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return true
	}
	// bbolt formats some file errors with %s, losing the errno.
	return err != nil && strings.Contains(err.Error(), syscall.ENOSPC.Error())
}

// insufficientStorage is the client's answer when a download cannot even
// be spooled.
func insufficientStorage(format string, args ...any) *HTTPError {
	return &HTTPError{Status: http.StatusInsufficientStorage, Msg: "insufficient storage: " + fmt.Sprintf(format, args...)}
}

// diskState watches the store's and the spool's file systems for /readyz:
// one with less than MinFreeSpace free, or on which a write failed for want
// of space, makes the proxy not ready until it has MinFreeSpace free again.
type diskState struct {
	free    func(path string) (uint64, error)
	minFree uint64
	watch   []string // directories always checked

	mu   sync.Mutex
	full map[string]string // directory → why a write there failed
}

func newDiskState(free func(string) (uint64, error), minFree uint64, watch ...string) *diskState {
	return &diskState{free: free, minFree: minFree, watch: watch, full: map[string]string{}}
}

// markFull records that dir's file system had no room for something.
func (d *diskState) markFull(dir, why string) {
	d.mu.Lock()
	d.full[dir] = why
	d.mu.Unlock()
}

// problem checks the file systems (statfs, cheap) and returns why the
// proxy is not ready, "" when every one has MinFreeSpace free.
func (d *diskState) problem() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	dirs := append([]string(nil), d.watch...)
	for dir := range d.full {
		if !slices.Contains(dirs, dir) {
			dirs = append(dirs, dir)
		}
	}
	var out []string
	for _, dir := range dirs {
		free, err := d.free(dir)
		if err != nil {
			continue // unknown: a failed write will tell
		}
		if free >= d.minFree {
			delete(d.full, dir)
			continue
		}
		s := fmt.Sprintf("%d bytes free on the file system of %s, %d wanted (--min-free-space)", free, dir, d.minFree)
		if why := d.full[dir]; why != "" {
			s += "; last failure: " + why
		}
		out = append(out, s)
	}
	return strings.Join(out, "; ")
}

// room checks that dir's file system can take size more bytes and keep
// MinFreeSpace free. It marks the file system full when not. An unknown
// free space (no statfs) is taken as room.
func (d *diskState) room(dir string, size int64) error {
	free, err := d.free(dir)
	if err != nil {
		return nil
	}
	need := uint64(size) + d.minFree
	if free >= need {
		return nil
	}
	why := fmt.Sprintf("%d bytes wanted, %d free", need, free)
	d.markFull(dir, why)
	return fmt.Errorf("%w: %s on the file system of %s", syscall.ENOSPC, why, dir)
}

// noRoom records a verified miss of req that the store did not take and
// that is passed through to the client unstored. Out of space, the store's
// disk is marked full (/readyz); any other failure is the store itself
// failing, logged as an error.
func (f *Fetcher) noRoom(req Request, err error) {
	f.m.servedUnstored.WithLabelValues(string(req.Kind)).Inc()
	if !isNoSpace(err) {
		f.log.Error("store failed: serving a verified artifact unstored", "request", req.String(), "kind", req.Kind, "err", oneLine(err.Error()))
		return
	}
	if dir := storeDir(f.store); dir != "" {
		f.disk.markFull(dir, oneLine(err.Error()))
	}
	f.log.Warn("store disk full: serving unstored", "request", req.String(), "kind", req.Kind, "err", oneLine(err.Error()))
}

// storeDir is the directory of a store kept in a local file, "" for one
// that is not (S3): its free space is not ours to watch.
func storeDir(st Store) string {
	if p, ok := st.(interface{ Path() string }); ok && p.Path() != "" {
		return filepath.Dir(p.Path())
	}
	return ""
}

// localDirs are the directories whose file systems /readyz watches.
func localDirs(st Store, spoolDir string) []string {
	if dir := storeDir(st); dir != "" {
		return []string{dir, spoolDir}
	}
	return []string{spoolDir}
}
