//go:build !unix

package proxy

import (
	"io/fs"
	"os"
)

// lockSpool cannot lock here: leftovers are kept rather than risk removing
// a live process's files.
func lockSpool(*os.File) (bool, error) { return false, nil }

func ownedByUs(fs.FileInfo) bool { return true }
