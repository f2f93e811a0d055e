// Package bundle moves a store's content in and out, for machines that
// build without network access.
//
// A bundle is a modproxy store file holding a chosen subset of another
// store's artifacts plus all of its checksum-database data (lookup records,
// tiles and tree heads), so that "modproxy serve --offline" on the bundle,
// or on a store the bundle was imported into, lets the go command download
// and verify those modules with GOSUMDB on. [Export] writes one; [Import]
// merges one into a store, checking every artifact on the way in.
//
// A GOPROXY directory is the same content laid out as the go command reads
// it from GOPROXY=file:///dir: <escaped path>/@v/list, <version>.info, .mod
// and .zip, and sumdb/<name>/supported, latest, lookup/… and tile/…
// ([ExportDir]). [ImportDir] reads such a directory, and also the go
// command's own module download cache ($GOMODCACHE/cache/download), which
// has the same layout.
//
// Imports verify what they store: a zip must pass modzip.CheckZip and hash
// (dirhash.HashZip) to its recorded "h1:" hash, a go.mod must parse and hash
// (dirhash.Hash1 over a file named go.mod) to its recorded hash, an .info must
// name its version, and the content must match the size and SHA-256 recorded
// in the bundle. The recorded hash is the bundle's Meta.Hash, or in a
// directory the checksum-database record beside it or the .ziphash file the
// go command writes.
package bundle

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/mod/modfile"
	"golang.org/x/mod/module"
	"golang.org/x/mod/semver"
	"golang.org/x/mod/sumdb/dirhash"
	modzip "golang.org/x/mod/zip"

	"github.com/modproxy/modproxy/cache"
	"github.com/modproxy/modproxy/sumdb"
)

// sumdbMetaPrefix is the prefix of the store's mutable entries that belong
// to checksum databases (tree heads, the partial-tile index).
const sumdbMetaPrefix = "sumdb/"

// Report sums up an export or import.
type Report struct {
	Artifacts int      `json:"artifacts"` // artifacts written
	Bytes     int64    `json:"bytes"`     // their content bytes
	Existing  int      `json:"existing"`  // artifacts the destination already held
	SumDB     int      `json:"sumdb"`     // checksum-database files or entries written
	Failed    []string `json:"failed"`    // artifacts refused, with the reason
}

