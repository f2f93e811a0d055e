package bundle

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/mod/module"
	"golang.org/x/mod/semver"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/modproxy/modproxy/cache"
)

// ExportDir writes the artifacts of src that keep accepts (all when keep is
// nil), and all of src's checksum-database data, into dir in the layout the
// go command reads from GOPROXY=file:///dir (see the package comment). Files
// are written under temporary names and renamed, so a file present is
// whole; existing files are replaced.
//
// Besides the tiles stored in src, ExportDir writes the partial tiles a go
// command asks for when it verifies the stored lookup records (a proxy cuts
// them from wider stored tiles on request; a directory must hold each one).
//
// Unverified artifacts are left out unless includeUnverified is set (a
// directory has no place for states: the importing side verifies every
// artifact again in any case).
func ExportDir(src *cache.Store, dir string, keep func(cache.Key) bool, includeUnverified bool) (Report, error) {
	var rep Report
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return rep, fmt.Errorf("export: %w", err)
	}
	versions := map[string][]string{} // path → versions with an .info
	sel, err := selection(src, keep, includeUnverified, &rep)
	if err != nil {
		return rep, fmt.Errorf("export to %s: %w", dir, err)
	}
	var keys []cache.Key
	for k := range sel {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b cache.Key) int { return strings.Compare(a.String(), b.String()) })
	for _, k := range keys {
		file, err := artifactFile(dir, k)
		if err != nil {
			return rep, fmt.Errorf("export to %s: %w", dir, err)
		}
		r, err := src.Open(k)
		if errors.Is(err, cache.ErrNotFound) {
			continue
		}
		if err != nil {
			return rep, fmt.Errorf("export to %s: %w", dir, err)
		}
		err = writeFile(file, r)
		r.Close()
		if err != nil {
			return rep, fmt.Errorf("export %s: %w", k, err)
		}
		rep.Artifacts++
		rep.Bytes += r.Size()
		if k.Kind == cache.KindInfo && !module.IsPseudoVersion(k.Version) {
			versions[k.Path] = append(versions[k.Path], k.Version)
		}
	}
	for path, vs := range versions {
		semver.Sort(vs)
		epath, _ := module.EscapePath(path)
		list := strings.Join(vs, "\n") + "\n"
		if err := writeFile(filepath.Join(dir, filepath.FromSlash(epath), "@v", "list"), strings.NewReader(list)); err != nil {
			return rep, fmt.Errorf("export list of %s: %w", path, err)
		}
	}
	n, err := exportSumDB(src, dir)
	rep.SumDB = n
	if err != nil {
		return rep, fmt.Errorf("export to %s: %w", dir, err)
	}
	return rep, nil
}

// artifactFile returns the file of k under a GOPROXY directory.
func artifactFile(dir string, k cache.Key) (string, error) {
	epath, err := module.EscapePath(k.Path)
	if err != nil {
		return "", err
	}
	evers, err := module.EscapeVersion(k.Version)
	if err != nil {
		return "", err
	}
	return filepath.Join(dir, filepath.FromSlash(epath), "@v", evers+"."+string(k.Kind)), nil
}

// writeFile writes r to file through a temporary file and a rename.
func writeFile(file string, r io.Reader) error {
	if err := os.MkdirAll(filepath.Dir(file), 0o755); err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(file), ".tmp-*")
	if err != nil {
		return err
	}
	_, err = io.Copy(f, r)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(f.Name(), 0o644)
	}
	if err == nil {
		err = os.Rename(f.Name(), file)
	}
	if err != nil {
		os.Remove(f.Name())
		return fmt.Errorf("write %s: %w", file, err)
	}
	return nil
}

// sumdbFile is one checksum-database file found in a store's key/value
// buckets: db is the database name, rel the file under its base URL
// ("lookup/…", "tile/…").
type sumdbFile struct {
	db, rel string
	bucket  string
	key     string
}

// splitSumDBKey splits a key/value key "<name>/lookup/…" or
// "<name>/tile/…" into the database name and the file under it.
func splitSumDBKey(key string) (db, rel string, ok bool) {
	for _, sep := range []string{"/lookup/", "/tile/"} {
		if i := strings.Index(key, sep); i > 0 {
			return key[:i], key[i+1:], true
		}
	}
	return "", "", false
}

// storeSumDB reads a store's checksum-database files the way the sumdb
// handler serves them: a tile is the stored tile, or cut from the stored
// full tile or a wider stored partial tile at the same position.
type storeSumDB struct {
	s     *cache.Store
	files map[string]sumdbFile // "<name>/<rel>" → where it is stored
	// partials maps "<name>/tile/H/L/N" to the widths of the stored
	// partial tiles there.
	partials map[string][]int
}

