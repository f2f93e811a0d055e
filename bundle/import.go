package bundle

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/modproxy/modproxy/cache"
	"github.com/modproxy/modproxy/cache/gate"
	"github.com/modproxy/modproxy/internal/oneline"
	"github.com/modproxy/modproxy/sumdb"
)

// ImportOptions configures Import and ImportDir.
type ImportOptions struct {
	// VerifierKey is the checksum database's note verifier key
	// ("<name>+<hash>+<key>"), the only authority for the bundle's
	// checksum-database data. "" means verification is off: every
	// artifact is then treated as exempt (content checks only).
	VerifierKey string
	// Exempt reports the module paths that are not checked against the
	// checksum database (private, no-sumdb); nil: none.
	Exempt func(path string) bool
	// TempDir holds the zips being checked; default os.TempDir().
	TempDir string
}

// source is a bundle being imported.
type source struct {
	name   string
	keys   []cache.Key
	open   func(cache.Key) (io.ReadCloser, error)
	origin func(cache.Key) gate.Origin
	// sumdbGet reads file rel ("lookup/…", "tile/…") of database db;
	// sumdbLookups lists the lookup files of db.
	sumdbGet     func(db, rel string) ([]byte, error)
	sumdbLookups func(db string) ([]string, error)
}

// Import merges the bundle store file at path into dst (see the package
// comment). Every artifact dst lacks goes through dst's gate; if any item
// of the bundle fails, nothing is stored and Report.Failed names every
// failing item.
func Import(dst *cache.Store, path string, opts ImportOptions) (Report, error) {
	if _, err := os.Stat(path); err != nil {
		return Report{}, fmt.Errorf("import %s: %w", path, err)
	}
	src, err := cache.Open(path, cache.Options{ReadOnly: true})
	if err != nil {
		return Report{}, fmt.Errorf("import: %w", err)
	}
	defer src.Close()
	metas := map[cache.Key]cache.Meta{}
	s := source{name: path}
	if err := src.Walk(func(k cache.Key, m cache.Meta) error {
		s.keys = append(s.keys, k)
		metas[k] = m
		return nil
	}); err != nil {
		return Report{}, fmt.Errorf("import %s: %w", path, err)
	}
	sd, err := loadStoreSumDB(src)
	if err != nil {
		return Report{}, fmt.Errorf("import %s: %w", path, err)
	}
	s.open = func(k cache.Key) (io.ReadCloser, error) { return src.Open(k) }
	s.origin = func(k cache.Key) gate.Origin {
		return gate.Origin{Upstream: metas[k].Upstream, Created: metas[k].Created}
	}
	s.sumdbGet = sd.get
	s.sumdbLookups = func(db string) ([]string, error) {
		var files []string
		for _, f := range sd.files {
			if f.db == db && strings.HasPrefix(f.rel, "lookup/") {
				files = append(files, f.rel)
			}
		}
		slices.Sort(files)
		return files, nil
	}
	return importFrom(dst, s, opts)
}

// ImportDir merges a GOPROXY directory (see ExportDir) or a go command
// download cache ($GOMODCACHE/cache/download) into dst, as Import does a
// store file. The checksum-database files are read from its sumdb/<name>/
// directory; the go command's download cache keeps them there too.
func ImportDir(dst *cache.Store, dir string, opts ImportOptions) (Report, error) {
	st, err := os.Stat(dir)
	if err != nil {
		return Report{}, fmt.Errorf("import %s: %w", dir, err)
	}
	if !st.IsDir() {
		return Report{}, fmt.Errorf("import %s: not a directory", dir)
	}
	sumdbDir := filepath.Join(dir, "sumdb")
	files := map[cache.Key]string{}
	s := source{name: dir}
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if p == sumdbDir {
				return fs.SkipDir
			}
			return nil
		}
		if k, ok := parseArtifactFile(dir, p); ok {
			files[k] = p
			s.keys = append(s.keys, k)
		}
		return nil
	})
	if err != nil {
		return Report{}, fmt.Errorf("import %s: %w", dir, err)
	}
	s.open = func(k cache.Key) (io.ReadCloser, error) { return os.Open(files[k]) }
	s.origin = func(k cache.Key) gate.Origin {
		o := gate.Origin{Upstream: "file://" + filepath.ToSlash(dir)}
		if fi, err := os.Stat(files[k]); err == nil {
			o.Created = fi.ModTime()
		}
		return o
	}
	s.sumdbGet = func(db, rel string) ([]byte, error) { return dirSumDBGet(filepath.Join(sumdbDir, db), rel) }
	s.sumdbLookups = func(db string) ([]string, error) {
		base := filepath.Join(sumdbDir, db)
		var out []string
		err := filepath.WalkDir(filepath.Join(base, "lookup"), func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				if errors.Is(err, fs.ErrNotExist) {
					return fs.SkipDir
				}
				return err
			}
			if !d.IsDir() && !strings.HasPrefix(d.Name(), ".") {
				rel, _ := filepath.Rel(base, p)
				out = append(out, filepath.ToSlash(rel))
			}
			return nil
		})
		return out, err
	}
	return importFrom(dst, s, opts)
}