// Export writes a new store file at out holding the artifacts of src that
// keep accepts (all of them when keep is nil) and all of src's
// checksum-database data. out must not exist; it is written under a
// temporary name and renamed into place when complete.
func Export(src *cache.Store, out string, keep func(cache.Key) bool) (Report, error) {
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
	st, err := src.CopyTo(dst, keep)
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

// Import merges the bundle store file at path into dst. Every artifact dst
// lacks is verified (see the package comment) before it is stored; one that
// fails is listed in Report.Failed and skipped. Checksum-database data is
// merged without replacing what dst holds, so a store's own trusted tree
// head is never rolled back by an older bundle.
func Import(dst *cache.Store, path string, tempDir string) (Report, error) {
	var rep Report
	if _, err := os.Stat(path); err != nil {
		return rep, fmt.Errorf("import %s: %w", path, err)
	}
	src, err := cache.Open(path, cache.Options{ReadOnly: true})
	if err != nil {
		return rep, fmt.Errorf("import: %w", err)
	}
	defer src.Close()
	var keys []cache.Key
	if err := src.Walk(func(k cache.Key, _ cache.Meta) error {
		keys = append(keys, k)
		return nil
	}); err != nil {
		return rep, fmt.Errorf("import %s: %w", path, err)
	}
	for _, k := range keys {
		if _, err := dst.Stat(k); err == nil {
			rep.Existing++
			continue
		}
		r, err := src.Open(k)
		if err != nil {
			return rep, fmt.Errorf("import %s: %w", path, err)
		}
		m := r.Meta()
		err = importArtifact(dst, k, r, m, m.Hash, tempDir)
		r.Close()
		if err != nil {
			var ve *verifyError
			if errors.As(err, &ve) {
				rep.Failed = append(rep.Failed, err.Error())
				continue
			}
			return rep, fmt.Errorf("import %s: %w", path, err)
		}
		rep.Artifacts++
		rep.Bytes += m.Size
	}
	n, err := src.CopyKVTo(dst, nil)
	if err != nil {
		return rep, fmt.Errorf("import %s: %w", path, err)
	}
	m, err := src.CopyMetaTo(dst, func(key string) bool { return strings.HasPrefix(key, sumdbMetaPrefix) }, false)
	if err != nil {
		return rep, fmt.Errorf("import %s: %w", path, err)
	}
	rep.SumDB = n + m
	return rep, nil
}

// verifyError is an artifact that failed verification.
type verifyError struct {
	key cache.Key
	msg string
}

func (e *verifyError) Error() string {
	return fmt.Sprintf("%s@%s.%s: %s", e.key.Path, e.key.Version, e.key.Kind, e.msg)
}

// importArtifact verifies the content of k read from r against hash (when
// not empty) and stores it in dst with meta m (Hash replaced by hash).
// Zips are spooled to a temporary file in tempDir to be checked.
func importArtifact(dst *cache.Store, k cache.Key, r io.Reader, m cache.Meta, hash, tempDir string) error {
	bad := func(format string, args ...any) error {
		return &verifyError{key: k, msg: fmt.Sprintf(format, args...)}
	}
	if err := module.Check(k.Path, k.Version); err != nil {
		return bad("%v", err)
	}
	m.Hash = hash
	switch k.Kind {
	case cache.KindInfo, cache.KindMod:
		data, err := io.ReadAll(io.LimitReader(r, modzip.MaxGoMod+1))
		if err != nil {
			return fmt.Errorf("read %s: %w", k, err)
		}
		if len(data) > modzip.MaxGoMod {
			return bad("larger than %d bytes", modzip.MaxGoMod)
		}
		if k.Kind == cache.KindInfo {
			if err := checkInfo(data, k.Version); err != nil {
				return bad("%v", err)
			}
		} else {
			if _, err := modfile.ParseLax("go.mod", data, nil); err != nil {
				return bad("invalid go.mod: %v", err)
			}
			if hash != "" {
				got, err := sumdb.HashMod(data)
				if err != nil {
					return bad("hashing: %v", err)
				}
				if got != hash {
					return bad("checksum mismatch: recorded %s, content has %s", hash, got)
				}
			}
		}
		if _, err := dst.Put(k, bytes.NewReader(data), m); err != nil {
			return bad("%v", err)
		}
		return nil
	case cache.KindZip:
		f, err := os.CreateTemp(tempDir, "modproxy-import-*.zip")
		if err != nil {
			return fmt.Errorf("spool %s: %w", k, err)
		}
		defer func() {
			f.Close()
			os.Remove(f.Name())
		}()
		n, err := io.Copy(f, io.LimitReader(r, modzip.MaxZipFile+1))
		if err != nil {
			return fmt.Errorf("spool %s: %w", k, err)
		}
		if n > modzip.MaxZipFile {
			return bad("larger than %d bytes", modzip.MaxZipFile)
		}
		mv := module.Version{Path: k.Path, Version: k.Version}
		cf, err := modzip.CheckZip(mv, f.Name())
		if err == nil {
			err = cf.Err()
		}
		if err != nil {
			return bad("invalid module zip: %s", oneLine(err))
		}
		if hash != "" {
			got, err := dirhash.HashZip(f.Name(), dirhash.Hash1)
			if err != nil {
				return bad("hashing: %v", err)
			}
			if got != hash {
				return bad("checksum mismatch: recorded %s, content has %s", hash, got)
			}
		}
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			return fmt.Errorf("rewind spool of %s: %w", k, err)
		}
		if _, err := dst.Put(k, f, m); err != nil {
			return bad("%v", err)
		}
		return nil
	}
	return bad("unknown artifact kind")
}

// checkInfo validates an .info file for version.
func checkInfo(data []byte, version string) error {
	var info struct{ Version string }
	if err := json.Unmarshal(data, &info); err != nil {
		return fmt.Errorf("invalid .info: %v", err)
	}
	if info.Version != version {
		return fmt.Errorf(".info names version %q", info.Version)
	}
	if !semver.IsValid(info.Version) {
		return fmt.Errorf(".info names invalid version %q", info.Version)
	}
	return nil
}

func oneLine(err error) string { return strings.Join(strings.Fields(err.Error()), " ") }
