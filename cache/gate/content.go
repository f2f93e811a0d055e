package gate

import (
	"archive/zip"
	"compress/flate"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"os"

	"golang.org/x/mod/modfile"
	"golang.org/x/mod/module"
	"golang.org/x/mod/sumdb/dirhash"
	modzip "golang.org/x/mod/zip"

	"github.com/modproxy/modproxy/internal/oneline"
	"github.com/modproxy/modproxy/sumdb"
)

// ErrContent is wrapped by every content-check failure: the bytes are not
// a valid artifact of the kind and module version they claim to be.
var ErrContent = errors.New("invalid content")

// Size limits of the checked kinds.
const (
	MaxInfo = 64 << 10
	MaxMod  = modzip.MaxGoMod
	MaxZip  = modzip.MaxZipFile
)

func contentErr(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrContent, fmt.Sprintf(format, args...))
}

// ParseInfo checks an .info file (or an @latest answer) and returns the
// version it names: it must be a JSON object naming a canonical version,
// and want when want is not "". It is the one .info check of modproxy.
func ParseInfo(data []byte, want string) (string, error) {
	if len(data) > MaxInfo {
		return "", contentErr(".info is larger than %d bytes", MaxInfo)
	}
	var info struct{ Version string }
	if err := json.Unmarshal(data, &info); err != nil {
		return "", contentErr(".info is not JSON: %v", err)
	}
	if info.Version == "" || module.CanonicalVersion(info.Version) != info.Version {
		return "", contentErr(".info names version %q, which is not canonical", info.Version)
	}
	if want != "" && info.Version != want {
		return "", contentErr(".info for %s names version %q", want, info.Version)
	}
	return info.Version, nil
}

// CheckMod checks the go.mod file of path@version: it must parse strictly
// and its module line must name a valid path of path's major version. It
// returns the file's "h1:" hash.
//
// The module line may name another path: a fork used through a replace
// directive declares the path it replaces (the go command requires that,
// cmd/go/internal/modload goModSummary), and the go command's own fetch
// accepts it (cmd/go/internal/modfetch, codeRepo.findDir, isMajor). The
// content is authenticated by its hash for path@version all the same.
func CheckMod(path, version string, data []byte) (string, error) {
	if len(data) > MaxMod {
		return "", contentErr("go.mod of %s@%s is larger than %d bytes", path, version, MaxMod)
	}
	f, err := modfile.Parse("go.mod", data, nil)
	if err != nil {
		return "", contentErr("go.mod of %s@%s does not parse: %s", path, version, oneline.Of(err))
	}
	if f.Module == nil {
		return "", contentErr("go.mod of %s@%s has no module line", path, version)
	}
	if decl := f.Module.Mod.Path; decl != path && !sameMajor(decl, path) {
		return "", contentErr("go.mod of %s@%s declares module %q, of another major version", path, version, decl)
	}
	return sumdb.HashMod(data)
}

// CheckZipFile checks the module zip file of path@version at file and
// returns its "h1:" hash. It applies modzip.CheckZip (names, declared
// sizes), and then hashes every entry while enforcing, on the bytes as they
// inflate, that each entry holds exactly what it declares and that the
// total stays within the module zip limit: a zip whose headers lie about
// its sizes is refused, not inflated.
func CheckZipFile(path, version, file string) (string, error) {
	st, err := os.Stat(file)
	if err != nil {
		return "", err
	}
	if st.Size() > MaxZip {
		return "", contentErr("zip of %s@%s is %d bytes, over the %d-byte limit", path, version, st.Size(), MaxZip)
	}
	mv := module.Version{Path: path, Version: version}
	cf, err := modzip.CheckZip(mv, file)
	if err == nil {
		err = cf.Err()
	}
	if err != nil {
		return "", contentErr("zip of %s@%s: %s", path, version, oneline.Of(err))
	}
	z, err := zip.OpenReader(file)
	if err != nil {
		return "", contentErr("zip of %s@%s: %s", path, version, oneline.Of(err))
	}
	defer z.Close()
	var names []string
	entries := make(map[string]*zip.File, len(z.File))
	for _, f := range z.File {
		names = append(names, f.Name)
		entries[f.Name] = f
	}
	budget := &inflateBudget{left: MaxZip}
	h, err := dirhash.Hash1(names, func(name string) (io.ReadCloser, error) {
		return openEntry(entries[name], budget)
	})
	if err != nil {
		if errors.Is(err, ErrContent) {
			return "", fmt.Errorf("zip of %s@%s: %w", path, version, err)
		}
		return "", contentErr("zip of %s@%s: %s", path, version, oneline.Of(err))
	}
	return h, nil
}

// inflateBudget is the uncompressed bytes a zip may still produce.
type inflateBudget struct{ left int64 }

// openEntry opens a zip entry for reading with its sizes enforced on the
// inflated bytes. It decompresses the raw data itself rather than through
// archive/zip's checks, so that a lie is reported as one.
func openEntry(f *zip.File, budget *inflateBudget) (io.ReadCloser, error) {
	raw, err := f.OpenRaw()
	if err != nil {
		return nil, err
	}
	var rc io.ReadCloser
	switch f.Method {
	case zip.Store:
		rc = io.NopCloser(raw)
	case zip.Deflate:
		rc = flate.NewReader(raw)
	default:
		return nil, contentErr("entry %s uses compression method %d (module zips use store or deflate)", f.Name, f.Method)
	}
	return &entryReader{rc: rc, name: f.Name, declared: f.UncompressedSize64, crc: f.CRC32, sum: crc32.NewIEEE(), budget: budget}, nil
}

// entryReader reads one zip entry, refusing more bytes than it declares or
// than the zip's budget allows, fewer than it declares, and a wrong CRC-32.
type entryReader struct {
	rc       io.ReadCloser
	name     string
	declared uint64
	read     uint64
	crc      uint32
	sum      hash.Hash32
	budget   *inflateBudget
}

func (r *entryReader) Read(p []byte) (int, error) {
	n, err := r.rc.Read(p)
	r.read += uint64(n)
	r.budget.left -= int64(n)
	r.sum.Write(p[:n])
	switch {
	case r.read > r.declared:
		return n, contentErr("entry %s inflates past its declared %d bytes", r.name, r.declared)
	case r.budget.left < 0:
		return n, contentErr("entries inflate past the %d-byte module zip limit", int64(MaxZip))
	case err == io.EOF && r.read < r.declared:
		return n, contentErr("entry %s inflates to %d bytes, fewer than its declared %d", r.name, r.read, r.declared)
	case err == io.EOF && r.sum.Sum32() != r.crc:
		return n, contentErr("entry %s fails its CRC-32 check", r.name)
	case err != nil && err != io.EOF:
		return n, contentErr("entry %s is corrupt: %v", r.name, err)
	}
	return n, err
}

func (r *entryReader) Close() error { return r.rc.Close() }

// sameMajor reports whether module path decl, declared in the go.mod of a
// version of module path, is of path's major version, as the go command's
// isMajor (cmd/go/internal/modfetch) decides it.
func sameMajor(decl, path string) bool {
	_, declMajor, ok := module.SplitPathVersion(decl)
	if !ok || module.CheckPath(decl) != nil {
		return false
	}
	_, pathMajor, ok := module.SplitPathVersion(path)
	if !ok {
		return false
	}
	if pathMajor == "" {
		switch module.PathMajorPrefix(declMajor) {
		case "", "v0", "v1":
			return true
		}
		return false
	}
	return module.PathMajorPrefix(declMajor) == module.PathMajorPrefix(pathMajor)
}
