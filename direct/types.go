package direct

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"strings"
	"time"

	"golang.org/x/mod/module"
	"golang.org/x/mod/semver"
)

// Size limits, the go command's (codehost.MaxGoMod and friends).
const (
	maxGoMod   = 16 << 20
	maxLICENSE = 16 << 20
	maxZipFile = 500 << 20
)

// codeHost is what coderepo.go needs of a repository: the go command's
// codehost.Repo, implemented for git by view.
type codeHost interface {
	Tags(ctx context.Context, prefix string) (*Tags, error)
	Stat(ctx context.Context, rev string) (*hostRev, error)
	Latest(ctx context.Context) (*hostRev, error)
	ReadFile(ctx context.Context, rev, file string, maxSize int64) ([]byte, error)
	ReadZip(ctx context.Context, rev, subdir, tmpDir string, maxSize int64) (*os.File, int64, error)
	RecentTag(ctx context.Context, rev, prefix string, allowed func(tag string) bool) (string, error)
	DescendsFrom(ctx context.Context, rev, tag string) (bool, error)
}

// Origin is the provenance of an answer, as in the go command's .info
// files (codehost.Origin). Its URL never carries credentials.
type Origin struct {
	VCS       string `json:",omitempty"`
	URL       string `json:",omitempty"`
	Subdir    string `json:",omitempty"`
	Hash      string `json:",omitempty"`
	TagPrefix string `json:",omitempty"`
	TagSum    string `json:",omitempty"`
	Ref       string `json:",omitempty"`
	RepoSum   string `json:",omitempty"`
}

// Tags is a repository's tags with a prefix (codehost.Tags).
type Tags struct {
	Origin *Origin
	List   []Tag
}

// Tag is one tag and the commit it names.
type Tag struct {
	Name string
	Hash string
}

// hostRev is a revision in the repository (codehost.RevInfo).
type hostRev struct {
	Origin  *Origin
	Name    string
	Short   string
	Version string
	Time    time.Time
	Tags    []string
}

// RevInfo is a module version's .info (modfetch.RevInfo).
type RevInfo struct {
	Version string
	Time    time.Time
	Name    string  `json:"-"`
	Short   string  `json:"-"`
	Origin  *Origin `json:",omitempty"`
}

// Versions is a module's version list (modfetch.Versions).
type Versions struct {
	Origin *Origin `json:",omitempty"`
	List   []string
}

// UnknownRevisionError is a revision the repository does not have; it
// is fs.ErrNotExist.
type UnknownRevisionError struct{ Rev string }

func (e *UnknownRevisionError) Error() string   { return "unknown revision " + e.Rev }
func (*UnknownRevisionError) Is(err error) bool { return err == fs.ErrNotExist }

type noCommitsError struct{}

func (noCommitsError) Error() string     { return "no commits" }
func (noCommitsError) Is(err error) bool { return err == fs.ErrNotExist }

var errNoCommits error = noCommitsError{}

// notExistError keeps its message but is fs.ErrNotExist.
type notExistError struct{ err error }

func (e notExistError) Error() string      { return e.err.Error() }
func (notExistError) Is(target error) bool { return target == fs.ErrNotExist }
func (e notExistError) Unwrap() error      { return e.err }

func notExist(err error) error { return notExistError{err: err} }

func notExistf(format string, args ...any) error { return notExist(fmt.Errorf(format, args...)) }

// isOriginTag is the go command's rule for tags that count in a TagSum.
func isOriginTag(tag string) bool {
	c := semver.Canonical(tag)
	return c != "" && strings.HasPrefix(tag, c) && !module.IsPseudoVersion(tag)
}