func loadStoreSumDB(s *cache.Store) (*storeSumDB, error) {
	sd := &storeSumDB{s: s, files: map[string]sumdbFile{}, partials: map[string][]int{}}
	buckets, err := s.KVBuckets()
	if err != nil {
		return nil, err
	}
	for _, b := range buckets {
		err := s.WalkKV(b, func(key string, _ []byte) error {
			db, rel, ok := splitSumDBKey(key)
			if !ok {
				return nil
			}
			if _, dup := sd.files[key]; !dup {
				sd.files[key] = sumdbFile{db: db, rel: rel, bucket: b, key: key}
			}
			if t, err := tlog.ParseTilePath(rel); err == nil && t.L >= 0 && t.W < 1<<uint(t.H) {
				pos := db + "/" + positionPath(t)
				sd.partials[pos] = append(sd.partials[pos], t.W)
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	return sd, nil
}

// positionPath names a tile's position regardless of its width.
func positionPath(t tlog.Tile) string {
	t.W = 1 << uint(t.H)
	return t.Path()
}

// get reads file rel of database db.
func (sd *storeSumDB) get(db, rel string) ([]byte, error) {
	if f, ok := sd.files[db+"/"+rel]; ok {
		return sd.s.GetKV(f.bucket, f.key)
	}
	t, err := tlog.ParseTilePath(rel)
	if err != nil || t.L < 0 {
		return nil, fmt.Errorf("%s/%s: %w", db, rel, cache.ErrNotFound)
	}
	full := t
	full.W = 1 << uint(t.H)
	widths := []int{full.W}
	ws := slices.Clone(sd.partials[db+"/"+positionPath(t)])
	slices.Sort(ws)
	widths = append(widths, ws...)
	for _, w := range widths {
		if w <= t.W {
			continue
		}
		wt := t
		wt.W = w
		f, ok := sd.files[db+"/"+wt.Path()]
		if !ok {
			continue
		}
		data, err := sd.s.GetKV(f.bucket, f.key)
		if err == nil && len(data) == w*tlog.HashSize {
			return data[:t.W*tlog.HashSize], nil
		}
	}
	return nil, fmt.Errorf("%s/%s: %w", db, rel, cache.ErrNotFound)
}

// exportSumDB writes every checksum-database file of src under
// dir/sumdb/<name>/, plus the tiles that verifying the stored records
// needs. It returns the number of files written.
func exportSumDB(src *cache.Store, dir string) (int, error) {
	sd, err := loadStoreSumDB(src)
	if err != nil {
		return 0, err
	}
	names := map[string]bool{}
	heads := map[string][]byte{}
	err = src.WalkEntries(sumdbMetaPrefix, func(key string, e cache.Entry) error {
		rest := strings.TrimPrefix(key, sumdbMetaPrefix)
		for _, suffix := range []string{"/served-latest", "/latest"} {
			if name, ok := strings.CutSuffix(rest, suffix); ok && len(e.Value) > 0 {
				names[name] = true
				// The head last served wins over the verifier's own.
				if _, have := heads[name]; !have || suffix == "/served-latest" {
					heads[name] = e.Value
				}
			}
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	for _, f := range sd.files {
		names[f.db] = true
	}
	written := map[string]bool{}
	n := 0
	put := func(db, rel string, data []byte) error {
		file := db + "/" + rel
		if written[file] {
			return nil
		}
		written[file] = true
		n++
		return writeFile(filepath.Join(dir, "sumdb", filepath.FromSlash(file)), bytes.NewReader(data))
	}
	for name := range names {
		if err := put(name, "supported", nil); err != nil {
			return n, err
		}
		if h := heads[name]; h != nil {
			if err := put(name, "latest", h); err != nil {
				return n, err
			}
		}
	}
	for key, f := range sd.files {
		data, err := src.GetKV(f.bucket, key)
		if err != nil {
			return n, err
		}
		if err := put(f.db, f.rel, data); err != nil {
			return n, err
		}
	}
	// The partial tiles the go command will ask for.
	for name := range names {
		mirror, err := NewMirror(func(rel string) ([]byte, error) {
			data, err := sd.get(name, rel)
			if err != nil {
				return nil, err
			}
			return data, put(name, rel, data)
		}, "")
		if err != nil {
			return n, err
		}
		for key, f := range sd.files {
			if f.db != name || !strings.HasPrefix(f.rel, "lookup/") {
				continue
			}
			path, version, err := parseLookupFile(f.rel)
			if err != nil {
				return n, fmt.Errorf("checksum database %s: %s: %w", name, key, err)
			}
			if _, err := mirror.Lookup(path, version); err != nil {
				return n, fmt.Errorf("checksum database %s: %w", name, err)
			}
		}
		if err := mirror.Finish(); err != nil {
			return n, fmt.Errorf("checksum database %s: %w", name, err)
		}
	}
	return n, nil
}

// parseLookupFile parses "lookup/<escaped path>@<escaped version>".
func parseLookupFile(rel string) (path, version string, err error) {
	mod := strings.TrimPrefix(rel, "lookup/")
	i := strings.LastIndexByte(mod, '@')
	if i < 0 {
		return "", "", fmt.Errorf("invalid lookup file %q", rel)
	}
	if path, err = module.UnescapePath(mod[:i]); err != nil {
		return "", "", err
	}
	if version, err = module.UnescapeVersion(mod[i+1:]); err != nil {
		return "", "", err
	}
	return path, version, nil
}

// parseArtifactFile recognises <dir>/<escaped path>/@v/<escaped version>.<kind>.
func parseArtifactFile(dir, p string) (cache.Key, bool) {
	rel, err := filepath.Rel(dir, p)
	if err != nil {
		return cache.Key{}, false
	}
	rel = filepath.ToSlash(rel)
	epath, file, ok := strings.Cut(rel, "/@v/")
	if !ok || strings.Contains(file, "/") {
		return cache.Key{}, false
	}
	ext := filepath.Ext(file)
	var kind cache.Kind
	switch ext {
	case ".info":
		kind = cache.KindInfo
	case ".mod":
		kind = cache.KindMod
	case ".zip":
		kind = cache.KindZip
	default:
		return cache.Key{}, false
	}
	path, err := module.UnescapePath(epath)
	if err != nil {
		return cache.Key{}, false
	}
	version, err := module.UnescapeVersion(strings.TrimSuffix(file, ext))
	if err != nil || !semver.IsValid(version) || semver.Canonical(version) != version && !strings.HasSuffix(version, "+incompatible") {
		return cache.Key{}, false
	}
	return cache.Key{Path: path, Version: version, Kind: kind}, true
}
