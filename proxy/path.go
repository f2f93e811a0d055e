package proxy

import (
	"errors"
	"fmt"
	"strings"

	"golang.org/x/mod/module"
	"golang.org/x/mod/semver"
)

// Kind is the kind of a GOPROXY protocol request.
type Kind string

// Request kinds, named as in metrics and logs.
const (
	KindList   Kind = "list"
	KindInfo   Kind = "info"
	KindMod    Kind = "mod"
	KindZip    Kind = "zip"
	KindLatest Kind = "latest"
)

// Request is a parsed GOPROXY protocol request path.
type Request struct {
	Module  string // decoded module path, e.g. "github.com/BurntSushi/toml"
	Kind    Kind
	Version string // decoded version for info, mod and zip requests
	// Query is true when Version is not a canonical semantic version
	// ("master", "v1.2"): the answer is passed through from an upstream and
	// never stored under the query's name.
	Query bool
	// Stored asks for the answer only once the artifact is in the store
	// (prewarm, whose promise is a filled store): a verified artifact is
	// otherwise answered while it is committed. One that cannot be stored
	// is then an error (507).
	Stored bool
}

// String returns the request in module@version form for messages.
func (r Request) String() string {
	switch r.Kind {
	case KindList:
		return r.Module + "/@v/list"
	case KindLatest:
		return r.Module + "@latest"
	default:
		return r.Module + "@" + r.Version
	}
}

// URLPath returns the escaped protocol path of r, without a leading slash,
// to be appended to an upstream base URL.
func (r Request) URLPath() string {
	// Module and Version were validated by ParsePath, so escaping cannot fail.
	ep, _ := module.EscapePath(r.Module)
	switch r.Kind {
	case KindList:
		return ep + "/@v/list"
	case KindLatest:
		return ep + "/@latest"
	}
	ev, _ := module.EscapeVersion(r.Version)
	return ep + "/@v/" + ev + "." + string(r.Kind)
}

// PathError reports a malformed request path. The HTTP layer answers it
// with 400 Bad Request, or 404 when NotFound is set (a well-formed path
// that can never name an artifact, so that a client's proxy list falls
// through).
type PathError struct {
	Path     string
	Err      error
	NotFound bool
}

func (e *PathError) Error() string { return fmt.Sprintf("invalid request path %q: %v", e.Path, e.Err) }
func (e *PathError) Unwrap() error { return e.Err }

// maxPathLen bounds request paths; real module paths are far shorter.
const maxPathLen = 4096

// ParsePath parses a GOPROXY protocol path such as
// "/github.com/!burnt!sushi/toml/@v/v1.2.3.info". The leading slash is
// optional. Module paths and versions are case-decoded and validated with
// golang.org/x/mod/module and semver.
func ParsePath(p string) (Request, error) {
	bad := func(err error) (Request, error) { return Request{}, &PathError{Path: p, Err: err} }
	if len(p) > maxPathLen {
		return bad(errors.New("path too long"))
	}
	rest := strings.TrimPrefix(p, "/")

	var req Request
	var escMod string
	if m, ok := strings.CutSuffix(rest, "/@latest"); ok {
		escMod, req.Kind = m, KindLatest
	} else {
		m, file, ok := strings.Cut(rest, "/@v/")
		if !ok {
			return bad(errors.New("want $module/@v/… or $module/@latest"))
		}
		escMod = m
		if file == "list" {
			req.Kind = KindList
		} else {
			ext := file[strings.LastIndexByte(file, '.')+1:]
			switch Kind(ext) {
			case KindInfo, KindMod, KindZip:
				req.Kind = Kind(ext)
			default:
				return bad(fmt.Errorf("unknown file %q: want list, $version.info, .mod or .zip", file))
			}
			escVer := strings.TrimSuffix(file, "."+ext)
			v, err := module.UnescapeVersion(escVer)
			if err != nil {
				return bad(err)
			}
			req.Version = v
		}
	}

	// UnescapePath also validates the path (module.CheckPath).
	mod, err := module.UnescapePath(escMod)
	if err != nil {
		return bad(err)
	}
	req.Module = mod

	if req.Version == "" && (req.Kind == KindList || req.Kind == KindLatest) {
		return req, nil
	}
	if !isCanonical(req.Version) {
		if req.Kind != KindInfo {
			// The go command resolves queries through .info only.
			return Request{}, &PathError{Path: p, Err: fmt.Errorf("version %q is not canonical: .mod and .zip need a canonical version", req.Version), NotFound: true}
		}
		if err := checkQuery(req.Version); err != nil {
			return bad(err)
		}
		req.Query = true
		return req, nil
	}
	// module.Check without its second CheckPath: the major version must
	// match the path's /vN suffix (or carry +incompatible).
	_, pathMajor, _ := module.SplitPathVersion(mod)
	if err := module.CheckPathMajor(req.Version, pathMajor); err != nil {
		// Well formed, but a version this module can never have (a v2.0.0
		// without /v2 and without +incompatible): not found, not malformed.
		return Request{}, &PathError{Path: p, Err: fmt.Errorf("invalid version %s of %s: %w", req.Version, mod, err), NotFound: true}
	}
	return req, nil
}

// isCanonical reports whether v is a canonical semantic version, allowing
// the +incompatible build suffix the go command uses.
func isCanonical(v string) bool {
	base := strings.TrimSuffix(v, "+incompatible")
	return semver.IsValid(base) && semver.Canonical(base) == base
}

// checkQuery validates a version query (a branch, tag prefix or revision)
// so that it is safe to pass on to an upstream.
func checkQuery(q string) error {
	if q == "" {
		return errors.New("empty version")
	}
	if len(q) > 256 {
		return errors.New("version query too long")
	}
	for _, r := range q {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' ||
			strings.ContainsRune("-._+~", r)
		if !ok {
			return fmt.Errorf("version query %q contains %q", q, r)
		}
	}
	if q == "." || q == ".." || strings.HasPrefix(q, ".") {
		return fmt.Errorf("version query %q starts with a dot", q)
	}
	return nil
}
