//go:build !unix

package proxy

import (
	"errors"
	"io/fs"
	"os"
)

func diskFree(string) (uint64, error) { return 0, errors.New("free space unknown on this platform") }

// lockSpool cannot lock here: leftovers are kept rather than risk removing
// a live process's files.
func lockSpool(*os.File) (bool, error) { return false, nil }

func ownedByUs(fs.FileInfo) bool { return true }
