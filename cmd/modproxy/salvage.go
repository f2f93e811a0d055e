package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/modproxy/modproxy/cache"
	"github.com/modproxy/modproxy/cache/gate"
)

// runSalvage copies what is intact in the damaged store src into the new
// store dst (verify --salvage). dst must not exist: salvage never writes
// into a store that holds something already, nor over any other file.
func runSalvage(out io.Writer, src, dst string, asJSON bool) error {
	if _, err := os.Lstat(dst); err == nil {
		return fmt.Errorf("salvage: %s exists; name a new file", dst)
	} else if !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("salvage: %w", err)
	}
	to, err := cache.Open(dst, cache.Options{})
	if err != nil {
		return fmt.Errorf("salvage: create %s: %w", dst, err)
	}
	rep, err := gate.Salvage(src, to)
	if cerr := to.Close(); err == nil && cerr != nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("salvage: %w", err)
	}
	if asJSON {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			return err
		}
	} else {
		fmt.Fprintf(out, "salvaged %d artifacts (%d bytes), %d entries, %d key/value pairs from %s into %s; %d lost\n",
			rep.Artifacts, rep.Bytes, rep.Meta, rep.KV, src, dst, len(rep.Lost))
		for _, p := range rep.Lost {
			fmt.Fprintf(out, "lost %s: %s\n", p.What, p.Reason)
		}
	}
	if !rep.Complete() {
		return &exitError{code: 1, err: fmt.Errorf("salvage: %d items could not be copied", len(rep.Lost))}
	}
	return nil
}