// dirSumDBGet reads a checksum-database file under base; a partial tile
// that is not there is cut from the full tile or a wider partial one.
func dirSumDBGet(base, rel string) ([]byte, error) {
	data, err := os.ReadFile(filepath.Join(base, filepath.FromSlash(rel)))
	if err == nil || !errors.Is(err, fs.ErrNotExist) {
		return data, err
	}
	t, perr := tlog.ParseTilePath(rel)
	if perr != nil || t.L < 0 {
		return nil, err
	}
	for w := 1 << uint(t.H); w > t.W; w-- {
		wt := t
		wt.W = w
		if data, err := os.ReadFile(filepath.Join(base, filepath.FromSlash(wt.Path()))); err == nil && len(data) == w*tlog.HashSize {
			return data[:t.W*tlog.HashSize], nil
		}
	}
	return nil, err
}

// importFrom is Import and ImportDir.
func importFrom(dst *cache.Store, s source, opts ImportOptions) (Report, error) {
	var rep Report
	var (
		auth *authenticated
		v    gate.Verifier
	)
	if opts.VerifierKey != "" {
		var err error
		if auth, err = authenticate(dst, s, opts.VerifierKey); err != nil {
			return rep, fmt.Errorf("import %s: %w", s.name, err)
		}
		rep.Failed = append(rep.Failed, auth.failed...)
		v = &recordVerifier{auth: auth, exempt: opts.Exempt}
	}
	g, err := gate.New(gate.Config{Store: dst, Verifier: v, TempDir: opts.TempDir})
	if err != nil {
		return rep, err
	}
	ctx := context.Background()
	var tickets []*gate.Ticket
	for _, k := range s.keys {
		if _, err := dst.Stat(k); err == nil {
			rep.Existing++
			continue
		} else if !errors.Is(err, cache.ErrNotFound) {
			return rep, fmt.Errorf("import %s: %w", s.name, err)
		}
		t, err := checkItem(ctx, g, s, k)
		if err != nil {
			rep.Failed = append(rep.Failed, fmt.Sprintf("%s@%s.%s: %s", k.Path, k.Version, k.Kind, oneline.Of(err)))
			continue
		}
		tickets = append(tickets, t)
	}
	if len(rep.Failed) > 0 {
		// All or nothing: a bundle with one bad item is not to be trusted
		// for the others either, and the store stays as it was.
		return rep, nil
	}
	for _, t := range tickets {
		m, err := g.Commit(t)
		if err != nil {
			return rep, fmt.Errorf("import %s: %w", s.name, err)
		}
		rep.Artifacts++
		rep.Bytes += m.Size
		if t.Key().Kind != cache.KindInfo {
			switch t.State() {
			case cache.StateVerified:
				rep.Verified++
			case cache.StateExempt:
				rep.Exempt++
			}
		}
	}
	if auth != nil {
		n, err := auth.store(dst)
		rep.SumDB = n
		if err != nil {
			return rep, fmt.Errorf("import %s: checksum-database data: %w", s.name, err)
		}
	}
	return rep, nil
}

// checkItem reads artifact k of s and passes it through g's checks.
func checkItem(ctx context.Context, g *gate.Gate, s source, k cache.Key) (*gate.Ticket, error) {
	open := func() (io.ReadCloser, error) { return s.open(k) }
	if k.Kind == cache.KindZip {
		return g.CheckZip(ctx, k, open, s.origin(k))
	}
	r, err := open()
	if err != nil {
		return nil, err
	}
	defer r.Close()
	data, err := io.ReadAll(io.LimitReader(r, gate.MaxMod+1))
	if err != nil {
		return nil, err
	}
	return g.CheckSmall(ctx, k, data, s.origin(k))
}

// authenticated is the checksum-database data of a bundle that was proven
// with the verifier key.
type authenticated struct {
	db      string
	hashes  map[string]string // "<path> <version>[/go.mod]" → "h1:…"
	proofs  map[string]string // same keys → the record file
	refused map[string]string // "<path>@<version>" → why its record was refused
	failed  []string          // named failures
	records []mirrorRecord
	tiles   map[tlog.Tile][]byte
	head    []byte // the largest signed tree head
}

