package modgraph

import (
	"bytes"
	"fmt"
	"strings"

	"golang.org/x/mod/module"
	"golang.org/x/mod/semver"
)

// parseGoSum turns the lines of a go.sum (or go.work.sum) file into needs:
// "path version h1:…" is the module's zip (Zip set, ZipHash carried) and
// "path version/go.mod h1:…" its go.mod (ModHash carried). Hashes of other
// algorithms are skipped, as the go command does not check them either.
// Errors name the file and line.
func parseGoSum(file string, data []byte) ([]Need, error) {
	var needs []Need
	lineno := 0
	for len(data) > 0 {
		var line []byte
		lineno++
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			line, data = data[:i], data[i+1:]
		} else {
			line, data = data, nil
		}
		f := strings.Fields(string(line))
		if len(f) == 0 {
			continue // the go command tolerates blank lines
		}
		if len(f) != 3 {
			return nil, fmt.Errorf("%s:%d: malformed go.sum line: want 3 fields (module, version, hash), have %d", file, lineno, len(f))
		}
		path, vers, hash := f[0], f[1], f[2]
		modOnly := false
		if v, ok := strings.CutSuffix(vers, "/go.mod"); ok {
			vers, modOnly = v, true
		}
		if err := module.CheckPath(path); err != nil {
			return nil, fmt.Errorf("%s:%d: %w", file, lineno, err)
		}
		if !semver.IsValid(vers) || semver.Canonical(vers) != vers && !strings.HasSuffix(vers, "+incompatible") {
			return nil, fmt.Errorf("%s:%d: %s: invalid version %q", file, lineno, path, vers)
		}
		alg, _, ok := strings.Cut(hash, ":")
		if !ok || alg == "" {
			return nil, fmt.Errorf("%s:%d: %s@%s: malformed hash %q", file, lineno, path, vers, hash)
		}
		if alg != "h1" {
			continue
		}
		n := Need{Path: path, Version: vers}
		if modOnly {
			n.ModHash = hash
		} else {
			n.Zip, n.ZipHash = true, hash
		}
		needs = append(needs, n)
	}
	return needs, nil
}
