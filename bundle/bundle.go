// Package bundle moves a store's content in and out, for machines that
// build without network access.
//
// A bundle is a modproxy store file holding a chosen subset of another
// store's artifacts plus all of its checksum-database data (lookup records,
// tiles and tree heads), so that "modproxy serve --offline" on a store the
// bundle was imported into lets the go command download and verify those
// modules with GOSUMDB on. [Export] writes one (marked as a bundle:
// [CheckServable] keeps it from being served as it is); [Import] merges one
// into a store, checking every artifact on the way in.
//
// A GOPROXY directory is the same content laid out as the go command reads
// it from GOPROXY=file:///dir: <escaped path>/@v/list, <version>.info, .mod
// and .zip, and sumdb/<name>/supported, latest, lookup/… and tile/…
// ([ExportDir]). [ImportDir] reads such a directory, and also the go
// command's own module download cache ($GOMODCACHE/cache/download), which
// has the same layout.
//
// A bundle is untrusted input. Its hashes, states, lookup records, tree
// heads and tiles are evidence, never truth: an import authenticates the
// checksum-database data first (each record's tree head signed by the
// configured verifier key, its inclusion proven by tiles that are
// themselves proven against the signed tree, the bundle's trees consistent
// with each other and with the tree head the store already trusts), then
// passes every artifact through the store's gate (cache/gate) with those
// authenticated records as its Verifier: content checks, then the "h1:"
// hash against the record, offline. Imports are all-or-nothing: if any item
// fails, nothing from the bundle is stored and every failing item is named.
package bundle

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/mod/module"

	"github.com/modproxy/modproxy/cache"
	"github.com/modproxy/modproxy/cache/gate"
)

// ExportMarker is the store entry that marks a store file as a bundle
// written by Export. Import never copies it.
const ExportMarker = "bundle/exported"

// CheckServable refuses a store that is a bundle. A bundle is untrusted
// input, proven only by Import; serving one as a store would serve its
// artifacts on the strength of the states and hashes it claims for
// itself. The marker protects against that mistake, not against a forged
// bundle that leaves it out: a store file is the proxy's own, and a file
// from elsewhere must come in through Import.
func CheckServable(s *cache.Store, path string) error {
	e, err := s.GetEntry(ExportMarker)
	if errors.Is(err, cache.ErrNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("check %s: %w", path, err)
	}
	return fmt.Errorf("%s is a bundle written by modproxy export on %s, which is untrusted input and is never served as a store: "+
		"import it with \"modproxy import --db STORE %s\" (it authenticates the checksum-database data and verifies every artifact), then serve STORE",
		path, e.Fetched.UTC().Format(time.DateOnly), path)
}

// sumdbMetaPrefix is the prefix of the store's mutable entries that belong
// to checksum databases (tree heads, the partial-tile index).
const sumdbMetaPrefix = "sumdb/"

// Report sums up an export or import.
type Report struct {
	Artifacts  int      `json:"artifacts"`  // artifacts written
	Bytes      int64    `json:"bytes"`      // their content bytes
	Existing   int      `json:"existing"`   // artifacts the destination already held
	SumDB      int      `json:"sumdb"`      // checksum-database files or entries written
	Unverified int      `json:"unverified"` // export: unverified artifacts left out (or included)
	Verified   int      `json:"verified"`   // import: artifacts verified against authenticated records
	Exempt     int      `json:"exempt"`     // import: artifacts of exempt paths (content checks only)
	Failed     []string `json:"failed"`     // items refused, with the reason
}

// selection returns the artifacts of src to export: those keep accepts
// (all when nil), without unverified ones unless includeUnverified. An
// .info goes with its version's .mod: a version whose go.mod is left out
// is left out whole.
func selection(src *cache.Store, keep func(cache.Key) bool, includeUnverified bool, rep *Report) (map[cache.Key]bool, error) {
	sel := map[cache.Key]bool{}
	dropped := map[module.Version]bool{}
	err := src.Walk(func(k cache.Key, m cache.Meta) error {
		if keep != nil && !keep(k) {
			return nil
		}
		if m.State == cache.StateUnverified {
			rep.Unverified++
			if !includeUnverified {
				if k.Kind == cache.KindMod {
					dropped[module.Version{Path: k.Path, Version: k.Version}] = true
				}
				return nil
			}
		}
		sel[k] = true
		return nil
	})
	for k := range sel {
		if k.Kind == cache.KindInfo && dropped[module.Version{Path: k.Path, Version: k.Version}] {
			delete(sel, k)
		}
	}
	return sel, err
}

// Export writes a new store file at out holding the artifacts of src that
// keep accepts (all of them when keep is nil) and all of src's
// checksum-database data. out must not exist; it is written under a
// temporary name and renamed into place when complete.
//
// Artifacts stored unverified (fail-open) are left out unless
// includeUnverified is set; the bundle records each artifact's state.
func Export(src *cache.Store, out string, keep func(cache.Key) bool, includeUnverified bool) (Report, error) {
	var rep Report
	if _, err := os.Lstat(out); err == nil {
		return rep, fmt.Errorf("export: %s already exists; choose a new file", out)
	}
	tmp, err := os.CreateTemp(filepath.Dir(out), "."+filepath.Base(out)+".tmp-*")
	if err != nil {
		return rep, fmt.Errorf("export: %w", err)
	}
	tmpName := tmp.Name()
	tmp.Close()
	os.Remove(tmpName) // bbolt creates it
	dst, err := cache.Open(tmpName, cache.Options{})
	if err != nil {
		return rep, fmt.Errorf("export: %w", err)
	}
	fail := func(err error) (Report, error) {
		dst.Close()
		os.Remove(tmpName)
		return rep, fmt.Errorf("export to %s: %w", out, err)
	}
	sel, err := selection(src, keep, includeUnverified, &rep)
	if err != nil {
		return fail(err)
	}
	st, err := gate.Copy(src, dst, func(k cache.Key, _ cache.Meta) bool { return sel[k] })
	rep.Artifacts, rep.Bytes = st.Artifacts, st.Bytes
	if err != nil {
		return fail(err)
	}
	n, err := src.CopyKVTo(dst, nil)
	if err != nil {
		return fail(err)
	}
	m, err := src.CopyMetaTo(dst, func(key string) bool { return strings.HasPrefix(key, sumdbMetaPrefix) }, true)
	if err != nil {
		return fail(err)
	}
	rep.SumDB = n + m
	if err := dst.PutEntry(ExportMarker, []byte("written by modproxy export")); err != nil {
		return fail(err)
	}
	if err := dst.Close(); err != nil {
		os.Remove(tmpName)
		return rep, fmt.Errorf("export to %s: %w", out, err)
	}
	if err := os.Rename(tmpName, out); err != nil {
		os.Remove(tmpName)
		return rep, fmt.Errorf("export: %w", err)
	}
	return rep, nil
}