// authenticate proves the checksum-database data of s with vkey: each
// record's tree head signature, its inclusion in that tree, the bundle's
// trees consistent with each other and with the tree head dst trusts.
// Failures are named in the result, not returned as errors: they make the
// artifacts relying on them fail.
func authenticate(dst *cache.Store, s source, vkey string) (*authenticated, error) {
	nv, err := note.NewVerifier(vkey)
	if err != nil {
		return nil, fmt.Errorf("checksum database verifier key %q: %w", vkey, err)
	}
	db := nv.Name()
	a := &authenticated{db: db, hashes: map[string]string{}, proofs: map[string]string{}, refused: map[string]string{}}
	m, err := NewMirror(func(rel string) ([]byte, error) { return s.sumdbGet(db, rel) }, vkey)
	if err != nil {
		return nil, err
	}
	lookups, err := s.sumdbLookups(db)
	if err != nil {
		return nil, fmt.Errorf("checksum database %s: %w", db, err)
	}
	for _, rel := range lookups {
		path, version, err := parseLookupFile(rel)
		if err != nil {
			a.failed = append(a.failed, fmt.Sprintf("checksum database %s: %s: %v", db, rel, err))
			continue
		}
		lines, err := m.Lookup(path, version)
		if err != nil {
			why := oneline.Of(err)
			a.refused[path+"@"+version] = why
			a.failed = append(a.failed, fmt.Sprintf("checksum database %s: %s: refused: %s", db, rel, why))
			continue
		}
		for _, line := range lines {
			f := strings.Fields(line)
			if len(f) == 3 {
				a.hashes[f[0]+" "+f[1]] = f[2]
				a.proofs[f[0]+" "+f[1]] = db + "/" + rel + " (authenticated from a bundle)"
			}
		}
	}
	fork := m.Finish()
	var largest tlog.Tree
	for _, t := range m.trees {
		if t.N > largest.N {
			largest = t
		}
	}
	if fork == nil && largest.N > 0 {
		fork = consistentWithStore(dst, db, nv, m, largest)
	}
	if fork != nil {
		a.failed = append(a.failed, fmt.Sprintf("checksum database %s: SECURITY: %s", db, oneline.Of(fork)))
		for k := range a.hashes {
			a.refused[k] = oneline.Of(fork)
		}
		a.hashes, a.proofs = map[string]string{}, map[string]string{}
		return a, nil
	}
	a.records, a.tiles, a.head = m.records, m.tiles, m.heads[largest.N]
	return a, nil
}

// consistentWithStore checks that tree, the bundle's largest, and the tree
// head dst trusts for db are one history, from the tiles of whichever of
// the two is larger.
func consistentWithStore(dst *cache.Store, db string, nv note.Verifier, m *Mirror, tree tlog.Tree) error {
	e, err := dst.GetEntry("sumdb/" + db + "/latest")
	if errors.Is(err, cache.ErrNotFound) || err == nil && len(e.Value) == 0 {
		return nil
	}
	if err != nil {
		return err
	}
	n, err := note.Open(e.Value, note.VerifierList(nv))
	if err != nil {
		return fmt.Errorf("the store's own tree head does not verify: %w", err)
	}
	trusted, err := tlog.ParseTree([]byte(n.Text))
	if err != nil {
		return fmt.Errorf("the store's own tree head: %w", err)
	}
	if trusted.N <= tree.N {
		return m.checkTree(trusted, tree)
	}
	sd, err := loadStoreSumDB(dst)
	if err != nil {
		return err
	}
	dm, err := NewMirror(func(rel string) ([]byte, error) { return sd.get(db, rel) }, "")
	if err != nil {
		return err
	}
	return dm.checkTree(tree, trusted)
}

// store writes the authenticated records and tiles into dst's verified
// checksum-database state (the sumdb client checks them again whenever it
// reads them), and the largest tree head as the one the handler serves
// when dst has none yet. It returns the entries written.
func (a *authenticated) store(dst *cache.Store) (int, error) {
	n := 0
	put := func(key string, data []byte) error {
		if _, err := dst.GetKV(sumdb.BucketVerified, key); err == nil {
			return nil
		} else if !errors.Is(err, cache.ErrNotFound) {
			return err
		}
		n++
		return dst.PutKV(sumdb.BucketVerified, key, data)
	}
	for _, r := range a.records {
		if err := put(a.db+"/"+r.file, r.data); err != nil {
			return n, err
		}
	}
	for t, data := range a.tiles {
		if err := put(a.db+"/"+t.Path(), data); err != nil {
			return n, err
		}
	}
	if a.head != nil {
		key := "sumdb/" + a.db + "/served-latest"
		if _, err := dst.GetEntry(key); errors.Is(err, cache.ErrNotFound) {
			if err := dst.PutEntry(key, bytes.Clone(a.head)); err != nil {
				return n, err
			}
			n++
		}
	}
	return n, nil
}

// recordVerifier is a gate.Verifier over a bundle's authenticated records.
type recordVerifier struct {
	auth   *authenticated
	exempt func(string) bool
}

func (r *recordVerifier) Exempt(path string) bool { return r.exempt != nil && r.exempt(path) }

func (r *recordVerifier) VerifyHash(_ context.Context, kind, path, version, hash string) (string, error) {
	vers := version
	if kind == "mod" {
		vers += "/go.mod"
	}
	want, ok := r.auth.hashes[path+" "+vers]
	if !ok {
		why := "the bundle carries no checksum-database record of it"
		if w := r.auth.refused[path+"@"+version]; w != "" {
			why = "its checksum-database record in the bundle was refused: " + w
		} else if w := r.auth.refused[path+" "+vers]; w != "" {
			why = "its checksum-database record in the bundle was refused: " + w
		}
		return "", fmt.Errorf("%s %s: %w: %s", path, vers, sumdb.ErrNotFound, why)
	}
	if want != hash {
		return "", &sumdb.MismatchError{Path: path, Version: version, Kind: kind, Want: want, Got: hash}
	}
	return r.auth.proofs[path+" "+vers], nil
}
