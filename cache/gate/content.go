package gate

import (
	"archive/zip"
	"bufio"
	"cmp"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/klauspost/compress/flate"
	"golang.org/x/mod/modfile"
	"golang.org/x/mod/module"
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
	h, err := hashZip(z.File)
	if err != nil {
		if errors.Is(err, ErrContent) {
			return "", fmt.Errorf("zip of %s@%s: %w", path, version, err)
		}
		return "", contentErr("zip of %s@%s: %s", path, version, oneline.Of(err))
	}
	return h, nil
}

// maxHashWorkers bounds the entries of one zip inflated at once.
const maxHashWorkers = 4

// hashZip returns the "h1:" hash of the zip's entries, as dirhash.Hash1
// computes it (the SHA-256 of the sorted lines "<sha256 of the file>  <name>\n"),
// but inflating and hashing the entries on up to maxHashWorkers CPUs, the
// largest first. The check is on every cold zip's critical path and cost as
// much CPU as the go command's own; one CPU per zip made a verifying proxy
// twice as slow as going direct.
func hashZip(files []*zip.File) (string, error) {
	byName := slices.Clone(files)
	for _, f := range byName {
		if strings.Contains(f.Name, "\n") {
			return "", errors.New("dirhash: filenames with newlines are not supported")
		}
	}
	slices.SortFunc(byName, func(a, b *zip.File) int { return strings.Compare(a.Name, b.Name) })
	order := make([]int, len(byName)) // indexes into byName, largest entry first
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(a, b int) int {
		return cmp.Compare(byName[b].UncompressedSize64, byName[a].UncompressedSize64)
	})
	sums := make([][sha256.Size]byte, len(byName))
	budget := &inflateBudget{}
	budget.left.Store(MaxZip)
	var (
		next   atomic.Int64
		failed atomic.Bool
		mu     sync.Mutex
		first  = -1 // index of the failing entry reported: the first by name
		ferr   error
		wg     sync.WaitGroup
	)
	workers := min(runtime.GOMAXPROCS(0), maxHashWorkers, len(byName))
	for range workers {
		wg.Go(func() {
			inf := new(inflater)
			for !failed.Load() {
				j := int(next.Add(1) - 1)
				if j >= len(order) {
					return
				}
				i := order[j]
				err := inf.sum(byName[i], budget, &sums[i])
				if err != nil {
					failed.Store(true)
					mu.Lock()
					if first < 0 || i < first {
						first, ferr = i, err
					}
					mu.Unlock()
					return
				}
			}
		})
	}
	wg.Wait()
	if ferr != nil {
		return "", ferr
	}
	h := sha256.New()
	for i, f := range byName {
		fmt.Fprintf(h, "%x  %s\n", sums[i], f.Name)
	}
	return "h1:" + base64.StdEncoding.EncodeToString(h.Sum(nil)), nil
}

// sum inflates entry f, checking it as open does, into the SHA-256 *dst.
func (inf *inflater) sum(f *zip.File, budget *inflateBudget, dst *[sha256.Size]byte) error {
	r, err := inf.open(f, budget)
	if err != nil {
		return err
	}
	h := sha256.New()
	// entryReader has no WriteTo: the copy uses the inflater's buffer.
	if _, err := io.CopyBuffer(h, r, inf.buf); err != nil {
		return err
	}
	h.Sum(dst[:0])
	return nil
}

// inflateBudget is the uncompressed bytes a zip may still produce, shared
// by the workers of hashZip.
type inflateBudget struct{ left atomic.Int64 }

// inflater opens entries of one zip in turn, each read to its end before
// the next (one inflater per hashZip worker), reusing one read buffer, one
// decompressor and one copy buffer for all of them. A decompressor and a
// 32 KiB copy buffer per entry made the garbage collector a tenth of a
// cold download's CPU, and 4 KiB reads of the raw data a system call per
// 4 KiB. The decompressor is klauspost/compress's: it has a decoding loop
// specialised for a *bufio.Reader, where compress/flate makes an interface
// call per input byte, and inflated Go source 17% faster
// (BenchmarkCheckZipFile), the largest single cost of a cold download.
type inflater struct {
	br  *bufio.Reader
	fr  io.ReadCloser
	buf []byte
}

// open opens entry f for reading with its sizes enforced on the inflated
// bytes. It decompresses the raw data itself rather than through
// archive/zip's checks, so that a lie is reported as one. The reader it
// returns is valid until the next open.
func (inf *inflater) open(f *zip.File, budget *inflateBudget) (*entryReader, error) {
	raw, err := f.OpenRaw()
	if err != nil {
		return nil, err
	}
	if inf.br == nil {
		inf.br = bufio.NewReaderSize(raw, 64<<10)
		inf.buf = make([]byte, 64<<10)
	} else {
		inf.br.Reset(raw)
	}
	var rc io.Reader
	switch f.Method {
	case zip.Store:
		rc = inf.br
	case zip.Deflate:
		if inf.fr == nil {
			inf.fr = flate.NewReader(inf.br)
		} else if err := inf.fr.(flate.Resetter).Reset(inf.br, nil); err != nil {
			return nil, err
		}
		rc = inf.fr
	default:
		return nil, contentErr("entry %s uses compression method %d (module zips use store or deflate)", f.Name, f.Method)
	}
	return &entryReader{rc: rc, name: f.Name, declared: f.UncompressedSize64, crc: f.CRC32, sum: crc32.NewIEEE(), budget: budget}, nil
}

// entryReader reads one zip entry, refusing more bytes than it declares or
// than the zip's budget allows, fewer than it declares, and a wrong CRC-32.
type entryReader struct {
	rc       io.Reader
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
	left := r.budget.left.Add(-int64(n))
	r.sum.Write(p[:n])
	switch {
	case r.read > r.declared:
		return n, contentErr("entry %s inflates past its declared %d bytes", r.name, r.declared)
	case left < 0:
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
