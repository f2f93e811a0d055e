package cache

import (
	"errors"
	"fmt"
	"os"
	"runtime/debug"
	"time"

	"go.etcd.io/bbolt"
	"golang.org/x/sys/unix"
)

// ErrNotStore is returned (wrapped) by Open for an existing file that is not
// a modproxy store: empty, not a bbolt file, or a bbolt file of another
// program. Open never writes to such a file.
var ErrNotStore = errors.New("not a modproxy store")

// checkExisting refuses what bbolt would silently take over or crash on:
// an empty file (bbolt initializes it as a new database), a file that is not
// regular, and a file whose pages are damaged (see checkFile). A missing
// file is fine: Open creates it.
func checkExisting(path string, opts Options) error {
	fi, err := os.Stat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%w: %s is not a regular file", ErrNotStore, fi.Mode().Type())
	}
	if fi.Size() == 0 {
		return fmt.Errorf("%w: the file is empty (0 bytes); refusing to initialize it (remove it to start a new store)", ErrNotStore)
	}
	if opts.skipCheck {
		return nil
	}
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	// Check a stable file: wait for writers the way bbolt's own lock would.
	// The shared lock is released before bbolt takes its own (flock locks
	// belong to the open file, so holding ours would block bbolt's).
	if err := flockShared(f, opts.LockTimeout); err != nil {
		return err
	}
	defer unix.Flock(int(f.Fd()), unix.LOCK_UN)
	return checkFile(f)
}

func flockShared(f *os.File, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_SH|unix.LOCK_NB)
		if err == nil {
			return nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			return fmt.Errorf("lock: %w", err)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w (e.g. a running `modproxy serve` holds its lock): stop it, or work through its HTTP API", ErrLocked)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// openBolt is bbolt.Open with its panics and faults turned into errors.
// After a recovered panic the file may stay open and locked until the
// process exits; the caller gives up on it anyway.
func openBolt(path string, o *bbolt.Options) (db *bbolt.DB, err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if p := recover(); p != nil {
			db, err = nil, fmt.Errorf("%w: bbolt failed to open the file: %v", ErrCorrupt, p)
		}
	}()
	return bbolt.Open(path, 0o600, o)
}
